//! The real `trunkline-agent` and `trunkline-cni` binaries the end-to-end
//! tests run. `cargo xtask test` builds them first and passes their paths.

use std::path::PathBuf;

pub const AGENT_ENV: &str = "TRUNKLINE_AGENT_BIN";
pub const CNI_ENV: &str = "TRUNKLINE_CNI_BIN";

fn find(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug").join(name);
    assert!(
        p.exists(),
        "no {name} at {} and {env} unset: run `cargo xtask test` (or `cargo build -p {name}` first)",
        p.display()
    );
    p
}

pub fn agent() -> PathBuf {
    find(AGENT_ENV, "trunkline-agent")
}

pub fn cni() -> PathBuf {
    find(CNI_ENV, "trunkline-cni")
}
