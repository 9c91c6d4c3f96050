//! The simulated EKS node of `test-topology.md` for the agent and the CNI
//! plugin: a "vpc" namespace (the node subnet as a bridge, gateway
//! 192.168.0.1, routing to a "peer" namespace in another VPC subnet and an
//! "inet" namespace), a "node" namespace with three ENI links (eth0
//! primary, eth1 secondary, eth2 trunk) toward it, a private bpffs, a state
//! dir, and the real `trunkline-agent` running inside the node namespace in
//! local mode. Pods are namespaces the tests create and wire with
//! `trunkline-cni`. (The VPC's per-ENI source check and the trunk's branch
//! ENI emulation come with the traffic issues.)
//!
//! Drop order: the agent is killed first, then the namespaces go (and with
//! them every veth), then the bpffs mount (and with it every pinned map and
//! link), then the state dir.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::{
    drivers::agent_proc::{AgentArgs, AgentProc},
    kernel::bpffs::BpffsMount,
    topology::netns::{veth, Netns},
};

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 31, 166);
pub const SUBNET: &str = "192.168.0.0/19";
pub const VPC_GATEWAY: &str = "192.168.0.1/19";
pub const BRANCH_POD: (&str, &str) = ("default", "aws-cli");
pub const BRANCH_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 26, 162);
pub const BRANCH_MAC: &str = "02:b0:01:6c:b5:79";
pub const BRANCH_VLAN: u16 = 1;
/// The subnet gateway's MAC (the "vpc" bridge).
pub const VPC_GATEWAY_MAC: &str = "02:00:00:fe:fe:01";

/// (link, role, MAC, primary IP) of the node's ENIs.
pub const ENIS: [(&str, &str, &str, Ipv4Addr); 3] = [
    (
        "eth0",
        "primary",
        "02:a5:ee:3d:4a:c9",
        Ipv4Addr::new(192, 168, 31, 166),
    ),
    (
        "eth1",
        "secondary",
        "02:a5:ee:3d:4a:ca",
        Ipv4Addr::new(192, 168, 30, 10),
    ),
    (
        "eth2",
        "trunk",
        "02:a5:ee:3d:4a:cb",
        Ipv4Addr::new(192, 168, 29, 10),
    ),
];

/// Pod IPs per ENI: eth0 192.168.31.170.., eth1 192.168.30.20..
pub const IPS_PER_ENI: u8 = 64;

pub fn pod_ips(eni: &str) -> Vec<Ipv4Addr> {
    match eni {
        "eth0" => (0..IPS_PER_ENI)
            .map(|i| Ipv4Addr::new(192, 168, 31, 170 + i))
            .collect(),
        "eth1" => (0..IPS_PER_ENI)
            .map(|i| Ipv4Addr::new(192, 168, 30, 20 + i))
            .collect(),
        _ => Vec::new(),
    }
}

/// The node file, in the format of the issue.
pub fn node_file(eth0_ips: &[Ipv4Addr], eth1_ips: &[Ipv4Addr]) -> String {
    let mut s = node_section(NODE_IP);
    for (link, role, mac, ip) in ENIS {
        let ips = match link {
            "eth0" => eth0_ips,
            "eth1" => eth1_ips,
            _ => &[],
        };
        s.push_str(&eni_section(link, role, mac, ip, ips));
        if role == "trunk" {
            s.push_str(&format!("gateway_mac = \"{VPC_GATEWAY_MAC}\"\n"));
        }
    }
    s.push_str(&format!(
        "[[branch]]\npod = \"{}/{}\"\neni_id = \"eni-09a7a909e06fc4be6\"\nmac = \"{BRANCH_MAC}\"\nip = \"{BRANCH_IP}\"\nvlan = {BRANCH_VLAN}\nsubnet = \"{SUBNET}\"\n",
        BRANCH_POD.0, BRANCH_POD.1
    ));
    s
}

