//! CPU per packet under a fixed offered load (issue #14 item 1): what the
//! data path costs, not what the end hosts and the scheduler make of it.
//!
//! - The load: `trafgen` (Debian's netsniff-ng) sends 64-byte UDP frames
//!   from a namespace at a fixed rate that every setup sustains, over many
//!   flows (the source port walks a range). It writes frames straight to
//!   its device (`PACKET_TX_RING`): no socket, no UDP stack on the sender.
//! - The sink: an nftables `netdev` ingress rule on the receiving device
//!   counts and drops them: no socket, no ICMP "port unreachable" back.
//! - The cost: the busy CPU time of the whole machine (`/proc/stat`: all
//!   but idle and iowait), divided by the packets the sink counted. Sender
//!   and sink cost the same in every setup, so differences between setups
//!   are the data path's; the ratio to the baseline (plain routing) says
//!   how much more than routing each one costs.
//! - The program's own cost: `BPF_ENABLE_STATS` (held only while one
//!   measurement runs; the kernel drops it when the descriptor closes) and
//!   each program's `run_time_ns / run_cnt` over that window.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::topology::{
    mini_node::{HOST_VETH, POD_IP},
    netns::Netns,
    snat_node::{SnatNode, INET_IP},
};

/// A host elsewhere in the VPC, behind the router (the VPC's gateway): the
/// sink for pod → VPC and the source for VPC → pod.
pub const VPC_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 10);

/// The scenarios on an edge node (`SnatNode`): name and stream.
/// - SNAT to the internet: pod → internet host, through the NAT;
/// - pod → VPC: untranslated, out of the pod's ENI;
/// - VPC → pod: from the gateway's side straight to the pod.
pub fn edge_streams(n: &SnatNode) -> Result<Vec<(&'static str, Stream<'_>)>> {
    let host_veth = n.node.mac(HOST_VETH)?;
    let node_eni = n.node.mac("eth0")?;
    Ok(vec![
        (
            "SNAT to the internet",
            Stream {
                sender: &n.pod,
                dev: "eth0",
                next_hop: host_veth,
                src: POD_IP,
                dst: INET_IP,
                sink: &n.inet,
                sink_dev: "eth0",
            },
        ),
        (
            "pod -> VPC",
            Stream {
                sender: &n.pod,
                dev: "eth0",
                next_hop: host_veth,
                src: POD_IP,
                dst: VPC_HOST,
                sink: &n.router,
                sink_dev: "eth0",
            },
        ),
        (
            "VPC -> pod",
            Stream {
                sender: &n.router,
                dev: "eth0",
                next_hop: node_eni,
                src: VPC_HOST,
                dst: POD_IP,
                sink: &n.pod,
                sink_dev: "eth0",
            },
        ),
    ])
}

/// One stream of packets: who sends, to whom, who counts.
#[derive(Clone)]
pub struct Stream<'a> {
    pub sender: &'a Netns,
    /// The sender's device (its MAC is the frames' source).
    pub dev: &'a str,
    /// The next hop's MAC on `dev`.
    pub next_hop: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sink: &'a Netns,
    /// The device the packets arrive on in `sink`.
    pub sink_dev: &'a str,
}

/// The offered load.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub pps: u32,
    pub secs: u32,
    /// Source ports `10000..10000 + flows`, one after the other.
    pub flows: u16,
}

/// One measurement.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Cost {
    pub offered: u64,
    pub delivered: u64,
    /// Busy CPU time of the machine over the window, ns.
    pub cpu_ns: u64,
    pub ns_per_packet: f64,
}

/// Busy and total jiffies of all CPUs (`/proc/stat`'s first line).
fn cpu_jiffies() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    Ok((busy, busy + field(3) + field(4)))
}

fn jiffy_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        1_000_000_000 / hz as u64
    } else {
        10_000_000
    }
}

fn mac(m: [u8; 6]) -> String {
    dataplane_common::MacAddr(m).to_string()
}

