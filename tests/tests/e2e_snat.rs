//! SNAT end to end on a real kernel (test-topology.md's edge of the VPC):
//! what the internet host receives, with real TCP (veth GSO, so
//! CHECKSUM_PARTIAL), UDP and ICMP, PMTU discovery and traceroute-style
//! errors through the translation, and port allocation under load.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use dataplane_common::{Hook, SnatMode};
use testbed::{
    fixture,
    mini_node::POD_IP,
    object,
    snat_node::{SnatNode, SnatOptions, INET_IP, NODE_IP, ROUTER_IP},
    traffic::{self, Background},
};

fn node(opts: SnatOptions) -> SnatNode {
    SnatNode::new(&object::bytes(), opts).expect("snat node")
}

fn v4(ip: Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

#[test]
fn internet_sees_the_node_ip_for_tcp_udp_and_icmp() {
    let n = node(SnatOptions::default());
    traffic::ping(&n.pod, INET_IP, 3).expect("ping through SNAT");
    let udp = traffic::udp_echo(&n.pod, &n.inet, INET_IP, 5300, 5).expect("udp");
    assert_eq!(udp.peer.ip(), v4(NODE_IP));
    assert_eq!(udp.echoed, udp.received);
    // 4 MiB each way over veth: GSO segments with CHECKSUM_PARTIAL.
    let tcp = traffic::tcp_echo(&n.pod, &n.inet, INET_IP, 5301, &vec![0xa5; 4 << 20]).expect("tcp");
    assert_eq!(tcp.peer.ip(), v4(NODE_IP));
    assert!(tcp.peer.port() >= 32768, "{}", tcp.peer);
    assert_eq!(tcp.echoed.len(), 4 << 20);
    assert!(tcp.echoed == tcp.received);

    let s = n.dataplane.stats().expect("stats");
    assert!(
        s.hook(Hook::ToEni).snat >= 3 + 5 + 3,
        "{:?}",
        s.hook(Hook::ToEni)
    );
    assert!(
        s.hook(Hook::FromEni).rev_snat >= 3 + 5 + 3,
        "{:?}",
        s.hook(Hook::FromEni)
    );
    assert_eq!(s.total().drop, 0, "{:?}", s.total());
}

#[test]
fn iperf3_transfer_through_snat() {
    let n = node(SnatOptions::default());
    let server = Background::spawn(
        &n.inet,
        "iperf3",
        &["-s", "-1", "-J", "-B", &INET_IP.to_string(), "-p", "5201"],
    )
    .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let client = n
        .pod
        .exec_ok(
            "iperf3",
            &["-c", &INET_IP.to_string(), "-p", "5201", "-t", "2", "-J"],
        )
        .expect("iperf3 client");
    let client: serde_json::Value = serde_json::from_str(&client).expect("client JSON");
    let received = client["end"]["sum_received"]["bytes"]
        .as_u64()
        .expect("bytes received");
    assert!(received > 1 << 20, "only {received} bytes");
    let server: serde_json::Value =
        serde_json::from_str(&server.finish(Duration::from_secs(10)).expect("server exit"))
            .expect("server JSON");
    assert_eq!(
        server["start"]["connected"][0]["remote_host"],
        NODE_IP.to_string(),
        "the server saw the node"
    );
    println!(
        "iperf3 pod -> inet through SNAT: {:.2} Gbit/s",
        client["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e9
    );
}

#[test]
fn vpc_and_excluded_destinations_and_external_snat_see_the_pod_ip() {
    // The router is in the VPC CIDR: it sees the pod.
    let n = node(SnatOptions::default());
    let udp = traffic::udp_echo(&n.pod, &n.router, ROUTER_IP, 5400, 2).expect("udp to VPC");
    assert_eq!(udp.peer.ip(), v4(POD_IP));

    // An excluded CIDR (AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS) sees the pod.
    let mut n = node(SnatOptions::default());
    fixture::add_no_snat(
        &mut n.dataplane,
        [203, 0, 113, 0],
        24,
        dataplane_common::maps::NO_SNAT_EXCLUDED,
    );
    let udp = traffic::udp_echo(&n.pod, &n.inet, INET_IP, 5401, 2).expect("udp to excluded");
    assert_eq!(udp.peer.ip(), v4(POD_IP));

    // External SNAT: everything sees the pod.
    let n = node(SnatOptions {
        mode: SnatMode::Off,
        ..Default::default()
    });
    let tcp = traffic::tcp_echo(&n.pod, &n.inet, INET_IP, 5402, b"external").expect("tcp");
    assert_eq!(tcp.peer.ip(), v4(POD_IP));
    assert_eq!(n.dataplane.stats().expect("stats").total().snat, 0);
}

#[test]
fn fragmentation_needed_reaches_the_pod_and_tcp_completes() {
    let n = node(SnatOptions {
        inet_link_mtu: 1280,
        ..Default::default()
    });
    // The internet host's MTU is 1500, so its MSS does not hide the 1280 hop.
    let tcp = traffic::tcp_echo(&n.pod, &n.inet, INET_IP, 5500, &vec![0x42; 1 << 20])
        .expect("tcp across the 1280 hop");
    assert_eq!(tcp.peer.ip(), v4(NODE_IP));
    assert_eq!(tcp.echoed.len(), 1 << 20);
    let s = n.dataplane.stats().expect("stats");
    assert!(
        s.hook(Hook::FromEni).icmp_error_xlated >= 1,
        "{:?}",
        s.hook(Hook::FromEni)
    );
    let route = n
        .pod
        .exec_ok("ip", &["route", "get", &INET_IP.to_string()])
        .expect("route get");
    assert!(
        route.contains("mtu 1280"),
        "the pod learnt the path MTU: {route}"
    );
}

#[test]
fn ttl_limited_probe_gets_time_exceeded_back() {
    let n = node(SnatOptions::default());
    // TTL 2: the node forwards (1), the router cannot (0) and answers the node IP.
    let out = n
        .pod
        .exec(
            "ping",
            &["-n", "-c", "1", "-t", "2", "-W", "2", &INET_IP.to_string()],
        )
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "From {ROUTER_IP} icmp_seq=1 Time to live exceeded"
        )),
        "the pod's ping got the router's error: {text}"
    );
    let s = n.dataplane.stats().expect("stats");
    assert_eq!(s.hook(Hook::FromEni).icmp_error_xlated, 1);
}

