//! aws-node's IPAM checkpoint (`/var/run/aws-node/ipam.json`, format
//! `vpc-cni-ipam/1`): which pod sandbox holds which IP. With the host veth
//! name aws-node's plugin derives from the pod, it is all trunkline needs to
//! adopt a running pod.

use std::{net::Ipv4Addr, path::Path};

use serde::Deserialize;
use sha1::{Digest as _, Sha1};

pub const DEFAULT_PATH: &str = "/var/run/aws-node/ipam.json";
const FORMAT: &str = "vpc-cni-ipam/1";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not an aws-node IPAM checkpoint: {reason}")]
    Format { path: String, reason: String },
}

#[derive(Deserialize)]
struct File {
    version: String,
    #[serde(default)]
    allocations: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "containerID", default)]
    container_id: String,
    #[serde(rename = "ifName", default)]
    if_name: String,
    #[serde(default)]
    ipv4: String,
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(rename = "k8sPodNamespace", default)]
    namespace: String,
    #[serde(rename = "k8sPodName", default)]
    name: String,
}

/// One pod aws-node gave an IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyPod {
    pub container_id: String,
    pub ifname: String,
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
}

impl LegacyPod {
    /// The host veth aws-node's plugin created for the pod: `eni` (`vlan`
    /// for strict branch pods) + the first 11 hex digits of
    /// sha1("<namespace>.<name>").
    pub fn host_veth(&self, prefix: &str) -> String {
        legacy_veth_name(prefix, &self.namespace, &self.name)
    }
}

pub fn legacy_veth_name(prefix: &str, namespace: &str, name: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{name}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..11])
}

/// Entries without an IPv4 address (IPv6 clusters) or pod identity are
/// skipped and returned as warnings.
pub fn parse(path: &Path, text: &str) -> Result<(Vec<LegacyPod>, Vec<String>), CheckpointError> {
    let format_err = |reason: String| CheckpointError::Format {
        path: path.display().to_string(),
        reason,
    };
    let file: File = serde_json::from_str(text).map_err(|e| format_err(e.to_string()))?;
    if file.version != FORMAT {
        return Err(format_err(format!(
            "version {:?}, want {FORMAT:?}",
            file.version
        )));
    }
    let mut pods = Vec::new();
    let mut warnings = Vec::new();
    for (i, e) in file.allocations.into_iter().enumerate() {
        let ip = match e.ipv4.parse::<Ipv4Addr>() {
            Ok(ip) => ip,
            Err(_) => {
                warnings.push(format!(
                    "allocation {i}: no IPv4 address ({:?}); skipped",
                    e.ipv4
                ));
                continue;
            }
        };
        if e.container_id.is_empty()
            || e.metadata.namespace.is_empty()
            || e.metadata.name.is_empty()
        {
            warnings.push(format!(
                "allocation {i} ({ip}): no container id or pod name; skipped"
            ));
            continue;
        }
        pods.push(LegacyPod {
            container_id: e.container_id,
            ifname: if e.if_name.is_empty() {
                "eth0".into()
            } else {
                e.if_name
            },
            namespace: e.metadata.namespace,
            name: e.metadata.name,
            ip,
        });
    }
    Ok((pods, warnings))
}

pub fn load(path: &Path) -> Result<(Vec<LegacyPod>, Vec<String>), CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_follow_aws_nodes_scheme() {
        // `printf default.nginx | sha1sum` = c440f455693b69cd...
        assert_eq!(
            legacy_veth_name("eni", "default", "nginx"),
            "enic440f455693"
        );
        assert_eq!(
            legacy_veth_name("vlan", "default", "nginx"),
            "vlanc440f455693"
        );
    }

    #[test]
    fn parses_allocations_and_skips_what_it_cannot_adopt() {
        let text = r#"{"version":"vpc-cni-ipam/1","allocations":[
          {"networkName":"aws-cni","containerID":"c1","ifName":"eth0","ipv4":"192.168.10.5","allocationTimestamp":1,"metadata":{"k8sPodNamespace":"default","k8sPodName":"web"}},
          {"containerID":"c2","ipv6":"2001:db8::1","metadata":{"k8sPodNamespace":"default","k8sPodName":"v6"}},
          {"containerID":"","ipv4":"192.168.10.6","metadata":{}}
        ]}"#;
        let (pods, warnings) = parse(Path::new("ipam.json"), text).expect("parse");
        assert_eq!(
            pods,
            vec![LegacyPod {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                namespace: "default".into(),
                name: "web".into(),
                ip: "192.168.10.5".parse().expect("ip"),
            }]
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    #[test]
    fn rejects_other_formats() {
        for text in [
            "",
            "{}",
            r#"{"version":"vpc-cni-ipam/2","allocations":[]}"#,
            "[1]",
        ] {
            assert!(parse(Path::new("x"), text).is_err(), "{text}");
        }
    }
}
