//! How `dataplane-ebpf` becomes the kernel object, written once for its two
//! callers: the agent's build script (a plain `cargo build` embeds the
//! object) and `cargo xtask build-ebpf` (the object alone, after installing
//! the toolchain). Both use the same target directory, so whichever runs
//! second finds the object built.
//!
//! No dependencies on purpose: a build script's dependencies are compiled
//! before anything else in the workspace.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

/// The toolchain that builds the kernel crate (`-Z build-std=core`).
pub const NIGHTLY: &str = "nightly";
/// The BPF target.
pub const TARGET: &str = "bpfel-unknown-none";
/// The kernel crate's binaries: the data path and the test-only VPC trunk.
pub const OBJECT: &str = "trunkline-ebpf";

/// Where the kernel crate's build goes: `<cargo target dir>/ebpf`.
pub fn target_dir(cargo_target_dir: &Path) -> PathBuf {
    cargo_target_dir.join("ebpf")
}

/// The data path object a build into `target_dir` produces.
pub fn object_path(target_dir: &Path, release: bool) -> PathBuf {
    let profile = if release { "release" } else { "debug" };
    target_dir.join(TARGET).join(profile).join(OBJECT)
}

/// Tools built once per machine (bpf-linker and its LLVM link):
/// `TRUNKLINE_TOOLS_DIR`, else `~/.cache/trunkline`.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRUNKLINE_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("trunkline")
}

/// The directory `cargo xtask build-ebpf` installs bpf-linker into.
pub fn linker_dir() -> PathBuf {
    tools_dir().join("bpf-linker").join("bin")
}

/// `rustup run nightly cargo build` of `crate_dir` for the BPF target, with
/// BTF (bpftool prints maps with field names), bpf-linker found in
/// `linker_dir` before `PATH`, and none of the calling cargo's settings:
/// inside a build script the outer build's compiler, wrappers (clippy) and
/// flags are in the environment and would break a nightly BPF build.
pub fn command(crate_dir: &Path, target_dir: &Path, linker_dir: &Path, release: bool) -> Command {
    let mut search = vec![linker_dir.to_path_buf()];
    search.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path = std::env::join_paths(search).unwrap_or_else(|_| OsString::from("/usr/bin:/bin"));
    let mut cmd = Command::new("rustup");
    cmd.current_dir(crate_dir)
        .args(["run", NIGHTLY, "cargo", "build", "--target", TARGET])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        .env("PATH", path)
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    if release {
        cmd.arg("--release");
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_is_nightly_bpf_with_btf_and_none_of_the_callers_compiler() {
        let cmd = command(
            Path::new("/src/dataplane-ebpf"),
            Path::new("/t/ebpf"),
            Path::new("/tools/bin"),
            true,
        );
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(cmd.get_program(), "rustup");
        assert_eq!(
            args,
            [
                "run",
                "nightly",
                "cargo",
                "build",
                "--target",
                TARGET,
                "-Z",
                "build-std=core",
                "--target-dir",
                "/t/ebpf",
                "--release"
            ]
        );
        let env: Vec<_> = cmd.get_envs().collect();
        assert!(env.contains(&("RUSTC_WORKSPACE_WRAPPER".as_ref(), None)));
        assert!(env.iter().any(|(k, v)| *k == "PATH"
            && v.is_some_and(|p| p.to_string_lossy().starts_with("/tools/bin:"))));
        assert_eq!(
            object_path(Path::new("/t/ebpf"), true),
            Path::new("/t/ebpf/bpfel-unknown-none/release/trunkline-ebpf")
        );
    }
}
