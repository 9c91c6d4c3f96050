//! The VPC's behaviour around the simulated node (test-topology.md):
//! - it knows which ENI owns which IP (static neighbours for pod IPs) and
//!   answers ARP for the subnet (proxy ARP, as the VPC does);
//! - source/destination check: an nft bridge rule per ENI port drops
//!   frames whose source IP the port's ENI does not own (counted);
//! - the trunk port plays EC2's branch ENIs ([`VpcTrunk`]).
//!
//! Also gives the node its default route via the subnet gateway, as any
//! node has. Pods are added with the real CNI plugin ([`CniPod`]).

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use dataplane_common::testvpc::BranchEni;
use serde_json::Value;

use crate::{
    drivers::cni::{self, Call},
    topology::{
        netns::{parse_mac, Netns},
        sim_node::{SimNode, BRANCH_IP, BRANCH_MAC, BRANCH_VLAN, ENIS, NODE_IP},
        vpc_trunk::VpcTrunk,
    },
};

const TABLE: &str = "vpc_src_check";

pub struct Fabric {
    pub trunk: VpcTrunk,
}

fn port(link: &str) -> String {
    format!("n-{link}")
}

impl Fabric {
    pub fn install(sim: &SimNode) -> Result<Self> {
        sim.node.ip(&[
            "route",
            "add",
            "default",
            "via",
            "192.168.0.1",
            "dev",
            "eth0",
        ])?;
        // A Kubernetes node forwards (kube-proxy's NodePorts and services).
        sim.node.sysctl("net.ipv4.ip_forward", "1")?;
        sim.vpc.sysctl("net.ipv4.conf.br0.proxy_arp", "1")?;
        sim.vpc.sysctl("net.ipv4.conf.br0.proxy_arp_pvlan", "1")?;
        let ports: Vec<(&str, String)> =
            ENIS.iter().map(|(link, ..)| (*link, port(link))).collect();
        let ports: Vec<(&str, &str)> = ports.iter().map(|(k, p)| (*k, p.as_str())).collect();
        let file = sim.dir.path().join("vpc.nft");
        std::fs::write(&file, source_check_rules(&ports))?;
        sim.vpc.exec_ok("nft", &["-f", &file.to_string_lossy()])?;
        for (link, _, _, ip) in ENIS {
            own(sim, link, ip)?;
        }
        // The branch ENI's address arrives (untagged by EC2) on the trunk port.
        own(sim, "eth2", BRANCH_IP)?;
        let mut trunk = VpcTrunk::attach(&sim.vpc, &port("eth2"))?;
        trunk.register(BranchEni {
            mac: parse_mac(BRANCH_MAC)?,
            vlan_id: BRANCH_VLAN,
            ip: BRANCH_IP.octets(),
        })?;
        // The VPC delivers to the branch ENI's MAC, which sits behind the trunk port.
        sim.vpc.ip(&[
            "neigh",
            "replace",
            &BRANCH_IP.to_string(),
            "lladdr",
            BRANCH_MAC,
            "dev",
            "br0",
            "nud",
            "permanent",
        ])?;
        sim.vpc.exec_ok(
            "bridge",
            &[
                "fdb",
                "replace",
                BRANCH_MAC,
                "dev",
                &port("eth2"),
                "master",
                "static",
            ],
        )?;
        let _ = NODE_IP;
        Ok(Self { trunk })
    }

    /// Packets the source check passed and dropped on `link`'s port.
    pub fn source_check(&self, sim: &SimNode, link: &str) -> Result<(u64, u64)> {
        source_check_counters(&sim.vpc, link)
    }
}

/// The VPC's source/destination check as an nft bridge table: for each
/// `(key, port)`, a set `own_<key>` of the addresses that port's ENI owns
/// and two counted rules on frames arriving from the port: pass those from
/// an owned source, drop every other IPv4 frame (comments `pass-<key>`,
/// `drop-<key>`). Keys are nft identifiers (letters, digits, `_`).
pub fn source_check_rules(ports: &[(&str, &str)]) -> String {
    let mut rules = format!("table bridge {TABLE} {{\n");
    for (key, _) in ports {
        rules.push_str(&format!("  set own_{key} {{ type ipv4_addr; }}\n"));
    }
    rules.push_str("  chain pre {\n    type filter hook prerouting priority 0; policy accept;\n");
    for (key, p) in ports {
        rules.push_str(&format!(
            "    iifname \"{p}\" ether type ip ip saddr @own_{key} counter accept comment \"pass-{key}\"\n"
        ));
        rules.push_str(&format!(
            "    iifname \"{p}\" ether type ip counter drop comment \"drop-{key}\"\n"
        ));
    }
    rules.push_str("  }\n}\n");
    rules
}

/// Packets the source check (see [`source_check_rules`]) in `vpc` passed
/// and dropped on `key`'s port.
pub fn source_check_counters(vpc: &Netns, key: &str) -> Result<(u64, u64)> {
    let out = vpc.exec_ok("nft", &["-j", "list", "chain", "bridge", TABLE, "pre"])?;
    let v: Value = serde_json::from_str(&out).context("nft JSON")?;
    let mut passed = None;
    let mut dropped = None;
    for item in v["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        let Some(comment) = rule["comment"].as_str() else {
            continue;
        };
        let packets = rule["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|e| e["counter"]["packets"].as_u64());
        if comment == format!("pass-{key}") {
            passed = packets;
        } else if comment == format!("drop-{key}") {
            dropped = packets;
        }
    }
    match (passed, dropped) {
        (Some(p), Some(d)) => Ok((p, d)),
        _ => bail!("no source-check counters for {key}: {out}"),
    }
}

