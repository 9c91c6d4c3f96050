//! A node at the edge of the VPC, for SNAT end to end: the pod behind the
//! node, a router (the VPC's gateway) in front of it, and an internet host
//! behind the router. The router knows the pod IP (the VPC routes ENI
//! addresses) so that untranslated traffic would also get back; what the
//! internet host sees tells whether SNAT happened.
//!
//! ```text
//!  pod 192.168.31.170/32 ── veth-pod [node] eth0 192.168.16.10/24 ── eth0 192.168.16.1 [router]
//!                                          (primary ENI)              eth1 203.0.113.1/24 ── eth0 203.0.113.10 [inet]
//! ```
//! With `inet_link_mtu` below 1500 a hop namespace stands between the
//! router and the internet host: the narrow link has that MTU on both of
//! its ends and the internet host keeps 1500 behind the hop, so both ends
//! learn the path MTU from a router's frag-needed. (A veth whose two ends
//! differ drops, silently, every frame larger than the receiving end's
//! MTU that is not GSO: a retransmitted full-size segment would vanish.)
//!
//! With [`Plumbing::Trunkline`] the maps are written through the agent's
//! own writers (`NodeMaps`, `PodMaps` on the pins); with [`Plumbing::Legacy`] aws-node's iptables chain is
//! installed in the node namespace instead.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use dataplane_common::{
    maps::{NO_SNAT_EXCLUDED, NO_SNAT_VPC_CIDR},
    Config, EniEntry, EniRole, Hook, PodEntry, SnatMode,
};
use ipnet::Ipv4Net;
use trunkline_agent::dataplane::{Dataplane, MapOwner, NodeMaps, PodMaps};

use crate::{
    drivers::legacy::{self, LegacySnat},
    kernel::bpffs::BpffsMount,
    topology::{
        mini_node::{wire_pod, HOST_VETH, POD_IP},
        netns::{veth, Netns},
    },
};

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 16, 10);
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 16, 1);
pub const INET_GW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const INET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VPC_CIDR: ([u8; 4], u32) = ([192, 168, 0, 0], 16);

/// Which plumbing does the node's SNAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plumbing {
    Trunkline,
    /// The reference: aws-node's iptables SNAT chain (see [`crate::drivers::legacy`]).
    Legacy,
}

impl Plumbing {
    pub const fn name(self) -> &'static str {
        match self {
            Plumbing::Trunkline => "trunkline",
            Plumbing::Legacy => "legacy",
        }
    }
}

/// Knobs of one scenario.
#[derive(Clone, Copy, Debug)]
pub struct SnatOptions {
    pub plumbing: Plumbing,
    pub mode: SnatMode,
    pub port_min: u16,
    pub port_max: u16,
    /// A CIDR in `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`.
    pub excluded: Option<([u8; 4], u32)>,
    /// MTU of a link on the way to the internet host (PMTU discovery for
    /// both ends); 1500 wires the internet host straight to the router.
    pub inet_link_mtu: u32,
    /// MTU of the pod's veth (both ends). The ENI (`node:eth0`) keeps
    /// 1500: 9001 here is a pod behind an ENI that aws-node set to 1500,
    /// talking to far ends that announce an MSS of `pod_mtu - 40`.
    pub pod_mtu: u32,
}

impl Default for SnatOptions {
    fn default() -> Self {
        let c = Config::default();
        Self {
            plumbing: Plumbing::Trunkline,
            mode: SnatMode::Random,
            port_min: c.port_min,
            port_max: c.port_max,
            excluded: None,
            inet_link_mtu: 1500,
            pod_mtu: 1500,
        }
    }
}

impl SnatOptions {
    fn custom_ports(&self) -> Option<(u16, u16)> {
        let d = Config::default();
        ((self.port_min, self.port_max) != (d.port_min, d.port_max))
            .then_some((self.port_min, self.port_max))
    }
}

