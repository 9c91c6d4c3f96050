//! A node with systemd's sysctl defaults, `net.ipv4.conf.default.rp_filter
//! = 2` (loose), which every new host veth inherits. The data path routes
//! pods without host routes and the veth has no address, so the host
//! stack has no route back to a pod through its veth, and the kernel drops
//! such packets under any filtering mode: whatever a pod sends into the
//! stack (a ClusterIP, a node-local service, its answer to a NodePort
//! client) would be lost unless the veth's filter is off. What is asserted
//! is what the far end received.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use testbed::{
    drivers::traffic,
    topology::{
        sim_node::{node_file, pod_ips, SimNode, NODE_IP},
        vpc_fabric::{own, CniPod, Fabric},
    },
};

const INET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const LOCAL_SERVICE: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 23);

fn systemd_node() -> SimNode {
    let mut sim = SimNode::build().expect("sim node");
    sim.node
        .sysctl("net.ipv4.conf.default.rp_filter", "2")
        .expect("systemd's rp_filter default");
    std::fs::write(
        sim.node_file(),
        node_file(&pod_ips("eth0"), &pod_ips("eth1")),
    )
    .expect("node file");
    sim.start_agent().expect("agent");
    sim
}

fn pod(sim: &SimNode, name: &str) -> CniPod {
    let p = CniPod::add(sim, "default", name).expect("CNI ADD");
    own(sim, "eth0", p.ip).expect("VPC learns the pod IP");
    p
}

#[test]
fn stack_paths_work_on_a_node_with_systemds_rp_filter_default() {
    let sim = systemd_node();
    let _fabric = Fabric::install(&sim).expect("fabric");
    let a = pod(&sim, "pod-a");
    let b = pod(&sim, "pod-b");
    let records = sim.checkpoint_pods().expect("checkpoint");
    let veth = records
        .iter()
        .find(|r| r["ip"].as_str() == Some(&a.ip.to_string()))
        .and_then(|r| r["host_veth"].as_str())
        .unwrap_or_else(|| panic!("pod A's record in {records:?}"))
        .to_string();
    let veth_filter = sim
        .node
        .exec_ok(
            "sysctl",
            &["-n", &format!("net.ipv4.conf.{veth}.rp_filter")],
        )
        .expect("sysctl");
    assert_eq!(
        veth_filter.trim(),
        "0",
        "the agent turned the host veth's filter off"
    );

    // A ClusterIP DNATed to a pod on the node: into the stack from pod A's veth.
    sim.kube_proxy(&format!(
        "  ip daddr 10.100.0.30 tcp dport 80 dnat to {}:8080\n  tcp dport 30081 dnat to {}:8081",
        b.ip, b.ip
    ))
    .expect("kube-proxy rules");
    let seen = traffic::tcp_echo_via(
        &a.ns,
        &b.ns,
        SocketAddr::from((b.ip, 8080)),
        SocketAddr::from((Ipv4Addr::new(10, 100, 0, 30), 80)),
        b"svc",
    )
    .expect("pod A -> ClusterIP -> pod B on a node with rp_filter default 2");
    assert_eq!(
        (seen.peer.ip(), &seen.echoed[..]),
        (IpAddr::V4(a.ip), &b"svc"[..])
    );

    // NodePort: the pod's answer enters the stack from its veth.
    let seen = traffic::tcp_echo_via(
        &sim.inet,
        &b.ns,
        SocketAddr::from((b.ip, 8081)),
        SocketAddr::from((NODE_IP, 30081)),
        b"np",
    )
    .expect("inet -> NodePort -> pod B on a node with rp_filter default 2");
    assert_eq!(
        (seen.peer.ip(), &seen.echoed[..]),
        (IpAddr::V4(INET_IP), &b"np"[..])
    );

    // A node-local service (the EKS Pod Identity agent's address).
    sim.node
        .ip(&["addr", "add", &format!("{LOCAL_SERVICE}/32"), "dev", "lo"])
        .expect("addr");
    sim.await_node_local(LOCAL_SERVICE)
        .expect("node-local address");
    let seen = traffic::tcp_echo(&a.ns, &sim.node, LOCAL_SERVICE, 80, b"creds")
        .expect("pod A -> node-local service on a node with rp_filter default 2");
    assert_eq!(seen.peer.ip(), IpAddr::V4(a.ip), "not SNATed");
}
