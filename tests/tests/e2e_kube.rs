//! Security groups for pods from the Kubernetes API, end to end: the real
//! agent (Kubernetes mode: a kubeconfig and a node name) watches a fixture
//! apiserver inside the simulated node's namespace, the real CNI plugin
//! adds pods, and the VPC fabric plays EC2's trunk. What is asserted is
//! what the pinned maps hold, what the trunk passed, what the CNI plugin
//! answered and which Events the apiserver received.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::Value;
use testbed::{
    drivers::{
        cni::{self, Call},
        traffic,
    },
    fakes::kube_api::{pod_json, FakeApi},
    topology::{
        netns::Netns,
        sim_node::{node_file, pod_ips, SimNode, BRANCH_IP, BRANCH_MAC, BRANCH_VLAN, SUBNET},
        vpc_fabric::{CniPod, Fabric},
    },
};
use trunkline_agent::dataplane::VlansMap;

const NODE: &str = "ip-192-168-31-166.ec2.internal";
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 10);

/// The annotation the VPC resource controller would write for the branch
/// ENI the trunk fixture knows (`Fabric::install` registers it).
fn annotation() -> String {
    format!(
        r#"[{{"eniId":"eni-09a7a909e06fc4be6","ifAddress":"{BRANCH_MAC}","privateIp":"{BRANCH_IP}","vlanID":{BRANCH_VLAN},"subnetCidr":"{SUBNET}"}}]"#
    )
}

/// A simulated node whose agent runs in Kubernetes mode against a fixture
/// apiserver (in the node namespace, where the agent is).
fn kube_node() -> Result<(SimNode, Fabric, FakeApi)> {
    let mut sim = SimNode::build()?;
    std::fs::write(sim.node_file(), node_file(&pod_ips("eth0"), &[]))?;
    let api = FakeApi::start_in(&sim.node)?;
    let kubeconfig = api.write_kubeconfig(sim.dir.path())?;
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    sim.set_agent_env(&[
        ("KUBECONFIG", &kubeconfig),
        ("MY_NODE_NAME", NODE),
        ("TRUNKLINE_POD_ENI_WAIT", "8"),
        ("RUST_LOG", "info,kube=info"),
    ]);
    sim.start_agent()?;
    let fabric = Fabric::install(&sim)?;
    Ok((sim, fabric, api))
}

