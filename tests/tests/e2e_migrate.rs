//! Migration from aws-node: a simulated node wired by the legacy plumbing
//! (`testbed::topology::legacy_node`) carries three running TCP transfers;
//! `trunkline-agent migrate` takes the node over in the middle of them. The
//! transfers must finish intact on their original connections (the
//! internet server keeps seeing the same translated port), trunkline must be
//! what carries them afterwards, and nothing legacy may remain.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use testbed::{
    drivers::{
        cni,
        traffic::{self, Transfer},
    },
    topology::{legacy_node::LegacyNode, sim_node::NODE_IP},
};

const INET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 10);

fn output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn migration_keeps_running_transfers_and_leaves_nothing_legacy() -> Result<()> {
    let mut node = LegacyNode::build()?;
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let before = node.legacy_state()?;
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
    let sim = &node.sim;
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
    let dry = node.migrate(&["--dry-run"])?;
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "dry run: {}", output(&dry));
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
    assert_eq!(node.legacy_state()?, before, "the dry run changed the node");
    assert!(
        !sim.bpf_root().join("PODS").exists(),
        "the dry run loaded the data path"
    );

    let started = Instant::now();
    let out = node.migrate(&[])?;
    let took = started.elapsed();
    let log = output(&out);
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

    let mut peers = Vec::new();
    for (what, t) in [
        ("pod A -> internet", up),
        ("internet -> pod A", down),
        ("pod B -> VPC peer", vpc),
    ] {
        let seen = t
            .finish()
            .map_err(|e| anyhow::anyhow!("{what}: {e:#}\n{log}"))?;
        println!("{what}: {seen:?}");
        assert_eq!(seen.received, seen.sent, "{what}: bytes lost");
        assert!(seen.intact, "{what}: corrupted");
        peers.push(seen.peer);
    }
    assert_eq!(peers[0].ip(), NODE_IP, "SNATed to the node IP");
    assert_eq!(peers[1].ip(), NODE_IP, "SNATed to the node IP");
    assert_eq!(peers[2].ip(), b.ip, "VPC traffic keeps the pod IP");

    // trunkline carried the connections afterwards, on netfilter's ports:
    // the copied entries count packets in both directions.
    let ct = sim.inspect("ct")?;
    for port in [peers[0].port(), peers[1].port()] {
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

    let after = node.legacy_state()?;
    assert_eq!(after, "", "legacy plumbing left after migration");
    assert!(
        !node.checkpoint().exists(),
        "aws-node's checkpoint was not retired"
    );

    // The agent starts on the migrated node with both pods, which still work.
    let (a_ip, b_ip) = (a.ip, b.ip);
    node.sim.start_agent()?;
    let listed = node.sim.inspect("pods")?.to_string();
    for ip in [a_ip, b_ip] {
        assert!(listed.contains(&ip.to_string()), "{listed}");
    }
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let seen = traffic::tcp_echo(&a.ns, &node.sim.inet, INET_IP, 9200, b"after")?;
    assert_eq!(seen.peer.ip(), NODE_IP);
    assert_eq!(seen.echoed, b"after");
    let seen = traffic::tcp_echo(&b.ns, &node.sim.peer, PEER_IP, 9201, b"after")?;
    assert_eq!(seen.peer.ip(), b.ip);

    // The runtime deletes an adopted pod through trunkline-cni with the
    // container id aws-node recorded: released, nothing left.
    let netns = format!("/run/netns/{}", a.ns.name());
    let del = cni::trunkline(
        node.sim.node.name(),
        &cni::Call {
            command: "DEL",
            container_id: "legacy-0",
            netns: &netns,
            ifname: "eth0",
            pod: ("default", "web-a"),
        },
        &cni::trunkline_conf("1.1.0", &node.sim.socket(), None),
    )?;
    assert!(del.success, "DEL: {} {}", del.stdout, del.stderr);
    let listed = node.sim.inspect("pods")?.to_string();
    assert!(!listed.contains(&a_ip.to_string()), "{listed}");
    assert!(listed.contains(&b_ip.to_string()), "{listed}");
    assert!(
        node.sim.links_with_prefix(&a.veth)?.is_empty(),
        "the adopted pod's veth is left"
    );
    Ok(())
}

