//! Builds the kernel object (`dataplane-ebpf`) and embeds it, so a plain
//! `cargo build` gives an agent that runs without `--ebpf-object`. The
//! build goes to `<target>/ebpf`, where `cargo xtask build-ebpf` puts it too:
//! after either, the other finds it up to date. It needs the nightly
//! toolchain with rust-src and bpf-linker (`cargo xtask build-ebpf`
//! installs what is missing; shared/design/toolchain.md has the recipe).

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let workspace = manifest
        .parent()
        .expect("agent/ is inside the workspace")
        .to_path_buf();
    let crate_dir = workspace.join("dataplane-ebpf");
    // The kernel crate and the types it shares with the agent.
    for input in [
        "dataplane-ebpf/src",
        "dataplane-ebpf/Cargo.toml",
        "dataplane-ebpf/Cargo.lock",
        "dataplane-common/src",
        "dataplane-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    println!("cargo:rerun-if-env-changed=TRUNKLINE_TOOLS_DIR");

    let cargo_target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let target_dir = ebpf_build::target_dir(&cargo_target);
    let linker_dir = ebpf_build::linker_dir();
    let mut cmd = ebpf_build::command(&crate_dir, &target_dir, &linker_dir, true);
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => panic!(
            "running `rustup run {} cargo build` for dataplane-ebpf: {e} (rustup must be on PATH)",
            ebpf_build::NIGHTLY
        ),
    };
    assert!(
        status.success(),
        "building the kernel object (dataplane-ebpf) failed: {status}. It needs the \
         {} toolchain with rust-src and bpf-linker in {} or on PATH; \
         `cargo xtask build-ebpf` installs them",
        ebpf_build::NIGHTLY,
        linker_dir.display()
    );
    let object = ebpf_build::object_path(&target_dir, true);
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::copy(&object, out.join("trunkline-ebpf.o"))
        .unwrap_or_else(|e| panic!("copying {} into OUT_DIR: {e}", object.display()));
}