/// The `[node]` section of a node file for a node whose primary IP is
/// `primary_ip`: the VPC's CIDRs and the Service CIDR 10.100.0.0/16 (so
/// that trunkline leaves Service traffic to kube-proxy). Shared by the
/// single simulated node and the nodes of a simulated cluster.
pub fn node_section(primary_ip: Ipv4Addr) -> String {
    format!(
        "[node]\nprimary_ip = \"{primary_ip}\"\nvpc_cidrs = [\"192.168.0.0/16\", \"100.64.0.0/16\"]\nservice_cidrs = [\"10.100.0.0/16\"]\n"
    )
}

/// One `[[eni]]` section of a node file: an ENI on the node subnet with
/// the pod IPs it may give.
pub fn eni_section(
    link: &str,
    role: &str,
    mac: &str,
    ip: Ipv4Addr,
    pod_ips: &[Ipv4Addr],
) -> String {
    let ips = pod_ips
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[eni]]\ninterface = \"{link}\"\nrole = \"{role}\"\nmac = \"{mac}\"\nprimary_ip = \"{ip}\"\nsubnet = \"{SUBNET}\"\npod_ips = [{ips}]\n"
    )
}

/// A directory under the temp dir removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("tl-{}", crate::unique(tag)));
        std::fs::create_dir_all(&p).with_context(|| format!("mkdir {}", p.display()))?;
        Ok(Self(p))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The "vpc" namespace: the node subnet as bridge `br0` with the gateway
/// 192.168.0.1/19 on it and a fixed gateway MAC (the node file gives it for
/// the trunk). The ENI ports are the caller's.
pub fn vpc_router() -> Result<Netns> {
    let vpc = Netns::new("vpc")?;
    vpc.ip(&["link", "add", "br0", "type", "bridge"])?;
    vpc.ip(&["link", "set", "br0", "address", VPC_GATEWAY_MAC])?;
    vpc.ip(&["addr", "add", VPC_GATEWAY, "dev", "br0"])?;
    vpc.ip(&["link", "set", "br0", "up"])?;
    Ok(vpc)
}

/// The two hosts the VPC routes to besides the node subnet: "peer"
/// (192.168.64.10, another VPC subnet) and "inet" (203.0.113.10, outside
/// the VPC CIDRs), each behind its own veth from `vpc`.
pub fn vpc_peers(vpc: &Netns) -> Result<(Netns, Netns)> {
    let peer = Netns::new("peer")?;
    let inet = Netns::new("inet")?;
    for (ns, vpc_end, vpc_ip, ip, gw) in [
        (
            &peer,
            "to-peer",
            "192.168.64.1/24",
            "192.168.64.10/24",
            "192.168.64.1",
        ),
        (
            &inet,
            "to-inet",
            "203.0.113.1/24",
            "203.0.113.10/24",
            "203.0.113.1",
        ),
    ] {
        veth(vpc, vpc_end, ns, "eth0")?;
        vpc.ip(&["addr", "add", vpc_ip, "dev", vpc_end])?;
        ns.ip(&["addr", "add", ip, "dev", "eth0"])?;
        ns.ip(&["route", "add", "default", "via", gw])?;
    }
    Ok((peer, inet))
}

pub struct SimNode {
    pub agent: Option<AgentProc>,
    pub node: Netns,
    /// Another VPC subnet (192.168.64.0/24), routed by "vpc".
    pub peer: Netns,
    /// The internet side (203.0.113.0/24), routed by "vpc".
    pub inet: Netns,
    pub vpc: Netns,
    pub bpffs: BpffsMount,
    pub dir: TempDir,
    /// Extra env for the next agent start (fault injection).
    agent_env: Vec<(String, String)>,
    /// `--ip-cooldown` of the next agent start (0 unless a test sets it).
    pub ip_cooldown_secs: u64,
    /// `--ebpf-object` of the next agent start (the built object unless set).
    pub ebpf_object: Option<PathBuf>,
    /// Start the agent without `--node-file` (AWS mode: IMDS and EC2 come
    /// from the agent env the test sets).
    pub aws_mode: bool,
}