fn pods(sim: &SimNode) -> Vec<Value> {
    sim.inspect("pods")
        .expect("inspect pods")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn pods_entry(sim: &SimNode, ip: Ipv4Addr) -> Option<Value> {
    pods(sim)
        .into_iter()
        .find(|p| p["ip"].as_str() == Some(&ip.to_string()))
}

fn vlan_entry(sim: &SimNode, vlan: u16) -> Option<Ipv4Addr> {
    let trunk = sim.node.ifindex("eth2").expect("trunk ifindex");
    VlansMap::open(sim.bpf_root())
        .expect("pinned maps")
        .get(trunk, vlan)
        .expect("VLANS lookup")
}

/// The agent's Prometheus text (it listens in the node namespace).
fn metrics(sim: &SimNode) -> String {
    sim.node
        .exec_ok(
            "curl",
            &["-sf", "--max-time", "5", "http://127.0.0.1:61678/metrics"],
        )
        .expect("GET /metrics")
}

/// Polls `f` every 10 ms until it is true; the time it took, or an error
/// after `limit`.
fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return Ok(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("{what}: not within {limit:?}")
}

#[test]
fn a_branch_pod_is_programmed_within_a_second_of_its_annotation() {
    let (sim, fabric, api) = kube_node().expect("kube node");
    api.put_pod(pod_json("default", "sg-pod", NODE, true, None));
    std::thread::scope(|s| {
        let adder = s.spawn(|| CniPod::add(&sim, "default", "sg-pod"));
        // The ADD must wait for the annotation, holding no lock: a regular
        // pod is added meanwhile.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !adder.is_finished(),
            "CNI ADD returned before the annotation existed"
        );
        api.put_pod(pod_json("default", "web", NODE, false, None));
        let web =
            CniPod::add(&sim, "default", "web").expect("regular pod while the branch pod waits");
        assert!(pod_ips("eth0").contains(&web.ip), "{} is a pool IP", web.ip);
        assert!(
            pods_entry(&sim, BRANCH_IP).is_none(),
            "nothing programmed before the annotation"
        );

        let t0 = Instant::now();
        api.set_annotation("default", "sg-pod", Some(&annotation()))
            .expect("annotate");
        let mapped = wait_for(
            Duration::from_secs(5),
            "PODS entry of the branch pod",
            || pods_entry(&sim, BRANCH_IP).is_some(),
        )
        .expect("programmed");
        let pod = adder
            .join()
            .expect("join")
            .expect("CNI ADD of the branch pod");
        let replied = t0.elapsed();
        println!(
            "annotation -> PODS entry {:.1} ms, annotation -> CNI ADD result {:.1} ms",
            mapped.as_secs_f64() * 1e3,
            replied.as_secs_f64() * 1e3
        );
        assert!(
            mapped < Duration::from_secs(1),
            "programmed after {mapped:?}"
        );
        assert!(
            replied < Duration::from_secs(1),
            "CNI ADD answered after {replied:?}"
        );
        assert_eq!(pod.ip, BRANCH_IP, "the annotation's address, not a pool IP");
        let e = pods_entry(&sim, BRANCH_IP).expect("entry");
        assert_eq!(e["vlan_id"].as_u64(), Some(u64::from(BRANCH_VLAN)), "{e}");
        assert_eq!(e["branch_mac"].as_str(), Some(BRANCH_MAC), "{e}");
        assert_eq!(vlan_entry(&sim, BRANCH_VLAN), Some(BRANCH_IP));

        // Real traffic through the trunk: tagged with the annotation's VLAN
        // and MAC, or the trunk fixture rejects it.
        let seen =
            traffic::udp_echo(&pod.ns, &sim.peer, PEER_IP, 5101, 3).expect("branch pod -> peer");
        assert_eq!(
            seen.peer.ip(),
            std::net::IpAddr::V4(BRANCH_IP),
            "never SNATed"
        );
        let t = fabric.trunk.stats().expect("trunk counters");
        assert!(t.accepted >= 3 && t.tagged >= 3, "{t:?}");
        assert_eq!(t.rejected, 0, "{t:?}");
    });
}

