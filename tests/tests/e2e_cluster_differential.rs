//! A rolling migration, differential: a simulated cluster of three nodes in
//! one VPC (per-ENI source check, proxy ARP, static neighbours), each node
//! with a pod on its primary and one on its secondary ENI, kube-proxy on
//! every node. The same scenarios run twice on the same cluster shape:
//! once with every node on aws-node's plumbing (the reference), once in
//! the middle of a migration (nodes 1 and 2 on trunkline, node 3 still on
//! aws-node). Every flow is judged by what its far end received; legacy
//! must not do better anywhere, and the table is printed.
//!
//! The peers are a real cluster's: CoreDNS in a pod on another node (UDP
//! through a connected socket as resolvers use, and TCP), the API server's
//! endpoint elsewhere in the VPC behind the `kubernetes` Service, NodePorts
//! reached from a pod, from the VPC and from outside it, with the endpoint
//! on the node (`externalTrafficPolicy: Local`) or on another node
//! (`Cluster`: kube-proxy masquerades), a client outside the VPC CIDRs,
//! a node-local link-local service (EKS Pod Identity's 169.254.170.23).
//! The Service rows run with kube-proxy in nftables mode, in IPVS mode
//! where the kernel has IP_VS (in `cargo xtask vm-test`'s guests it must:
//! there a kernel without it fails the test; elsewhere the table says in
//! one line why the IPVS rows did not run), and in iptables mode.
//! Then pods forging a pod of another node, which trunkline must stop at
//! the node whatever legacy does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::Result;
use testbed::{
    drivers::traffic,
    topology::{
        cluster::{
            kube_proxy::{
                self, ClusterIp, Mode, NodePort, Proto, Services, TrafficPolicy, VM_MODULES_ENV,
            },
            Cluster, ClusterPod, Eni, NodePlan, Plumbing,
        },
        netns::Netns,
    },
};

const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 10);
const INET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 10);
const API_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 100, 0, 1), 443);
const API_ENDPOINT: SocketAddrV4 = SocketAddrV4::new(PEER_IP, 443);
const POD_IDENTITY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 23);
/// The node whose NodePorts the NodePort rows use.
const NODEPORT_NODE: u8 = 2;
const FORGED: usize = 3;

/// The NodePorts: (port, endpoint node, ENI, endpoint port, policy).
const NODE_PORTS: [(u16, u8, Eni, u16, TrafficPolicy); 3] = [
    (30081, 2, Eni::Primary, 8081, TrafficPolicy::Local),
    (30080, 2, Eni::Secondary, 8080, TrafficPolicy::Local),
    (30082, 1, Eni::Secondary, 8082, TrafficPolicy::Cluster),
];

/// What a scenario sees: the cluster and its pods (node n's primary-ENI
/// pod at `2(n-1)`, its secondary-ENI pod next).
struct View<'a> {
    cluster: &'a Cluster,
    pods: &'a [ClusterPod],
}

impl View<'_> {
    fn pod(&self, node: u8, eni: Eni) -> &ClusterPod {
        let i = usize::from(node - 1) * 2 + usize::from(eni == Eni::Secondary);
        &self.pods[i]
    }

    /// Who `seen` is, by the names the table uses.
    fn who(&self, seen: IpAddr) -> String {
        let IpAddr::V4(ip) = seen else {
            return format!("another IP ({seen})");
        };
        if let Some(p) = self.pods.iter().find(|p| p.ip == ip) {
            return pod_name(p.node, p.eni);
        }
        if let Some(n) = self.cluster.nodes.iter().find(|n| n.shape.node_ip() == ip) {
            return format!("node{}'s IP", n.shape.number());
        }
        match ip {
            PEER_IP => "the VPC peer".into(),
            INET_IP => "the internet client".into(),
            _ => format!("another IP ({ip})"),
        }
    }

    /// `f`'s outcome followed by the source-check drops it caused.
    fn with_drops(&self, f: impl FnOnce() -> Result<String>) -> Result<String> {
        let before = self.cluster.source_check_drops()?;
        let out = f()?;
        let dropped = self.cluster.source_check_drops()? - before;
        Ok(format!("{out}, source-check drops: {dropped}"))
    }

    /// A TCP echo from `client` to `bind` (in `server`) dialled at `dial`:
    /// who the server saw, whether the echo came back.
    fn tcp(
        &self,
        client: &Netns,
        server: &Netns,
        bind: SocketAddrV4,
        dial: SocketAddrV4,
    ) -> Result<String> {
        self.with_drops(|| {
            let payload = format!("to {dial}");
            let seen = traffic::tcp_echo_via(
                client,
                server,
                SocketAddr::V4(bind),
                SocketAddr::V4(dial),
                payload.as_bytes(),
            )?;
            Ok(format!(
                "server saw {}, echo ok: {}",
                self.who(seen.peer.ip()),
                seen.echoed == payload.as_bytes()
            ))
        })
    }
}

