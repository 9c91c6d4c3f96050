//! A simulated cluster: one VPC ("vpc": the node subnet 192.168.0.0/19 as a
//! bridge, gateway 192.168.0.1, the "peer" and "inet" hosts of
//! [`crate::topology::sim_node`]) with several nodes on it, each with its
//! own primary (eth0) and secondary (eth1) ENI, and each running either
//! trunkline (the real agent and CNI plugin) or aws-node's plumbing (the
//! SNAT chain, connmark, ip rules and per-ENI tables of
//! [`crate::drivers::legacy`]). A rolling migration is a cluster where some
//! nodes run one and some the other.
//!
//! The VPC behaves as EC2's does for every node: proxy ARP for the subnet,
//! a static neighbour per owned IP (pod IP → its ENI's MAC), and a source
//! check per ENI port that drops (and counts) frames whose source that ENI
//! does not own. kube-proxy's part of each node is in [`kube_proxy`].
//!
//! Drop order: the nodes (each: agent killed, then its namespace, then its
//! bpffs mount and dir), then the peers and the VPC, then the dir. Pods are
//! the caller's and must be dropped first (locals declared after the
//! cluster are).

use std::{cell::Cell, net::Ipv4Addr};

use anyhow::{bail, ensure, Context, Result};
use dataplane_common::SnatMode;

use crate::{
    drivers::{
        agent_proc::{AgentArgs, AgentProc},
        legacy::{self, LegacySnat},
    },
    kernel::bpffs::BpffsMount,
    topology::{
        netns::{veth, Netns},
        sim_node::{eni_section, node_section, vpc_peers, vpc_router, TempDir},
        vpc_fabric::{allow_source, deliver_to, source_check_counters, source_check_rules, CniPod},
    },
};

/// The VPC CIDRs every node is configured with (trunkline's node file,
/// aws-node's SNAT exclusions and connmark).
pub const VPC_CIDRS: [&str; 2] = ["192.168.0.0/16", "100.64.0.0/16"];
/// The subnet gateway, every node's default route.
pub const GATEWAY: &str = "192.168.0.1";
/// The most nodes a cluster may have (names and address ranges are
/// computed from the node number and stay distinct up to here).
pub const MAX_NODES: u8 = 8;
/// The most pods per ENI (the pool a trunkline node's file lists).
pub const MAX_PODS_PER_ENI: u8 = 32;

/// EC2 answers every ARP request itself (here: proxy ARP on `br0`); it
/// never passes one from an ENI to another. Without this, a node asking
/// for another node's IP would also be answered by that node's secondary
/// ENI (Linux answers for any local address on any link), and traffic to
/// the node's IP would arrive on the wrong ENI.
const NO_ARP_BETWEEN_ENIS: &str = "table bridge vpc_arp {\n  chain between_enis {\n    type filter hook forward priority 0; policy accept;\n    ether type arp counter drop comment \"the VPC answers ARP\"\n  }\n}\n";

/// Which of a node's ENIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eni {
    Primary,
    Secondary,
}

impl Eni {
    pub const ALL: [Eni; 2] = [Eni::Primary, Eni::Secondary];

    /// The link's name in the node namespace.
    pub fn link(self) -> &'static str {
        match self {
            Eni::Primary => "eth0",
            Eni::Secondary => "eth1",
        }
    }

    /// The role in trunkline's node file.
    pub fn role(self) -> &'static str {
        match self {
            Eni::Primary => "primary",
            Eni::Secondary => "secondary",
        }
    }

    fn index(self) -> usize {
        match self {
            Eni::Primary => 0,
            Eni::Secondary => 1,
        }
    }
}

/// Where node `number` (1-based) sits in the VPC: its ENIs' MACs and IPs,
/// its pods' IPs, its bridge ports. Node 1 has the single simulated node's
/// addresses (eth0 192.168.31.166, pods 192.168.31.170..; eth1
/// 192.168.30.10, pods 192.168.30.20..); node n's ENIs are two /24s lower
/// per step (node 2: 192.168.29.x and .28.x), so no two nodes overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeShape {
    number: u8,
}

impl NodeShape {
    pub fn new(number: u8) -> Result<Self> {
        ensure!(
            (1..=MAX_NODES).contains(&number),
            "node number {number} outside 1..={MAX_NODES}"
        );
        Ok(Self { number })
    }

    pub fn number(self) -> u8 {
        self.number
    }

    fn third_octet(self, eni: Eni) -> u8 {
        let base = 33 - 2 * self.number;
        match eni {
            Eni::Primary => base,
            Eni::Secondary => base - 1,
        }
    }

    /// The ENI's MAC (node 1's are the single simulated node's).
    pub fn mac(self, eni: Eni) -> String {
        let last = match eni {
            Eni::Primary => "c9",
            Eni::Secondary => "ca",
        };
        format!("02:a5:ee:3d:{:02x}:{last}", 0x49 + self.number)
    }

    /// The ENI's own (primary) IP.
    pub fn eni_ip(self, eni: Eni) -> Ipv4Addr {
        let host = match eni {
            Eni::Primary => 166,
            Eni::Secondary => 10,
        };
        Ipv4Addr::new(192, 168, self.third_octet(eni), host)
    }