#[test]
fn apiserver_restart_and_410_gone_are_survived() {
    let (mut sim, _fabric, mut api) = kube_node().expect("kube node");
    api.put_pod(pod_json(
        "default",
        "sg-pod",
        NODE,
        true,
        Some(&annotation()),
    ));
    let pod = CniPod::add(&sim, "default", "sg-pod").expect("branch pod");
    assert_eq!(pod.ip, BRANCH_IP);
    // Bookmarks: changes on another node move the resourceVersion but
    // are filtered out of this node's watch; only BOOKMARK events tell the
    // agent, so a re-watch after a dropped connection starts from there
    // rather than from the older RV of its last pod event.
    for i in 0..5 {
        let mut p = pod_json("other", "busy", "ip-10-0-0-1.ec2.internal", false, None);
        p["metadata"]["labels"] = serde_json::json!({"gen": i.to_string()});
        api.put_pod(p);
    }
    let rv_after = api.current_rv();
    std::thread::sleep(Duration::from_millis(600));
    let watches = api.requests().1;
    api.drop_watches();
    wait_for(
        Duration::from_secs(10),
        "re-watch after the dropped stream",
        || api.requests().1 > watches,
    )
    .expect("re-watched");
    let from = api.watch_starts().last().copied().unwrap_or(0);
    assert!(
        from >= rv_after,
        "re-watch from RV {from}, want >= {rv_after} (bookmarks)"
    );
    let (lists_before, watches_before, _) = api.requests();

    // The apiserver goes away (every connection closed) and comes back on
    // the same port; its first watch answer is 410 Gone, forcing a re-list.
    api.stop();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        pods_entry(&sim, BRANCH_IP).is_some(),
        "an apiserver outage changes nothing"
    );
    api.answer_gone(1);
    api.restart().expect("restart the fixture apiserver");
    let relisted = wait_for(Duration::from_secs(40), "re-list after 410 Gone", || {
        api.requests().0 > lists_before
    })
    .expect("the watcher re-listed");
    // The watch that got the 410, then a new one from the fresh list.
    wait_for(Duration::from_secs(10), "watch after the re-list", || {
        api.requests().1 > watches_before + 1
    })
    .expect("watched again after the 410");
    let (lists, watches, _) = api.requests();
    println!("re-listed {relisted:?} after the restart; lists {lists_before}->{lists}, watches {watches_before}->{watches}");

    // A change after both is still applied: the annotation goes away and
    // the branch with it.
    let t0 = Instant::now();
    api.set_annotation("default", "sg-pod", None)
        .expect("remove annotation");
    let took = wait_for(Duration::from_secs(10), "branch revoked", || {
        pods_entry(&sim, BRANCH_IP).is_none()
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", sim.agent_log()));
    println!(
        "annotation removed -> PODS entry gone in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(
        vlan_entry(&sim, BRANCH_VLAN),
        None,
        "VLANS entry removed too"
    );
    // The checkpoint is rewritten right after the maps (same lock hold).
    wait_for(
        Duration::from_secs(2),
        "record gone from the checkpoint",
        || {
            sim.checkpoint_pods()
                .expect("checkpoint")
                .iter()
                .all(|p| p["name"] != "sg-pod")
        },
    )
    .expect("checkpoint updated");
    drop(pod);
    sim.kill_agent();
}

#[test]
fn a_bad_annotation_fails_cni_add_posts_an_event_and_leaves_nothing() {
    let (sim, _fabric, api) = kube_node().expect("kube node");
    let bad = format!(
        r#"[{{"eniId":"eni-09a7a909e06fc4be6","ifAddress":"{BRANCH_MAC}","privateIp":"{BRANCH_IP}","vlanId":0}}]"#
    );
    api.put_pod(pod_json("default", "bad-pod", NODE, true, Some(&bad)));
    let ns = Netns::new("pod").expect("pod netns");
    let netns = format!("/run/netns/{}", ns.name());
    let cid = format!("cid-{}", ns.name());
    let call = Call {
        command: "ADD",
        container_id: &cid,
        netns: &netns,
        ifname: "eth0",
        pod: ("default", "bad-pod"),
    };
    let out = cni::trunkline(
        sim.node.name(),
        &call,
        &cni::trunkline_conf("1.0.0", &sim.socket(), None),
    )
    .expect("run the plugin");
    assert!(!out.success, "ADD must fail: {}", out.stdout);
    let msg = out.json()["msg"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.contains("pod-eni") && msg.contains("VLAN"),
        "the CNI error says why: {}",
        out.stdout
    );

    wait_for(Duration::from_secs(5), "Event on the pod", || {
        api.events().iter().any(|e| {
            e["involvedObject"]["name"] == "bad-pod"
                && e["involvedObject"]["kind"] == "Pod"
                && e["reason"] == "InvalidPodEniAnnotation"
                && e["type"] == "Warning"
                && e["message"].as_str().is_some_and(|m| m.contains("vlanId"))
        })
    })
    .unwrap_or_else(|e| panic!("{e}: events {:?}", api.events()));
    assert!(pods(&sim).is_empty(), "PODS: {:?}", pods(&sim));
    assert_eq!(vlan_entry(&sim, 0), None);
    assert!(sim.checkpoint_pods().unwrap_or_default().is_empty());
    assert!(
        sim.links_with_prefix("eni").expect("links").is_empty(),
        "no veth left"
    );

    // Fixed by the controller: the next ADD (the runtime retries) works.
    api.set_annotation("default", "bad-pod", Some(&annotation()))
        .expect("fix");
    let ok = cni::trunkline(
        sim.node.name(),
        &call,
        &cni::trunkline_conf("1.0.0", &sim.socket(), None),
    )
    .expect("run the plugin");
    assert!(ok.success, "{} {}", ok.stdout, ok.stderr);
    let del = Call {
        command: "DEL",
        ..call
    };
    let _ = cni::trunkline(
        sim.node.name(),
        &del,
        &cni::trunkline_conf("1.0.0", &sim.socket(), None),
    );
    let m = metrics(&sim);
    for needle in [
        "trunkline_pod_eni_decisions_total{outcome=\"invalid\"} 1",
        "trunkline_pod_eni_decisions_total{outcome=\"branch\"} 1",
        "trunkline_pod_eni_decide_seconds_count 2",
    ] {
        assert!(m.contains(needle), "no {needle:?} in\n{m}");
    }
    assert_eq!(
        api.events().len(),
        1,
        "one Event per bad annotation, not per retry"
    );
}

#[test]
fn deleted_pods_lose_their_branch_and_other_nodes_pods_are_ignored() {
    let (sim, _fabric, api) = kube_node().expect("kube node");
    // A second branch (map-only: no trunk traffic in this test).
    let ip2 = Ipv4Addr::new(192, 168, 26, 163);
    let ann2 = format!(
        r#"[{{"eniId":"eni-0b","ifAddress":"02:b0:01:6c:b5:7a","privateIp":"{ip2}","vlanId":2}}]"#
    );
    api.put_pod(pod_json(
        "default",
        "sg-pod",
        NODE,
        true,
        Some(&annotation()),
    ));
    api.put_pod(pod_json("default", "sg-two", NODE, true, Some(&ann2)));
    // Another node's security-group pod with the same name as a pod the
    // runtime here will add: the annotation is not this node's business.
    api.put_pod(pod_json(
        "other",
        "elsewhere",
        "ip-10-0-0-1.ec2.internal",
        true,
        Some(&ann2),
    ));
    let a = CniPod::add(&sim, "default", "sg-pod").expect("sg-pod");
    let b = CniPod::add(&sim, "default", "sg-two").expect("sg-two");
    assert_eq!((a.ip, b.ip), (BRANCH_IP, ip2));
    api.put_pod(pod_json("default", "web", NODE, false, None));
    let c = CniPod::add(&sim, "default", "web").expect("a regular pod");
    assert!(pod_ips("eth0").contains(&c.ip), "{} is a pool IP", c.ip);
    // An ADD for the pod the apiserver binds to the other node gets
    // nothing: neither the other node's branch nor a pool IP (it could be
    // a security-group pod whose groups a pool IP would bypass).
    let before = pods(&sim).len();
    let ns = Netns::new("pod").expect("pod netns");
    let netns = format!("/run/netns/{}", ns.name());
    let cid = format!("cid-{}", ns.name());
    let call = Call {
        command: "ADD",
        container_id: &cid,
        netns: &netns,
        ifname: "eth0",
        pod: ("other", "elsewhere"),
    };
    let conf = cni::trunkline_conf("1.0.0", &sim.socket(), None);
    let out = cni::trunkline(sim.node.name(), &call, &conf).expect("run the plugin");
    assert!(
        !out.success,
        "ADD of another node's pod must fail: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("ip-10-0-0-1.ec2.internal"),
        "the error names the pod's node: {}",
        out.stdout
    );
    assert_eq!(pods(&sim).len(), before, "nothing programmed for it");
    let _ = cni::trunkline(
        sim.node.name(),
        &Call {
            command: "DEL",
            ..call
        },
        &conf,
    );

    // The pod is deleted in the API (kubelet's DEL may come later or never).
    api.delete_pod("default", "sg-pod").expect("delete");
    let took = wait_for(
        Duration::from_secs(5),
        "deleted pod's entries removed",
        || pods_entry(&sim, BRANCH_IP).is_none(),
    )
    .expect("removed");
    println!(
        "pod deleted -> PODS entry gone in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(vlan_entry(&sim, BRANCH_VLAN), None);
    assert_eq!(
        vlan_entry(&sim, 2),
        Some(ip2),
        "the other branch pod is untouched"
    );
    let m = metrics(&sim);
    assert!(m.contains("trunkline_branches_revoked_total 1"), "{m}");
    assert!(
        m.contains("trunkline_pod_eni_decisions_total{outcome=\"not_on_this_node\"} 1"),
        "{m}"
    );
    assert!(
        pods_entry(&sim, c.ip).is_some(),
        "regular pods are untouched"
    );

    // The other node's pod changes and goes away: nothing here moves.
    api.set_annotation("other", "elsewhere", None)
        .expect("modify");
    api.delete_pod("other", "elsewhere").expect("delete");
    std::thread::sleep(Duration::from_millis(500));
    assert!(pods_entry(&sim, c.ip).is_some());
    assert_eq!(vlan_entry(&sim, 2), Some(ip2));
    drop((a, b, c));
}

#[test]
fn a_restarted_agent_drops_branches_whose_annotation_went_away_while_it_was_down() {
    let (mut sim, _fabric, api) = kube_node().expect("kube node");
    let ip2 = Ipv4Addr::new(192, 168, 26, 163);
    let ann2 = format!(
        r#"[{{"eniId":"eni-0b","ifAddress":"02:b0:01:6c:b5:7a","privateIp":"{ip2}","vlanId":2}}]"#
    );
    api.put_pod(pod_json(
        "default",
        "sg-pod",
        NODE,
        true,
        Some(&annotation()),
    ));
    api.put_pod(pod_json("default", "sg-two", NODE, true, Some(&ann2)));
    let a = CniPod::add(&sim, "default", "sg-pod").expect("sg-pod");
    let b = CniPod::add(&sim, "default", "sg-two").expect("sg-two");
    assert_eq!((a.ip, b.ip), (BRANCH_IP, ip2));

    sim.kill_agent();
    api.set_annotation("default", "sg-pod", None)
        .expect("remove annotation");
    sim.start_agent().expect("restart the agent");
    let took = wait_for(
        Duration::from_secs(10),
        "stale branch removed after restart",
        || pods_entry(&sim, BRANCH_IP).is_none(),
    )
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", sim.agent_log()));
    println!(
        "restart -> stale branch removed in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(vlan_entry(&sim, BRANCH_VLAN), None);
    assert_eq!(
        vlan_entry(&sim, 2),
        Some(ip2),
        "the still-annotated branch is kept"
    );
    assert!(pods_entry(&sim, ip2).is_some());
    drop((a, b));
}

#[test]
fn without_the_apiserver_an_unknown_pod_is_refused_for_retry_not_guessed() {
    let (sim, _fabric, mut api) = kube_node().expect("kube node");
    api.stop();
    let ns = Netns::new("pod").expect("pod netns");
    let netns = format!("/run/netns/{}", ns.name());
    let cid = format!("cid-{}", ns.name());
    let call = Call {
        command: "ADD",
        container_id: &cid,
        netns: &netns,
        ifname: "eth0",
        pod: ("default", "late"),
    };
    let conf = cni::trunkline_conf("1.0.0", &sim.socket(), None);
    let out = cni::trunkline(sim.node.name(), &call, &conf).expect("run the plugin");
    assert!(!out.success, "{}", out.stdout);
    assert_eq!(out.code(), Some(11), "try again later: {}", out.stdout);
    assert!(
        pods(&sim).is_empty(),
        "nothing programmed: {:?}",
        pods(&sim)
    );

    // The apiserver is back and knows the pod: the runtime's retry works.
    api.restart().expect("restart the fixture apiserver");
    api.put_pod(pod_json("default", "late", NODE, false, None));
    let ok = cni::trunkline(sim.node.name(), &call, &conf).expect("run the plugin");
    assert!(ok.success, "{} {}", ok.stdout, ok.stderr);
    let _ = cni::trunkline(
        sim.node.name(),
        &Call {
            command: "DEL",
            ..call
        },
        &conf,
    );
}