fn pod_name(node: u8, eni: Eni) -> String {
    format!("node{node} {}-ENI pod", eni.role())
}

fn sock(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// What a scenario does: its outcome, as the table prints it.
type Check = Box<dyn Fn(&View) -> Result<String>>;

/// A scenario: its name, what it does, what trunkline must show, and
/// whether legacy must show the same (a forgery legacy lets through is
/// trunkline doing better: printed, not compared).
struct Row {
    name: String,
    /// kube-proxy's mode the row needs (None: whatever is installed).
    mode: Option<Mode>,
    check: Check,
    expect: String,
    compared: bool,
}

fn row(
    name: String,
    mode: Option<Mode>,
    expect: String,
    check: impl Fn(&View) -> Result<String> + 'static,
) -> Row {
    Row {
        name,
        mode,
        check: Box::new(check),
        expect,
        compared: true,
    }
}

fn tcp_pod_to_pod(from: (u8, Eni), to: (u8, Eni), port: u16) -> Row {
    row(
        format!("{} -> {}", pod_name(from.0, from.1), pod_name(to.0, to.1)),
        None,
        format!(
            "server saw {}, echo ok: true, source-check drops: 0",
            pod_name(from.0, from.1)
        ),
        move |v| {
            let (c, s) = (v.pod(from.0, from.1), v.pod(to.0, to.1));
            v.tcp(c.ns(), s.ns(), sock(s.ip, port), sock(s.ip, port))
        },
    )
}

fn dns(mode: Mode, from: (u8, Eni)) -> Row {
    let client = pod_name(from.0, from.1);
    row(
        format!("[{}] {client} -> DNS ClusterIP (UDP+TCP) -> node3 pod", mode.name()),
        Some(mode),
        format!("CoreDNS saw {client} (UDP) and {client} (TCP), UDP answers from the Service address: true, TCP echo ok: true, source-check drops: 0"),
        move |v| {
            let (c, dns) = (v.pod(from.0, from.1), v.pod(3, Eni::Secondary));
            v.with_drops(|| {
                let udp = traffic::udp_echo_via(
                    c.ns(),
                    dns.ns(),
                    SocketAddr::from((dns.ip, 53)),
                    SocketAddr::from((DNS_VIP, 53)),
                    3,
                )?;
                let tcp = traffic::tcp_echo_via(
                    c.ns(),
                    dns.ns(),
                    SocketAddr::from((dns.ip, 53)),
                    SocketAddr::from((DNS_VIP, 53)),
                    b"dns over tcp",
                )?;
                Ok(format!(
                    "CoreDNS saw {} (UDP) and {} (TCP), UDP answers from the Service address: {}, TCP echo ok: {}",
                    v.who(udp.peer.ip()),
                    v.who(tcp.peer.ip()),
                    udp.echoed == b"trunkline query 2",
                    tcp.echoed == b"dns over tcp"
                ))
            })
        },
    )
}

fn api_server(mode: Mode, from: (u8, Eni)) -> Row {
    let client = pod_name(from.0, from.1);
    row(
        format!(
            "[{}] {client} -> kubernetes Service -> API endpoint (VPC)",
            mode.name()
        ),
        Some(mode),
        format!("server saw {client}, echo ok: true, source-check drops: 0"),
        move |v| {
            let c = v.pod(from.0, from.1);
            v.tcp(c.ns(), &v.cluster.peer, API_ENDPOINT, API_VIP)
        },
    )
}

/// Where a NodePort client sits.
#[derive(Clone, Copy)]
enum Client {
    Pod(u8, Eni),
    Peer,
    Inet,
}

impl Client {
    fn name(self) -> String {
        match self {
            Client::Pod(n, e) => pod_name(n, e),
            Client::Peer => "the VPC peer".into(),
            Client::Inet => "the internet client".into(),
        }
    }
    fn ns<'a>(self, v: &'a View) -> &'a Netns {
        match self {
            Client::Pod(n, e) => v.pod(n, e).ns(),
            Client::Peer => &v.cluster.peer,
            Client::Inet => &v.cluster.inet,
        }
    }
}

