//! The node's desired state, [`NodeSpec`]: the node's IPs and CIDRs, its
//! ENIs with the IPs each may give pods, and the branch ENIs of
//! security-group pods. Local mode reads it from the node file (TOML, its
//! serde form, a user-facing input); AWS mode builds it from IMDS
//! (`crate::cloud::aws::node_spec`). The node reconciler and the pods diff
//! it against the maps.
//!
//! Unknown keys and invalid values are rejected with the file, the line and
//! the reason; so are values that parse but contradict each other (an IP
//! outside its ENI's subnet, two ENIs on one interface, ...).

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;

pub use dataplane_common::MacAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Secondary,
    Trunk,
}

#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub primary_ip: Ipv4Addr,
    pub vpc_cidrs: Vec<Ipv4Net>,
    #[serde(default)]
    pub service_cidrs: Vec<Ipv4Net>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EniSection {
    pub interface: Spanned<String>,
    pub role: Role,
    pub mac: MacAddr,
    pub primary_ip: Ipv4Addr,
    pub subnet: Spanned<Ipv4Net>,
    #[serde(default)]
    pub pod_ips: Vec<Spanned<Ipv4Addr>>,
    /// The subnet gateway's MAC, for frames the data path builds itself
    /// (tagged branch-pod traffic on the trunk). Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_mac: Option<MacAddr>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BranchSection {
    /// `namespace/name` of the pod.
    pub pod: Spanned<String>,
    pub eni_id: String,
    pub mac: MacAddr,
    pub ip: Spanned<Ipv4Addr>,
    pub vlan: Spanned<u16>,
    pub subnet: Ipv4Net,
}

#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub node: NodeSection,
    #[serde(default)]
    pub eni: Vec<EniSection>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branch: Vec<BranchSection>,
}

/// Why the node file was rejected: `<file>:<line>: <reason>`.
#[derive(Debug, thiserror::Error)]
pub enum NodeFileError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

impl NodeSpec {
    pub fn load(path: &Path) -> Result<Self, NodeFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| NodeFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, NodeFileError> {
        let invalid = |offset: usize, reason: String| NodeFileError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, offset),
            reason,
        };
        let file: NodeSpec = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            invalid(offset, e.message().to_string())
        })?;
        file.validate()
            .map_err(|(offset, reason)| invalid(offset, reason))?;
        Ok(file)
    }

    /// The cross-field checks of a node file, for a spec built in code
    /// (AWS mode): the reason, without a place in a file.
    pub fn check(&self) -> Result<(), String> {
        self.validate().map_err(|(_, reason)| reason)
    }

    /// Whether `other` describes the same node apart from the ENIs' pod IPs
    /// (in AWS mode those come from the warm pool, not from the spec).
    pub fn same_apart_from_pools(&self, other: &Self) -> bool {
        let without_pools = |s: &Self| {
            let mut s = s.clone();
            for e in &mut s.eni {
                e.pod_ips.clear();
            }
            s
        };
        without_pools(self) == without_pools(other)
    }

    /// Cross-field checks; the error carries the byte offset of the culprit.
    fn validate(&self) -> Result<(), (usize, String)> {
        let primaries = self.eni.iter().filter(|e| e.role == Role::Primary).count();
        if primaries != 1 {
            return Err((
                0,
                format!("want exactly one [[eni]] with role = \"primary\", found {primaries}"),
            ));
        }
        let mut ifaces = HashSet::new();
        let mut ips = HashSet::new();
        for eni in &self.eni {
            let name = eni.interface.get_ref();
            if name.is_empty() || name.len() >= 16 {
                return Err((
                    eni.interface.span().start,
                    format!("interface {name:?} is not a valid link name (1-15 bytes)"),
                ));
            }
            if !ifaces.insert(name.clone()) {
                return Err((
                    eni.interface.span().start,
                    format!("interface {name:?} is listed twice"),
                ));
            }
            let subnet = eni.subnet.get_ref();
            if subnet.prefix_len() > 30 {
                return Err((
                    eni.subnet.span().start,
                    format!("subnet {subnet} is too small for a gateway"),
                ));
            }
            for ip in &eni.pod_ips {
                if !subnet.contains(ip.get_ref()) {
                    return Err((
                        ip.span().start,
                        format!(
                            "pod IP {} is outside the ENI's subnet {subnet}",
                            ip.get_ref()
                        ),
                    ));
                }
                if *ip.get_ref() == eni.primary_ip {
                    return Err((
                        ip.span().start,
                        format!("pod IP {} is the ENI's own primary IP", ip.get_ref()),
                    ));
                }
                if !ips.insert(*ip.get_ref()) {
                    return Err((
                        ip.span().start,
                        format!("pod IP {} is listed twice", ip.get_ref()),
                    ));
                }
            }
        }
        let mut pods = HashSet::new();
        for b in &self.branch {
            let pod = b.pod.get_ref();
            if pod
                .split_once('/')
                .is_none_or(|(ns, n)| ns.is_empty() || n.is_empty())
            {
                return Err((
                    b.pod.span().start,
                    format!("pod {pod:?} is not \"namespace/name\""),
                ));
            }
            if !pods.insert(pod.clone()) {
                return Err((
                    b.pod.span().start,
                    format!("pod {pod:?} has two [[branch]] entries"),
                ));
            }
            let vlan = *b.vlan.get_ref();
            if vlan == 0 || vlan > 4094 {
                return Err((
                    b.vlan.span().start,
                    format!("vlan {vlan} is not a VLAN id (1-4094)"),
                ));
            }
            if !b.subnet.contains(b.ip.get_ref()) {
                return Err((
                    b.ip.span().start,
                    format!(
                        "branch IP {} is outside its subnet {}",
                        b.ip.get_ref(),
                        b.subnet
                    ),
                ));
            }
            if !ips.insert(*b.ip.get_ref()) {
                return Err((
                    b.ip.span().start,
                    format!("branch IP {} is also a pod IP", b.ip.get_ref()),
                ));
            }
        }
        Ok(())
    }

    pub fn primary_eni(&self) -> &EniSection {
        // validate() guarantees exactly one.
        self.eni
            .iter()
            .find(|e| e.role == Role::Primary)
            .unwrap_or(&self.eni[0])
    }

    pub fn trunk_eni(&self) -> Option<&EniSection> {
        self.eni.iter().find(|e| e.role == Role::Trunk)
    }

    pub fn branch_for(&self, namespace: &str, name: &str) -> Option<&BranchSection> {
        self.branch
            .iter()
            .find(|b| b.pod.get_ref().split_once('/') == Some((namespace, name)))
    }
}