/// aws-network-policy-agent enforces a policy on one of the node's pods
/// (its programs pinned for that pod): trunkline does not enforce
/// NetworkPolicy yet, so both the dry run and the migration refuse, and
/// the node is left exactly as it was.
#[test]
fn a_node_where_aws_network_policy_agent_enforces_policies_is_not_migrated() -> Result<()> {
    let node = LegacyNode::build()?;
    let pins = node.network_policy_pins();
    std::fs::create_dir_all(&pins)?;
    for prog in ["web-default_handle_ingress", "web-default_handle_egress"] {
        std::fs::write(pins.join(prog), b"")?;
    }
    let before = node.legacy_state()?;

    let dry = node.migrate(&["--dry-run"])?;
    let plan = output(&dry);
    assert!(!dry.status.success(), "the dry run must report the blocker");
    assert!(
        plan.contains("BLOCKER: aws-network-policy-agent enforces NetworkPolicy on 1 pod(s)")
            && plan.contains("web-default"),
        "{plan}"
    );

    let out = node.migrate(&[])?;
    let said = output(&out);
    assert!(!out.status.success(), "migrate must refuse:\n{said}");
    assert!(
        said.contains("migration blocked, nothing changed") && said.contains("NetworkPolicy"),
        "{said}"
    );
    assert_eq!(
        node.legacy_state()?,
        before,
        "the refused migration changed the node"
    );
    // And the pods still work on the legacy plumbing.
    let a = &node.pods[0];
    traffic::udp_echo(&a.ns, &node.sim.inet, INET_IP, 9200, 2)?;
    Ok(())
}

/// A NetworkPolicy selects one of the node's pods (its PolicyEndpoint in
/// the API names the pod and this node's IP) before the node agent has
/// pinned anything: both the dry run and the migration refuse, naming the
/// pod and the PolicyEndpoint, and the node is left as it was. A policy
/// that selects pods of other nodes only does not block.
#[test]
fn a_node_whose_pods_a_policy_endpoint_selects_is_not_migrated() -> Result<()> {
    use serde_json::json;
    use testbed::fakes::kube_api::FakeApi;

    let node = LegacyNode::build()?;
    let api = FakeApi::start_in(&node.sim.node)?;
    let kubeconfig = api.write_kubeconfig(node.sim.dir.path())?;
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let a = &node.pods[0];
    let elsewhere = (
        "default",
        "db-policy-7k2pq",
        json!({"podSelectorEndpoints": [
            {"hostIP": "192.168.40.7", "podIP": "192.168.40.9", "name": "db-0", "namespace": "default"}
        ]}),
    );
    api.set_policy_endpoints(Some(std::slice::from_ref(&elsewhere)));
    let clear = node.migrate(&["--dry-run", "--kubeconfig", &kubeconfig])?;
    assert!(
        clear.status.success(),
        "a policy for other nodes' pods does not block:\n{}",
        output(&clear)
    );

    let here = (
        "default",
        "web-policy-x9f3c",
        json!({"podSelectorEndpoints": [
            {"hostIP": NODE_IP.to_string(), "podIP": a.ip.to_string(), "name": a.name, "namespace": "default"}
        ]}),
    );
    api.set_policy_endpoints(Some(&[elsewhere, here]));
    let before = node.legacy_state()?;
    let dry = node.migrate(&["--dry-run", "--kubeconfig", &kubeconfig])?;
    let plan = output(&dry);
    assert!(!dry.status.success(), "the dry run must report it:\n{plan}");
    let named = format!("default/{} by default/web-policy-x9f3c", a.name);
    assert!(
        plan.contains("BLOCKER: NetworkPolicy selects 1 pod(s) of this node")
            && plan.contains(&named),
        "{plan}"
    );
    let out = node.migrate(&["--kubeconfig", &kubeconfig])?;
    let said = output(&out);
    assert!(!out.status.success(), "migrate must refuse:\n{said}");
    assert!(
        said.contains("migration blocked, nothing changed") && said.contains(&named),
        "{said}"
    );
    assert_eq!(
        node.legacy_state()?,
        before,
        "the refused migration changed the node"
    );
    Ok(())
}
