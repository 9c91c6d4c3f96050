//! `cargo xtask bench`: trunkline against the plumbing it replaces and
//! against plain routing, side by side in one run on the same topology
//! (the edge of the simulated VPC: pod → node → router → internet host).
//!
//! - baseline: the node routes, no NAT, no rules;
//! - legacy: aws-node's iptables SNAT chain (`AWS-SNAT-CHAIN-0`);
//! - trunkline: the eBPF data path.
//!
//! Ratios matter, not absolute figures: the machine is shared. The three
//! nodes are measured in interleaved rounds and reported as median and
//! range, a claim only where ranges do not overlap (issue #14 item 2).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use dataplane_common::SnatMode;
use serde_json::{json, Value};
use testbed::{
    drivers::{
        bench_conntrack::{self, GcCost, SearchCost},
        cpu_cost,
        traffic::Background,
    },
    kernel::object,
    topology::snat_node::{self, Plumbing, SnatNode, SnatOptions, INET_IP},
};
use trunkline_agent::dataplane::{MapOwner, NodeMaps, PodMaps};

/// The fixed offered load of the CPU-per-packet figures: well below what
/// the slowest setup forwards here (over 100 kpps of 64-byte UDP), so all
/// three deliver all of it and only their CPU time differs.
const CPU_LOAD_PPS: u32 = 40_000;

struct Setup {
    name: &'static str,
    opts: SnatOptions,
}

fn setups() -> Vec<Setup> {
    // The same port space for both NATs: netfilter's SNAT uses 1024-65535.
    let d = SnatOptions {
        port_min: 1024,
        port_max: 65535,
        ..SnatOptions::default()
    };
    vec![
        Setup {
            name: "baseline",
            opts: SnatOptions {
                plumbing: Plumbing::Legacy,
                mode: SnatMode::Off,
                ..d
            },
        },
        Setup {
            name: "legacy",
            opts: SnatOptions {
                plumbing: Plumbing::Legacy,
                ..d
            },
        },
        Setup {
            name: "trunkline",
            opts: d,
        },
    ]
}

fn iperf(n: &SnatNode, args: &[&str], secs: u64) -> Result<Value> {
    let server = Background::spawn(
        &n.inet,
        "iperf3",
        &["-s", "-1", "-B", &INET_IP.to_string(), "-p", "5201"],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let t = secs.to_string();
    let mut a = vec!["-c", "203.0.113.10", "-p", "5201", "-t", &t, "-J"];
    a.extend_from_slice(args);
    let out = n.pod.exec("iperf3", &a)?;
    drop(server);
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

fn tcp_gbps(n: &SnatNode, streams: u32, secs: u64) -> Result<f64> {
    let p = streams.to_string();
    let v = iperf(n, &["-P", &p], secs)?;
    Ok(v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9)
}

fn udp_kpps(n: &SnatNode, secs: u64) -> Result<f64> {
    let v = iperf(n, &["-u", "-l", "64", "-b", "0"], secs)?;
    let sum = &v["end"]["sum"];
    let delivered =
        sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0);
    Ok(delivered / sum["seconds"].as_f64().unwrap_or(secs as f64) / 1e3)
}

/// Connections that failed across the whole run (reported).
static CONN_FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Short TCP connections (connect, 64-byte request, 64-byte response,
/// close) from the pod for `secs`: connections per second and latency
/// percentiles of the whole exchange, in µs.
fn conn_rate(n: &SnatNode, secs: u64, port: u16) -> Result<(f64, f64, f64)> {
    // Thousands of short connections a second: the pod needs the whole
    // port space (closed connections hold theirs in TIME_WAIT).
    n.pod.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    let secs = secs.min(3);
    let listener = n.inet.run_in(|| TcpListener::bind((INET_IP, port)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_srv = stop.clone();
    listener.set_nonblocking(true)?;
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stop_srv.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    if c.read_exact(&mut buf).is_ok() {
                        let _ = c.write_all(&buf);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_micros(50)),
            }
        }
    });
    let dst = SocketAddr::from((INET_IP, port));
    // A connection that fails (no answer within 1 s) is counted, not fatal.
    let (mut lat, failed) = n.pod.run_in(move || {
        let mut lat = Vec::new();
        let mut failed = 0u64;
        let end = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 64];
        while Instant::now() < end {
            let t = Instant::now();
            let mut exchange = || -> std::io::Result<()> {
                let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(1))?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                s.write_all(&[7u8; 64])?;
                s.read_exact(&mut buf)
            };
            match exchange() {
                Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                Err(_) => failed += 1,
            }
        }
        (lat, failed)
    });
    CONN_FAILURES.fetch_add(failed, Ordering::Relaxed);
    if failed > 0 {
        eprintln!("bench: {failed} connections failed in this measurement");
    }
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
    };
    Ok((lat.len() as f64 / secs as f64, pct(0.50), pct(0.99)))
}

