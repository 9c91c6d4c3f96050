//! The smallest real topology: a pod wired the way trunkline-cni wires it
//! (a /32 address, link-local gateway 169.254.1.1 with a permanent
//! neighbour entry), a node forwarding through its stack, and a peer host
//! behind the node's "ENI". The four programs are attached where the
//! architecture puts them; the maps are pinned on a private bpffs.
//!
//! ```text
//!   pod ns               node ns                          peer ns
//!   eth0 ──────────── veth-pod  [from_pod/to_pod]
//!   192.168.31.170/32            eth0 [from_eni/to_eni] ── eth0 192.168.16.20/24
//!                                192.168.16.10/24
//! ```

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use dataplane_common::Hook;
use trunkline_agent::dataplane::{AttachMode, Dataplane};

use crate::{
    kernel::bpffs::BpffsMount,
    topology::netns::{veth, Netns},
};

pub const POD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 31, 170);
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 16, 10);
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 16, 20);
pub const POD_GATEWAY: &str = "169.254.1.1";
pub const HOST_VETH: &str = "veth-pod";
pub const ENI: &str = "eth0";

/// Field order matters: the data path (and its links) goes first, then the
/// namespaces, then the bpffs mount.
pub struct MiniNode {
    pub dataplane: Dataplane,
    pub attach_mode: AttachMode,
    pub pod: Netns,
    pub node: Netns,
    pub peer: Netns,
    pub bpffs: BpffsMount,
}

impl MiniNode {
    pub fn new(object: &[u8]) -> Result<Self> {
        let bpffs = BpffsMount::new()?;
        let pod = Netns::new("pod")?;
        let node = Netns::new("node")?;
        let peer = Netns::new("peer")?;

        veth(&pod, "eth0", &node, HOST_VETH)?;
        veth(&node, ENI, &peer, "eth0")?;

        wire_pod(&pod, &node, HOST_VETH, POD_IP)?;

        node.sysctl("net.ipv4.ip_forward", "1")?;
        node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", ENI])?;
        let pod_cidr = format!("{POD_IP}/32");
        node.ip(&["route", "add", &pod_cidr, "dev", HOST_VETH, "scope", "link"])?;

        peer.ip(&["addr", "add", &format!("{PEER_IP}/24"), "dev", "eth0"])?;
        peer.ip(&["route", "add", &pod_cidr, "via", &NODE_IP.to_string()])?;

        let mut dataplane =
            Dataplane::load_pinned(object, bpffs.path()).context("loading the data path")?;
        let attach_mode = node.run_in(|| -> Result<AttachMode> {
            let mode = dataplane.attach(HOST_VETH, Hook::FromPod)?;
            dataplane.attach(HOST_VETH, Hook::ToPod)?;
            dataplane.attach(ENI, Hook::FromEni)?;
            dataplane.attach(ENI, Hook::ToEni)?;
            Ok(mode)
        })?;
        Ok(Self {
            dataplane,
            attach_mode,
            pod,
            node,
            peer,
            bpffs,
        })
    }
}

/// Addresses the pod the way trunkline-cni does: `ip/32` on `eth0`, the
/// link-local gateway 169.254.1.1 as a scope-link route and the default
/// route, with a permanent neighbour entry pointing at the host veth's MAC
/// (no proxy ARP). The veth `pod:eth0` ↔ `node:host_veth` must exist.
pub fn wire_pod(pod: &Netns, node: &Netns, host_veth: &str, ip: Ipv4Addr) -> Result<()> {
    let host_mac = node.mac(host_veth)?;
    let host_mac = dataplane_common::MacAddr(host_mac).to_string();
    pod.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
    pod.ip(&["route", "add", POD_GATEWAY, "dev", "eth0", "scope", "link"])?;
    pod.ip(&["route", "add", "default", "via", POD_GATEWAY, "dev", "eth0"])?;
    pod.ip(&[
        "neigh",
        "add",
        POD_GATEWAY,
        "lladdr",
        &host_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    Ok(())
}