/// Field order = drop order: links, namespaces, then the bpffs mount.
pub struct SnatNode {
    /// Loaded and attached with [`Plumbing::Trunkline`]; `None` for legacy.
    pub dataplane: Option<Dataplane>,
    pub pod: Netns,
    pub node: Netns,
    pub router: Netns,
    /// The router behind the narrow link, when `inet_link_mtu` < 1500.
    pub narrow_hop: Option<Netns>,
    pub inet: Netns,
    pub bpffs: BpffsMount,
}

impl SnatNode {
    pub fn new(object: &[u8], opts: SnatOptions) -> Result<Self> {
        let bpffs = BpffsMount::new()?;
        let pod = Netns::new("pod")?;
        let node = Netns::new("node")?;
        let router = Netns::new("router")?;
        let inet = Netns::new("inet")?;

        veth(&pod, "eth0", &node, HOST_VETH)?;
        veth(&node, "eth0", &router, "eth0")?;

        wire_pod(&pod, &node, HOST_VETH, POD_IP)?;
        let pod_mtu = opts.pod_mtu.to_string();
        pod.ip(&["link", "set", "eth0", "mtu", &pod_mtu])?;
        node.ip(&["link", "set", HOST_VETH, "mtu", &pod_mtu])?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"])?;
        node.ip(&["route", "add", "default", "via", &ROUTER_IP.to_string()])?;
        node.ip(&[
            "route",
            "add",
            &format!("{POD_IP}/32"),
            "dev",
            HOST_VETH,
            "scope",
            "link",
        ])?;

        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.ip(&["addr", "add", &format!("{ROUTER_IP}/24"), "dev", "eth0"])?;
        let narrow_hop = wire_inet_side(&router, &inet, opts.inet_link_mtu)?;
        // With a jumbo pod, the far ends announce a jumbo MSS, as VPC hosts
        // with MTU 9001 do: only the node's 1500 ENI is smaller.
        let advmss = (opts.pod_mtu > 1500).then(|| (opts.pod_mtu - 40).to_string());
        let with_advmss = |mut args: Vec<String>| {
            if let Some(mss) = &advmss {
                args.extend(["advmss".to_string(), mss.clone()]);
            }
            args
        };
        let args = with_advmss(vec![
            "route".into(),
            "add".into(),
            format!("{POD_IP}/32"),
            "via".into(),
            NODE_IP.to_string(),
        ]);
        router.ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;

        inet.ip(&["addr", "add", &format!("{INET_IP}/24"), "dev", "eth0"])?;
        let args = with_advmss(vec![
            "route".into(),
            "add".into(),
            "default".into(),
            "via".into(),
            INET_GW.to_string(),
        ]);
        inet.ip(&args.iter().map(String::as_str).collect::<Vec<_>>())?;

        let dataplane = match opts.plumbing {
            Plumbing::Trunkline => Some(attach_trunkline(object, &opts, &pod, &node, &bpffs)?),
            Plumbing::Legacy => {
                let cidr = |(ip, len): ([u8; 4], u32)| format!("{}/{len}", Ipv4Addr::from(ip));
                let cfg = LegacySnat {
                    node_ip: NODE_IP.to_string(),
                    vpc_cidrs: vec![cidr(VPC_CIDR)],
                    excluded: opts.excluded.map(cidr).into_iter().collect(),
                    mode: opts.mode,
                    ports: opts.custom_ports(),
                };
                legacy::install_snat_chain(&node, &cfg)?;
                None
            }
        };
        Ok(Self {
            dataplane,
            pod,
            node,
            router,
            narrow_hop,
            inet,
            bpffs,
        })
    }

    /// The trunkline data path (panics for a legacy node: a test bug).
    pub fn dataplane(&self) -> &Dataplane {
        self.dataplane.as_ref().expect("a trunkline node")
    }
}