/// `n` distinct /32s that no test traffic goes to.
fn unused_hosts(n: usize, first_octet: u8) -> Vec<std::net::Ipv4Addr> {
    (0..n)
        .map(|i| std::net::Ipv4Addr::new(first_octet, 77, (i / 250) as u8, (i % 250) as u8 + 1))
        .collect()
}

/// Connection rate as the exclusion list grows: legacy grows RETURN rules
/// in its nat chain, trunkline grows NO_SNAT entries.
fn cidr_sweep(object: &[u8], secs: u64, sizes: &[usize]) -> Result<Vec<(usize, f64, f64)>> {
    let mut out = Vec::new();
    let dir = std::env::temp_dir();
    for &n in sizes {
        let cidrs: Vec<String> = unused_hosts(n, 10)
            .iter()
            .map(|ip| format!("{ip}/32"))
            .collect();
        let legacy = SnatNode::new(
            object,
            SnatOptions {
                plumbing: Plumbing::Legacy,
                ..SnatOptions::default()
            },
        )?;
        testbed::drivers::legacy::add_exclusions(&legacy.node, &dir, &cidrs)?;
        let l = conn_rate(&legacy, secs, 7100)?.0;
        drop(legacy);
        let tl = SnatNode::new(
            object,
            SnatOptions {
                port_min: 1024,
                port_max: 65535,
                ..SnatOptions::default()
            },
        )?;
        let excluded = unused_hosts(n, 10).into_iter().map(ipnet::Ipv4Net::from);
        NodeMaps::open(tl.bpffs.path())?.sync_no_snat(&snat_node::no_snat(excluded))?;
        let t = conn_rate(&tl, secs, 7100)?.0;
        out.push((n, l, t));
        eprintln!("bench: {n} exclusion CIDRs: legacy {l:.0} conn/s, trunkline {t:.0} conn/s");
    }
    Ok(out)
}

/// UDP packet rate as the node's pod count grows: legacy grows ip rules
/// (walked per packet), trunkline grows PODS entries (one hash lookup).
fn pod_sweep(object: &[u8], secs: u64, sizes: &[usize]) -> Result<Vec<(usize, f64, f64)>> {
    let mut out = Vec::new();
    let dir = std::env::temp_dir();
    for &n in sizes {
        let others = unused_hosts(n, 100);
        let legacy = SnatNode::new(
            object,
            SnatOptions {
                plumbing: Plumbing::Legacy,
                ..SnatOptions::default()
            },
        )?;
        testbed::drivers::legacy::add_pod_rules(&legacy.node, &dir, &others, 2)?;
        let l = udp_kpps(&legacy, secs)?;
        drop(legacy);
        let tl = SnatNode::new(
            object,
            SnatOptions {
                port_min: 1024,
                port_max: 65535,
                ..SnatOptions::default()
            },
        )?;
        let mut pod_maps = PodMaps::open(tl.bpffs.path())?;
        for ip in &others {
            let entry = dataplane_common::PodEntry {
                host_ifindex: 999,
                eni_ifindex: 999,
                ..Default::default()
            };
            pod_maps.put_pod(*ip, &entry)?;
        }
        let t = udp_kpps(&tl, secs)?;
        out.push((n, l, t));
        eprintln!("bench: {n} pods: legacy {l:.1} kpps, trunkline {t:.1} kpps");
    }
    Ok(out)
}

/// How far the last point is from the first, in percent.
fn drift(first: f64, last: f64) -> f64 {
    if first > 0.0 {
        (last - first) / first * 100.0
    } else {
        0.0
    }
}