fn raise_fd_limit(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: plain syscall on this process's own limit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(rc, 0, "setrlimit NOFILE {n}");
}

fn pod_sockets(n: &SnatNode, count: usize) -> Vec<UdpSocket> {
    n.pod.run_in(|| {
        (0..count)
            .map(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind"))
            .collect()
    })
}

fn inet_server(n: &SnatNode, port: u16) -> UdpSocket {
    n.inet
        .run_in(|| UdpSocket::bind((INET_IP, port)).expect("bind server"))
}

#[test]
fn two_thousand_concurrent_flows_get_distinct_ports() {
    raise_fd_limit(8192);
    let n = node(SnatOptions::default());
    let clients = pod_sockets(&n, 2000);
    let server = inet_server(&n, 7000);
    let dst = SocketAddr::from((INET_IP, 7000));
    let results =
        traffic::udp_exchanges(&server, &clients, dst, Duration::from_secs(2)).expect("exchanges");
    let seen: Vec<SocketAddr> = results
        .iter()
        .map(|(s, _)| s.expect("every flow arrived"))
        .collect();
    assert!(
        results.iter().all(|(_, answered)| *answered),
        "every flow got its reply"
    );
    assert!(seen.iter().all(|a| a.ip() == v4(NODE_IP)));
    let ports: HashSet<u16> = seen.iter().map(SocketAddr::port).collect();
    assert_eq!(ports.len(), 2000, "2000 flows, 2000 distinct node ports");
}

#[test]
fn a_hundred_port_range_drops_the_hundred_and_first_flow_and_keeps_the_rest() {
    let n = node(SnatOptions {
        port_min: 40000,
        port_max: 40099,
        ..Default::default()
    });
    let clients = pod_sockets(&n, 101);
    let server = inet_server(&n, 7001);
    let dst = SocketAddr::from((INET_IP, 7001));
    let first = traffic::udp_exchanges(&server, &clients[..100], dst, Duration::from_secs(2))
        .expect("100 flows");
    assert!(
        first.iter().all(|(s, a)| s.is_some() && *a),
        "the first 100 flows work"
    );
    let ports: HashSet<u16> = first
        .iter()
        .filter_map(|(s, _)| s.map(|a| a.port()))
        .collect();
    assert_eq!(ports, (40000..=40099).collect::<HashSet<u16>>());

    let last = traffic::udp_exchanges(&server, &clients[100..], dst, Duration::from_millis(500))
        .expect("101st");
    assert_eq!(last[0], (None, false), "the 101st flow is dropped");
    let s = n.dataplane.stats().expect("stats");
    assert_eq!(
        s.hook(Hook::ToEni).drop_nat_no_port,
        1,
        "and counted: {:?}",
        s.hook(Hook::ToEni)
    );

    let again = traffic::udp_exchanges(&server, &clients[..100], dst, Duration::from_secs(2))
        .expect("100 again");
    assert!(
        again.iter().all(|(s, a)| s.is_some() && *a),
        "the first 100 keep working"
    );
}