/// trafgen's packet: Ethernet, IPv4, UDP from a walking source port to
/// port 9 (checksums computed by trafgen for each packet), 18 bytes of
/// payload: 60 bytes, 64 on a wire with the FCS.
fn trafgen_conf(
    next_hop: [u8; 6],
    own_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    flows: u16,
) -> String {
    let last = 10000 + u32::from(flows.max(1)) - 1;
    format!(
        "{{\n  eth(da={}, sa={}),\n  ipv4(sa={src}, da={dst}, ttl=64),\n  udp(sp=dinc(10000, {last}, 1), dp=9),\n  fill(0x61, 18),\n}}\n",
        mac(next_hop),
        mac(own_mac),
    )
}

/// The sink's nft table: a counter and a drop for our stream's packets.
struct Sink<'a> {
    ns: &'a Netns,
    table: String,
}

impl<'a> Sink<'a> {
    fn install(ns: &'a Netns, dev: &str, dst: Ipv4Addr) -> Result<Self> {
        let table = crate::unique("tlsink").replace('-', "_");
        let rules = format!(
            "table netdev {table} {{\n chain in {{\n  type filter hook ingress device \"{dev}\" priority -500; policy accept;\n  ip daddr {dst} udp dport 9 counter drop\n }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{table}.nft"));
        std::fs::write(&file, rules)?;
        let r = ns.exec_ok("nft", &["-f", &file.to_string_lossy()]);
        let _ = std::fs::remove_file(&file);
        r?;
        Ok(Self { ns, table })
    }

    fn packets(&self) -> Result<u64> {
        let out = self
            .ns
            .exec_ok("nft", &["-j", "list", "table", "netdev", &self.table])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("nft JSON")?;
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["rule"]["expr"].as_array())
            .flatten()
            .find_map(|e| e["counter"]["packets"].as_u64())
            .context("no counter in the sink table")
    }
}

impl Drop for Sink<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .exec_ok("nft", &["delete", "table", "netdev", &self.table]);
    }
}

/// Sends `load` along `s` and measures what the machine spent per
/// delivered packet.
pub fn measure(s: &Stream, load: Load, dir: &Path) -> Result<Cost> {
    let own = s.sender.mac(s.dev)?;
    let conf = dir.join(format!("{}.cfg", crate::unique("trafgen")));
    std::fs::write(
        &conf,
        trafgen_conf(s.next_hop, own, s.src, s.dst, load.flows),
    )?;
    let sink = Sink::install(s.sink, s.sink_dev, s.dst)?;
    let offered = u64::from(load.pps) * u64::from(load.secs);
    let (busy0, _) = cpu_jiffies()?;
    let t0 = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", s.sender.name(), "trafgen"])
        .args(["--dev", s.dev, "--conf"])
        .arg(&conf)
        .args(["--rate", &format!("{}pps", load.pps)])
        .args(["--num", &offered.to_string()])
        .args(["--cpus", "1", "--no-cpu-stats", "--notouch-irq"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning trafgen (Debian package netsniff-ng)")?;
    let limit = Duration::from_secs(u64::from(load.secs) * 3 + 10);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("trafgen did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let the last packets land.
    std::thread::sleep(Duration::from_millis(50));
    let (busy1, _) = cpu_jiffies()?;
    let _ = std::fs::remove_file(&conf);
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read as _;
            let _ = e.read_to_string(&mut err);
        }
        bail!("trafgen failed ({status}): {err}");
    }
    let delivered = sink.packets()?;
    let cpu_ns = (busy1.saturating_sub(busy0)) * jiffy_ns();
    Ok(Cost {
        offered,
        delivered,
        cpu_ns,
        ns_per_packet: if delivered > 0 {
            cpu_ns as f64 / delivered as f64
        } else {
            f64::NAN
        },
    })
}

/// Run time and count of every loaded program with one of `names`,
/// summed per name (`bpftool prog show`'s `run_time_ns`, `run_cnt`).
pub fn prog_stats(names: &[&str]) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut out = BTreeMap::new();
    for p in aya::programs::loaded_programs() {
        let Ok(p) = p else { continue };
        let Ok(name) = p.name_as_str().map(str::to_string).context("name") else {
            continue;
        };
        if !names.contains(&name.as_str()) {
            continue;
        }
        let e = out.entry(name).or_insert((0u64, 0u64));
        e.0 += p.run_time().as_nanos() as u64;
        e.1 += p.run_count();
    }
    Ok(out)
}