fn uname() -> String {
    std::process::Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// GC from 10k to 1M flows (to 100k with `--quick`) and the port
/// search's attempts.
fn conntrack_costs(quick: bool) -> Result<(Vec<GcCost>, Vec<SearchCost>)> {
    let sizes: &[usize] = if quick {
        &[10_000, 100_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    let mut gc = Vec::new();
    for &flows in sizes {
        eprintln!("bench: conntrack GC at {flows} flows ...");
        gc.push(bench_conntrack::gc_cost(flows)?);
    }
    Ok((
        gc,
        bench_conntrack::port_search(if quick { 200 } else { 1_000 }),
    ))
}

fn conntrack_md(gc: &[GcCost], search: &[SearchCost]) -> String {
    let mut md = format!(
        "\n## Conntrack\n\nGC passes over tables 1.25x the flows, half of the flows expired; batched reads and deletes, at most {} removals per pass:\n\n\
         | flows | first pass ms | removed | passes to clean | clean ms | idle pass ms | batched read ms | element-by-element read ms |\n|---|---|---|---|---|---|---|---|\n",
        gc.first().map_or(0, |g| g.budget)
    );
    for g in gc {
        md.push_str(&format!(
            "| {} | {:.0} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            g.flows,
            g.first_pass_ms,
            g.first_pass_removed,
            g.passes_to_clean,
            g.clean_ms,
            g.idle_pass_ms,
            g.batched_read_ms,
            g.per_element_read_ms
        ));
    }
    md.push_str("\nSNAT port search: new flows to one destination whose ports (32768-65535) are taken to the given share (each new flow removed once mapped, so all see that share); attempts per new mapping:\n\n| mode | taken | 1 | 2-4 | 5-16 | 17+ | 129+ | mean | no port |\n|---|---|---|---|---|---|---|---|---|\n");
    for c in search {
        let a = &c.attempts;
        md.push_str(&format!(
            "| {} | {} % | {} | {} | {} | {} | {} | {:.1} | {} |\n",
            c.mode,
            c.occupancy_percent,
            a.try_1,
            a.try_2_4,
            a.try_5_16,
            a.try_17_plus,
            a.try_129_plus,
            a.mean,
            c.no_port
        ));
    }
    md
}

/// `--conntrack`: only the conntrack measurements, printed as JSON (they
/// need no traffic and take about a minute).
fn conntrack_only(quick: bool) -> Result<()> {
    let (gc, search) = conntrack_costs(quick)?;
    eprint!("{}", conntrack_md(&gc, &search));
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({"conntrack": {"gc": gc, "port_search": search}}))?
    );
    Ok(())
}

/// One round's headline figures of one setup.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    tcp1: f64,
    tcp4: f64,
    udp: f64,
    cps: f64,
    p50: f64,
    p99: f64,
}

/// A headline metric: JSON key, column label, its value, and whether more
/// is better (throughput) or less (latency).
struct Metric {
    key: &'static str,
    label: &'static str,
    of: fn(&Figures) -> f64,
    higher_is_better: bool,
}

const METRICS: [Metric; 6] = [
    Metric {
        key: "tcp1_gbps",
        label: "TCP 1 stream Gbit/s",
        of: |f| f.tcp1,
        higher_is_better: true,
    },
    Metric {
        key: "tcp4_gbps",
        label: "TCP 4 streams Gbit/s",
        of: |f| f.tcp4,
        higher_is_better: true,
    },
    Metric {
        key: "udp64_kpps",
        label: "UDP 64 B kpps",
        of: |f| f.udp,
        higher_is_better: true,
    },
    Metric {
        key: "conn_per_s",
        label: "TCP conn/s",
        of: |f| f.cps,
        higher_is_better: true,
    },
    Metric {
        key: "conn_p50_us",
        label: "conn p50 µs",
        of: |f| f.p50,
        higher_is_better: false,
    },
    Metric {
        key: "conn_p99_us",
        label: "conn p99 µs",
        of: |f| f.p99,
        higher_is_better: false,
    },
];

/// Median and range of repeated measurements.
#[derive(Clone, Copy, Debug)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Spread {
                median: 0.0,
                min: 0.0,
                max: 0.0,
            };
        }
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    fn json(&self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max})
    }
}

/// What the ranges of `a` (trunkline) and `b` (a reference) allow to say:
/// better or worse only where they do not overlap.
fn claim(a: &Spread, b: &Spread, higher_is_better: bool) -> &'static str {
    let (above, below) = (a.min > b.max, a.max < b.min);
    match (above, below, higher_is_better) {
        (true, _, true) | (_, true, false) => "better",
        (true, _, false) | (_, true, true) => "worse",
        _ => "ranges overlap: no claim",
    }
}