    /// The node's IP: its primary ENI's.
    pub fn node_ip(self) -> Ipv4Addr {
        self.eni_ip(Eni::Primary)
    }

    /// The first `count` pod IPs the ENI may give (at most
    /// [`MAX_PODS_PER_ENI`]).
    pub fn pod_ips(self, eni: Eni, count: u8) -> Vec<Ipv4Addr> {
        let first = match eni {
            Eni::Primary => 170,
            Eni::Secondary => 20,
        };
        (0..count.min(MAX_PODS_PER_ENI))
            .map(|i| Ipv4Addr::new(192, 168, self.third_octet(eni), first + i))
            .collect()
    }

    /// The ENI's port on the VPC bridge (≤ 15 characters).
    pub fn port(self, eni: Eni) -> String {
        format!("n{}-{}", self.number, eni.link())
    }

    /// The ENI's key in the VPC's source check (an nft identifier).
    pub fn key(self, eni: Eni) -> String {
        format!("n{}_{}", self.number, eni.link())
    }

    /// trunkline's node file for this node, with the two ENIs' pools.
    pub fn node_file(self, pools: [&[Ipv4Addr]; 2]) -> String {
        let mut s = node_section(self.node_ip());
        for eni in Eni::ALL {
            s.push_str(&eni_section(
                eni.link(),
                eni.role(),
                &self.mac(eni),
                self.eni_ip(eni),
                pools[eni.index()],
            ));
        }
        s
    }
}

/// What plumbs a node's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plumbing {
    /// The real trunkline agent (local mode) and CNI plugin.
    Trunkline,
    /// aws-node's host plumbing (the reference).
    AwsNode,
}

impl Plumbing {
    pub fn name(self) -> &'static str {
        match self {
            Plumbing::Trunkline => "trunkline",
            Plumbing::AwsNode => "aws-node",
        }
    }
}

/// What one node of a cluster is built with: its plumbing and how many
/// pods each ENI will get (a trunkline node's pools are exactly that, so
/// the agent, which fills eth0's pool first, puts the pods added after
/// eth0's on eth1).
#[derive(Clone, Copy, Debug)]
pub struct NodePlan {
    pub plumbing: Plumbing,
    pub pods: [u8; 2],
}

/// One node: its namespace, and for trunkline its agent and bpffs.
pub struct ClusterNode {
    agent: Option<AgentProc>,
    pub ns: Netns,
    pub shape: NodeShape,
    pub plumbing: Plumbing,
    bpffs: Option<BpffsMount>,
    dir: TempDir,
    pools: [Vec<Ipv4Addr>; 2],
    /// Pods added so far per ENI (aws-node's IPAM stand-in; host veth names).
    added: [Cell<usize>; 2],
}

impl ClusterNode {
    fn build(vpc: &Netns, shape: NodeShape, plan: NodePlan) -> Result<Self> {
        let dir = TempDir::new(&format!("node{}", shape.number))?;
        let ns = Netns::new(&format!("node{}", shape.number))?;
        for eni in Eni::ALL {
            let port = shape.port(eni);
            veth(&ns, eni.link(), vpc, &port)?;
            ns.ip(&["link", "set", eni.link(), "address", &shape.mac(eni)])?;
            vpc.ip(&["link", "set", &port, "master", "br0"])?;
        }
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/19", shape.node_ip()),
            "dev",
            "eth0",
        ])?;
        let pools = Eni::ALL.map(|e| shape.pod_ips(e, plan.pods[e.index()]));
        let mut node = Self {
            agent: None,
            ns,
            shape,
            plumbing: plan.plumbing,
            bpffs: None,
            dir,
            pools,
            added: [Cell::new(0), Cell::new(0)],
        };
        match plan.plumbing {
            Plumbing::Trunkline => node.start_agent()?,
            Plumbing::AwsNode => node.install_aws_node()?,
        }
        node.ns
            .ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"])?;
        // A Kubernetes node forwards (kube-proxy's NodePorts and services).
        node.ns.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(node)
    }

    fn start_agent(&mut self) -> Result<()> {
        let bpffs = BpffsMount::new()?;
        let file = self.dir.path().join("node.toml");
        let pools = [self.pools[0].as_slice(), self.pools[1].as_slice()];
        std::fs::write(&file, self.shape.node_file(pools))
            .with_context(|| format!("writing {}", file.display()))?;
        let args = AgentArgs::local(&file)
            .bpf_root(bpffs.path())
            .socket(self.socket())
            .state_dir(self.dir.path().join("state"))
            .metrics_addr("127.0.0.1:61678")
            .introspection_addr("127.0.0.1:61679")
            .ebpf_object(crate::kernel::object::path())
            .ip_cooldown(0);
        let log = self.dir.path().join("agent.log");
        self.agent = Some(AgentProc::start(self.ns.name(), &args, &[], &log)?);
        self.bpffs = Some(bpffs);
        Ok(())
    }

    fn install_aws_node(&self) -> Result<()> {
        let snat = LegacySnat {
            node_ip: self.shape.node_ip().to_string(),
            vpc_cidrs: VPC_CIDRS.iter().map(|c| c.to_string()).collect(),
            excluded: vec![],
            mode: SnatMode::Random,
            ports: None,
        };
        legacy::install_snat_chain(&self.ns, &snat)?;
        legacy::install_connmark(&self.ns, &VPC_CIDRS)
    }

    /// The agent's CNI socket (trunkline nodes).
    pub fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// The agent's private bpffs (trunkline nodes).
    pub fn bpf_root(&self) -> Option<&std::path::Path> {
        self.bpffs.as_ref().map(BpffsMount::path)
    }

    pub fn agent_log(&self) -> String {
        self.agent
            .as_ref()
            .map(AgentProc::log_text)
            .unwrap_or_default()
    }

    /// Returns once the node treats `ip` (just added to it) as local: at
    /// once under aws-node's plumbing (netfilter reads the local table per
    /// packet), after trunkline's agent has logged taking it.
    pub fn await_node_local(&self, ip: Ipv4Addr) -> Result<()> {
        if self.plumbing == Plumbing::AwsNode {
            return Ok(());
        }
        let want = format!("{ip}/32");
        let within = crate::drivers::traffic::timeout();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if self
                .agent_log()
                .lines()
                .any(|l| l.contains("node-local addresses") && l.contains(&want))
            {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!(
            "node {}: the agent did not take {want} as node-local within {within:?}; its log:\n{}",
            self.shape.number,
            self.agent_log()
        )
    }

    /// `trunkline-agent inspect <what> --json` on this node's pins.
    pub fn inspect(&self, what: &str) -> Result<serde_json::Value> {
        let root = self
            .bpf_root()
            .with_context(|| format!("node {} runs no agent", self.shape.number))?;
        let out = std::process::Command::new(crate::drivers::binaries::agent())
            .args(["inspect", what, "--json", "--bpf-root"])
            .arg(root)
            .output()
            .context("running trunkline-agent inspect")?;
        ensure!(
            out.status.success(),
            "inspect {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("inspect output is not JSON")
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill();
        }
    }
}

