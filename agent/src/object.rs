//! The kernel object: from `--ebpf-object`, else the one built and embedded
//! by the build script.

use std::path::Path;

use anyhow::{Context as _, Result};

/// The object this binary was built with.
pub const EMBEDDED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/trunkline-ebpf.o"));

/// `path`'s bytes, or the embedded object when no path is given.
pub fn load(path: Option<&Path>) -> Result<Vec<u8>> {
    match path {
        Some(p) => {
            std::fs::read(p).with_context(|| format!("reading the eBPF object {}", p.display()))
        }
        None => Ok(EMBEDDED.to_vec()),
    }
}
