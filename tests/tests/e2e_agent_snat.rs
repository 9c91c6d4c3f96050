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
    drivers::traffic,
    topology::{
        sim_node::{node_file, pod_ips, SimNode, NODE_IP},
        vpc_fabric::{own, CniPod, Fabric},
    },
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

fn pod(sim: &SimNode, name: &str, link: &str) -> CniPod {
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

fn stat(sim: &SimNode, hook: &str, counter: &str) -> u64 {
    let s = sim.inspect("stats").expect("inspect stats");
    s[hook][counter]
        .as_u64()
        .unwrap_or_else(|| panic!("no {hook}.{counter}"))
}

#[test]
fn frag_needed_and_time_exceeded_reach_the_pod_through_the_agent() {
    let sim = node(&[], &pod_ips("eth0"), &[]);
    let _fabric = Fabric::install(&sim).expect("fabric");
    let a = pod(&sim, "pod-a", "eth0");
    // A 1280 hop between the VPC and the internet, whose host is on 1500:
    // the VPC router's frag-needed goes to the node IP and through SNAT to
    // the pod; the hop's router tells the internet host for the echo.
    let _hop = sim.narrow_inet_hop(1280).expect("1280 hop");
    let seen = traffic::tcp_echo(&a.ns, &sim.inet, INET_IP, 6300, &vec![0x42; 1 << 20])
        .expect("1 MiB across the 1280 hop");
    assert_eq!(seen.peer.ip(), IpAddr::V4(NODE_IP));
    assert_eq!(seen.echoed.len(), 1 << 20);
    let route =
        a.ns.exec_ok("ip", &["route", "get", &INET_IP.to_string()])
            .expect("route get");
    assert!(
        route.contains("mtu 1280"),
        "the pod learnt the path MTU: {route}"
    );
    assert!(stat(&sim, "from_eni", "icmp_error_xlated") >= 1);
    // The echo crossed the hop by path MTU discovery too, not by luck.
    let back = sim
        .inet
        .exec_ok("ip", &["route", "get", &NODE_IP.to_string()])
        .expect("route get");
    assert!(
        back.contains("mtu 1280"),
        "the internet host learnt the path MTU: {back}"
    );
    // TTL 2: the node is a hop (1), the VPC router cannot forward (0).
    let out =
        a.ns.exec(
            "ping",
            &["-n", "-c", "1", "-t", "2", "-W", "2", &INET_IP.to_string()],
        )
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("From 192.168.0.1 icmp_seq=1 Time to live exceeded"),
        "{text}"
    );
}

fn raise_fd_limit(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: plain syscall on this process's own limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

fn sockets(ns: &testbed::topology::netns::Netns, count: usize) -> Vec<std::net::UdpSocket> {
    ns.run_in(|| {
        (0..count)
            .map(|_| std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind"))
            .collect()
    })
}

#[test]
fn two_thousand_flows_get_distinct_ports_and_a_small_range_drops_only_the_excess() {
    raise_fd_limit(8192);
    let sim = node(&[], &pod_ips("eth0"), &[]);
    let _fabric = Fabric::install(&sim).expect("fabric");
    let a = pod(&sim, "pod-a", "eth0");
    let server = sim
        .inet
        .run_in(|| std::net::UdpSocket::bind((INET_IP, 7000)))
        .expect("server");
    let dst = std::net::SocketAddr::from((INET_IP, 7000));
    let results =
        traffic::udp_exchanges(&server, &sockets(&a.ns, 2000), dst, Duration::from_secs(2))
            .expect("2000 flows");
    assert!(
        results.iter().all(|(s, ok)| s.is_some() && *ok),
        "every flow answered"
    );
    let ports: std::collections::HashSet<u16> = results
        .iter()
        .filter_map(|(s, _)| s.map(|a| a.port()))
        .collect();
    assert_eq!(ports.len(), 2000);

    // TRUNKLINE_SNAT_PORT_RANGE of 100 ports: the 101st flow is a counted drop.
    let sim = node(
        &[("TRUNKLINE_SNAT_PORT_RANGE", "40000-40099")],
        &pod_ips("eth0"),
        &[],
    );
    let _fabric = Fabric::install(&sim).expect("fabric");
    let a = pod(&sim, "pod-a", "eth0");
    let server = sim
        .inet
        .run_in(|| std::net::UdpSocket::bind((INET_IP, 7001)))
        .expect("server");
    let dst = std::net::SocketAddr::from((INET_IP, 7001));
    let clients = sockets(&a.ns, 101);
    let first =
        traffic::udp_exchanges(&server, &clients[..100], dst, Duration::from_secs(2)).expect("100");
    assert!(first
        .iter()
        .all(|(s, ok)| s.is_some_and(|a| (40000..=40099).contains(&a.port())) && *ok));
    let last = traffic::udp_exchanges(&server, &clients[100..], dst, Duration::from_millis(500))
        .expect("101st");
    assert_eq!(last[0], (None, false), "the 101st flow is dropped");
    assert_eq!(stat(&sim, "to_eni", "drop_nat_no_port"), 1);
    let again = traffic::udp_exchanges(&server, &clients[..100], dst, Duration::from_secs(2))
        .expect("again");
    assert!(
        again.iter().all(|(s, ok)| s.is_some() && *ok),
        "the first 100 keep working"
    );
}

#[test]
fn iperf3_through_the_agent() {
    let sim = node(&[], &pod_ips("eth0"), &[]);
    let _fabric = Fabric::install(&sim).expect("fabric");
    let a = pod(&sim, "pod-a", "eth0");
    let server = testbed::drivers::traffic::Background::spawn(
        &sim.inet,
        "iperf3",
        &["-s", "-1", "-J", "-B", "203.0.113.10", "-p", "5201"],
    )
    .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let client =
        a.ns.exec_ok(
            "iperf3",
            &["-c", "203.0.113.10", "-p", "5201", "-t", "1", "-J"],
        )
        .expect("iperf3 client");
    let client: serde_json::Value = serde_json::from_str(&client).expect("client JSON");
    assert!(client["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0) > 1 << 20);
    let server: serde_json::Value =
        serde_json::from_str(&server.finish(Duration::from_secs(10)).expect("server"))
            .expect("server JSON");
    assert_eq!(
        server["start"]["connected"][0]["remote_host"],
        NODE_IP.to_string()
    );
}