/// A pod's namespace and how it was wired.
enum PodWiring {
    /// By trunkline-cni (DEL on drop, while the agent still runs).
    Cni(CniPod),
    /// By aws-node's plumbing (its veth goes with the namespace).
    AwsNode(Netns),
}

/// A pod on a node of the cluster.
pub struct ClusterPod {
    pub ip: Ipv4Addr,
    pub node: u8,
    pub eni: Eni,
    wiring: PodWiring,
}

impl ClusterPod {
    pub fn ns(&self) -> &Netns {
        match &self.wiring {
            PodWiring::Cni(p) => &p.ns,
            PodWiring::AwsNode(ns) => ns,
        }
    }
}

pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    /// Another VPC subnet (192.168.64.10), routed by "vpc".
    pub peer: Netns,
    /// Outside the VPC CIDRs (203.0.113.10), routed by "vpc".
    pub inet: Netns,
    pub vpc: Netns,
    dir: TempDir,
}

impl Cluster {
    /// The VPC, its peers and one node per plan (node numbers 1, 2, ...).
    pub fn build(plans: &[NodePlan]) -> Result<Self> {
        ensure!(
            !plans.is_empty() && plans.len() <= MAX_NODES as usize,
            "a cluster has 1..={MAX_NODES} nodes, not {}",
            plans.len()
        );
        let dir = TempDir::new("cluster")?;
        let vpc = vpc_router()?;
        // EC2's router answers ARP for the whole subnet and never redirects.
        vpc.sysctl("net.ipv4.conf.br0.proxy_arp", "1")?;
        vpc.sysctl("net.ipv4.conf.br0.proxy_arp_pvlan", "1")?;
        vpc.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
        vpc.sysctl("net.ipv4.conf.br0.send_redirects", "0")?;
        let (peer, inet) = vpc_peers(&vpc)?;
        vpc.sysctl("net.ipv4.ip_forward", "1")?;
        let shapes = (1..=plans.len() as u8)
            .map(NodeShape::new)
            .collect::<Result<Vec<_>>>()?;
        let keys: Vec<(String, String)> = shapes
            .iter()
            .flat_map(|s| Eni::ALL.map(|e| (s.key(e), s.port(e))))
            .collect();
        let ports: Vec<(&str, &str)> = keys.iter().map(|(k, p)| (k.as_str(), p.as_str())).collect();
        let rules = dir.path().join("vpc.nft");
        std::fs::write(&rules, source_check_rules(&ports) + NO_ARP_BETWEEN_ENIS)?;
        vpc.exec_ok("nft", &["-f", &rules.to_string_lossy()])?;
        let mut nodes = Vec::new();
        for (shape, plan) in shapes.into_iter().zip(plans) {
            nodes.push(ClusterNode::build(&vpc, shape, *plan)?);
        }
        let me = Self {
            nodes,
            peer,
            inet,
            vpc,
            dir,
        };
        for node in &me.nodes {
            for eni in Eni::ALL {
                me.own(node.shape, eni, node.shape.eni_ip(eni))?;
            }
        }
        Ok(me)
    }