fn nodeport(mode: Mode, client: Client, np: (u16, u8, Eni, u16, TrafficPolicy)) -> Row {
    let (port, node, eni, ep_port, policy) = np;
    let seen = match policy {
        TrafficPolicy::Local => client.name(),
        TrafficPolicy::Cluster => format!("node{NODEPORT_NODE}'s IP"),
    };
    row(
        format!(
            "[{}] {} -> node{NODEPORT_NODE} NodePort ({policy:?}) -> {}",
            mode.name(),
            client.name(),
            pod_name(node, eni)
        ),
        Some(mode),
        format!("server saw {seen}, echo ok: true, source-check drops: 0"),
        move |v| {
            let ep = v.pod(node, eni);
            let node_ip = v.cluster.node(NODEPORT_NODE)?.shape.node_ip();
            v.tcp(
                client.ns(v),
                ep.ns(),
                sock(ep.ip, ep_port),
                sock(node_ip, port),
            )
        },
    )
}

fn service_rows(mode: Mode) -> Vec<Row> {
    let mut rows = vec![
        dns(mode, (1, Eni::Primary)),
        dns(mode, (1, Eni::Secondary)),
        api_server(mode, (1, Eni::Secondary)),
    ];
    for client in [Client::Pod(1, Eni::Primary), Client::Peer, Client::Inet] {
        for np in NODE_PORTS {
            rows.push(nodeport(mode, client, np));
        }
    }
    rows
}

fn node_local_service() -> Row {
    row(
        format!(
            "{} -> node-local {POD_IDENTITY_IP} on node1",
            pod_name(1, Eni::Primary)
        ),
        None,
        format!(
            "server saw {}, echo ok: true, source-check drops: 0",
            pod_name(1, Eni::Primary)
        ),
        |v| {
            let node = v.cluster.node(1)?;
            node.ns
                .ip(&["addr", "add", &format!("{POD_IDENTITY_IP}/32"), "dev", "lo"])?;
            node.await_node_local(POD_IDENTITY_IP)?;
            let at = sock(POD_IDENTITY_IP, 80);
            v.tcp(v.pod(1, Eni::Primary).ns(), &node.ns, at, at)
        },
    )
}

fn inbound_from_outside() -> Row {
    row(
        format!("the internet client -> {} IP", pod_name(2, Eni::Secondary)),
        None,
        "server saw the internet client, echo ok: true, source-check drops: 0".into(),
        |v| {
            let p = v.pod(2, Eni::Secondary);
            v.tcp(&v.cluster.inet, p.ns(), sock(p.ip, 8085), sock(p.ip, 8085))
        },
    )
}

fn to_internet(node: u8) -> Row {
    row(
        format!("{} -> internet (UDP)", pod_name(node, Eni::Secondary)),
        None,
        format!("internet saw node{node}'s IP, echo ok: true, source-check drops: 0"),
        move |v| {
            let p = v.pod(node, Eni::Secondary);
            v.with_drops(|| {
                let seen = traffic::udp_echo(p.ns(), &v.cluster.inet, INET_IP, 5001, 3)?;
                Ok(format!(
                    "internet saw {}, echo ok: {}",
                    v.who(seen.peer.ip()),
                    seen.echoed == b"trunkline udp 2"
                ))
            })
        },
    )
}