/// The router's side towards the internet host: straight (`mtu` 1500) or
/// through a hop whose link to the router has `mtu` on both ends.
fn wire_inet_side(router: &Netns, inet: &Netns, mtu: u32) -> Result<Option<Netns>> {
    if mtu >= 1500 {
        veth(router, "eth1", inet, "eth0")?;
        router.ip(&["addr", "add", &format!("{INET_GW}/24"), "dev", "eth1"])?;
        return Ok(None);
    }
    let hop = Netns::new("hop")?;
    let mtu = mtu.to_string();
    veth(router, "eth1", &hop, "wan")?;
    veth(&hop, "lan", inet, "eth0")?;
    router.ip(&["link", "set", "eth1", "mtu", &mtu])?;
    hop.ip(&["link", "set", "wan", "mtu", &mtu])?;
    router.ip(&["addr", "add", "198.51.100.1/30", "dev", "eth1"])?;
    router.ip(&["route", "add", "203.0.113.0/24", "via", "198.51.100.2"])?;
    hop.sysctl("net.ipv4.ip_forward", "1")?;
    hop.ip(&["addr", "add", "198.51.100.2/30", "dev", "wan"])?;
    hop.ip(&["addr", "add", &format!("{INET_GW}/24"), "dev", "lan"])?;
    hop.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
    Ok(Some(hop))
}

/// `NO_SNAT` as the agent writes it for this node: the VPC CIDR and the
/// excluded CIDRs (`AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`).
pub fn no_snat(excluded: impl IntoIterator<Item = Ipv4Net>) -> Vec<(Ipv4Net, u32)> {
    let vpc = Ipv4Net::new(VPC_CIDR.0.into(), VPC_CIDR.1 as u8).expect("the VPC CIDR");
    let excluded = excluded.into_iter().map(|net| (net, NO_SNAT_EXCLUDED));
    std::iter::once((vpc, NO_SNAT_VPC_CIDR))
        .chain(excluded)
        .collect()
}

/// Loads the object, writes the maps through the agent's writers (opened on
/// the pins, as the agent opens them, and closed again) and attaches the
/// programs in the node namespace.
fn attach_trunkline(
    object: &[u8],
    opts: &SnatOptions,
    pod: &Netns,
    node: &Netns,
    bpffs: &BpffsMount,
) -> Result<Dataplane> {
    let mut dataplane =
        Dataplane::load_pinned(object, bpffs.path()).context("loading the data path")?;
    let eni_ifindex = node.ifindex("eth0")?;
    let pod_entry = PodEntry {
        host_ifindex: node.ifindex(HOST_VETH)?,
        eni_ifindex,
        mac: pod.mac("eth0")?,
        host_mac: node.mac(HOST_VETH)?,
        ..Default::default()
    };
    let mut pod_maps = PodMaps::open(bpffs.path())?;
    pod_maps.put_pod(POD_IP, &pod_entry)?;
    let eni = EniEntry {
        role: EniRole::Primary as u32,
        primary_ip: NODE_IP.octets(),
        gateway_ip: ROUTER_IP.octets(),
        mac: node.mac("eth0")?,
        ..Default::default()
    };
    let mut node_maps = NodeMaps::open(bpffs.path())?;
    node_maps.put_eni(eni_ifindex, &eni)?;
    let excluded = opts
        .excluded
        .map(|(ip, len)| Ipv4Net::new(ip.into(), len as u8));
    node_maps.sync_no_snat(&no_snat(excluded.transpose()?))?;
    let cfg = Config {
        node_ip: NODE_IP.octets(),
        primary_eni_ifindex: eni_ifindex,
        port_min: opts.port_min,
        port_max: opts.port_max,
        snat_mode: opts.mode as u8,
        ..Config::default()
    };
    node_maps.put_config(&cfg)?;
    node.run_in(|| -> Result<()> {
        dataplane.attach(HOST_VETH, Hook::FromPod)?;
        dataplane.attach(HOST_VETH, Hook::ToPod)?;
        dataplane.attach("eth0", Hook::FromEni)?;
        dataplane.attach("eth0", Hook::ToEni)?;
        Ok(())
    })?;
    Ok(dataplane)
}
