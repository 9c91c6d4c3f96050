//! Migration from aws-node: a simulated node wired by the legacy plumbing
//! (SNAT chain with --random-fully, connmark, ip rules 10/512/1024/1536,
//! per-ENI and per-VLAN tables, pod routes, a `vlan.eth.1` device, aws-node's
//! nft table) carries three running TCP transfers; `trunkline-agent
//! migrate` takes the node over in the middle of them. The transfers must
//! finish intact on their original connections (the internet server keeps
//! seeing the same translated port), and nothing legacy may remain.
//!
//! The kernel here has no 802.1Q module, so `vlan.eth.1` is a bridge device (no dummy module either)
//! standing in for aws-node's VLAN device (only its removal is tested).

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use dataplane_common::SnatMode;
use testbed::{
    binaries,
    legacy::{self, LegacySnat},
    netns::Netns,
    sim_node::{node_file, pod_ips, SimNode, NODE_IP},
    traffic::{self, Transfer},
    vpc_fabric::{own, Fabric},
};

const INET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 10);

/// aws-node's veth name for a pod, computed with the system's sha1sum (not
/// with the code under test).
fn legacy_veth(namespace: &str, name: &str) -> Result<String> {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("printf '%s' '{namespace}.{name}' | sha1sum")])
        .output()?;
    let hex = String::from_utf8(out.stdout)?;
    Ok(format!("eni{}", hex.get(..11).context("sha1sum output")?))
}

struct LegacyPod {
    ns: Netns,
    ip: Ipv4Addr,
    veth: String,
    name: &'static str,
}

/// Everything aws-node leaves on a node, as text to compare.
fn legacy_state(sim: &SimNode) -> Result<String> {
    let mut out = String::new();
    let save = sim.node.exec_ok("iptables-save", &[])?;
    for l in save.lines().filter(|l| l.contains("AWS")) {
        out.push_str(&format!("iptables: {l}\n"));
    }
    let rules = sim.node.exec_ok("ip", &["rule"])?;
    for l in rules.lines() {
        let kernel = l.starts_with("0:") || l.starts_with("32766:") || l.starts_with("32767:");
        if !kernel {
            out.push_str(&format!("rule: {l}\n"));
        }
    }
    let routes = sim.node.exec_ok("ip", &["route", "show", "table", "all"])?;
    for l in routes.lines() {
        let own = l.contains("table local")
            || l.starts_with("default via 192.168.0.1 dev eth0")
            || l.starts_with("192.168.0.0/19 dev eth0");
        if !own {
            out.push_str(&format!("route: {l}\n"));
        }
    }
    for l in sim.node.exec_ok("nft", &["list", "tables"])?.lines() {
        if l.contains("aws-cni") {
            out.push_str(&format!("nft: {l}\n"));
        }
    }
    for l in sim.links_with_prefix("vlan.eth.")? {
        out.push_str(&format!("link: {l}\n"));
    }
    Ok(out)
}

fn legacy_node() -> Result<(SimNode, Fabric, Vec<LegacyPod>)> {
    let sim = SimNode::build()?;
    let fabric = Fabric::install(&sim)?;
    let vpc = ["192.168.0.0/16", "100.64.0.0/16"];
    legacy::install_snat_chain(
        &sim.node,
        &LegacySnat {
            node_ip: NODE_IP.to_string(),
            vpc_cidrs: vpc.iter().map(|s| s.to_string()).collect(),
            excluded: vec![],
            mode: SnatMode::Random,
            ports: None,
        },
    )?;
    legacy::install_connmark(&sim.node, &vpc)?;
    let mut pods = Vec::new();
    for (name, eni) in [("web-a", "eth0"), ("web-b", "eth1")] {
        let ns = Netns::new("pod")?;
        let ip = pod_ips(eni)[3];
        let veth = legacy_veth("default", name)?;
        legacy::wire_pod(
            &sim.node,
            &ns,
            &veth,
            ip,
            (eni == "eth1").then_some(("eth1", 2)),
        )?;
        own(&sim, eni, ip)?;
        pods.push(LegacyPod { ns, ip, veth, name });
    }
    // What aws-node adds for strict security-group pods and in its nft
    // mode, standing in where this kernel cannot build the real thing.
    sim.node
        .ip(&["link", "add", "vlan.eth.1", "type", "bridge"])?;
    sim.node.ip(&["link", "set", "vlan.eth.1", "up"])?;
    sim.node.ip(&[
        "route",
        "add",
        "default",
        "dev",
        "vlan.eth.1",
        "table",
        "101",
    ])?;
    sim.node.ip(&[
        "rule",
        "add",
        "iif",
        "vlan.eth.1",
        "lookup",
        "101",
        "priority",
        "10",
    ])?;
    sim.node
        .exec_ok("nft", &["add", "table", "ip", "aws-cni"])?;
    sim.node.exec_ok(
        "nft",
        &[
            "add",
            "chain",
            "ip",
            "aws-cni",
            "nat-post",
            "{ type nat hook postrouting priority 100 ; }",
        ],
    )?;
    Ok((sim, fabric, pods))
}