/// `BPF_ENABLE_STATS` while it lives (the kernel stops counting when the
/// descriptor closes, also if the process dies).
pub struct BpfStats(#[allow(dead_code)] std::os::fd::OwnedFd);

impl BpfStats {
    pub fn enable() -> Result<Self> {
        Ok(Self(
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("BPF_ENABLE_STATS (run time)")?,
        ))
    }
}

/// ns per run of each program between two [`prog_stats`] snapshots.
pub fn ns_per_run(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
) -> BTreeMap<String, (f64, u64)> {
    after
        .iter()
        .filter_map(|(name, (t1, n1))| {
            let (t0, n0) = before.get(name).copied().unwrap_or((0, 0));
            let runs = n1.saturating_sub(n0);
            (runs > 0).then(|| {
                (
                    name.clone(),
                    (t1.saturating_sub(t0) as f64 / runs as f64, runs),
                )
            })
        })
        .collect()
}

/// Each scenario's measurements: `[node][round]`.
pub type ScenarioCosts = (&'static str, Vec<Vec<Cost>>);
/// Each scenario's programs: name → (ns per run, runs).
pub type ScenarioPrograms = (&'static str, BTreeMap<String, (f64, u64)>);

/// Every scenario on every node, `rounds` times, interleaved (round by
/// round, scenario by scenario, node by node): `[scenario][node][round]`.
pub fn rounds(
    nodes: &[(&str, &SnatNode)],
    load: Load,
    rounds: usize,
    dir: &Path,
) -> Result<Vec<ScenarioCosts>> {
    let streams: Vec<Vec<(&'static str, Stream)>> = nodes
        .iter()
        .map(|(_, n)| edge_streams(n))
        .collect::<Result<_>>()?;
    let names: Vec<&'static str> = streams
        .first()
        .map(|s| s.iter().map(|(name, _)| *name).collect())
        .unwrap_or_default();
    let mut out: Vec<ScenarioCosts> = names
        .iter()
        .map(|n| (*n, vec![Vec::new(); nodes.len()]))
        .collect();
    for round in 0..rounds {
        for (si, name) in names.iter().enumerate() {
            for (ni, (setup, _)) in nodes.iter().enumerate() {
                eprintln!(
                    "bench: CPU per packet, round {}/{rounds}: {name}, {setup} ...",
                    round + 1
                );
                let c = measure(&streams[ni][si].1, load, dir)
                    .with_context(|| format!("{name} on {setup}"))?;
                out[si].1[ni].push(c);
            }
        }
    }
    Ok(out)
}

/// Each trunkline program's ns per run under each scenario's load, with
/// `BPF_ENABLE_STATS` on for that pass only (it costs two clock reads per
/// run, which must not reach the CPU figures).
pub fn program_costs(n: &SnatNode, load: Load, dir: &Path) -> Result<Vec<ScenarioPrograms>> {
    const PROGRAMS: [&str; 4] = ["from_pod", "to_pod", "from_eni", "to_eni"];
    let _stats = BpfStats::enable()?;
    let mut out = Vec::new();
    for (name, s) in edge_streams(n)? {
        let before = prog_stats(&PROGRAMS)?;
        measure(&s, load, dir).with_context(|| format!("{name} with BPF stats"))?;
        let after = prog_stats(&PROGRAMS)?;
        out.push((name, ns_per_run(&before, &after)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trafgen_packet_walks_the_source_port_over_the_flows() {
        let conf = trafgen_conf(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(192, 168, 31, 170),
            Ipv4Addr::new(203, 0, 113, 10),
            256,
        );
        assert!(
            conf.contains("udp(sp=dinc(10000, 10255, 1), dp=9)"),
            "{conf}"
        );
        assert!(
            conf.contains("ipv4(sa=192.168.31.170, da=203.0.113.10, ttl=64)"),
            "{conf}"
        );
        assert!(
            conf.contains("eth(da=02:00:00:00:00:01, sa=02:00:00:00:00:02)"),
            "{conf}"
        );
    }
}
