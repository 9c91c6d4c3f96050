//! `cargo xtask demo`: a pod, a node and a peer in network namespaces, the
//! data path attached, real traffic through it, the counters and a bpftool
//! dump printed, everything removed at the end, also on Ctrl-C.

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{bail, Context, Result};
use testbed::{mini_node::*, object, traffic};
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
    print!("{}", inspect::stats_table(&stats));

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

    step("tearing down")?;
    drop(node);
    println!("namespaces, links and the bpffs mount removed");
    Ok(())
}
