//! The agent restarting: SIGKILL with pods in place keeps maps, links and
//! pods; a SIGKILL at each dangerous point of AddPod/DelPod leaves no
//! leaked IP and no stale map entry, link or checkpoint record after the
//! next start.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{
    drivers::cni::{self, Call},
    topology::{netns::Netns, sim_node::SimNode},
};

fn netns_path(ns: &Netns) -> String {
    format!("/run/netns/{}", ns.name())
}

fn call<'a>(command: &'a str, cid: &'a str, netns: &'a str, pod: &'a str) -> Call<'a> {
    Call {
        command,
        container_id: cid,
        netns,
        ifname: "eth0",
        pod: ("default", pod),
    }
}

fn run(node: &SimNode, c: &Call<'_>, prev: Option<&Value>) -> cni::CniOut {
    let conf = cni::trunkline_conf("1.0.0", &node.socket(), prev);
    cni::trunkline(node.node.name(), c, &conf).expect("running trunkline-cni")
}

fn ok(node: &SimNode, c: &Call<'_>, prev: Option<&Value>) -> Value {
    let out = run(node, c, prev);
    assert!(
        out.success,
        "{} {} failed: {}\nstderr: {}\nagent log:\n{}",
        c.command,
        c.container_id,
        out.stdout,
        out.stderr,
        node.agent_log()
    );
    out.json()
}

/// What serves each ENI (link id and program id of a pinned TCX link, or
/// the cls_bpf filter's program), which changes if it is re-created.
fn link_identities(node: &SimNode) -> Vec<String> {
    node.eni_attachments()
        .expect("ENI attachments")
        .iter()
        .map(|a| format!("{}: {}", a.name, a.identity))
        .collect()
}

fn from_pod_packets(node: &SimNode) -> u64 {
    let stats = node.inspect("stats").expect("stats");
    stats["from_pod"]
        .as_object()
        .map(|o| o.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

#[test]
fn sigkill_and_restart_keeps_maps_links_and_pods_and_new_adds_work() {
    let mut node = SimNode::new().expect("sim node");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("pod").expect("pod")).collect();
    let paths: Vec<String> = pods.iter().map(netns_path).collect();
    let names = ["r0", "r1", "r2"];
    let mut results = Vec::new();
    for i in 0..3 {
        results.push(ok(&node, &call("ADD", names[i], &paths[i], names[i]), None));
    }
    let pods_before = node.inspect("pods").expect("pods");
    let enis_before = node.inspect("enis").expect("enis");
    let links_before = link_identities(&node);
    assert_eq!(links_before.len(), 6, "{links_before:?}");
    let veths = node.links_with_prefix("eni").expect("veths");
    assert_eq!(veths.len(), 3);
    let filters = |node: &SimNode| -> Vec<String> {
        veths
            .iter()
            .map(|v| node.pod_filters(v).expect("filters"))
            .collect()
    };
    let filters_before = filters(&node);
    assert!(filters_before
        .iter()
        .all(|f| f.contains("from_pod") && f.contains("to_pod")));
    let checkpoint_before = node.checkpoint_pods().expect("checkpoint");

    node.kill_agent();
    // The data path keeps running without the agent.
    let before = from_pod_packets(&node);
    let _ = pods[0].exec("ping", &["-c", "1", "-W", "1", "169.254.1.1"]);
    assert!(
        from_pod_packets(&node) > before,
        "from_pod stopped with the agent"
    );

    node.start_agent().expect("restart");
    assert_eq!(node.inspect("pods").expect("pods"), pods_before);
    assert_eq!(node.inspect("enis").expect("enis"), enis_before);
    assert_eq!(
        link_identities(&node),
        links_before,
        "links were re-created"
    );
    assert_eq!(
        node.checkpoint_pods().expect("checkpoint"),
        checkpoint_before
    );
    for i in 0..3 {
        ok(
            &node,
            &call("CHECK", names[i], &paths[i], names[i]),
            Some(&results[i]),
        );
    }
    let listed = node
        .node
        .exec_ok(
            "curl",
            &["-sf", "--max-time", "5", "http://127.0.0.1:61679/v1/pods"],
        )
        .expect("introspection");
    let listed: Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(3));

    // New ADDs work and get a fresh IP; old pods delete normally.
    let new_pod = Netns::new("pod").expect("pod");
    let new_path = netns_path(&new_pod);
    let r = ok(&node, &call("ADD", "r3", &new_path, "r3"), None);
    let new_ip = r["ips"][0]["address"].as_str().unwrap_or("").to_string();
    assert!(
        results
            .iter()
            .all(|o| o["ips"][0]["address"].as_str() != Some(&new_ip)),
        "{new_ip} was already in use"
    );
    ok(&node, &call("DEL", "r0", &paths[0], "r0"), None);
    assert_eq!(
        node.inspect("pods").expect("pods").as_array().map(Vec::len),
        Some(3)
    );
}

