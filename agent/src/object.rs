//! The kernel object: from `--ebpf-object`, else embedded at build time.

use std::path::Path;

use anyhow::{Context as _, Result};

/// The object embedded at build time, if this build has one.
#[cfg(trunkline_embedded_object)]
pub fn embedded() -> Option<&'static [u8]> {
    Some(include_bytes!(concat!(
        env!("OUT_DIR"),
        "/trunkline-ebpf.o"
    )))
}

/// The object embedded at build time, if this build has one.
#[cfg(not(trunkline_embedded_object))]
pub fn embedded() -> Option<&'static [u8]> {
    None
}

/// `path`'s bytes, or the embedded object when no path is given.
pub fn load(path: Option<&Path>) -> Result<Vec<u8>> {
    match path {
        Some(p) => {
            std::fs::read(p).with_context(|| format!("reading the eBPF object {}", p.display()))
        }
        None => embedded().map(<[u8]>::to_vec).context(
            "this build embeds no eBPF object: pass --ebpf-object PATH \
             (`cargo xtask build-ebpf --release` prints it) or build with `cargo xtask build`",
        ),
    }
}
