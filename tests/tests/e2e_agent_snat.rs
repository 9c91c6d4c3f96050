//! SNAT through the real agent and CNI plugin, driven by the aws-node
//! environment variables, on the simulated VPC: what the internet host and
//! the VPC peer see, which ENI SNATed traffic leaves by, what `inspect
//! nat` reports, and a VPC CIDR added at runtime without disturbing an
//! established connection.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, TcpListener, TcpStream},
    time::Duration,
};

use testbed::{
    sim_node::{node_file, pod_ips, SimNode, NODE_IP},
    traffic,
    vpc_fabric::{own, CniPod, Fabric},
};

const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 10);
const INET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn node(env: &[(&str, &str)], eth0: &[Ipv4Addr], eth1: &[Ipv4Addr]) -> SimNode {
    let mut sim = SimNode::build().expect("sim node");
    std::fs::write(sim.node_file(), node_file(eth0, eth1)).expect("node file");
    sim.set_agent_env(env);
    sim.start_agent().expect("agent");
    sim
}

fn pod<'a>(sim: &'a SimNode, name: &str, link: &str) -> CniPod<'a> {
    let p = CniPod::add(sim, "default", name).expect("CNI ADD");
    own(sim, link, p.ip).expect("VPC learns the pod IP");
    p
}

fn seen_by(sim: &SimNode, p: &CniPod, to: Ipv4Addr, port: u16) -> IpAddr {
    let server = if to == INET_IP { &sim.inet } else { &sim.peer };
    traffic::udp_echo(&p.ns, server, to, port, 2)
        .expect("udp")
        .peer
        .ip()
}

#[test]
fn the_internet_sees_the_node_and_the_vpc_sees_the_pod() {
    let eth0 = pod_ips("eth0");
    let sim = node(&[], &eth0[..1], &pod_ips("eth1"));
    let fabric = Fabric::install(&sim).expect("fabric");
    let a = pod(&sim, "pod-a", "eth0");
    let b = pod(&sim, "pod-b", "eth1");
    assert!(
        pod_ips("eth1").contains(&b.ip),
        "second pod on the secondary ENI"
    );
    assert_eq!(seen_by(&sim, &a, INET_IP, 6000), IpAddr::V4(NODE_IP));
    assert_eq!(seen_by(&sim, &a, PEER_IP, 6001), IpAddr::V4(a.ip));
    // A secondary-ENI pod leaving the VPC is SNATed and leaves by the primary ENI.
    let before = fabric.source_check(&sim, "eth0").expect("eth0");
    assert_eq!(seen_by(&sim, &b, INET_IP, 6002), IpAddr::V4(NODE_IP));
    let after = fabric.source_check(&sim, "eth0").expect("eth0");
    assert!(after.0 >= before.0 + 2, "by eth0: {before:?} -> {after:?}");
    assert_eq!(fabric.source_check(&sim, "eth1").expect("eth1").1, 0);
    assert_eq!(after.1, 0, "nothing dropped by the source check");

    let nat = sim.inspect("nat").expect("inspect nat");
    let mappings = nat["mappings"].as_array().expect("mappings");
    assert!(
        mappings
            .iter()
            .any(|m| m["orig"]["src"] == a.ip.to_string()
                && m["reply"]["dst"] == NODE_IP.to_string()),
        "{nat}"
    );
    assert_eq!(
        nat["top_destinations"][0]["destination"], "203.0.113.10:6000",
        "{nat}"
    );
    let ct = sim.inspect("ct").expect("inspect ct");
    assert!(ct.as_array().is_some_and(|f| f.len() >= 2), "{ct}");
}

#[test]
fn exclusions_and_external_snat_come_from_the_aws_node_environment() {
    let sim = node(
        &[(
            "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
            "203.0.113.0/24,2001:db8::/32",
        )],
        &pod_ips("eth0"),
        &[],
    );
    let _fabric = Fabric::install(&sim).expect("fabric");
    let a = pod(&sim, "pod-a", "eth0");
    assert_eq!(
        seen_by(&sim, &a, INET_IP, 6100),
        IpAddr::V4(a.ip),
        "excluded CIDR"
    );
    assert!(
        sim.agent_log().contains("2001:db8::/32"),
        "the IPv6 entry is skipped with a warning"
    );

    let sim = node(
        &[("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true")],
        &pod_ips("eth0"),
        &[],
    );
    let _fabric = Fabric::install(&sim).expect("fabric");
    let a = pod(&sim, "pod-a", "eth0");
    assert_eq!(
        seen_by(&sim, &a, INET_IP, 6101),
        IpAddr::V4(a.ip),
        "external SNAT"
    );

    // An unknown value stops the agent with the variable's name.
    let mut bad = SimNode::build().expect("sim node");
    std::fs::write(bad.node_file(), node_file(&pod_ips("eth0"), &[])).expect("node file");
    bad.set_agent_env(&[("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "sometimes")]);
    let err = format!(
        "{:#}",
        bad.start_agent()
            .expect_err("the agent must refuse to start")
    );
    assert!(err.contains("AWS_VPC_K8S_CNI_RANDOMIZESNAT"), "{err}");
}

#[test]
fn a_vpc_cidr_added_at_runtime_keeps_established_flows() {
    let sim = node(&[], &pod_ips("eth0"), &[]);
    let _fabric = Fabric::install(&sim).expect("fabric");
    let a = pod(&sim, "pod-a", "eth0");
    // A long-lived connection to the internet host, SNATed.
    let listener = sim
        .inet
        .run_in(|| TcpListener::bind((INET_IP, 6200)))
        .expect("listen");
    let mut client =
        a.ns.run_in(|| TcpStream::connect_timeout(&(INET_IP, 6200).into(), Duration::from_secs(5)))
            .expect("connect");
    let (mut server, peer) = listener.accept().expect("accept");
    assert_eq!(peer.ip(), IpAddr::V4(NODE_IP));

    // 203.0.113.0/24 becomes part of the VPC (e.g. a secondary CIDR).
    let file = std::fs::read_to_string(sim.node_file()).expect("read");
    std::fs::write(
        sim.node_file(),
        file.replace(
            "\"100.64.0.0/16\"]",
            "\"100.64.0.0/16\", \"203.0.113.0/24\"]",
        ),
    )
    .expect("write");
    sim.agent.as_ref().expect("agent").hangup().expect("SIGHUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !sim.agent_log().contains("node file reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload: {}",
            sim.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // New flows keep the pod IP; the established one keeps working, translated as before.
    assert_eq!(seen_by(&sim, &a, INET_IP, 6201), IpAddr::V4(a.ip));
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    client.write_all(b"still here").expect("write");
    let mut buf = [0u8; 10];
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    server
        .read_exact(&mut buf)
        .expect("server reads after the change");
    server.write_all(&buf).expect("echo");
    client.read_exact(&mut buf).expect("client reads the echo");
    assert_eq!(&buf, b"still here");
}
