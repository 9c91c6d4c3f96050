//! Where things are: the workspace, Cargo's target directory, our tool cache.

use std::path::PathBuf;

pub fn workspace_root() -> PathBuf {
    // `cargo run` sets it at run time: the clone being worked on. The
    // compile-time value can name another clone that shares the target
    // directory (CI clones into a new path and reuses the cache).
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set (CI keeps it
/// outside the clone), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Tools we build once per machine (bpf-linker and its LLVM link, QEMU
/// kernels, the Python venv): `TRUNKLINE_TOOLS_DIR`, else `~/.cache/trunkline`.
pub fn tools_dir() -> PathBuf {
    ebpf_build::tools_dir()
}
