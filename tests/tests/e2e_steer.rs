//! Per-pod ENI steering and branch-ENI VLAN steering end to end: the real
//! agent and CNI plugin on the simulated node, in a VPC that checks source
//! addresses per ENI and plays EC2's branch ENIs on the trunk. What is
//! asserted is what the far end saw and what the VPC counted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde_json::Value;
use testbed::{
    drivers::traffic,
    topology::{
        sim_node::{pod_ips, SimNode, BRANCH_IP, BRANCH_POD, NODE_IP},
        vpc_fabric::{own, CniPod, Fabric},
    },
};

const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 10);
const INET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn ip(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

/// A pod added through the CNI plugin whose IP the VPC then attributes to `link`.
fn pod(sim: &SimNode, name: &str, link: &str) -> CniPod {
    let p = CniPod::add(sim, "default", name).expect("CNI ADD");
    own(sim, link, p.ip).expect("VPC learns the pod IP");
    p
}

fn stat(sim: &SimNode, hook: &str, counter: &str) -> u64 {
    let s: Value = sim.inspect("stats").expect("inspect stats");
    s[hook][counter]
        .as_u64()
        .unwrap_or_else(|| panic!("no {hook}.{counter} in {s}"))
}

#[test]
fn a_secondary_eni_pod_leaves_its_own_eni_and_passes_the_source_check() {
    let sim = SimNode::with_pools(&[], &pod_ips("eth1")).expect("sim node");
    let fabric = Fabric::install(&sim).expect("fabric");
    let b = pod(&sim, "pod-b", "eth1");
    assert!(
        pod_ips("eth1").contains(&b.ip),
        "{} is an eth1 address",
        b.ip
    );

    let seen = traffic::udp_echo(&b.ns, &sim.peer, PEER_IP, 5000, 3).expect("pod B -> VPC peer");
    assert_eq!(
        seen.peer.ip(),
        ip(b.ip),
        "inside the VPC the pod keeps its IP"
    );
    let (passed, dropped) = fabric.source_check(&sim, "eth1").expect("eth1 counters");
    assert!(
        passed >= 3 && dropped == 0,
        "eth1 passed {passed}, dropped {dropped}"
    );
    assert_eq!(
        fabric.source_check(&sim, "eth0").expect("eth0").1,
        0,
        "nothing left by the wrong ENI"
    );

    // The check is real: an eth1 address leaving by eth0 (the host's own
    // routing, an address no pod holds so trunkline leaves it alone) is dropped.
    let stray = pod_ips("eth1")[40];
    own(&sim, "eth1", stray).expect("owned by eth1");
    sim.node
        .ip(&["addr", "add", &format!("{stray}/32"), "dev", "lo"])
        .expect("addr");
    let out = sim
        .node
        .exec(
            "ping",
            &[
                "-n",
                "-c",
                "1",
                "-W",
                "1",
                "-I",
                &stray.to_string(),
                &PEER_IP.to_string(),
            ],
        )
        .expect("ping");
    assert!(
        !out.status.success(),
        "a wrong-ENI packet must not get through"
    );
    assert!(
        fabric.source_check(&sim, "eth0").expect("eth0").1 >= 1,
        "and the VPC counted the drop"
    );
}

#[test]
fn a_branch_pod_round_trips_tagged_through_the_trunk() {
    let sim = SimNode::new().expect("sim node");
    let fabric = Fabric::install(&sim).expect("fabric");
    let c = CniPod::add(&sim, BRANCH_POD.0, BRANCH_POD.1).expect("branch pod ADD");
    assert_eq!(c.ip, BRANCH_IP, "the branch ENI's address, not a pool IP");
    let seen = traffic::udp_echo(&c.ns, &sim.peer, PEER_IP, 5001, 3).expect("branch pod -> peer");
    assert_eq!(seen.peer.ip(), ip(BRANCH_IP), "never SNATed");
    let t = fabric.trunk.stats().expect("trunk counters");
    // EC2 accepted only frames tagged with VLAN 1, the branch MAC and IP, and tagged the replies.
    assert!(t.accepted >= 3 && t.tagged >= 3, "{t:?}");
    assert_eq!(t.rejected, 0, "{t:?}");
    assert!(stat(&sim, "from_pod", "vlan_push") >= 3 && stat(&sim, "from_eni", "vlan_pop") >= 3);
}

#[test]
fn pods_on_one_node_reach_each_other_directly() {
    let sim = SimNode::new().expect("sim node");
    let _fabric = Fabric::install(&sim).expect("fabric");
    let a = pod(&sim, "pod-a", "eth0");
    let b = pod(&sim, "pod-b", "eth0");
    let seen = traffic::tcp_echo(&a.ns, &b.ns, b.ip, 8080, b"hello b").expect("a -> b");
    assert_eq!(seen.peer.ip(), ip(a.ip));
    assert!(
        stat(&sim, "from_pod", "steer_pod") >= 3,
        "one redirect per packet, both ways"
    );
}

#[test]
fn a_node_probe_reaches_the_pod_and_comes_back_through_the_stack() {
    let sim = SimNode::new().expect("sim node");
    let _fabric = Fabric::install(&sim).expect("fabric");
    let a = pod(&sim, "pod-a", "eth0");
    let seen =
        traffic::tcp_echo(&sim.node, &a.ns, a.ip, 8080, b"GET /healthz").expect("node -> pod");
    assert_eq!(
        seen.peer.ip(),
        ip(NODE_IP),
        "a kubelet-like probe from the node IP"
    );
    assert!(stat(&sim, "to_pod", "via_stack_new") >= 1);
}

#[test]
fn nodeport_through_kube_proxy_dnat_and_back() {
    let sim = SimNode::new().expect("sim node");
    let _fabric = Fabric::install(&sim).expect("fabric");
    let a = pod(&sim, "pod-a", "eth0");
    sim.kube_proxy(&format!("  tcp dport 30080 dnat to {}:8080", a.ip))
        .expect("kube-proxy rules");
    let seen = traffic::tcp_echo_via(
        &sim.inet,
        &a.ns,
        SocketAddr::from((a.ip, 8080)),
        SocketAddr::from((NODE_IP, 30080)),
        b"nodeport",
    )
    .expect("inet -> NodePort -> pod");
    assert_eq!(
        seen.peer.ip(),
        ip(INET_IP),
        "the pod sees the client (no masquerade)"
    );
    assert_eq!(
        seen.echoed, b"nodeport",
        "the reply went back through the stack, un-DNATed"
    );
    assert!(stat(&sim, "from_pod", "to_stack") >= 1);
}

#[test]
fn a_service_cidr_destination_reaches_its_dnat_target() {
    let sim = SimNode::new().expect("sim node");
    let _fabric = Fabric::install(&sim).expect("fabric");
    let a = pod(&sim, "pod-a", "eth0");
    let b = pod(&sim, "pod-b", "eth0");
    sim.kube_proxy(&format!(
        "  ip daddr 10.100.0.10 tcp dport 80 dnat to {}:8080",
        b.ip
    ))
    .expect("kube-proxy rules");
    let seen = traffic::tcp_echo_via(
        &a.ns,
        &b.ns,
        SocketAddr::from((b.ip, 8080)),
        SocketAddr::from((Ipv4Addr::new(10, 100, 0, 10), 80)),
        b"service",
    )
    .expect("pod A -> ClusterIP -> pod B");
    assert_eq!(seen.peer.ip(), ip(a.ip));
    assert_eq!(seen.echoed, b"service");
}

/// Node -> branch pod probe; returns how many frames EC2's trunk tagged.
fn probe_branch_pod(env: &[(&str, &str)]) -> u64 {
    let mut sim = SimNode::build().expect("sim node");
    std::fs::write(
        sim.node_file(),
        testbed::topology::sim_node::node_file(&pod_ips("eth0"), &pod_ips("eth1")),
    )
    .expect("node file");
    sim.set_agent_env(env);
    sim.start_agent().expect("agent");
    let fabric = Fabric::install(&sim).expect("fabric");
    let c = CniPod::add(&sim, BRANCH_POD.0, BRANCH_POD.1).expect("branch pod");
    let seen =
        traffic::tcp_echo(&sim.node, &c.ns, c.ip, 8080, b"probe").expect("node -> branch pod");
    assert_eq!(seen.peer.ip(), ip(NODE_IP));
    fabric.trunk.stats().expect("trunk").tagged
}

#[test]
fn strict_mode_sends_node_traffic_through_the_branch_eni_and_standard_does_not() {
    let strict = probe_branch_pod(&[]);
    let standard = probe_branch_pod(&[("POD_SECURITY_GROUP_ENFORCING_MODE", "standard")]);
    assert!(
        strict >= 3,
        "strict: the probe went through the VPC and the trunk ({strict} tagged)"
    );
    assert_eq!(standard, 0, "standard: node-local traffic goes directly");
}