fn plain_rows() -> Vec<Row> {
    vec![
        tcp_pod_to_pod((1, Eni::Primary), (2, Eni::Secondary), 8090),
        tcp_pod_to_pod((2, Eni::Secondary), (1, Eni::Primary), 8091),
        tcp_pod_to_pod((1, Eni::Secondary), (3, Eni::Primary), 8092),
        tcp_pod_to_pod((3, Eni::Secondary), (1, Eni::Secondary), 8093),
        tcp_pod_to_pod((2, Eni::Primary), (3, Eni::Secondary), 8094),
        inbound_from_outside(),
        node_local_service(),
        to_internet(1),
        to_internet(2),
    ]
}

/// Node 1's primary-ENI pod forging node 2's secondary-ENI pod, to the
/// VPC peer (`to_pod`: false) or to node 2's primary-ENI pod: nothing may
/// arrive, and trunkline stops it at the node, before the VPC's source
/// check would. Legacy's outcome (it leaves the forgery to the VPC) is
/// printed, not compared.
fn forgery(to_pod: bool, port: u16) -> Row {
    let to = if to_pod {
        pod_name(2, Eni::Primary)
    } else {
        "VPC peer".into()
    };
    let mut r = row(
        format!(
            "{} forging {}'s address -> {to}",
            pod_name(1, Eni::Primary),
            pod_name(2, Eni::Secondary)
        ),
        None,
        format!("received 0 of {FORGED} forged datagrams, source-check drops: 0"),
        move |v| {
            let (forger, victim) = (v.pod(1, Eni::Primary), v.pod(2, Eni::Secondary));
            let (ns, ip) = if to_pod {
                let p = v.pod(2, Eni::Primary);
                (p.ns(), p.ip)
            } else {
                (&v.cluster.peer, PEER_IP)
            };
            v.with_drops(|| {
                let got = traffic::udp_forged(forger.ns(), victim.ip, ns, ip, port, FORGED)?;
                Ok(format!("received {got} of {FORGED} forged datagrams"))
            })
        },
    );
    r.compared = false;
    r
}

fn forgeries() -> Vec<Row> {
    vec![forgery(false, 5100), forgery(true, 5101)]
}

/// Every row in the order they run: the Service rows under nftables-mode
/// kube-proxy, under IPVS mode (`ipvs`: the kernel has IP_VS), then under
/// iptables mode (which stays for the rest).
fn rows(ipvs: bool) -> Vec<Row> {
    let mut v = service_rows(Mode::Nftables);
    if ipvs {
        v.extend(service_rows(Mode::Ipvs));
    }
    v.extend(service_rows(Mode::Iptables));
    v.extend(plain_rows());
    v.extend(forgeries());
    v
}

/// The Services kube-proxy has on every node.
fn services(v: &View) -> Services {
    let coredns = v.pod(3, Eni::Secondary).ip;
    let mut s = Services::default();
    for (name, proto) in [("DNS-UDP", Proto::Udp), ("DNS-TCP", Proto::Tcp)] {
        s.cluster_ips.push(ClusterIp {
            name: name.into(),
            vip: sock(DNS_VIP, 53),
            proto,
            endpoint: sock(coredns, 53),
        });
    }
    s.cluster_ips.push(ClusterIp {
        name: "KUBERNETES".into(),
        vip: API_VIP,
        proto: Proto::Tcp,
        endpoint: API_ENDPOINT,
    });
    for (port, node, eni, ep_port, policy) in NODE_PORTS {
        s.node_ports.push(NodePort {
            name: format!("NP-{port}"),
            port,
            endpoint: sock(v.pod(node, eni).ip, ep_port),
            policy,
        });
    }
    s
}