#[test]
fn restart_releases_pods_whose_veth_went_away_while_the_agent_was_down() {
    let one = Ipv4Addr::new(192, 168, 31, 170);
    let mut node = SimNode::with_pools(&[one], &[]).expect("sim node");
    let pod = Netns::new("pod").expect("pod");
    let path = netns_path(&pod);
    ok(&node, &call("ADD", "gone", &path, "gone"), None);
    let eni_pins: Vec<String> = node
        .link_pins()
        .expect("pins")
        .into_iter()
        .filter(|p| p.contains("_eni-"))
        .collect();
    node.kill_agent();
    drop(pod); // the netns and with it both veth ends
    node.start_agent().expect("restart");
    assert_eq!(node.inspect("pods").expect("pods"), Value::Array(vec![]));
    assert_eq!(node.link_pins().expect("pins"), eni_pins);
    assert!(node.checkpoint_pods().expect("checkpoint").is_empty());
    // The only IP is free again.
    let pod2 = Netns::new("pod").expect("pod");
    let r = ok(
        &node,
        &call("ADD", "again", &netns_path(&pod2), "again"),
        None,
    );
    assert_eq!(r["ips"][0]["address"], "192.168.31.170/32");
}

fn wait_exited(node: &mut SimNode) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if node.agent.as_mut().map(|a| a.exited()).unwrap_or(true) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// After a crash and a clean restart: nothing of the pod is left, and the
/// node's only pod IP is given out again.
fn assert_clean_after_restart(node: &mut SimNode, point: &str, eni_pins: &[String]) {
    node.set_agent_env(&[]);
    node.start_agent().expect("restart");
    assert_eq!(
        node.inspect("pods").expect("pods"),
        Value::Array(vec![]),
        "{point}: stale PODS entry"
    );
    assert_eq!(
        node.link_pins().expect("pins"),
        eni_pins,
        "{point}: stale link pin"
    );
    assert!(
        node.checkpoint_pods().expect("checkpoint").is_empty(),
        "{point}: stale checkpoint record"
    );
    assert!(
        node.links_with_prefix("eni").expect("links").is_empty(),
        "{point}: leaked veth"
    );
    let pod = Netns::new("pod").expect("pod");
    let path = netns_path(&pod);
    let r = ok(node, &call("ADD", "after", &path, "after"), None);
    assert_eq!(
        r["ips"][0]["address"], "192.168.31.170/32",
        "{point}: the IP leaked"
    );
    ok(node, &call("DEL", "after", &path, "after"), None);
}

#[test]
fn sigkill_at_every_point_of_add_and_del_leaks_nothing() {
    let one = Ipv4Addr::new(192, 168, 31, 170);
    let mut node = SimNode::build().expect("sim node");
    std::fs::write(
        node.node_file(),
        testbed::topology::sim_node::node_file(&[one], &[]),
    )
    .expect("node file");
    node.start_agent().expect("start");
    let eni_pins = node.link_pins().expect("pins");
    node.kill_agent();

    for point in [
        "add-allocated",
        "add-checkpointed",
        "add-attached",
        "add-mapped",
    ] {
        node.set_agent_env(&[("TRUNKLINE_CRASH_AT", point)]);
        node.start_agent().expect("start");
        let pod = Netns::new("pod").expect("pod");
        let path = netns_path(&pod);
        let out = run(&node, &call("ADD", point, &path, point), None);
        assert!(
            !out.success,
            "{point}: ADD succeeded although the agent died"
        );
        assert!(wait_exited(&mut node), "{point}: the agent did not crash");
        // The runtime cleans up a failed ADD with DEL; the agent is down.
        ok(&node, &call("DEL", point, &path, point), None);
        node.kill_agent();
        assert_clean_after_restart(&mut node, point, &eni_pins);
        node.kill_agent();
    }

    for point in ["del-unmapped", "del-detached"] {
        node.set_agent_env(&[("TRUNKLINE_CRASH_AT", point)]);
        node.start_agent().expect("start");
        let pod = Netns::new("pod").expect("pod");
        let path = netns_path(&pod);
        ok(&node, &call("ADD", point, &path, point), None);
        // The agent dies inside DelPod; DEL still succeeds.
        ok(&node, &call("DEL", point, &path, point), None);
        assert!(wait_exited(&mut node), "{point}: the agent did not crash");
        node.kill_agent();
        assert_clean_after_restart(&mut node, point, &eni_pins);
        node.kill_agent();
    }
}

#[test]
fn a_released_ip_cools_down_also_across_a_restart() {
    let ips = [
        Ipv4Addr::new(192, 168, 31, 170),
        Ipv4Addr::new(192, 168, 31, 171),
    ];
    let mut node = SimNode::build().expect("sim node");
    std::fs::write(
        node.node_file(),
        testbed::topology::sim_node::node_file(&ips, &[]),
    )
    .expect("node file");
    node.ip_cooldown_secs = 600;
    node.start_agent().expect("start");
    let a = Netns::new("pod").expect("pod");
    let a_path = netns_path(&a);
    let r = ok(&node, &call("ADD", "cool-a", &a_path, "cool-a"), None);
    assert_eq!(r["ips"][0]["address"], "192.168.31.170/32");
    ok(&node, &call("DEL", "cool-a", &a_path, "cool-a"), None);
    // .170 cools down: the next pod gets .171.
    let b = Netns::new("pod").expect("pod");
    let b_path = netns_path(&b);
    let r = ok(&node, &call("ADD", "cool-b", &b_path, "cool-b"), None);
    assert_eq!(r["ips"][0]["address"], "192.168.31.171/32");
    // The cooldown is in the checkpoint: after a restart .170 is still not given out.
    node.kill_agent();
    node.start_agent().expect("restart");
    let c = Netns::new("pod").expect("pod");
    let out = run(
        &node,
        &call("ADD", "cool-c", &netns_path(&c), "cool-c"),
        None,
    );
    assert_eq!(out.code(), Some(11), "{}", out.stdout);
    assert!(out.stdout.contains("1 in cooldown"), "{}", out.stdout);
}