    /// Node `number` (1-based).
    pub fn node(&self, number: u8) -> Result<&ClusterNode> {
        self.nodes
            .get(usize::from(number).wrapping_sub(1))
            .with_context(|| format!("no node {number} in a cluster of {}", self.nodes.len()))
    }

    /// The ENI owns `ip` in the VPC's view: its frames may carry it and the
    /// VPC delivers it there.
    pub fn own(&self, shape: NodeShape, eni: Eni, ip: Ipv4Addr) -> Result<()> {
        allow_source(&self.vpc, &shape.key(eni), ip)?;
        deliver_to(&self.vpc, ip, &shape.mac(eni))
    }

    /// A pod on node `number`'s ENI `eni`, wired by that node's plumbing,
    /// and owned by that ENI in the VPC. On a trunkline node the agent
    /// picks the IP: add a node's primary-ENI pods before its
    /// secondary-ENI pods (see [`NodePlan`]); a pod that lands elsewhere
    /// is an error.
    pub fn add_pod(&self, number: u8, eni: Eni, name: &str) -> Result<ClusterPod> {
        let node = self.node(number)?;
        let n = node.added[eni.index()].get();
        let (ip, wiring) = match node.plumbing {
            Plumbing::Trunkline => {
                let p = CniPod::add_in(&node.ns, &node.socket(), "default", name, &|| {
                    node.agent_log()
                })?;
                ensure!(
                    node.pools[eni.index()].contains(&p.ip),
                    "node {number}: pod {name} got {}, not an IP of {}",
                    p.ip,
                    eni.link()
                );
                (p.ip, PodWiring::Cni(p))
            }
            Plumbing::AwsNode => {
                let ip = *node.pools[eni.index()].get(n).with_context(|| {
                    format!("node {number}: {} has {n} pods, its plan's all", eni.link())
                })?;
                let ns = Netns::new("pod")?;
                let table = match eni {
                    Eni::Primary => None,
                    Eni::Secondary => Some(("eth1", 2)),
                };
                let veth = format!("eni{}{}{n}", number, eni.link());
                legacy::wire_pod(&node.ns, &ns, &veth, ip, table)?;
                (ip, PodWiring::AwsNode(ns))
            }
        };
        node.added[eni.index()].set(n + 1);
        self.own(node.shape, eni, ip)?;
        Ok(ClusterPod {
            ip,
            node: number,
            eni,
            wiring,
        })
    }

    /// Packets the VPC's source check passed and dropped on an ENI's port.
    pub fn source_check(&self, shape: NodeShape, eni: Eni) -> Result<(u64, u64)> {
        source_check_counters(&self.vpc, &shape.key(eni))
    }

    /// Drops of the source check on every port so far (a packet that left
    /// a node by an ENI that does not own its source).
    pub fn source_check_drops(&self) -> Result<u64> {
        let mut total = 0;
        for node in &self.nodes {
            for eni in Eni::ALL {
                total += self.source_check(node.shape, eni)?.1;
            }
        }
        Ok(total)
    }

    /// A scratch file path in the cluster's dir.
    pub fn scratch(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(crate::unique(name))
    }
}

impl Cluster {
    /// kube-proxy on every node, in `mode`, with `services`.
    pub fn install_kube_proxy(
        &self,
        mode: kube_proxy::Mode,
        services: &kube_proxy::Services,
    ) -> Result<()> {
        for node in &self.nodes {
            kube_proxy::install(&node.ns, &self.scratch("kube-proxy"), mode, services)
                .with_context(|| format!("kube-proxy ({mode:?}) on node {}", node.shape.number))?;
        }
        Ok(())
    }

    /// Takes kube-proxy's `mode` rules for `services` off every node again.
    pub fn remove_kube_proxy(
        &self,
        mode: kube_proxy::Mode,
        services: &kube_proxy::Services,
    ) -> Result<()> {
        for node in &self.nodes {
            kube_proxy::remove(&node.ns, &self.scratch("kube-proxy"), mode, services)?;
        }
        Ok(())
    }
}

/// kube-proxy's part of a node, in its iptables mode (real `iptables -t
/// nat` rules laid out as kube-proxy lays them: the `KUBE-SERVICES` jump
/// first in PREROUTING and OUTPUT, per-Service and per-endpoint chains,
/// `KUBE-MARK-MASQ` and the MASQUERADE in `KUBE-POSTROUTING`), its
/// nftables mode (the same DNATs and masquerade in one `ip` table, its
/// prerouting chain ahead of aws-node's nat chains as kube-proxy's is) or
/// its IPVS mode (the kernel's IP virtual server: the ClusterIPs on the
/// `kube-ipvs0` dummy link, `ipvsadm` services with masquerading real
/// servers, kube-proxy's ipsets and its nat rules that mark for
/// masquerade; see [`ipvs_support`]).
/// Only what the tests' Services need: one endpoint each, TCP NodePorts.
pub mod kube_proxy {
    use std::{
        net::{Ipv4Addr, SocketAddrV4},
        path::Path,
    };

    use anyhow::{ensure, Context, Result};

    use crate::topology::netns::Netns;