/// One round of every headline measurement on `n`; `round` picks the
/// connection-rate server port, so that rounds never meet the previous
/// rounds' TIME_WAIT entries in either NAT's table.
fn measure(n: &SnatNode, secs: u64, round: u16) -> Result<Figures> {
    let tcp1 = tcp_gbps(n, 1, secs)?;
    let tcp4 = tcp_gbps(n, 4, secs)?;
    let udp = udp_kpps(n, secs)?;
    let (cps, p50, p99) = conn_rate(n, secs, 7100 + round)?;
    Ok(Figures {
        tcp1,
        tcp4,
        udp,
        cps,
        p50,
        p99,
    })
}

/// The CPU-per-packet section: per scenario, each setup's ns per delivered
/// packet (median, min–max over the rounds), trunkline's ratio to legacy
/// and to the baseline paired by round with a claim only where the ranges
/// do not overlap, what trunkline adds over plain routing, the chart, and
/// each program's own cost per run.
fn cpu_section(
    cpu: &[cpu_cost::ScenarioCosts],
    programs: &[cpu_cost::ScenarioPrograms],
    load: cpu_cost::Load,
    names: &[&str],
    dir: &std::path::Path,
    stamp: &str,
) -> Result<(String, Value)> {
    let idx = |name: &str| names.iter().position(|n| *n == name);
    let (Some(b), Some(l), Some(t)) = (idx("baseline"), idx("legacy"), idx("trunkline")) else {
        bail!("the CPU figures need the baseline, legacy and trunkline setups");
    };
    let mut md = format!(
        "## CPU per packet (the headline)\n\nA fixed load of {} pps of 64-byte UDP over {} flows for {} s per round (trafgen, `PACKET_TX_RING`), counted and dropped at the receiving device by an nftables ingress rule; the figure is the busy CPU time of the whole machine (`/proc/stat`) per delivered packet, sender and sink included (the same in every setup). Lower is better.\n\n| scenario | delivered | baseline ns | legacy ns | trunkline ns | trunkline / legacy | claim | trunkline / baseline | trunkline − baseline ns |\n|---|---|---|---|---|---|---|---|---|\n",
        load.pps, load.flows, load.secs
    );
    let mut json_rows = Vec::new();
    let mut groups = Vec::new();
    for (scenario, per_setup) in cpu {
        let ns = |i: usize| -> Vec<f64> { per_setup[i].iter().map(|c| c.ns_per_packet).collect() };
        let (sb, sl, st) = (Spread::of(&ns(b)), Spread::of(&ns(l)), Spread::of(&ns(t)));
        let paired = |a: &[f64], r: &[f64], f: fn(f64, f64) -> f64| {
            Spread::of(&a.iter().zip(r).map(|(x, y)| f(*x, *y)).collect::<Vec<_>>())
        };
        let vs_legacy = paired(&ns(t), &ns(l), |x, y| x / y);
        let vs_base = paired(&ns(t), &ns(b), |x, y| x / y);
        let over_base = paired(&ns(t), &ns(b), |x, y| x - y);
        let claim_l = claim(&st, &sl, false);
        let delivered: u64 = per_setup.iter().flatten().map(|c| c.delivered).sum();
        let offered: u64 = per_setup.iter().flatten().map(|c| c.offered).sum();
        let r = |s: &Spread| format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max);
        md.push_str(&format!(
            "| {scenario} | {:.2} % | {} | {} | {} | {:.2}× ({:.2}–{:.2}) | {claim_l} | {:.2}× ({:.2}–{:.2}) | {} |\n",
            100.0 * delivered as f64 / offered.max(1) as f64,
            r(&sb),
            r(&sl),
            r(&st),
            vs_legacy.median,
            vs_legacy.min,
            vs_legacy.max,
            vs_base.median,
            vs_base.min,
            vs_base.max,
            r(&over_base),
        ));
        json_rows.push(json!({
            "scenario": scenario,
            "delivered_share": delivered as f64 / offered.max(1) as f64,
            "baseline_ns": sb.json(), "legacy_ns": sl.json(), "trunkline_ns": st.json(),
            "baseline_rounds": ns(b), "legacy_rounds": ns(l), "trunkline_rounds": ns(t),
            "trunkline_over_legacy": vs_legacy.json(), "claim_vs_legacy": claim_l,
            "trunkline_over_baseline": vs_base.json(), "trunkline_minus_baseline_ns": over_base.json(),
        }));
        let ranged = |s: &Spread| testbed::drivers::charts::Ranged {
            median: s.median,
            min: s.min,
            max: s.max,
        };
        groups.push((
            scenario.to_string(),
            vec![ranged(&sb), ranged(&sl), ranged(&st)],
        ));
    }
    let chart = format!("{stamp}-cpu.svg");
    testbed::drivers::charts::bars(
        &dir.join(&chart),
        "CPU per delivered packet (median, min–max)",
        "ns per packet",
        &["baseline", "legacy", "trunkline"],
        &groups,
    )?;
    md.push_str(&format!("\n![CPU per packet]({chart})\n\nThe programs' own cost under the same load (one more pass on the trunkline node with `BPF_ENABLE_STATS`: run time / runs):\n\n| scenario | program | ns per run | runs |\n|---|---|---|---|\n"));
    let mut json_programs = Vec::new();
    for (scenario, progs) in programs {
        for (prog, (ns, runs)) in progs {
            md.push_str(&format!("| {scenario} | {prog} | {ns:.0} | {runs} |\n"));
            json_programs.push(
                json!({"scenario": scenario, "program": prog, "ns_per_run": ns, "runs": runs}),
            );
        }
    }
    Ok((
        md,
        json!({"load_pps": load.pps, "flows": load.flows, "seconds": load.secs, "scenarios": json_rows, "programs": json_programs}),
    ))
}

