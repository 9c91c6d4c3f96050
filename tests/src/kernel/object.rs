//! Finding the kernel object the tests load.

use std::path::PathBuf;

/// Set by `cargo xtask test` / `cargo xtask demo` to the object they built.
pub const OBJECT_ENV: &str = "TRUNKLINE_EBPF_OBJECT";

/// The release object: `$TRUNKLINE_EBPF_OBJECT`, else where
/// `cargo xtask build-ebpf --release` puts it. Panics with the command to
/// run when there is none: a test without its object must fail, not skip.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os(OBJECT_ENV) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("ebpf/bpfel-unknown-none/release/trunkline-ebpf");
    assert!(
        p.exists(),
        "no eBPF object at {} and {OBJECT_ENV} unset: run `cargo xtask test` \
         (or `cargo xtask build-ebpf --release` first)",
        p.display()
    );
    p
}

/// The object's bytes.
pub fn bytes() -> Vec<u8> {
    let p = path();
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The test-only VPC trunk fixture, built beside the data path object.
pub fn testvpc_bytes() -> Vec<u8> {
    let p = path().with_file_name("trunkline-testvpc");
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e} (built by `cargo xtask build-ebpf`)",
            p.display()
        )
    })
}

/// A "rebuilt" object in `dir`: the same programs in a file that differs by
/// a trailing byte, so its identity changes as a rebuild's would.
pub fn rebuilt(dir: &std::path::Path) -> std::io::Result<PathBuf> {
    let mut bytes = std::fs::read(path())?;
    bytes.push(0);
    let out = dir.join("trunkline-ebpf.rebuilt");
    std::fs::write(&out, &bytes)?;
    Ok(out)
}