impl SimNode {
    /// Builds the namespaces and starts the agent with the default pools.
    pub fn new() -> Result<Self> {
        Self::with_pools(&pod_ips("eth0"), &pod_ips("eth1"))
    }

    pub fn with_pools(eth0: &[Ipv4Addr], eth1: &[Ipv4Addr]) -> Result<Self> {
        let mut n = Self::build()?;
        std::fs::write(n.node_file(), node_file(eth0, eth1))?;
        n.start_agent()?;
        Ok(n)
    }

    /// Namespaces, links and dirs; no agent yet.
    pub fn build() -> Result<Self> {
        let dir = TempDir::new("sim")?;
        let bpffs = BpffsMount::new()?;
        let vpc = vpc_router()?;
        let node = Netns::new("node")?;
        for (link, _, mac, _) in ENIS {
            let port = format!("n-{link}");
            veth(&node, link, &vpc, &port)?;
            node.ip(&["link", "set", link, "address", mac])?;
            vpc.ip(&["link", "set", &port, "master", "br0"])?;
        }
        node.ip(&["addr", "add", &format!("{NODE_IP}/19"), "dev", "eth0"])?;
        let (peer, inet) = vpc_peers(&vpc)?;
        vpc.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(Self {
            agent: None,
            node,
            peer,
            inet,
            vpc,
            bpffs,
            dir,
            agent_env: Vec::new(),
            ip_cooldown_secs: 0,
            ebpf_object: None,
            aws_mode: false,
        })
    }

    /// Puts a hop of `mtu` bytes between the VPC and the internet host, as
    /// a real path has one: a router namespace (returned; the hop goes with
    /// it) on a link whose two ends both have `mtu` (198.51.100.0/30), with
    /// the internet host behind it on 1500 as before. Both end hosts keep
    /// 1500 and an MSS of 1460, so both directions need path MTU discovery:
    /// the VPC router tells the node (and, through SNAT, the pod), this
    /// router tells the internet host.
    ///
    /// The hop must not be a link whose ends disagree: a veth drops a
    /// packet longer than its receiving end's MTU silently, with no ICMP
    /// error, unless it is a GSO super-packet (`is_skb_forwardable`). The
    /// host on the larger end then reaches the other side only while all
    /// it sends is GSO; its first single full-sized segment (a
    /// retransmission, or one sent with a window of one segment, as the
    /// internet host's echo does on 6.1 under emulation) is retransmitted
    /// into the void until the connection times out.
    pub fn narrow_inet_hop(&self, mtu: u32) -> Result<Netns> {
        let rt = Netns::new("inetrt")?;
        let mtu = mtu.to_string();
        // Deleting the VPC's end takes the internet host's eth0 with it.
        self.vpc.ip(&["link", "del", "to-inet"])?;
        veth(&self.vpc, "to-inet", &rt, "hop")?;
        veth(&rt, "lan", &self.inet, "eth0")?;
        self.vpc.ip(&["link", "set", "to-inet", "mtu", &mtu])?;
        rt.ip(&["link", "set", "hop", "mtu", &mtu])?;
        self.vpc
            .ip(&["addr", "add", "198.51.100.1/30", "dev", "to-inet"])?;
        self.vpc
            .ip(&["route", "add", "203.0.113.0/24", "via", "198.51.100.2"])?;
        rt.ip(&["addr", "add", "198.51.100.2/30", "dev", "hop"])?;
        rt.ip(&["addr", "add", "203.0.113.1/24", "dev", "lan"])?;
        rt.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
        rt.sysctl("net.ipv4.ip_forward", "1")?;
        self.inet
            .ip(&["addr", "add", "203.0.113.10/24", "dev", "eth0"])?;
        self.inet
            .ip(&["route", "add", "default", "via", "203.0.113.1"])?;
        Ok(rt)
    }