/// The subnet gateway: the subnet's base address + 1 (as in a VPC).
pub fn gateway_of(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map(|s| s.matches('\n').count() + 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
primary_ip = "192.168.31.166"
vpc_cidrs = ["192.168.0.0/16", "100.64.0.0/16"]
service_cidrs = ["10.100.0.0/16"]
[[eni]]
interface = "eth0"            # link name in the agent's namespace
role = "primary"              # primary | secondary | trunk
mac = "02:a5:ee:3d:4a:c9"
primary_ip = "192.168.31.166"
subnet = "192.168.0.0/19"
pod_ips = ["192.168.31.170", "192.168.31.171"]   # the IPs this ENI may give pods
[[eni]]
interface = "eth2"
role = "trunk"
mac = "02:a5:ee:3d:4a:cb"
primary_ip = "192.168.31.168"
subnet = "192.168.0.0/19"
[[branch]]                    # what the pod-eni annotation says on AWS
pod = "default/aws-cli"
eni_id = "eni-09a7a909e06fc4be6"
mac = "02:b0:01:6c:b5:79"
ip = "192.168.26.162"
vlan = 1
subnet = "192.168.0.0/19"
"#;

    /// The example of the issue, verbatim: a branch without a trunk ENI is
    /// accepted (AddPod for that pod says what is missing).
    const ISSUE: &str = r#"[node]
primary_ip = "192.168.31.166"
vpc_cidrs = ["192.168.0.0/16", "100.64.0.0/16"]
service_cidrs = ["10.100.0.0/16"]
[[eni]]
interface = "eth0"            # link name in the agent's namespace
role = "primary"              # primary | secondary | trunk
mac = "02:a5:ee:3d:4a:c9"
primary_ip = "192.168.31.166"
subnet = "192.168.0.0/19"
pod_ips = ["192.168.31.170", "192.168.31.171"]   # the IPs this ENI may give pods
[[branch]]                    # what the pod-eni annotation says on AWS
pod = "default/aws-cli"
eni_id = "eni-09a7a909e06fc4be6"
mac = "02:b0:01:6c:b5:79"
ip = "192.168.26.162"
vlan = 1
subnet = "192.168.0.0/19"
"#;

    #[test]
    fn the_issue_example_parses_verbatim() {
        let f = parse(ISSUE).expect("valid");
        assert!(f.trunk_eni().is_none());
        assert_eq!(f.branch.len(), 1);
        assert_eq!(f.node.service_cidrs.len(), 1);
    }

    fn parse(s: &str) -> Result<NodeSpec, NodeFileError> {
        NodeSpec::parse(Path::new("node.toml"), s)
    }

    #[test]
    fn a_node_with_a_trunk_parses() {
        let f = parse(GOOD).expect("valid");
        assert_eq!(f.node.primary_ip, Ipv4Addr::new(192, 168, 31, 166));
        assert_eq!(f.primary_eni().interface.get_ref(), "eth0");
        assert_eq!(f.primary_eni().pod_ips.len(), 2);
        assert_eq!(
            f.trunk_eni().map(|e| e.interface.get_ref().as_str()),
            Some("eth2")
        );
        let b = f.branch_for("default", "aws-cli").expect("branch");
        assert_eq!(*b.vlan.get_ref(), 1);
        assert_eq!(
            gateway_of(f.primary_eni().subnet.get_ref()),
            Ipv4Addr::new(192, 168, 0, 1)
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_file_and_line() {
        let bad = GOOD.replace(
            "role = \"primary\"",
            "role = \"primary\"\ncolour = \"blue\"",
        );
        let e = parse(&bad).expect_err("unknown key").to_string();
        assert!(e.starts_with("node.toml:9: "), "{e}");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn invalid_values_are_rejected_with_the_line() {
        let cases = [
            (
                GOOD.replace("02:a5:ee:3d:4a:c9", "02:a5:zz:3d:4a:c9"),
                9,
                "MAC",
            ),
            (
                GOOD.replace("\"192.168.31.171\"", "\"192.168.99.171\""),
                12,
                "outside",
            ),
            (
                GOOD.replace("role = \"primary\"", "role = \"tertiary\""),
                8,
                "tertiary",
            ),
            (GOOD.replace("vlan = 1", "vlan = 5000"), 24, "VLAN"),
            (
                GOOD.replace("\"10.100.0.0/16\"", "\"10.100.0.0/33\""),
                5,
                "",
            ),
        ];
        for (text, line, word) in cases {
            let e = parse(&text).expect_err("invalid").to_string();
            assert!(e.starts_with(&format!("node.toml:{line}: ")), "{e}");
            assert!(e.contains(word), "{e}");
        }
    }
}
