//! `cargo xtask demo`: first a pod, a node and a peer in network namespaces,
//! the data path attached, real traffic through it, the counters and a
//! bpftool dump printed; then a simulated EKS node with the real agent in
//! local mode and three pods added through trunkline-cni exactly as a
//! container runtime would, `inspect pods` and the bpftool dump of PODS;
//! last a node as aws-node leaves it, taken over by `trunkline-agent
//! migrate` during a running upload.
//! Everything is removed at the end, also on Ctrl-C.

use std::{
    net::Ipv4Addr,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{bail, Context, Result};
use testbed::{
    drivers::{
        cni::{self, Call},
        traffic,
    },
    kernel::object,
    topology::{
        legacy_node::LegacyNode,
        mini_node::*,
        netns::Netns,
        sim_node::{pod_ips, SimNode, BRANCH_POD},
        vpc_fabric::{own, Fabric},
    },
};
use trunkline_agent::{dataplane::read_stats, inspect};

fn main() -> Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing Ctrl-C handler")?;
    let step = |name: &str| -> Result<()> {
        if interrupted.load(Ordering::SeqCst) {
            bail!("interrupted before {name}; tearing down");
        }
        println!("\n== {name}");
        Ok(())
    };

    step("building the node: pod, node and peer namespaces; programs attached")?;
    let node = MiniNode::new(&object::bytes())?;
    println!(
        "pod {POD_IP} ({}) -> node {HOST_VETH}/{ENI} ({}) -> peer {PEER_IP} ({})",
        node.pod.name(),
        node.node.name(),
        node.peer.name()
    );
    println!(
        "programs attached with {:?}; maps pinned under {}",
        node.attach_mode,
        node.bpffs.path().display()
    );

    step("ICMP: 3 pings pod -> peer")?;
    traffic::ping(&node.pod, PEER_IP, 3)?;
    println!("3/3 answered");

    step("UDP: 5 request/response exchanges pod -> peer:5300")?;
    let udp = traffic::udp_echo(&node.pod, &node.peer, PEER_IP, 5300, 5)?;
    println!(
        "peer saw {} send {:?}",
        udp.peer,
        String::from_utf8_lossy(&udp.received)
    );

    step("TCP: 64 KiB pod -> peer:5301, echoed back")?;
    let tcp = traffic::tcp_echo(&node.pod, &node.peer, PEER_IP, 5301, &vec![0x5a; 64 * 1024])?;
    println!(
        "peer saw {} send {} bytes; pod got {} back",
        tcp.peer,
        tcp.received.len(),
        tcp.echoed.len()
    );

    step("counters (trunkline-agent inspect stats)")?;
    let stats = read_stats(node.bpffs.path())?;
    print!("{}", inspect::stats::stats_table(&stats));

    step("bpftool map dump pinned <bpf-root>/STATS (first CPU slot of from_pod)")?;
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(node.bpffs.path().join("STATS"))
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!("bpftool: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dump = String::from_utf8_lossy(&out.stdout);
    for line in dump.lines().take(24) {
        println!("{line}");
    }
    println!("... ({} lines in all)", dump.lines().count());

    step("tearing down the mini node")?;
    drop(node);
    println!("namespaces, links and the bpffs mount removed");

    step(
        "simulated node: vpc + node namespaces, ENIs eth0/eth1/eth2, trunkline-agent in local mode",
    )?;
    // One eth0 address, so the second pod gets a secondary-ENI address.
    let sim = SimNode::with_pools(&pod_ips("eth0")[..1], &pod_ips("eth1")[..4])?;
    println!(
        "node namespace {}, agent socket {}, maps pinned under {}",
        sim.node.name(),
        sim.socket().display(),
        sim.bpf_root().display()
    );
    println!("node file:\n{}", std::fs::read_to_string(sim.node_file())?);

    let pods = [("default", "web"), ("shop", "cart"), BRANCH_POD];
    let mut netns = Vec::new();
    for (i, (ns, name)) in pods.iter().enumerate() {
        step(&format!(
            "CNI ADD {ns}/{name} (trunkline-cni, env + stdin as a runtime passes them)"
        ))?;
        let pod = Netns::new("pod")?;
        let path = format!("/run/netns/{}", pod.name());
        let cid = format!("demo-{i}");
        let call = Call {
            command: "ADD",
            container_id: &cid,
            netns: &path,
            ifname: "eth0",
            pod: (ns, name),
        };
        let out = cni::trunkline(
            sim.node.name(),
            &call,
            &cni::trunkline_conf("1.1.0", &sim.socket(), None),
        )?;
        if !out.success {
            bail!("ADD {ns}/{name} failed: {} {}", out.stdout, out.stderr);
        }
        println!("{}", out.stdout.trim());
        println!("(took {:.1} ms)", out.took.as_secs_f64() * 1000.0);
        netns.push((pod, path, cid, *ns, *name));
    }

    step("traffic from the three pods through a VPC that checks source addresses per ENI")?;
    let fabric = Fabric::install(&sim)?;
    let ip_of = |i: usize| -> Result<Ipv4Addr> {
        let out = netns[i]
            .0
            .exec_ok("ip", &["-4", "-o", "addr", "show", "dev", "eth0"])?;
        let word = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .context("no pod IP")?;
        Ok(word.split('/').next().unwrap_or_default().parse()?)
    };
    let (web, cart) = (ip_of(0)?, ip_of(1)?);
    own(&sim, "eth0", web)?;
    own(&sim, "eth1", cart)?;
    let inet_ip = Ipv4Addr::new(203, 0, 113, 10);
    let peer_ip = Ipv4Addr::new(192, 168, 64, 10);
    let seen = traffic::udp_echo(&netns[0].0, &sim.inet, inet_ip, 7000, 3)?;
    println!(
        "default/web  {web} -> internet {inet_ip}: the internet saw {} (SNAT to the node IP)",
        seen.peer.ip()
    );
    let seen = traffic::udp_echo(&netns[1].0, &sim.peer, peer_ip, 7001, 3)?;
    let (passed, dropped) = fabric.source_check(&sim, "eth1")?;
    println!(
        "shop/cart    {cart} -> VPC peer {peer_ip}: the peer saw {} (left by eth1; VPC source check passed {passed}, dropped {dropped})",
        seen.peer.ip()
    );
    let seen = traffic::udp_echo(&netns[2].0, &sim.peer, peer_ip, 7002, 3)?;
    let t = fabric.trunk.stats()?;
    println!(
        "default/aws-cli (branch ENI, VLAN 1) -> VPC peer: the peer saw {}; EC2's trunk accepted {} tagged frames, rejected {}, tagged {} replies",
        seen.peer.ip(),
        t.accepted,
        t.rejected,
        t.tagged
    );
    let seen = traffic::tcp_echo(&netns[0].0, &netns[1].0, cart, 8080, b"hello cart")?;
    println!(
        "default/web -> shop/cart on the same node: cart saw {} (one redirect, no stack)",
        seen.peer.ip()
    );

    step("trunkline-agent inspect nat")?;
    let out = Command::new(testbed::drivers::binaries::agent())
        .args(["inspect", "nat", "--bpf-root"])
        .arg(sim.bpf_root())
        .output()
        .context("running trunkline-agent inspect")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    step("trunkline-agent inspect pods")?;
    let out = Command::new(testbed::drivers::binaries::agent())
        .args(["inspect", "pods", "--bpf-root"])
        .arg(sim.bpf_root())
        .output()
        .context("running trunkline-agent inspect")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    step("bpftool map dump pinned <bpf-root>/PODS")?;
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(sim.bpf_root().join("PODS"))
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!("bpftool: {}", String::from_utf8_lossy(&out.stderr));
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));

    step("CNI DEL of the three pods; tearing down the simulated node")?;
    for (_pod, path, cid, ns, name) in &netns {
        let call = Call {
            command: "DEL",
            container_id: cid,
            netns: path,
            ifname: "eth0",
            pod: (ns, name),
        };
        let out = cni::trunkline(
            sim.node.name(),
            &call,
            &cni::trunkline_conf("1.1.0", &sim.socket(), None),
        )?;
        if !out.success {
            bail!("DEL {ns}/{name} failed: {}", out.stdout);
        }
    }
    drop(netns);
    drop(sim);
    println!("agent stopped; namespaces, links, pins and the state dir removed");

    step("a node as aws-node leaves it: SNAT chain, connmark, ip rules, per-ENI tables, two pods")?;
    let legacy = LegacyNode::build()?;
    print!("{}", legacy.legacy_state()?);
    let inet = std::net::SocketAddr::from((Ipv4Addr::new(203, 0, 113, 10), 7100));
    let transfer = traffic::Transfer::start(
        &legacy.pods[0].ns,
        &legacy.sim.inet,
        inet,
        true,
        96,
        std::time::Duration::from_millis(40),
    )?;
    std::thread::sleep(std::time::Duration::from_millis(500));

    step("trunkline-agent migrate --dry-run, then migrate, during a 6 MiB upload to the internet")?;
    let dry = legacy.migrate(&["--dry-run"])?;
    print!("{}", String::from_utf8_lossy(&dry.stdout));
    let out = legacy.migrate(&[])?;
    if !out.status.success() {
        bail!("migrate: {}", String::from_utf8_lossy(&out.stderr));
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let at_switch = transfer.received();
    let seen = transfer.finish()?;
    println!(
        "upload: {} of {} bytes arrived intact: {} ({} of them before the migration), one connection from {} throughout",
        seen.received, seen.sent, seen.intact, at_switch, seen.peer
    );
    let left = legacy.legacy_state()?;
    println!(
        "legacy plumbing left: {}",
        if left.is_empty() {
            "none"
        } else {
            left.as_str()
        }
    );
    drop(legacy);
    println!("namespaces, links and pins removed");
    Ok(())
}
