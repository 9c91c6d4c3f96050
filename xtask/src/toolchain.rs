//! The eBPF toolchain: the image's nightly with rust-src, and bpf-linker
//! 0.13 built against that nightly's own LLVM (the default LLVM 23 build
//! fails to link here; see shared/design/toolchain.md).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{paths, run::checked};

use ebpf_build::NIGHTLY;
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Makes sure nightly, rust-src and bpf-linker are there; returns the
/// directory holding `bpf-linker`.
pub fn ensure() -> Result<PathBuf> {
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args([&format!("+{NIGHTLY}"), "--print", "sysroot"])
        .output()
        .context("running rustc +nightly (is rustup on PATH?)")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain: the image ships one and none can be downloaded here \
             (rustc +nightly said: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    if sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
    {
        return Ok(());
    }
    eprintln!("xtask: installing rust-src for {NIGHTLY}");
    checked(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// The nightly's LLVM shared library and its major version.
fn nightly_llvm(sysroot: &Path) -> Result<(PathBuf, u32)> {
    let lib = sysroot.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // libLLVM.so.22.1-rust-1.97.0-nightly
        if let Some(rest) = name.strip_prefix("libLLVM.so.") {
            let major = rest.split('.').next().and_then(|m| m.parse().ok());
            if let Some(major) = major {
                return Ok((entry.path(), major));
            }
        }
    }
    bail!("no libLLVM.so.<version> in {}", lib.display())
}

fn ensure_bpf_linker(sysroot: &Path) -> Result<PathBuf> {
    let bin_dir = ebpf_build::linker_dir();
    let root = bin_dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let bin = bin_dir.join("bpf-linker");
    if let Ok(out) = Command::new(&bin).arg("--version").output() {
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
        {
            return Ok(bin_dir);
        }
    }
    let (llvm_lib, major) = nightly_llvm(sysroot)?;
    let prefix = paths::tools_dir().join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    // `libLLVM.so` for the build; the soname itself so that the rpath the
    // binary keeps to this prefix resolves outside rustup's environment too.
    let soname = llvm_lib.file_name().map(PathBuf::from).unwrap_or_default();
    for name in [PathBuf::from("libLLVM.so"), soname] {
        let link = prefix.join("lib").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm_lib, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), llvm_lib.display()))?;
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about 2 minutes, once per machine)");
    checked(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .env_remove("CARGO_TARGET_DIR")
            .args(["install", "--force", "--root"])
            .arg(&root)
            .args([
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}")),
    )?;
    Ok(bin_dir)
}
