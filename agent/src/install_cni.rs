//! `trunkline-agent install-cni`: the DaemonSet's init step. Copies the CNI
//! plugin and writes the conflist into the host's CNI directories, each
//! through a temporary file and a rename, so kubelet never reads a
//! half-written conflist or executes a half-copied binary.

use std::path::{Path, PathBuf};

use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The conflist file name: sorts before aws-node's `10-aws.conflist`, so a
/// node migrating keeps a single active network.
pub const CONFLIST: &str = "05-trunkline.conflist";

/// The conflist kubelet reads: trunkline-cni alone (operators chain more
/// plugins by editing it; prevResult is honoured).
pub fn conflist(mtu: u32, agent_socket: &str) -> String {
    let v = json!({
        "cniVersion": "1.0.0",
        "name": "trunkline",
        "plugins": [{"type": "trunkline-cni", "mtu": mtu, "agentSocket": agent_socket, "vethPrefix": "eni"}],
    });
    // A JSON value always serialises; the fallback is never used.
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` at `dest` with `mode`, atomically (kubelet never reads
/// a half-written conflist nor runs a half-copied binary).
fn install_atomically(dest: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    crate::atomic_file::write(dest, bytes, mode).map_err(io(dest))
}

/// Installs `plugin` as `<bin_dir>/trunkline-cni` and the conflist in `conf_dir`.
pub fn install(
    plugin: &Path,
    bin_dir: &Path,
    conf_dir: &Path,
    mtu: u32,
    agent_socket: &str,
) -> Result<(), InstallError> {
    let bytes = std::fs::read(plugin).map_err(io(plugin))?;
    install_atomically(&bin_dir.join("trunkline-cni"), &bytes, 0o755)?;
    install_atomically(
        &conf_dir.join(CONFLIST),
        conflist(mtu, agent_socket).as_bytes(),
        0o644,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn installs_plugin_and_conflist_atomically() {
        let root = std::env::temp_dir().join(format!("tl-install-{}", std::process::id()));
        let plugin = root.join("src-plugin");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(&plugin, b"#!/bin/true\n").unwrap();
        let (bin, conf) = (root.join("opt/cni/bin"), root.join("etc/cni/net.d"));
        install(&plugin, &bin, &conf, 9001, "/run/trunkline/agent.sock").unwrap();
        let installed = bin.join("trunkline-cni");
        assert_eq!(std::fs::read(&installed).unwrap(), b"#!/bin/true\n");
        assert_eq!(
            std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(conf.join(CONFLIST)).unwrap()).unwrap();
        assert_eq!(v["plugins"][0]["type"], "trunkline-cni");
        assert_eq!(v["plugins"][0]["agentSocket"], "/run/trunkline/agent.sock");
        // No temporary file is left where kubelet looks.
        for dir in [&bin, &conf] {
            for e in std::fs::read_dir(dir).unwrap() {
                assert!(!e.unwrap().file_name().to_string_lossy().contains(".tmp-"));
            }
        }
        // A missing plugin is an error naming it, and installs nothing.
        let err = install(&root.join("nope"), &bin, &conf, 9001, "/s").unwrap_err();
        assert!(err.to_string().contains("nope"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