/// The port `key` (see [`source_check_rules`]) may send from `ip`.
pub fn allow_source(vpc: &Netns, key: &str, ip: Ipv4Addr) -> Result<()> {
    vpc.exec_ok(
        "nft",
        &[
            "add",
            "element",
            "bridge",
            TABLE,
            &format!("own_{key}"),
            &format!("{{ {ip} }}"),
        ],
    )?;
    Ok(())
}

/// The VPC delivers `ip` to the ENI whose MAC is `mac` (a permanent
/// neighbour on the subnet bridge, as the VPC knows which ENI owns an IP).
pub fn deliver_to(vpc: &Netns, ip: Ipv4Addr, mac: &str) -> Result<()> {
    vpc.ip(&[
        "neigh",
        "replace",
        &ip.to_string(),
        "lladdr",
        mac,
        "dev",
        "br0",
        "nud",
        "permanent",
    ])
}

/// `link`'s ENI owns `ip` in the VPC's view: its frames may carry it, and
/// the VPC delivers it to that ENI.
pub fn own(sim: &SimNode, link: &str, ip: Ipv4Addr) -> Result<()> {
    allow_source(&sim.vpc, link, ip)?;
    let mac = ENIS
        .iter()
        .find(|e| e.0 == link)
        .map(|e| e.2)
        .context("no such ENI")?;
    if link != "eth2" {
        deliver_to(&sim.vpc, ip, mac)?;
    }
    Ok(())
}

/// A pod namespace wired by the real `trunkline-cni` (ADD now, DEL on
/// drop). It keeps the node namespace's name and the agent socket, not a
/// borrow of the node, so the agent can be restarted while it lives.
pub struct CniPod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    node_ns: String,
    socket: std::path::PathBuf,
    name: (String, String),
    cid: String,
}

impl CniPod {
    pub fn add(sim: &SimNode, namespace: &str, name: &str) -> Result<Self> {
        Self::add_in(&sim.node, &sim.socket(), namespace, name, &|| {
            sim.agent_log()
        })
    }

    /// Like [`Self::add`] on any node namespace whose agent listens on
    /// `socket` (a node of a simulated cluster); `agent_log` is for the
    /// error message.
    pub fn add_in(
        node: &Netns,
        socket: &std::path::Path,
        namespace: &str,
        name: &str,
        agent_log: &dyn Fn() -> String,
    ) -> Result<Self> {
        let ns = Netns::new("pod")?;
        let cid = format!("cid-{}", ns.name());
        let netns = format!("/run/netns/{}", ns.name());
        let call = Call {
            command: "ADD",
            container_id: &cid,
            netns: &netns,
            ifname: "eth0",
            pod: (namespace, name),
        };
        let out = cni::trunkline(
            node.name(),
            &call,
            &cni::trunkline_conf("1.0.0", socket, None),
        )?;
        if !out.success {
            bail!(
                "CNI ADD {namespace}/{name}: {}\n{}\nagent log:\n{}",
                out.stdout,
                out.stderr,
                agent_log()
            );
        }
        let addr = out.json()["ips"][0]["address"]
            .as_str()
            .context("no IP in the CNI result")?
            .to_string();
        let ip: Ipv4Addr = addr
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .context("CNI result IP")?;
        Ok(Self {
            ns,
            ip,
            node_ns: node.name().to_string(),
            socket: socket.to_path_buf(),
            name: (namespace.into(), name.into()),
            cid,
        })
    }
}

impl Drop for CniPod {
    fn drop(&mut self) {
        let netns = format!("/run/netns/{}", self.ns.name());
        let call = Call {
            command: "DEL",
            container_id: &self.cid,
            netns: &netns,
            ifname: "eth0",
            pod: (&self.name.0, &self.name.1),
        };
        let conf = cni::trunkline_conf("1.0.0", &self.socket, None);
        if let Err(e) = cni::trunkline(&self.node_ns, &call, &conf) {
            eprintln!("cleanup: CNI DEL: {e:#}");
        }
    }
}

/// The usual end-to-end starting point: a simulated node with the eth0 pool,
/// the agent started with `env`, the VPC fabric, and one pod on eth0 that
/// the VPC attributes to it.
pub fn node_with_pod(env: &[(&str, &str)], pod: &str) -> Result<(SimNode, Fabric, CniPod)> {
    let mut sim = SimNode::build()?;
    std::fs::write(
        sim.node_file(),
        crate::topology::sim_node::node_file(&crate::topology::sim_node::pod_ips("eth0"), &[]),
    )?;
    sim.set_agent_env(env);
    sim.start_agent()?;
    let fabric = Fabric::install(&sim)?;
    let p = CniPod::add(&sim, "default", pod)?;
    own(&sim, "eth0", p.ip)?;
    Ok((sim, fabric, p))
}