/// Whether the IPVS rows run: `Ok` where IPVS-mode kube-proxy can be set
/// up here; `Err` with the one line the table prints where it cannot. In
/// `cargo xtask vm-test`'s guests (whose Debian kernels have IP_VS as a
/// module) it must: there a failure to set it up fails the test.
fn ipvs_rows() -> Result<(), String> {
    match kube_proxy::ipvs_support() {
        Ok(()) => Ok(()),
        Err(why) => {
            if let Ok(dir) = std::env::var(VM_MODULES_ENV) {
                panic!(
                    "IPVS-mode kube-proxy cannot be set up in the VM ({VM_MODULES_ENV}={dir}, kernel {}): {why}",
                    kernel_release()
                );
            }
            Err(format!("n/a: not run, {why}"))
        }
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Every row on a new cluster whose nodes 1..3 have `plumbing`; with
/// node 1's `inspect stats` where it runs trunkline (after the rows).
fn run(plumbing: [Plumbing; 3], ipvs: bool) -> Result<(Vec<String>, Option<serde_json::Value>)> {
    let plans = plumbing.map(|p| NodePlan {
        plumbing: p,
        pods: [1, 1],
    });
    let cluster = Cluster::build(&plans)?;
    let mut pods = Vec::new();
    for n in 1..=3 {
        for eni in Eni::ALL {
            pods.push(cluster.add_pod(n, eni, &format!("pod-{n}-{}", eni.link()))?);
        }
    }
    let mut results = Vec::new();
    {
        let v = View {
            cluster: &cluster,
            pods: &pods,
        };
        let svc = services(&v);
        let mut installed: Option<Mode> = None;
        for r in rows(ipvs) {
            if let Some(mode) = r.mode.filter(|m| Some(*m) != installed) {
                if let Some(old) = installed {
                    cluster.remove_kube_proxy(old, &svc)?;
                }
                cluster.install_kube_proxy(mode, &svc)?;
                installed = Some(mode);
            }
            results.push((r.check)(&v).unwrap_or_else(|e| format!("failed: {e:#}")));
        }
    }
    let node1 = cluster.node(1)?;
    let stats = match node1.plumbing {
        Plumbing::Trunkline => Some(node1.inspect("stats")?),
        Plumbing::AwsNode => None,
    };
    drop(pods);
    Ok((results, stats))
}

#[test]
fn a_rolling_migration_matches_aws_node_across_the_cluster() {
    let ipvs = ipvs_rows();
    let (legacy, _) = run([Plumbing::AwsNode; 3], ipvs.is_ok()).expect("the aws-node cluster");
    let (trunkline, stats) = run(
        [Plumbing::Trunkline, Plumbing::Trunkline, Plumbing::AwsNode],
        ipvs.is_ok(),
    )
    .expect("the cluster mid-migration");
    let rows = rows(ipvs.is_ok());
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    println!(
        "\n{:<w$} | {:<90} | nodes 1, 2 trunkline, node 3 aws-node",
        "scenario", "all nodes aws-node"
    );
    for ((r, l), t) in rows.iter().zip(&legacy).zip(&trunkline) {
        println!("{:<w$} | {l:<90} | {t}", r.name);
    }
    match &ipvs {
        Ok(()) => println!("{:<w$} | ran ([ipvs] rows above)", "[ipvs] Service rows"),
        Err(why) => println!("{:<w$} | {why}", "[ipvs] Service rows"),
    }
    // Every forgery was stopped by trunkline's own check on node 1.
    let stats = stats.expect("node 1 runs trunkline");
    let spoofed = stats["from_pod"]["drop_spoofed"].as_u64();
    for ((r, l), t) in rows.iter().zip(&legacy).zip(&trunkline) {
        assert_eq!(t, &r.expect, "{}: trunkline", r.name);
        if r.compared {
            assert_eq!(l, t, "{}: legacy and trunkline differ", r.name);
        }
    }
    assert_eq!(
        spoofed,
        Some((FORGED * forgeries().len()) as u64),
        "node 1 from_pod.drop_spoofed: {stats}"
    );
    assert_eq!(legacy.len(), rows.len());
}
