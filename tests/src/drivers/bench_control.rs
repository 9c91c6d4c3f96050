//! Control-path measurements for `cargo xtask bench`: CNI ADD/DEL latency
//! over a burst of pods, the agent's memory and CPU at that many pods, and
//! how long a VPC CIDR change takes to reach the data path under traffic
//! (trunkline: SIGHUP to map entry; legacy: one more iptables rule).

use std::{
    net::{Ipv4Addr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{lpm_trie::Key, LpmTrie, Map, MapData};

use crate::{
    drivers::cni::{self, Call},
    topology::{
        netns::Netns,
        sim_node::{node_file, SimNode},
    },
};

#[derive(Debug, Default)]
pub struct ControlPath {
    pub pods: usize,
    pub add_p50_ms: f64,
    pub add_p99_ms: f64,
    pub del_p50_ms: f64,
    pub del_p99_ms: f64,
    pub agent_rss_mb: f64,
    pub agent_cpu_ms: f64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// (RSS in MB, user+system CPU in ms) of process `pid`.
fn usage(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((rss_kb / 1024.0, ticks * 1000.0 / hz))
}

/// ADD then DEL of `n` pods through the real plugin, one after the other as
/// a kubelet burst would; the agent's RSS with all of them in place and the
/// CPU it used for the whole burst.
pub fn cni_burst(n: usize) -> Result<ControlPath> {
    let ips: Vec<Ipv4Addr> = (0..n)
        .map(|i| Ipv4Addr::new(192, 168, 1 + (i / 250) as u8, (i % 250) as u8 + 1))
        .collect();
    let mut sim = SimNode::build()?;
    std::fs::write(sim.node_file(), node_file(&ips, &[]))?;
    sim.start_agent()?;
    let pid = sim
        .agent
        .as_ref()
        .and_then(|a| a.pid())
        .context("agent pid")?;
    let cpu0 = usage(pid)?.1;
    let conf = cni::trunkline_conf("1.0.0", &sim.socket(), None);
    let mut pods = Vec::new();
    let mut adds = Vec::new();
    for i in 0..n {
        let ns = Netns::new("pod")?;
        let path = format!("/run/netns/{}", ns.name());
        let cid = format!("bench-{i}");
        let name = format!("p{i}");
        let call = Call {
            command: "ADD",
            container_id: &cid,
            netns: &path,
            ifname: "eth0",
            pod: ("bench", &name),
        };
        let out = cni::trunkline(sim.node.name(), &call, &conf)?;
        anyhow::ensure!(out.success, "ADD {i}: {}", out.stdout);
        adds.push(out.took.as_secs_f64() * 1e3);
        pods.push((ns, path, cid, name));
    }
    let (rss, _) = usage(pid)?;
    let mut dels = Vec::new();
    for (_ns, path, cid, name) in &pods {
        let call = Call {
            command: "DEL",
            container_id: cid,
            netns: path,
            ifname: "eth0",
            pod: ("bench", name),
        };
        let out = cni::trunkline(sim.node.name(), &call, &conf)?;
        anyhow::ensure!(out.success, "DEL: {}", out.stdout);
        dels.push(out.took.as_secs_f64() * 1e3);
    }
    let cpu = usage(pid)?.1 - cpu0;
    Ok(ControlPath {
        pods: n,
        add_p50_ms: pct(&mut adds, 0.5),
        add_p99_ms: pct(&mut adds, 0.99),
        del_p50_ms: pct(&mut dels, 0.5),
        del_p99_ms: pct(&mut dels, 0.99),
        agent_rss_mb: rss,
        agent_cpu_ms: cpu,
    })
}

/// UDP traffic from `ns` to `dst` until `stop` (the "under load" part).
fn background_udp(
    ns: &Netns,
    dst: (Ipv4Addr, u16),
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    let sock = ns.run_in(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
    Ok(std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let _ = sock.send_to(b"load", dst);
        }
    }))
}

/// Time from asking for a VPC CIDR change to the data path having it, with
/// a pod sending at full rate: trunkline (node file + SIGHUP → `NO_SNAT`
/// entry present) and legacy (one `iptables -I ... RETURN`, aws-node's way).
pub fn cidr_change_ms() -> Result<(f64, f64)> {
    let (sim, _fabric, pod) = crate::topology::vpc_fabric::node_with_pod(&[], "loader")?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = background_udp(&pod.ns, (Ipv4Addr::new(203, 0, 113, 10), 9), stop.clone())?;
    std::thread::sleep(Duration::from_millis(300));

    let data = MapData::from_pin(sim.bpf_root().join("NO_SNAT"))?;
    let trie: LpmTrie<MapData, [u8; 4], u32> = LpmTrie::try_from(Map::from_map_data(data)?)?;
    let want = Key::new(24, [203, 0, 113, 0]);
    let file = std::fs::read_to_string(sim.node_file())?;
    std::fs::write(
        sim.node_file(),
        file.replace(
            "\"100.64.0.0/16\"]",
            "\"100.64.0.0/16\", \"203.0.113.0/24\"]",
        ),
    )?;
    let t = Instant::now();
    sim.agent.as_ref().context("agent")?.hangup()?;
    while trie.get(&want, 0).is_err() {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "NO_SNAT never got the CIDR"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let trunkline = t.elapsed().as_secs_f64() * 1e3;

    // Legacy, on the same loaded node: one more RETURN rule in the nat chain.
    sim.node
        .exec_ok("iptables", &["-t", "nat", "-N", "AWS-SNAT-CHAIN-0"])?;
    let t = Instant::now();
    sim.node.exec_ok(
        "iptables",
        &[
            "-t",
            "nat",
            "-I",
            "AWS-SNAT-CHAIN-0",
            "1",
            "-d",
            "203.0.113.0/24",
            "-j",
            "RETURN",
        ],
    )?;
    let legacy = t.elapsed().as_secs_f64() * 1e3;
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    Ok((trunkline, legacy))
}

/// Datagrams sent and received through SNAT while the agent is SIGKILLed
/// and started again, on the same object (`upgrade` false) or on a rebuilt
/// one (`upgrade` true: every attachment switches program).
pub fn restart_loss(upgrade: bool) -> Result<(u32, u32)> {
    let (mut sim, _fabric, pod) = crate::topology::vpc_fabric::node_with_pod(&[], "streamer")?;
    let rebuilt = if upgrade {
        Some(crate::kernel::object::rebuilt(sim.dir.path())?)
    } else {
        None
    };
    let server = sim
        .inet
        .run_in(|| UdpSocket::bind((Ipv4Addr::new(203, 0, 113, 10), 7600)))?;
    let seen = crate::drivers::traffic::udp_stream_across(&pod.ns, server, 20_000, || {
        sim.kill_agent();
        if rebuilt.is_some() {
            sim.ebpf_object = rebuilt.clone();
        }
        sim.start_agent()
    })?;
    Ok((seen.sent, seen.received))
}