    /// kube-proxy's part of the node: `rules` (nftables statements, DNAT
    /// to a backend) in a nat chain at prerouting, ahead of aws-node's nat
    /// chains as kube-proxy's `KUBE-SERVICES` jump is the first rule of
    /// PREROUTING (a connection DNATed there is past NAT when aws-node's
    /// connmark chain would look at it). Each call adds to the chain.
    pub fn kube_proxy(&self, rules: &str) -> Result<()> {
        let file = self.dir.path().join("kube-proxy.nft");
        std::fs::write(
            &file,
            format!(
                "table ip kube-proxy-like {{\n chain pre {{\n  type nat hook prerouting priority -110;\n{rules}\n }}\n}}\n"
            ),
        )?;
        self.node.exec_ok("nft", &["-f", &file.to_string_lossy()])?;
        Ok(())
    }

    pub fn node_file(&self) -> PathBuf {
        self.dir.path().join("node.toml")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.state_dir().join("checkpoint.json")
    }
    pub fn bpf_root(&self) -> &Path {
        self.bpffs.path()
    }

    pub fn set_agent_env(&mut self, env: &[(&str, &str)]) {
        self.agent_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// The agent's command line for this node: its node file (unless
    /// [`Self::aws_mode`]), pins, socket and state; nothing else.
    pub fn agent_args(&self) -> AgentArgs {
        let args = if self.aws_mode {
            AgentArgs::aws()
        } else {
            AgentArgs::local(self.node_file())
        };
        args.bpf_root(self.bpf_root())
            .socket(self.socket())
            .state_dir(self.state_dir())
    }

    pub fn start_agent(&mut self) -> Result<()> {
        let args = self
            .agent_args()
            .metrics_addr("127.0.0.1:61678")
            .introspection_addr("127.0.0.1:61679")
            .ebpf_object(
                self.ebpf_object
                    .clone()
                    .unwrap_or_else(crate::kernel::object::path),
            )
            .ip_cooldown(self.ip_cooldown_secs);
        let env: Vec<(&str, &str)> = self
            .agent_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let n = self.agent.as_ref().map(|_| 1).unwrap_or(0);
        let log = self
            .dir
            .path()
            .join(format!("agent-{}.log", crate::unique(&n.to_string())));
        let agent = AgentProc::start(self.node.name(), &args, &env, &log)?;
        self.agent = Some(agent);
        Ok(())
    }

    /// SIGKILL the agent (the data path stays pinned).
    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.kill();
        }
    }

    /// The agent's log so far (for failure messages).
    /// Returns once the agent has taken `ip` (just added to the node) as
    /// node-local, which it logs when the local addresses change; bounded
    /// by the traffic timeout.
    pub fn await_node_local(&self, ip: std::net::Ipv4Addr) -> Result<()> {
        let want = format!("{ip}/32");
        let within = crate::drivers::traffic::timeout();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            let log = self.agent_log();
            if log
                .lines()
                .any(|l| l.contains("node-local addresses") && l.contains(&want))
            {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        anyhow::bail!(
            "the agent did not take {want} as node-local within {within:?}; its log:\n{}",
            self.agent_log()
        )
    }

    pub fn agent_log(&self) -> String {
        self.agent
            .as_ref()
            .map(AgentProc::log_text)
            .unwrap_or_default()
    }

    /// `trunkline-agent inspect <what> --json` through the binary.
    pub fn inspect(&self, what: &str) -> Result<serde_json::Value> {
        let out = std::process::Command::new(crate::drivers::binaries::agent())
            .args(["inspect", what, "--json", "--bpf-root"])
            .arg(self.bpf_root())
            .output()
            .context("running trunkline-agent inspect")?;
        anyhow::ensure!(
            out.status.success(),
            "inspect {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("inspect output is not JSON")
    }

    /// Names of trunkline's ENI attachments (see [`Self::eni_attachments`]):
    /// the link pins under `<bpf-root>/links` on a TCX kernel.
    pub fn link_pins(&self) -> Result<Vec<String>> {
        Ok(self
            .eni_attachments()?
            .into_iter()
            .map(|a| a.name)
            .collect())
    }

    /// trunkline's programs on the node's ENIs, named `<hook>-<ifindex>-<iface>`
    /// as the agent names its link pins: the TCX links pinned under `links/`
    /// where the kernel has TCX (6.6+), else the cls_bpf filters at
    /// trunkline's priority on the node's interfaces (which need no pin).
    pub fn eni_attachments(&self) -> Result<Vec<EniAttachment>> {
        let mut v = if crate::kernel::facts::has_tcx() {
            self.pinned_eni_links()?
        } else {
            self.eni_filters()?
        };
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    fn pinned_eni_links(&self) -> Result<Vec<EniAttachment>> {
        let dir = self.bpf_root().join("links");
        let names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).context("reading links dir"),
        };
        let mut out = Vec::new();
        for name in names {
            let path = dir.join(&name);
            let o = std::process::Command::new("bpftool")
                .args(["-j", "link", "show", "pinned"])
                .arg(&path)
                .output()
                .context("bpftool link show pinned")?;
            let v: serde_json::Value = serde_json::from_slice(&o.stdout)
                .with_context(|| format!("bpftool JSON for {}", path.display()))?;
            out.push(EniAttachment {
                name,
                prog_id: v["prog_id"].as_u64().context("prog_id")?,
                identity: format!("link {} prog {}", v["id"], v["prog_id"]),
            });
        }
        Ok(out)
    }

    fn eni_filters(&self) -> Result<Vec<EniAttachment>> {
        let links = self.node.exec_ok("ip", &["-o", "link", "show"])?;
        let mut out = Vec::new();
        for line in links.lines() {
            let mut parts = line.split(": ");
            let (Some(idx), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            let iface = name.split('@').next().unwrap_or(name);
            for dir in ["ingress", "egress"] {
                let json = self
                    .node
                    .exec_ok("tc", &["-j", "filter", "show", "dev", iface, dir])?;
                let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_default();
                for f in v.as_array().into_iter().flatten() {
                    let prog = &f["options"]["prog"];
                    let (Some(pname), Some(id)) = (prog["name"].as_str(), prog["id"].as_u64())
                    else {
                        continue;
                    };
                    if f["pref"].as_u64() != Some(20_000) || !pname.ends_with("_eni") {
                        continue;
                    }
                    out.push(EniAttachment {
                        name: format!("{pname}-{}-{iface}", idx.trim()),
                        prog_id: id,
                        identity: format!("cls_bpf pref 20000 prog {id}"),
                    });
                }
            }
        }
        Ok(out)
    }

    /// `tc filter show` of `veth`'s ingress and egress in the node namespace
    /// (the pod programs: name, program id, priority, handle).
    pub fn pod_filters(&self, veth: &str) -> Result<String> {
        let ingress = self
            .node
            .exec_ok("tc", &["filter", "show", "dev", veth, "ingress"])?;
        let egress = self
            .node
            .exec_ok("tc", &["filter", "show", "dev", veth, "egress"])?;
        Ok(format!("ingress:\n{ingress}egress:\n{egress}"))
    }

    /// The pods of the checkpoint file.
    pub fn checkpoint_pods(&self) -> Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(self.checkpoint()).context("reading the checkpoint")?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        Ok(v["pods"].as_array().cloned().unwrap_or_default())
    }

    /// Links in the node namespace whose name starts with `prefix`.
    pub fn links_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let out = self.node.exec_ok("ip", &["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    /// `ip rule` + `ip route show table all` in the node namespace.
    pub fn host_routing(&self) -> Result<String> {
        let rules = self.node.exec_ok("ip", &["rule"])?;
        let routes = self
            .node
            .exec_ok("ip", &["route", "show", "table", "all"])?;
        Ok(format!("{rules}\n{routes}"))
    }
}

/// One of trunkline's attachments on an ENI (see [`SimNode::eni_attachments`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniAttachment {
    /// `<hook>-<ifindex>-<iface>`.
    pub name: String,
    /// The program it runs.
    pub prog_id: u64,
    /// What changes if the attachment is re-created (link id and program,
    /// or the filter's program).
    pub identity: String,
}

impl Drop for SimNode {
    fn drop(&mut self) {
        self.kill_agent();
    }
}