/// The results directory and a UTC timestamp for file names.
fn results_dir() -> Result<(std::path::PathBuf, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    std::fs::create_dir_all(&dir)?;
    let stamp = std::process::Command::new("date")
        .arg("+%Y%m%dT%H%M%SZ")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "run".into());
    Ok((dir, stamp))
}

/// `--cpu`: only the CPU-per-packet section (same rounds and load as the
/// full run), written to `<stamp>-cpu.{md,json}` beside its chart.
fn cpu_only(quick: bool) -> Result<()> {
    let (secs, rounds) = if quick { (2, 3) } else { (5, 5) };
    let object = object::bytes();
    let mut nodes = Vec::new();
    for s in setups() {
        nodes.push((s.name, SnatNode::new(&object, s.opts)?));
    }
    let load = cpu_cost::Load {
        pps: CPU_LOAD_PPS,
        secs,
        flows: 256,
    };
    let scratch = testbed::topology::sim_node::TempDir::new("bench")?;
    let refs: Vec<(&str, &SnatNode)> = nodes.iter().map(|(name, n)| (*name, n)).collect();
    let cpu = cpu_cost::rounds(&refs, load, rounds, scratch.path())?;
    let tl = refs
        .iter()
        .find(|(name, _)| *name == "trunkline")
        .map(|(_, n)| *n)
        .context("no trunkline node")?;
    let programs = cpu_cost::program_costs(tl, load, scratch.path())?;
    let names: Vec<&str> = refs.iter().map(|(n, _)| *n).collect();
    let (dir, stamp) = results_dir()?;
    let (md, json) = cpu_section(&cpu, &programs, load, &names, &dir, &stamp)?;
    let md = format!(
        "# trunkline benchmark: CPU per packet\n\nkernel {}, {} CPUs, {rounds} interleaved rounds{}\n\n{md}",
        uname(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        if quick { " (--quick)" } else { "" }
    );
    std::fs::write(dir.join(format!("{stamp}-cpu.md")), &md)?;
    std::fs::write(
        dir.join(format!("{stamp}-cpu.json")),
        serde_json::to_string_pretty(
            &json!({"kernel": uname(), "rounds": rounds, "cpu_per_packet": json}),
        )?,
    )?;
    print!("{md}");
    println!("\nwritten to bench/results/{stamp}-cpu.{{md,json,svg}}");
    Ok(())
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--conntrack") {
        return conntrack_only(quick);
    }
    if std::env::args().any(|a| a == "--cpu") {
        return cpu_only(quick);
    }
    let secs = if quick { 2 } else { 5 };
    let rounds: u16 = if quick { 3 } else { 5 };
    let object = object::bytes();
    // All three nodes stay up for the whole run and are measured in turn,
    // round after round (A B C A B C ...): a slow minute of the shared
    // machine then touches every setup, not one.
    let mut nodes = Vec::new();
    for s in setups() {
        nodes.push((s.name, SnatNode::new(&object, s.opts)?));
    }
    let mut figures: Vec<Vec<Figures>> = vec![Vec::new(); nodes.len()];
    for round in 0..rounds {
        for (i, (name, n)) in nodes.iter().enumerate() {
            eprintln!("bench: round {}/{rounds}: {name} ...", round + 1);
            figures[i].push(measure(n, secs, round)?);
        }
    }
    // CPU per packet under a fixed load (the headline), interleaved the
    // same way, then each program's own cost on the trunkline node.
    let load = cpu_cost::Load {
        pps: CPU_LOAD_PPS,
        secs: secs as u32,
        flows: 256,
    };
    let scratch = testbed::topology::sim_node::TempDir::new("bench")?;
    let refs: Vec<(&str, &SnatNode)> = nodes.iter().map(|(name, n)| (*name, n)).collect();
    let cpu = cpu_cost::rounds(&refs, load, rounds as usize, scratch.path())?;
    let tl_node = refs
        .iter()
        .find(|(name, _)| *name == "trunkline")
        .map(|(_, n)| *n)
        .context("no trunkline node")?;
    let programs = cpu_cost::program_costs(tl_node, load, scratch.path())?;
    drop(refs);
    drop(nodes);
    let names: Vec<&str> = setups().iter().map(|s| s.name).collect();
    let of = |name: &str| -> Result<&Vec<Figures>> {
        names
            .iter()
            .position(|n| *n == name)
            .map(|i| &figures[i])
            .with_context(|| format!("missing setup {name}"))
    };
    let (base, legacy, tl) = (of("baseline")?, of("legacy")?, of("trunkline")?);
    let spread = |f: &[Figures], m: &Metric| Spread::of(&f.iter().map(m.of).collect::<Vec<_>>());
    // Ratios paired by round: both setups of a pair ran minutes apart at most.
    let ratio = |a: &[Figures], b: &[Figures], m: &Metric| {
        let r: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(x, y)| {
                let (x, y) = ((m.of)(x), (m.of)(y));
                if y > 0.0 {
                    x / y
                } else {
                    f64::NAN
                }
            })
            .collect();
        Spread::of(&r)
    };
    let (dir, stamp) = results_dir()?;
    let mut md = format!(
        "# trunkline benchmark\n\nkernel {}, {} CPUs, {} s per measurement, {rounds} interleaved rounds{}; every figure is the median (min–max) of the rounds\n\n",
        uname(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        secs,
        if quick { " (--quick)" } else { "" }
    );
    let (cpu_md, cpu_json) = cpu_section(&cpu, &programs, load, &names, &dir, &stamp)?;
    md.push_str(&cpu_md);
    md.push_str("\n## Throughput and connection rate (end hosts included)\n\n| setup |");
    for m in &METRICS {
        md.push_str(&format!(" {} |", m.label));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(METRICS.len()));
    md.push('\n');
    let fmt = |x: f64| {
        if x >= 100.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    };
    for (name, f) in [("baseline", base), ("legacy", legacy), ("trunkline", tl)] {
        md.push_str(&format!("| {name} |"));
        for m in &METRICS {
            let s = spread(f, m);
            md.push_str(&format!(
                " {} ({}–{}) |",
                fmt(s.median),
                fmt(s.min),
                fmt(s.max)
            ));
        }
        md.push('\n');
    }
    md.push_str("\nRatios, trunkline over the reference, paired by round: median (min–max); a claim only where the two setups' ranges do not overlap.\n\n| metric | vs legacy | claim | vs baseline | claim |\n|---|---|---|---|---|\n");
    let mut ratios = serde_json::Map::new();
    for m in &METRICS {
        let (rl, rb) = (ratio(tl, legacy, m), ratio(tl, base, m));
        let (cl, cb) = (
            claim(&spread(tl, m), &spread(legacy, m), m.higher_is_better),
            claim(&spread(tl, m), &spread(base, m), m.higher_is_better),
        );
        md.push_str(&format!(
            "| {} | {:.2}× ({:.2}–{:.2}) | {cl} | {:.2}× ({:.2}–{:.2}) | {cb} |\n",
            m.label, rl.median, rl.min, rl.max, rb.median, rb.min, rb.max
        ));
        ratios.insert(
            m.key.into(),
            json!({"vs_legacy": rl.json(), "vs_legacy_claim": cl, "vs_baseline": rb.json(), "vs_baseline_claim": cb}),
        );
    }
    let setups_json: Vec<Value> = [("baseline", base), ("legacy", legacy), ("trunkline", tl)]
        .iter()
        .map(|(name, f)| {
            let mut o = serde_json::Map::new();
            o.insert("name".into(), json!(name));
            for m in &METRICS {
                o.insert(m.key.into(), spread(f, m).json());
                o.insert(
                    format!("{}_rounds", m.key),
                    json!(f.iter().map(m.of).collect::<Vec<_>>()),
                );
            }
            Value::Object(o)
        })
        .collect();
    let (cidr_sizes, pod_sizes): (&[usize], &[usize]) = if quick {
        (&[1, 1000], &[1, 250])
    } else {
        (&[1, 10, 100, 1000], &[1, 50, 100, 250])
    };
    let cidrs = cidr_sweep(&object, secs, cidr_sizes)?;
    let pods = pod_sweep(&object, secs, pod_sizes)?;
    md.push_str("\n## Scale: exclusion CIDRs (TCP conn/s)\n\n| CIDRs | legacy | trunkline |\n|---|---|---|\n");
    for (n, l, t) in &cidrs {
        md.push_str(&format!("| {n} | {l:.0} | {t:.0} |\n"));
    }
    if let (Some(f), Some(l)) = (cidrs.first(), cidrs.last()) {
        md.push_str(&format!(
            "\nfrom {} to {} CIDRs: legacy {:+.1}%, trunkline {:+.1}% (target for trunkline: within ±10%)\n",
            f.0, l.0, drift(f.1, l.1), drift(f.2, l.2)
        ));
    }
    md.push_str("\n## Scale: pods on the node (UDP 64 B kpps)\n\n| pods | legacy | trunkline |\n|---|---|---|\n");
    for (n, l, t) in &pods {
        md.push_str(&format!("| {n} | {l:.1} | {t:.1} |\n"));
    }
    if let (Some(f), Some(l)) = (pods.first(), pods.last()) {
        md.push_str(&format!(
            "\nfrom {} to {} pods: legacy {:+.1}%, trunkline {:+.1}% (target for trunkline: within ±10%)\n",
            f.0, l.0, drift(f.1, l.1), drift(f.2, l.2)
        ));
    }
    let control = testbed::drivers::bench_control::cni_burst(if quick { 100 } else { 250 })?;
    let (cidr_tl_ms, cidr_legacy_ms) = testbed::drivers::bench_control::cidr_change_ms()?;
    md.push_str(&format!(
        "\n## Control path\n\n| pods | CNI ADD p50 ms | ADD p99 ms | DEL p50 ms | DEL p99 ms | agent RSS MB | agent CPU ms (burst) |\n|---|---|---|---|---|---|---|\n| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |\n",
        control.pods, control.add_p50_ms, control.add_p99_ms, control.del_p50_ms, control.del_p99_ms, control.agent_rss_mb, control.agent_cpu_ms
    ));
    md.push_str(&format!(
        "\nVPC CIDR change under load: trunkline {cidr_tl_ms:.1} ms (node file + SIGHUP until the NO_SNAT entry is in), legacy {cidr_legacy_ms:.1} ms (one iptables RETURN rule; aws-node rewrites its chain).\n"
    ));
    let pts = |v: &[(usize, f64, f64)], legacy: bool| -> Vec<(f64, f64)> {
        v.iter()
            .map(|(n, l, t)| (*n as f64, if legacy { *l } else { *t }))
            .collect()
    };
    testbed::drivers::charts::sweep(
        &dir.join(format!("{stamp}-cidrs.svg")),
        "TCP connections/s vs exclusion CIDRs",
        "exclusion CIDRs",
        "conn/s",
        &[
            ("legacy", pts(&cidrs, true)),
            ("trunkline", pts(&cidrs, false)),
        ],
    )?;
    testbed::drivers::charts::sweep(
        &dir.join(format!("{stamp}-pods.svg")),
        "UDP 64 B kpps vs pods on the node",
        "pods",
        "kpps",
        &[
            ("legacy", pts(&pods, true)),
            ("trunkline", pts(&pods, false)),
        ],
    )?;
    md.push_str(&format!(
        "\n![CIDR sweep]({stamp}-cidrs.svg) ![pod sweep]({stamp}-pods.svg)\n"
    ));
    let (sent, restart_got) = testbed::drivers::bench_control::restart_loss(false)?;
    let (_, upgrade_got) = testbed::drivers::bench_control::restart_loss(true)?;
    md.push_str(&format!(
        "\nAgent SIGKILL + restart during a {sent}-datagram UDP stream through SNAT: {} lost; start on a rebuilt object (upgrade) during the stream: {} lost (target 0).\n",
        sent - restart_got,
        sent - upgrade_got
    ));
    let failures = CONN_FAILURES.load(Ordering::Relaxed);
    md.push_str(&format!(
        "\nConnections that failed (no answer within 1 s) across all measurements: {failures}.\n"
    ));
    // The verifier's cost per program and kernel, measured by `cargo xtask
    // bench` (host and the 6.1/6.12 VMs) before this binary runs.
    let verifier: Value = std::env::var_os("TRUNKLINE_VERIFIER_COSTS")
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    if let Some(cells) = verifier.as_array() {
        md.push_str("
Verifier cost per program and kernel (processed instructions and peak states from the verifier's own statistics; object = instructions in the ELF; the limit is 1,000,000 processed):

| kernel | program | object insns | processed | peak states | verification ms | jited bytes |\n|---|---|---|---|---|---|---|\n");
        for c in cells {
            let kernel = c.get("kernel").and_then(Value::as_str).unwrap_or("?");
            for p in c
                .get("programs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let n = |k: &str| {
                    p.get(k)
                        .and_then(Value::as_u64)
                        .map_or("-".to_string(), |v| v.to_string())
                };
                let ms = p
                    .get("verification_us")
                    .and_then(Value::as_u64)
                    .map_or("-".to_string(), |us| format!("{:.1}", us as f64 / 1e3));
                md.push_str(&format!(
                    "| {kernel} | {} | {} | {} | {} | {ms} | {} |\n",
                    p.get("program").and_then(Value::as_str).unwrap_or("?"),
                    n("object_insns"),
                    n("processed_insns"),
                    n("peak_states"),
                    n("jited_bytes"),
                ));
            }
        }
    }
    let (gc, search) = conntrack_costs(quick)?;
    md.push_str(&conntrack_md(&gc, &search));
    let json = json!({
        "conntrack": {"gc": gc, "port_search": search},
        "verifier": verifier,
        "connection_failures": failures,
        "restart_lost": sent - restart_got,
        "upgrade_lost": sent - upgrade_got,
        "control_path": {"pods": control.pods, "add_p50_ms": control.add_p50_ms, "add_p99_ms": control.add_p99_ms,
            "del_p50_ms": control.del_p50_ms, "del_p99_ms": control.del_p99_ms, "agent_rss_mb": control.agent_rss_mb,
            "agent_cpu_ms": control.agent_cpu_ms},
        "cidr_change_ms": {"trunkline": cidr_tl_ms, "legacy": cidr_legacy_ms},
        "cidr_sweep": cidrs.iter().map(|(n, l, t)| json!({"cidrs": n, "legacy_conn_per_s": l, "trunkline_conn_per_s": t})).collect::<Vec<_>>(),
        "pod_sweep": pods.iter().map(|(n, l, t)| json!({"pods": n, "legacy_kpps": l, "trunkline_kpps": t})).collect::<Vec<_>>(),
        "cpu_per_packet": cpu_json,
        "kernel": uname(),
        "seconds": secs,
        "rounds": rounds,
        "quick": quick,
        "setups": setups_json,
        "ratios_trunkline_over": ratios,
    });

    std::fs::write(dir.join(format!("{stamp}.md")), &md)?;
    std::fs::write(
        dir.join(format!("{stamp}.json")),
        serde_json::to_string_pretty(&json)?,
    )?;
    print!("{md}");
    println!("\nwritten to bench/results/{stamp}.{{md,json}}");
    Ok(())
}
