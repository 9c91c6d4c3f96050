//! A simulated node as aws-node leaves it: the SNAT chain (`--random-fully`),
//! connmark, ip rules 10/512/1024/1536, per-ENI and per-VLAN tables, pod
//! routes, a `vlan.eth.1` device, aws-node's nft table, pods wired by
//! aws-node's naming, and its IPAM checkpoint; plus what `trunkline-agent
//! migrate` needs to take it over. The migration test and the demo use it.
//!
//! The kernel here has neither the 802.1Q nor the dummy module, so
//! `vlan.eth.1` is a bridge device standing in for aws-node's VLAN device
//! (only its removal matters).

use std::{ffi::OsString, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use dataplane_common::SnatMode;

use crate::{
    drivers::legacy::{self, LegacySnat},
    topology::{
        netns::Netns,
        sim_node::{node_file, pod_ips, SimNode, NODE_IP},
        vpc_fabric::{own, Fabric},
    },
};

/// A pod aws-node wired.
pub struct LegacyPod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub veth: String,
    pub name: &'static str,
}

/// aws-node's veth name for a pod, computed with the system's sha1sum (not
/// with the code under test).
pub fn legacy_veth(namespace: &str, name: &str) -> Result<String> {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("printf '%s' '{namespace}.{name}' | sha1sum")])
        .output()?;
    let hex = String::from_utf8(out.stdout)?;
    Ok(format!("eni{}", hex.get(..11).context("sha1sum output")?))
}

pub struct LegacyNode {
    pub sim: SimNode,
    pub fabric: Fabric,
    /// `default/web-a` on eth0 and `default/web-b` on eth1.
    pub pods: Vec<LegacyPod>,
}

impl LegacyNode {
    /// The node, its plumbing and pods, aws-node's checkpoint, and the node
    /// file trunkline will run with.
    pub fn build() -> Result<Self> {
        let sim = SimNode::build()?;
        let fabric = Fabric::install(&sim)?;
        let vpc = ["192.168.0.0/16", "100.64.0.0/16"];
        legacy::install_snat_chain(
            &sim.node,
            &LegacySnat {
                node_ip: NODE_IP.to_string(),
                vpc_cidrs: vpc.iter().map(|s| s.to_string()).collect(),
                excluded: vec![],
                mode: SnatMode::Random,
                ports: None,
            },
        )?;
        legacy::install_connmark(&sim.node, &vpc)?;
        let mut pods = Vec::new();
        for (name, eni) in [("web-a", "eth0"), ("web-b", "eth1")] {
            let ns = Netns::new("pod")?;
            let ip = pod_ips(eni)[3];
            let veth = legacy_veth("default", name)?;
            legacy::wire_pod(
                &sim.node,
                &ns,
                &veth,
                ip,
                (eni == "eth1").then_some(("eth1", 2)),
            )?;
            own(&sim, eni, ip)?;
            pods.push(LegacyPod { ns, ip, veth, name });
        }
        sim.node
            .ip(&["link", "add", "vlan.eth.1", "type", "bridge"])?;
        sim.node.ip(&["link", "set", "vlan.eth.1", "up"])?;
        sim.node.ip(&[
            "route",
            "add",
            "default",
            "dev",
            "vlan.eth.1",
            "table",
            "101",
        ])?;
        sim.node.ip(&[
            "rule",
            "add",
            "iif",
            "vlan.eth.1",
            "lookup",
            "101",
            "priority",
            "10",
        ])?;
        sim.node
            .exec_ok("nft", &["add", "table", "ip", "aws-cni"])?;
        sim.node.exec_ok(
            "nft",
            &[
                "add",
                "chain",
                "ip",
                "aws-cni",
                "nat-post",
                "{ type nat hook postrouting priority 100 ; }",
            ],
        )?;
        std::fs::write(
            sim.node_file(),
            node_file(&pod_ips("eth0"), &pod_ips("eth1")),
        )?;
        let node = Self { sim, fabric, pods };
        std::fs::write(node.checkpoint(), node.ipam_json())?;
        Ok(node)
    }

    /// aws-node's IPAM checkpoint (`ipam.json`) of this node.
    pub fn checkpoint(&self) -> std::path::PathBuf {
        self.sim.dir.path().join("ipam.json")
    }

    fn ipam_json(&self) -> String {
        let allocations: Vec<String> = self
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    r#"{{"networkName":"aws-cni","containerID":"legacy-{i}","ifName":"eth0","ipv4":"{}","allocationTimestamp":1700000000,"metadata":{{"k8sPodNamespace":"default","k8sPodName":"{}"}}}}"#,
                    p.ip, p.name
                )
            })
            .collect();
        format!(
            r#"{{"version":"vpc-cni-ipam/1","allocations":[{}]}}"#,
            allocations.join(",")
        )
    }

    /// Everything of aws-node's the node has, one line per object; empty
    /// when nothing is left.
    pub fn legacy_state(&self) -> Result<String> {
        let node = &self.sim.node;
        let mut out = String::new();
        let save = node.exec_ok("iptables-save", &[])?;
        for l in save.lines().filter(|l| l.contains("AWS")) {
            out.push_str(&format!("iptables: {l}\n"));
        }
        for l in node.exec_ok("ip", &["rule"])?.lines() {
            let kernel = l.starts_with("0:") || l.starts_with("32766:") || l.starts_with("32767:");
            if !kernel {
                out.push_str(&format!("rule: {l}\n"));
            }
        }
        let routes = node.exec_ok("ip", &["route", "show", "table", "all"])?;
        for l in routes.lines() {
            let own = l.contains("table local")
                || l.starts_with("default via 192.168.0.1 dev eth0")
                || l.starts_with("192.168.0.0/19 dev eth0");
            if !own {
                out.push_str(&format!("route: {l}\n"));
            }
        }
        for l in node.exec_ok("nft", &["list", "tables"])?.lines() {
            if l.contains("aws-cni") {
                out.push_str(&format!("nft: {l}\n"));
            }
        }
        for l in self.sim.links_with_prefix("vlan.eth.")? {
            out.push_str(&format!("link: {l}\n"));
        }
        Ok(out)
    }

    /// `trunkline-agent migrate` in the node's namespace, with `extra` args.
    /// The node's stand-in for aws-network-policy-agent's pin directory
    /// (absent until a test makes it): `migrate` is pointed here, never at
    /// the machine's own bpffs.
    pub fn network_policy_pins(&self) -> std::path::PathBuf {
        self.sim.dir.path().join("aws-programs")
    }

    pub fn migrate(&self, extra: &[&str]) -> Result<std::process::Output> {
        let sim = &self.sim;
        let mut args: Vec<OsString> = vec!["migrate".into()];
        args.extend(
            sim.agent_args()
                .ebpf_object(crate::kernel::object::path())
                .build(),
        );
        args.extend(["--aws-node-checkpoint".into(), self.checkpoint().into()]);
        args.extend([
            "--network-policy-pins".into(),
            self.network_policy_pins().into(),
        ]);
        args.extend(extra.iter().map(OsString::from));
        sim.node
            .exec(&crate::drivers::binaries::agent().to_string_lossy(), &args)
    }
}
