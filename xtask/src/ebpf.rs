//! Building `dataplane-ebpf` for bpfel-unknown-none, and checking that the
//! object is what the loader expects.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSymbol};

use crate::{paths, run::checked, toolchain};

const PROGRAMS: [&str; 4] = ["from_pod", "to_eni", "from_eni", "to_pod"];

/// Builds the kernel object; returns its path.
pub fn build(release: bool) -> Result<PathBuf> {
    let linker_dir = toolchain::ensure()?;
    let crate_dir = paths::workspace_root().join("dataplane-ebpf");
    let target_dir = paths::target_dir().join("ebpf");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut search = vec![linker_dir];
    search.extend(std::env::split_paths(&path));

    let mut cmd = Command::new("cargo");
    cmd.current_dir(&crate_dir)
        .arg(format!("+{}", toolchain::NIGHTLY))
        .args([
            "build",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", std::env::join_paths(search)?)
        // BTF for maps and programs, so bpftool prints field names.
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        // The outer (stable) cargo's settings must not leak into this build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    if release {
        cmd.arg("--release");
    }
    checked(&mut cmd).context("building dataplane-ebpf")?;

    let profile = if release { "release" } else { "debug" };
    let obj = target_dir
        .join("bpfel-unknown-none")
        .join(profile)
        .join("trunkline-ebpf");
    verify(&obj)?;
    Ok(obj)
}

/// The object must carry BTF and the four programs.
fn verify(obj: &PathBuf) -> Result<()> {
    let data = std::fs::read(obj).with_context(|| format!("reading {}", obj.display()))?;
    let file = object::File::parse(&*data).with_context(|| format!("parsing {}", obj.display()))?;
    for section in [".BTF", ".BTF.ext", ".maps"] {
        if file.section_by_name(section).is_none() {
            bail!("{}: no {section} section", obj.display());
        }
    }
    let symbols: Vec<String> = file
        .symbols()
        .filter_map(|s| s.name().ok().map(str::to_string))
        .collect();
    for prog in PROGRAMS {
        if !symbols.iter().any(|s| s == prog) {
            bail!("{}: program {prog} missing", obj.display());
        }
    }
    Ok(())
}
