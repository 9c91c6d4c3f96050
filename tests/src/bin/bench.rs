//! `cargo xtask bench`: trunkline against the plumbing it replaces and
//! against plain routing, side by side in one run on the same topology
//! (the edge of the simulated VPC: pod → node → router → internet host).
//!
//! - baseline: the node routes, no NAT, no rules;
//! - legacy: aws-node's iptables SNAT chain (`AWS-SNAT-CHAIN-0`);
//! - trunkline: the eBPF data path.
//!
//! Ratios matter, not absolute figures: the machine is shared.

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
        traffic::Background,
    },
    kernel::object,
    topology::snat_node::{self, Plumbing, SnatNode, SnatOptions, INET_IP},
};
use trunkline_agent::dataplane::{MapOwner, NodeMaps, PodMaps};

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
fn conn_rate(n: &SnatNode, secs: u64) -> Result<(f64, f64, f64)> {
    // Thousands of short connections a second: the pod needs the whole
    // port space (closed connections hold theirs in TIME_WAIT).
    n.pod.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    let secs = secs.min(3);
    let listener = n.inet.run_in(|| TcpListener::bind((INET_IP, 7100)))?;
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
    let dst = SocketAddr::from((INET_IP, 7100));
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
        let l = conn_rate(&legacy, secs)?.0;
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
        let t = conn_rate(&tl, secs)?.0;
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

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--conntrack") {
        return conntrack_only(quick);
    }
    let secs = if quick { 2 } else { 5 };
    let object = object::bytes();
    let mut rows = Vec::new();
    for s in setups() {
        eprintln!("bench: {} ...", s.name);
        let n = SnatNode::new(&object, s.opts)?;
        let tcp1 = tcp_gbps(&n, 1, secs)?;
        let tcp4 = tcp_gbps(&n, 4, secs)?;
        let udp = udp_kpps(&n, secs)?;
        let (cps, p50, p99) = conn_rate(&n, secs)?;
        rows.push((s.name, tcp1, tcp4, udp, cps, p50, p99));
    }
    let by = |name: &str| rows.iter().find(|r| r.0 == name).copied();
    let (Some(base), Some(legacy), Some(tl)) = (by("baseline"), by("legacy"), by("trunkline"))
    else {
        bail!("missing a setup");
    };
    let mut md = format!(
        "# trunkline benchmark\n\nkernel {}, {} CPUs, {} s per measurement{}\n\n",
        uname(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        secs,
        if quick { " (--quick)" } else { "" }
    );
    md.push_str("| setup | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | UDP 64 B kpps | TCP conn/s | conn p50 µs | conn p99 µs |\n|---|---|---|---|---|---|---|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.1} | {:.0} | {:.0} | {:.0} |\n",
            r.0, r.1, r.2, r.3, r.4, r.5, r.6
        ));
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    md.push_str(&format!(
        "\n| trunkline vs | TCP 1 | TCP 4 | UDP pps | conn/s | p99 latency |\n|---|---|---|---|---|---|\n| legacy | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× |\n| baseline | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× |\n",
        ratio(tl.1, legacy.1), ratio(tl.2, legacy.2), ratio(tl.3, legacy.3), ratio(tl.4, legacy.4), ratio(tl.6, legacy.6),
        ratio(tl.1, base.1), ratio(tl.2, base.2), ratio(tl.3, base.3), ratio(tl.4, base.4), ratio(tl.6, base.6),
    ));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
    std::fs::create_dir_all(&dir)?;
    let stamp = std::process::Command::new("date")
        .arg("+%Y%m%dT%H%M%SZ")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "run".into());
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
        "kernel": uname(),
        "seconds": secs,
        "quick": quick,
        "setups": rows.iter().map(|r| json!({"name": r.0, "tcp1_gbps": r.1, "tcp4_gbps": r.2, "udp64_kpps": r.3, "conn_per_s": r.4, "conn_p50_us": r.5, "conn_p99_us": r.6})).collect::<Vec<_>>(),
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