fn ipam_json(pods: &[LegacyPod]) -> String {
    let allocations: Vec<String> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                r#"{{"networkName":"aws-cni","containerID":"legacy-{i}","ifName":"eth0","ipv4":"{}","allocationTimestamp":1700000000,"metadata":{{"k8sPodNamespace":"default","k8sPodName":"{}"}}}}"#,
                p.ip, p.name
            )
        })
        .collect();
    format!(
        r#"{{"version":"vpc-cni-ipam/1","allocations":[{}]}}"#,
        allocations.join(",")
    )
}

fn migrate_args(sim: &SimNode, checkpoint: &std::path::Path) -> Vec<String> {
    [
        "migrate",
        "--node-file",
        &sim.node_file().to_string_lossy(),
        "--bpf-root",
        &sim.bpf_root().to_string_lossy(),
        "--state-dir",
        &sim.state_dir().to_string_lossy(),
        "--socket",
        &sim.socket().to_string_lossy(),
        "--ebpf-object",
        &testbed::object::path().to_string_lossy(),
        "--aws-node-checkpoint",
        &checkpoint.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_agent(sim: &SimNode, args: &[String]) -> Result<std::process::Output> {
    let agent = binaries::agent();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sim.node.exec(&agent.to_string_lossy(), &args)
}

#[test]
fn migration_keeps_running_transfers_and_leaves_nothing_legacy() -> Result<()> {
    let (mut sim, _fabric, pods) = legacy_node()?;
    let (a, b) = (&pods[0], &pods[1]);
    std::fs::write(
        sim.node_file(),
        node_file(&pod_ips("eth0"), &pod_ips("eth1")),
    )?;
    let checkpoint = sim.dir.path().join("ipam.json");
    std::fs::write(&checkpoint, ipam_json(&pods))?;
    let before = legacy_state(&sim)?;
    for needle in [
        "AWS-SNAT-CHAIN-0",
        "AWS-CONNMARK-CHAIN-0",
        "rule: 10:",
        "rule: 512:",
        "rule: 1024:",
        "rule: 1536:",
        "table 2",
        "table 101",
        &a.veth,
        "nft: table ip aws-cni",
        "link: vlan.eth.1",
    ] {
        assert!(
            before.contains(needle),
            "legacy node lacks {needle}:\n{before}"
        );
    }

    // Three transfers of 12 MiB over ~8 s each: pod A uploads to the
    // internet and downloads from it (both SNATed by the legacy chain with
    // --random-fully), pod B (secondary ENI) uploads to a VPC peer.
    let (chunks, pace) = (192, Duration::from_millis(40));
    let up = Transfer::start(
        &a.ns,
        &sim.inet,
        SocketAddr::from((INET_IP, 9100)),
        true,
        chunks,
        pace,
    )?;
    let down = Transfer::start(
        &a.ns,
        &sim.inet,
        SocketAddr::from((INET_IP, 9101)),
        false,
        chunks,
        pace,
    )?;
    let vpc = Transfer::start(
        &b.ns,
        &sim.peer,
        SocketAddr::from((PEER_IP, 9102)),
        true,
        chunks,
        pace,
    )?;
    std::thread::sleep(Duration::from_millis(800));

    // The dry run prints the plan and changes nothing.
    let dry = {
        let mut args = migrate_args(&sim, &checkpoint);
        args.push("--dry-run".into());
        run_agent(&sim, &args)?
    };
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success(),
        "dry run: {plan}{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    println!("{plan}");
    for needle in [
        format!("default/web-a {} veth {}", a.ip, a.veth),
        "AWS-SNAT-CHAIN-0".into(),
        "AWS-CONNMARK-CHAIN-0".into(),
        "ip rule priority 1024".into(),
        "link vlan.eth.1".into(),
        "nft table ip aws-cni".into(),
    ] {
        assert!(plan.contains(&needle), "plan lacks {needle}");
    }
    assert_eq!(legacy_state(&sim)?, before, "the dry run changed the node");
    assert!(
        !sim.bpf_root().join("PODS").exists(),
        "the dry run loaded the data path"
    );

    let started = Instant::now();
    let out = run_agent(&sim, &migrate_args(&sim, &checkpoint))?;
    let took = started.elapsed();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "migrate failed:\n{log}");
    let in_flight = [up.received(), down.received(), vpc.received()];
    println!(
        "migrate took {took:?}; bytes received by then: {in_flight:?} of {} each",
        up.total
    );
    assert!(
        in_flight.iter().all(|r| *r < up.total),
        "a transfer ended before the migration did: the test proves nothing"
    );

    let results = [up.finish(), down.finish(), vpc.finish()];
    for (what, r) in [
        "pod A -> internet",
        "internet -> pod A",
        "pod B -> VPC peer",
    ]
    .iter()
    .zip(&results)
    {
        let seen = r
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{what}: {e:#}\n{log}"))?;
        println!("{what}: {seen:?}");
        assert_eq!(seen.received, seen.sent, "{what}: bytes lost");
        assert!(seen.intact, "{what}: corrupted");
    }
    let up_peer = results[0]
        .as_ref()
        .map(|s| s.peer)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let down_peer = results[1]
        .as_ref()
        .map(|s| s.peer)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(up_peer.ip(), NODE_IP, "SNATed to the node IP");
    assert_eq!(down_peer.ip(), NODE_IP, "SNATed to the node IP");

    // trunkline carried the connections afterwards, on netfilter's ports:
    // the copied entries count packets in both directions.
    let ct = sim.inspect("ct")?;
    for port in [up_peer.port(), down_peer.port()] {
        let flow = ct
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| {
                f["snat"] == true
                    && f["orig"]["src"] == a.ip.to_string()
                    && f["reply"]["dport"] == port
            })
            .with_context(|| format!("CT has no SNAT flow on port {port}: {ct:#}"))?;
        assert!(
            flow["orig"]["packets"].as_u64() > Some(0)
                && flow["reply"]["packets"].as_u64() > Some(0),
            "the data path did not carry the flow on port {port}: {flow:#}"
        );
    }

    let after = legacy_state(&sim)?;
    assert_eq!(after, "", "legacy plumbing left after migration");
    assert!(
        !checkpoint.exists(),
        "aws-node's checkpoint was not retired"
    );

    // The agent starts on the migrated node with both pods, which still work.
    sim.start_agent()?;
    let listed = sim.inspect("pods")?.to_string();
    for p in &pods {
        assert!(listed.contains(&p.ip.to_string()), "{listed}");
    }
    let seen = traffic::tcp_echo(&a.ns, &sim.inet, INET_IP, 9200, b"after")?;
    assert_eq!(seen.peer.ip(), NODE_IP);
    assert_eq!(seen.echoed, b"after");
    let seen = traffic::tcp_echo(&b.ns, &sim.peer, PEER_IP, 9201, b"after")?;
    assert_eq!(seen.peer.ip(), b.ip);
    Ok(())
}