    /// kube-proxy's `--proxy-mode`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mode {
        Iptables,
        Nftables,
        Ipvs,
    }

    impl Mode {
        pub fn name(self) -> &'static str {
            match self {
                Mode::Iptables => "iptables",
                Mode::Nftables => "nftables",
                Mode::Ipvs => "ipvs",
            }
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Proto {
        Tcp,
        Udp,
    }

    impl Proto {
        fn name(self) -> &'static str {
            match self {
                Proto::Tcp => "tcp",
                Proto::Udp => "udp",
            }
        }
    }

    /// A NodePort Service's `externalTrafficPolicy`: `Local` keeps the
    /// client's address (the endpoint is on the node); `Cluster` marks the
    /// connection for masquerade to the node's address.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum TrafficPolicy {
        Local,
        Cluster,
    }

    /// A ClusterIP Service port with one endpoint. `name` is upper case,
    /// letters, digits and `-` (it names chains).
    #[derive(Clone, Debug)]
    pub struct ClusterIp {
        pub name: String,
        pub vip: SocketAddrV4,
        pub proto: Proto,
        pub endpoint: SocketAddrV4,
    }

    /// A TCP NodePort (on every node's local addresses) with one endpoint.
    #[derive(Clone, Debug)]
    pub struct NodePort {
        pub name: String,
        pub port: u16,
        pub endpoint: SocketAddrV4,
        pub policy: TrafficPolicy,
    }

    #[derive(Clone, Debug, Default)]
    pub struct Services {
        pub cluster_ips: Vec<ClusterIp>,
        pub node_ports: Vec<NodePort>,
    }

    const MASQ_MARK: &str = "0x4000";
    const PORTALS: &str = "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES";
    const POSTROUTING: &str =
        "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING";
    const NFT_TABLE: &str = "kube-proxy-like";

    fn chains(s: &Services) -> Vec<String> {
        let mut v: Vec<String> = [
            "KUBE-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
        ]
        .map(String::from)
        .to_vec();
        for c in &s.cluster_ips {
            v.push(format!("KUBE-SVC-{}", c.name));
            v.push(format!("KUBE-SEP-{}", c.name));
        }
        for n in &s.node_ports {
            v.push(format!("KUBE-EXT-{}", n.name));
            v.push(format!("KUBE-SEP-{}", n.name));
        }
        v
    }

    /// The start of kube-proxy's nat table in either mode that uses
    /// iptables: its `chains`, the `KUBE-SERVICES` jumps first in
    /// PREROUTING and OUTPUT, the `KUBE-POSTROUTING` jump and the mark.
    fn nat_head(chains: impl IntoIterator<Item = String>) -> String {
        let mut r = String::from("*nat\n");
        for c in chains {
            r.push_str(&format!(":{c} - [0:0]\n"));
        }
        r.push_str(&format!(
            "-I PREROUTING 1 {PORTALS}\n-I OUTPUT 1 {PORTALS}\n"
        ));
        r.push_str(&format!("-I POSTROUTING 1 {POSTROUTING}\n"));
        r.push_str(&format!(
            "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}\n"
        ));
        r
    }

    /// `KUBE-POSTROUTING`'s masquerade of marked packets (the mark cleared).
    fn masquerade_marked() -> String {
        format!(
            "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n\
             -A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}\n\
             -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n"
        )
    }

    /// The `iptables-restore --noflush` input kube-proxy's iptables mode
    /// amounts to for `s`.
    pub fn iptables_rules(s: &Services) -> String {
        let mut r = nat_head(chains(s));
        r.push_str(&masquerade_marked());
        for c in &s.cluster_ips {
            let (p, n, vip, ep) = (c.proto.name(), &c.name, c.vip, c.endpoint);
            r.push_str(&format!(
                "-A KUBE-SERVICES -d {}/32 -p {p} -m comment --comment \"{n} cluster IP\" -m {p} --dport {} -j KUBE-SVC-{n}\n",
                vip.ip(),
                vip.port()
            ));
            r.push_str(&format!("-A KUBE-SVC-{n} -j KUBE-SEP-{n}\n"));
            r.push_str(&format!(
                "-A KUBE-SEP-{n} -s {}/32 -j KUBE-MARK-MASQ\n",
                ep.ip()
            ));
            r.push_str(&format!(
                "-A KUBE-SEP-{n} -p {p} -m {p} -j DNAT --to-destination {ep}\n"
            ));
        }
        for np in &s.node_ports {
            let n = &np.name;
            r.push_str(&format!(
                "-A KUBE-NODEPORTS -p tcp -m comment --comment \"{n}\" -m tcp --dport {} -j KUBE-EXT-{n}\n",
                np.port
            ));
            if np.policy == TrafficPolicy::Cluster {
                r.push_str(&format!("-A KUBE-EXT-{n} -j KUBE-MARK-MASQ\n"));
            }
            r.push_str(&format!("-A KUBE-EXT-{n} -j KUBE-SEP-{n}\n"));
            r.push_str(&format!(
                "-A KUBE-SEP-{n} -p tcp -m tcp -j DNAT --to-destination {}\n",
                np.endpoint
            ));
        }
        // Last, as kube-proxy has it: NodePorts on the node's own addresses.
        r.push_str("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
        r.push_str("COMMIT\n");
        r
    }

    /// The `nft -f` input of the nftables-mode stand-in for `s`.
    pub fn nft_rules(s: &Services) -> String {
        let mut r = format!("table ip {NFT_TABLE} {{\n");
        r.push_str("  chain pre {\n    type nat hook prerouting priority -110; policy accept;\n    jump services\n  }\n");
        r.push_str("  chain out {\n    type nat hook output priority -110; policy accept;\n    jump services\n  }\n");
        r.push_str("  chain post {\n    type nat hook postrouting priority 100; policy accept;\n    jump masquerading\n  }\n");
        r.push_str(&format!(
            "  chain mark-for-masquerade {{\n    mark set mark or {MASQ_MARK}\n  }}\n"
        ));
        r.push_str(&format!(
            "  chain masquerading {{\n    mark and {MASQ_MARK} == 0 return\n    mark set mark xor {MASQ_MARK}\n    masquerade fully-random\n  }}\n"
        ));
        r.push_str("  chain services {\n");
        for c in &s.cluster_ips {
            let (p, vip, ep) = (c.proto.name(), c.vip, c.endpoint);
            r.push_str(&format!(
                "    ip saddr {} ip daddr {} {p} dport {} jump mark-for-masquerade\n",
                ep.ip(),
                vip.ip(),
                vip.port()
            ));
            r.push_str(&format!(
                "    ip daddr {} {p} dport {} dnat to {ep} comment \"{}\"\n",
                vip.ip(),
                vip.port(),
                c.name
            ));
        }
        r.push_str("    fib daddr type local jump nodeports\n  }\n  chain nodeports {\n");
        for np in &s.node_ports {
            if np.policy == TrafficPolicy::Cluster {
                r.push_str(&format!(
                    "    tcp dport {} jump mark-for-masquerade\n",
                    np.port
                ));
            }
            r.push_str(&format!(
                "    tcp dport {} dnat to {} comment \"{}\"\n",
                np.port, np.endpoint, np.name
            ));
        }
        r.push_str("  }\n}\n");
        r
    }

    /// The variable `cargo xtask vm-test` sets in its guests: the booted
    /// kernel package's module tree (for `modprobe -d`). Set, the test runs
    /// in the VM, whose kernels have IP_VS: IPVS rows may not be skipped.
    pub const VM_MODULES_ENV: &str = "TRUNKLINE_VM_MODULES";

    /// The dummy link kube-proxy's IPVS mode binds every ClusterIP to.
    const IPVS_LINK: &str = "kube-ipvs0";

    /// kube-proxy's ipsets for IPVS mode that the tests' Services fill:
    /// (name, type).
    const IPSETS: [(&str, &str); 4] = [
        ("KUBE-CLUSTER-IP", "hash:ip,port"),
        ("KUBE-LOOP-BACK", "hash:ip,port,ip"),
        ("KUBE-NODE-PORT-TCP", "bitmap:port range 0-65535"),
        ("KUBE-NODE-PORT-LOCAL-TCP", "bitmap:port range 0-65535"),
    ];

    /// The nat chains of IPVS mode.
    const IPVS_CHAINS: [&str; 4] = [
        "KUBE-SERVICES",
        "KUBE-NODE-PORT",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ];

    /// Whether this kernel runs IPVS-mode kube-proxy: loads `ip_vs` and
    /// `dummy` (from [`VM_MODULES_ENV`]'s module tree where it is set),
    /// then looks for `/proc/net/ip_vs`, the dummy driver, `ipvsadm` and
    /// `ipset`. `Err`: why not, in one line.
    pub fn ipvs_support() -> std::result::Result<(), String> {
        let dir = std::env::var(VM_MODULES_ENV).ok();
        let mut modprobe_errors = Vec::new();
        for module in ["ip_vs", "dummy"] {
            let mut cmd = std::process::Command::new("modprobe");
            if let Some(d) = &dir {
                cmd.args(["-d", d]);
            }
            match cmd.arg(module).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => modprobe_errors.push(format!(
                    "modprobe {module}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => modprobe_errors.push(format!("modprobe {module}: {e}")),
            }
        }
        let mut missing = Vec::new();
        if !Path::new("/proc/net/ip_vs").exists() {
            missing.push("IP_VS (no /proc/net/ip_vs)");
        }
        // Built in or loaded, the driver has its parameters here.
        if !Path::new("/sys/module/dummy").exists() {
            missing.push("dummy links (no /sys/module/dummy)");
        }
        for tool in ["ipvsadm", "ipset"] {
            let found = std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool} >/dev/null 2>&1")])
                .status()
                .map(|st| st.success())
                .unwrap_or(false);
            if !found {
                missing.push(if tool == "ipvsadm" {
                    "ipvsadm (Debian package ipvsadm)"
                } else {
                    "ipset (Debian package ipset)"
                });
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let config = std::process::Command::new("sh")
            .args([
                "-c",
                "zcat /proc/config.gz 2>/dev/null | grep -E '^(# )?CONFIG_(IP_VS|DUMMY)[ =]'",
            ])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let mut why = format!("no {}", missing.join(", no "));
        if !config.is_empty() {
            why.push_str(&format!("; kernel config: {config}"));
        }
        if config.is_empty() && !modprobe_errors.is_empty() {
            why.push_str(&format!("; {}", modprobe_errors.join("; ")));
        }
        Err(why)
    }

    /// The `ipset restore` input of kube-proxy's IPVS-mode sets for `s`:
    /// every ClusterIP port (`KUBE-CLUSTER-IP`), every endpoint that could
    /// reach itself through its Service (`KUBE-LOOP-BACK`, hairpin), the
    /// TCP NodePorts and those with `externalTrafficPolicy: Local`.
    pub fn ipset_rules(s: &Services) -> String {
        let mut r = String::new();
        for (name, kind) in IPSETS {
            let family = if kind.starts_with("hash:") {
                " family inet hashsize 1024 maxelem 65536"
            } else {
                ""
            };
            r.push_str(&format!("create {name} {kind}{family}\n"));
        }
        for c in &s.cluster_ips {
            let (p, vip, ep) = (c.proto.name(), c.vip, c.endpoint);
            r.push_str(&format!(
                "add KUBE-CLUSTER-IP {},{p}:{}\n",
                vip.ip(),
                vip.port()
            ));
            r.push_str(&format!(
                "add KUBE-LOOP-BACK {},{p}:{},{}\n",
                ep.ip(),
                ep.port(),
                ep.ip()
            ));
        }
        for np in &s.node_ports {
            let ep = np.endpoint;
            r.push_str(&format!("add KUBE-NODE-PORT-TCP {}\n", np.port));
            if np.policy == TrafficPolicy::Local {
                r.push_str(&format!("add KUBE-NODE-PORT-LOCAL-TCP {}\n", np.port));
            }
            r.push_str(&format!(
                "add KUBE-LOOP-BACK {},tcp:{},{}\n",
                ep.ip(),
                ep.port(),
                ep.ip()
            ));
        }
        r
    }

    /// The `iptables-restore --noflush` input of IPVS mode: IPVS itself
    /// translates (in LOCAL_IN, the ClusterIPs being local on
    /// `kube-ipvs0`); these rules only mark what must be masqueraded and
    /// masquerade it, as kube-proxy's do. ClusterIP traffic is marked only
    /// when its source is a ClusterIP itself (`src,dst`: kube-proxy's rule
    /// without a cluster CIDR, as EKS configures it), so a pod keeps its
    /// address to a Service; NodePorts are marked unless `Local`.
    pub fn ipvs_iptables_rules() -> String {
        let mut r = nat_head(IPVS_CHAINS.map(String::from));
        r.push_str("-A KUBE-POSTROUTING -m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose\" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE\n");
        r.push_str(&masquerade_marked());
        r.push_str("-A KUBE-SERVICES -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ\n");
        r.push_str("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT\n");
        r.push_str("-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\n");
        r.push_str("-A KUBE-NODE-PORT -p tcp -m comment --comment \"Kubernetes nodeport TCP port with externalTrafficPolicy=local\" -m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN\n");
        r.push_str("-A KUBE-NODE-PORT -p tcp -m comment --comment \"Kubernetes nodeport TCP port for masquerade purpose\" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ\n");
        r.push_str("COMMIT\n");
        r
    }

    /// The `ipvsadm -R` input for `s`: a round-robin virtual service per
    /// ClusterIP port and per NodePort on each of `node_addrs`, its
    /// endpoint a masquerading (`-m`, NAT) real server.
    pub fn ipvsadm_rules(s: &Services, node_addrs: &[Ipv4Addr]) -> String {
        let mut r = String::new();
        let mut service = |flag: &str, vip: SocketAddrV4, ep: SocketAddrV4| {
            r.push_str(&format!("-A {flag} {vip} -s rr\n"));
            r.push_str(&format!("-a {flag} {vip} -r {ep} -m -w 1\n"));
        };
        for c in &s.cluster_ips {
            let flag = match c.proto {
                Proto::Tcp => "-t",
                Proto::Udp => "-u",
            };
            service(flag, c.vip, c.endpoint);
        }
        for np in &s.node_ports {
            for addr in node_addrs {
                service("-t", SocketAddrV4::new(*addr, np.port), np.endpoint);
            }
        }
        r
    }

    /// The node's own IPv4 addresses (global scope, off `kube-ipvs0`):
    /// where IPVS mode puts the NodePorts.
    fn node_addresses(node: &Netns) -> Result<Vec<Ipv4Addr>> {
        let out = node.exec_ok("ip", &["-4", "-o", "addr", "show", "scope", "global"])?;
        let mut addrs = Vec::new();
        for line in out.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(link) = words.get(1) else { continue };
            if link.trim_end_matches(':') == IPVS_LINK {
                continue;
            }
            let Some(pos) = words.iter().position(|w| *w == "inet") else {
                continue;
            };
            let Some(cidr) = words.get(pos + 1) else {
                continue;
            };
            let ip = cidr.split('/').next().unwrap_or(cidr);
            addrs.push(
                ip.parse()
                    .with_context(|| format!("{}: address {cidr:?} in {line:?}", node.name()))?,
            );
        }
        ensure!(!addrs.is_empty(), "{}: no global IPv4 address", node.name());
        Ok(addrs)
    }

    fn install_ipvs(node: &Netns, scratch: &Path, s: &Services) -> Result<()> {
        let file = scratch.to_string_lossy();
        let addrs = node_addresses(node)?;
        // IPVS connections get conntrack entries, so that the nat rules
        // (masquerade) and aws-node's connmark see them.
        node.sysctl("net.ipv4.vs.conntrack", "1")?;
        // Down and NOARP (a dummy's default): the addresses are local
        // (their routes in table local) but never answered for.
        node.ip(&["link", "add", IPVS_LINK, "type", "dummy"])?;
        let mut vips: Vec<Ipv4Addr> = s.cluster_ips.iter().map(|c| *c.vip.ip()).collect();
        vips.sort();
        vips.dedup();
        for vip in vips {
            node.ip(&["addr", "add", &format!("{vip}/32"), "dev", IPVS_LINK])?;
        }
        std::fs::write(scratch, ipset_rules(s))
            .with_context(|| format!("writing {}", scratch.display()))?;
        node.exec_ok("ipset", &["restore", "-file", &file])?;
        std::fs::write(scratch, ipvsadm_rules(s, &addrs))
            .with_context(|| format!("writing {}", scratch.display()))?;
        node.exec_ok("sh", &["-c", "ipvsadm -R < \"$0\"", &file])?;
        std::fs::write(scratch, ipvs_iptables_rules())
            .with_context(|| format!("writing {}", scratch.display()))?;
        node.exec_ok("iptables-restore", &["--noflush", &file])?;
        Ok(())
    }

    /// `ipset destroy`, retried while the set is still referenced: the
    /// iptables (nf_tables) rules that matched it release it from a
    /// workqueue after their deletion committed.
    fn destroy_ipset(node: &Netns, name: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + crate::drivers::traffic::timeout();
        loop {
            let out = node.exec("ipset", &["destroy", name])?;
            if out.status.success() {
                return Ok(());
            }
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(
                err.contains("in use") && std::time::Instant::now() < deadline,
                "{}: ipset destroy {name}: {}",
                node.name(),
                err.trim()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn remove_ipvs(node: &Netns, scratch: &Path) -> Result<()> {
        let mut r = format!(
            "*nat\n-D PREROUTING {PORTALS}\n-D OUTPUT {PORTALS}\n-D POSTROUTING {POSTROUTING}\n"
        );
        for c in IPVS_CHAINS {
            r.push_str(&format!("-F {c}\n"));
        }
        for c in IPVS_CHAINS {
            r.push_str(&format!("-X {c}\n"));
        }
        r.push_str("COMMIT\n");
        std::fs::write(scratch, r).with_context(|| format!("writing {}", scratch.display()))?;
        node.exec_ok(
            "iptables-restore",
            &["--noflush", &scratch.to_string_lossy()],
        )?;
        for (name, _) in IPSETS {
            destroy_ipset(node, name)?;
        }
        node.exec_ok("ipvsadm", &["-C"])?;
        node.ip(&["link", "del", IPVS_LINK])?;
        node.sysctl("net.ipv4.vs.conntrack", "0")
    }

    /// Loads `mode`'s rules for `s` into `node` (`scratch`: a file path for
    /// the rules).
    pub fn install(node: &Netns, scratch: &Path, mode: Mode, s: &Services) -> Result<()> {
        let (text, program, args): (String, &str, Vec<&str>) = match mode {
            Mode::Iptables => (iptables_rules(s), "iptables-restore", vec!["--noflush"]),
            Mode::Nftables => (nft_rules(s), "nft", vec!["-f"]),
            Mode::Ipvs => return install_ipvs(node, scratch, s),
        };
        std::fs::write(scratch, text)?;
        let file = scratch.to_string_lossy();
        let mut args = args;
        args.push(&file);
        node.exec_ok(program, &args)?;
        Ok(())
    }

    /// Takes `mode`'s rules for `s` off `node` again.
    pub fn remove(node: &Netns, scratch: &Path, mode: Mode, s: &Services) -> Result<()> {
        match mode {
            Mode::Nftables => {
                node.exec_ok("nft", &["delete", "table", "ip", NFT_TABLE])?;
            }
            Mode::Ipvs => remove_ipvs(node, scratch)?,
            Mode::Iptables => {
                let mut r = format!(
                    "*nat\n-D PREROUTING {PORTALS}\n-D OUTPUT {PORTALS}\n-D POSTROUTING {POSTROUTING}\n"
                );
                let chains = chains(s);
                for c in &chains {
                    r.push_str(&format!("-F {c}\n"));
                }
                for c in &chains {
                    r.push_str(&format!("-X {c}\n"));
                }
                r.push_str("COMMIT\n");
                std::fs::write(scratch, r)?;
                node.exec_ok(
                    "iptables-restore",
                    &["--noflush", &scratch.to_string_lossy()],
                )?;
            }
        }
        Ok(())
    }
}
