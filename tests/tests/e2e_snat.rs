//! SNAT end to end on a real kernel, differential against the legacy
//! plumbing: every scenario runs on the same topology (test-topology.md's
//! edge of the VPC) once with aws-node's iptables SNAT chain and once with
//! trunkline, and reports what the far end observed. Trunkline must show
//! the expected outcome, and legacy must not do better anywhere; the table
//! is printed. TCP runs over veth with GSO, so CHECKSUM_PARTIAL is covered.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use dataplane_common::{Hook, SnatMode};
use etherparse::IpNumber;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use testbed::{
    drivers::traffic::{self, Background},
    kernel::{
        object,
        packets::{self, Flow, L3_OFF},
    },
    topology::snat_node::{Plumbing, SnatNode, SnatOptions, INET_IP, NODE_IP, ROUTER_IP},
};
use trunkline_agent::{
    conntrack_gc::{now_coarse_ns, Collector, Timeouts},
    dataplane::{CtMaps, MapOwner},
};

struct Scenario {
    name: &'static str,
    opts: SnatOptions,
    /// What the far end observed, as a sentence.
    run: fn(&SnatNode) -> Result<String>,
    expect: &'static str,
    /// Extra checks of trunkline's own counters.
    counters: fn(&SnatNode),
}

fn tcp_to_inet(n: &SnatNode) -> Result<String> {
    // 4 MiB each way: veth GSO segments with CHECKSUM_PARTIAL.
    let seen = traffic::tcp_echo(&n.pod, &n.inet, INET_IP, 5301, &vec![0xa5; 4 << 20])?;
    if seen.echoed != seen.received || seen.echoed.len() != 4 << 20 {
        bail!("TCP data corrupted or short");
    }
    Ok(format!("inet saw {}", seen.peer.ip()))
}

fn udp_to_inet(n: &SnatNode) -> Result<String> {
    let seen = traffic::udp_echo(&n.pod, &n.inet, INET_IP, 5300, 5)?;
    Ok(format!("inet saw {}", seen.peer.ip()))
}

fn ping_inet(n: &SnatNode) -> Result<String> {
    traffic::ping(&n.pod, INET_IP, 3)?;
    // The reply proves the translation back; the capture-free way to see the
    // source is the TCP/UDP scenarios.
    Ok("3/3 echo replies".into())
}

fn udp_to_vpc(n: &SnatNode) -> Result<String> {
    let seen = traffic::udp_echo(&n.pod, &n.router, ROUTER_IP, 5400, 2)?;
    Ok(format!("VPC host saw {}", seen.peer.ip()))
}

fn tcp_across_small_mtu(n: &SnatNode) -> Result<String> {
    let seen = traffic::tcp_echo(&n.pod, &n.inet, INET_IP, 5500, &vec![0x42; 1 << 20])?;
    if seen.echoed.len() != 1 << 20 {
        bail!("transfer short");
    }
    let route = n
        .pod
        .exec_ok("ip", &["route", "get", &INET_IP.to_string()])?;
    let mtu = route
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .unwrap_or("none")
        .to_string();
    Ok(format!("1 MiB each way, pod path MTU {mtu}"))
}

/// 1 MiB each way from a pod with MTU 9001 behind a 1500 ENI, to the
/// internet (SNATed) and to a VPC host (not): the pod learns the path MTU
/// from the node's frag-needed instead of its segments being black-holed.
fn tcp_from_a_jumbo_pod(n: &SnatNode) -> Result<String> {
    let payload = vec![0x5a; 1 << 20];
    let inet = traffic::tcp_echo(&n.pod, &n.inet, INET_IP, 5600, &payload)?;
    let vpc = traffic::tcp_echo(&n.pod, &n.router, ROUTER_IP, 5601, &payload)?;
    for seen in [&inet, &vpc] {
        if seen.echoed != payload || seen.received != payload {
            bail!("transfer short or corrupted");
        }
    }
    Ok(format!(
        "1 MiB each way, inet saw {}, VPC saw {}",
        inet.peer.ip(),
        vpc.peer.ip()
    ))
}

fn ttl_limited_ping(n: &SnatNode) -> Result<String> {
    // TTL 2: the node forwards (1), the router cannot (0) and answers the node IP.
    let out = n.pod.exec(
        "ping",
        &["-n", "-c", "1", "-t", "2", "-W", "2", &INET_IP.to_string()],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(
        match text.lines().find(|l| l.contains("Time to live exceeded")) {
            Some(line) => format!(
                "pod got: {}",
                line.split(" icmp_seq").next().unwrap_or(line).trim()
            ),
            None => "no error reached the pod".into(),
        },
    )
}

/// A 3,000-byte answer cut into three fragments that reach the node last
/// first (reordered on the wire): the internet host learns the pod's NAT
/// address from its query and sends the fragments itself, in reverse, from
/// a raw socket. Netfilter reassembles before it translates; trunkline
/// holds the early fragments until the first comes.
fn reordered_fragmented_answer(n: &SnatNode) -> Result<String> {
    const PORT: u16 = 7100;
    let server = n.inet.run_in(|| UdpSocket::bind((INET_IP, PORT)))?;
    server.set_read_timeout(Some(traffic::timeout()))?;
    let raw = n
        .inet
        .run_in(|| Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255))))
        .context("raw socket (IPPROTO_RAW) in the internet host")?;
    let client = n
        .pod
        .run_in(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
    client.set_read_timeout(Some(traffic::timeout()))?;
    client.send_to(b"send me 3000 bytes", (INET_IP, PORT))?;
    let mut buf = [0u8; 4096];
    let (_, peer) = server.recv_from(&mut buf).context("the query")?;
    let SocketAddr::V4(peer) = peer else {
        bail!("an IPv4 peer");
    };
    let answer: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
    let whole = packets::udp(
        Flow::new(INET_IP.octets(), peer.ip().octets(), PORT, peer.port()),
        &answer,
    );
    let l4 = &whole[L3_OFF + 20..];
    let fragments: Vec<Vec<u8>> = l4
        .chunks(1480)
        .enumerate()
        .map(|(i, chunk)| {
            let more = (i + 1) * 1480 < l4.len();
            let frame = packets::ipv4_fragment(
                INET_IP.octets(),
                peer.ip().octets(),
                IpNumber::UDP,
                0x5eed,
                (i * 1480 / 8) as u16,
                more,
                chunk,
            );
            frame[L3_OFF..].to_vec()
        })
        .collect();
    let to = SockAddr::from(SocketAddrV4::new(*peer.ip(), 0));
    for f in fragments.iter().rev() {
        raw.send_to(f, &to).context("sending a fragment")?;
    }
    let (got, from) = client.recv_from(&mut buf).context("the answer")?;
    if buf[..got] != answer[..] {
        bail!("answer of {got} bytes, not the 3000 sent");
    }
    Ok(format!(
        "{} fragments last first: {got} bytes intact from {}",
        fragments.len(),
        from.ip()
    ))
}

fn raise_fd_limit(n: u64) -> Result<()> {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: plain syscall on this process's own limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        bail!("setrlimit NOFILE {n}");
    }
    Ok(())
}

fn pod_sockets(n: &SnatNode, count: usize) -> Result<Vec<UdpSocket>> {
    n.pod
        .run_in(|| {
            (0..count)
                .map(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
                .collect::<Result<_, _>>()
        })
        .context("pod sockets")
}

fn many_flows(n: &SnatNode) -> Result<String> {
    raise_fd_limit(8192)?;
    let clients = pod_sockets(n, 2000)?;
    let server = n.inet.run_in(|| UdpSocket::bind((INET_IP, 7000)))?;
    let results = traffic::udp_exchanges(
        &server,
        &clients,
        SocketAddr::from((INET_IP, 7000)),
        Duration::from_secs(2),
    )?;
    let answered = results.iter().filter(|(_, a)| *a).count();
    let sources: HashSet<SocketAddr> = results.iter().filter_map(|(s, _)| *s).collect();
    let ips: HashSet<_> = sources.iter().map(SocketAddr::ip).collect();
    Ok(format!(
        "{answered}/2000 answered from {ips:?}, {} distinct source ports",
        sources.len()
    ))
}

fn hundred_port_range(n: &SnatNode) -> Result<String> {
    let clients = pod_sockets(n, 101)?;
    let server = n.inet.run_in(|| UdpSocket::bind((INET_IP, 7001)))?;
    let dst = SocketAddr::from((INET_IP, 7001));
    let ok = |r: &[(Option<SocketAddr>, bool)]| r.iter().filter(|(s, a)| s.is_some() && *a).count();
    let first = traffic::udp_exchanges(&server, &clients[..100], dst, Duration::from_secs(2))?;
    let ports: HashSet<u16> = first
        .iter()
        .filter_map(|(s, _)| s.map(|a| a.port()))
        .collect();
    let in_range = ports.iter().all(|p| (40000..=40099).contains(p));
    let last = traffic::udp_exchanges(&server, &clients[100..], dst, Duration::from_millis(500))?;
    let again = traffic::udp_exchanges(&server, &clients[..100], dst, Duration::from_secs(2))?;
    Ok(format!(
        "{}/100 answered (ports in range: {in_range}), 101st {}, then {}/100 again",
        ok(&first),
        if ok(&last) == 1 {
            "answered"
        } else {
            "dropped"
        },
        ok(&again)
    ))
}

/// UDP's timeout in the churn scenario, on both sides: netfilter's 30 s
/// (`nf_conntrack_udp_timeout`, the GC's `udp_replied`) scaled down so
/// that 3,000 exchanges take seconds.
const CHURN_UDP_TIMEOUT: Duration = Duration::from_secs(1);

/// Conntrack timeouts scaled down so a scenario sees them expire in
/// seconds, the same on both sides: for trunkline the agent's GC with
/// `timeouts`, every 100 ms, on a thread; for legacy netfilter's own
/// per-namespace sysctls in the node.
struct ScaledGc {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ScaledGc {
    fn start(n: &SnatNode, timeouts: Timeouts, netfilter: &[(&str, Duration)]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = match &n.dataplane {
            Some(_) => {
                let mut maps = CtMaps::open(n.bpffs.path())?;
                let stop = stop.clone();
                Some(std::thread::spawn(move || {
                    let mut gc = Collector::new(timeouts);
                    while !stop.load(Ordering::Relaxed) {
                        gc.collect(
                            &mut maps,
                            now_coarse_ns(),
                            NODE_IP.octets(),
                            &HashSet::new(),
                        )
                        .expect("a GC pass");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }))
            }
            None => {
                for (key, t) in netfilter {
                    n.node.sysctl(key, &t.as_secs().to_string())?;
                }
                None
            }
        };
        Ok(Self { stop, thread })
    }

    fn stop(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the GC thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for ScaledGc {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// TIME_WAIT scaled to 2 s (netfilter's is 120 s).
const POOL_TIME_WAIT: Duration = Duration::from_secs(2);

/// A connection pool's pattern: a connection from a fixed source port is
/// closed by the server (TIME_WAIT on its side), the pool reconnects from
/// the same port, then the connection idles past TIME_WAIT's timeout and
/// is used again. The reopened flow must be an established one: a flow
/// left "closing" would be cut by conntrack during the idle time, and the
/// next segment would leave from another port, to be reset by the server.
fn pooled_tuple_after_time_wait(n: &SnatNode) -> Result<String> {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
    };
    const POD_PORT: u16 = 41000;
    let server_at = SocketAddr::from((INET_IP, 5700));
    let listener = n.inet.run_in(|| TcpListener::bind(server_at))?;
    let gc = ScaledGc::start(
        n,
        Timeouts {
            tcp_time_wait: POOL_TIME_WAIT,
            tcp_close: POOL_TIME_WAIT,
            ..Timeouts::default()
        },
        &[
            (
                "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
                POOL_TIME_WAIT,
            ),
            (
                "net.netfilter.nf_conntrack_tcp_timeout_close",
                POOL_TIME_WAIT,
            ),
        ],
    )?;
    let connect = || -> Result<TcpStream> {
        let s = n.pod.run_in(|| -> std::io::Result<TcpStream> {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, POD_PORT)).into())?;
            s.connect_timeout(&server_at.into(), traffic::timeout())?;
            s.set_read_timeout(Some(traffic::timeout()))?;
            Ok(s.into())
        })?;
        Ok(s)
    };
    let accept = || -> Result<TcpStream> {
        let (s, _) = listener.accept().context("accept")?;
        s.set_read_timeout(Some(traffic::timeout()))?;
        Ok(s)
    };
    // One message each way: the server echoes it.
    let exchange = |client: &mut TcpStream, server: &mut TcpStream, what: &[u8]| -> Result<()> {
        client.write_all(what).context("pod sends")?;
        let mut got = vec![0; what.len()];
        server.read_exact(&mut got).context("server reads")?;
        server.write_all(&got).context("server answers")?;
        let mut back = vec![0; what.len()];
        client
            .read_exact(&mut back)
            .context("pod reads the answer")?;
        if back != what {
            bail!("answer corrupted");
        }
        Ok(())
    };

    let mut first = connect().context("first connection")?;
    let mut served = accept()?;
    exchange(&mut first, &mut served, b"first")?;
    drop(served); // the server closes first: TIME_WAIT is on its side
    let mut eof = [0u8; 1];
    if first.read(&mut eof).context("the server's FIN")? != 0 {
        bail!("data instead of the server's FIN");
    }
    drop(first);
    // Let the close settle in conntrack (both FINs and the last ACK).
    std::thread::sleep(Duration::from_millis(300));

    let mut second = connect().context("reconnect from the same port")?;
    let mut served = accept()?;
    exchange(&mut second, &mut served, b"second")?;
    let idle = POOL_TIME_WAIT + Duration::from_secs(1);
    std::thread::sleep(idle);
    exchange(&mut second, &mut served, b"after the idle").context("after the idle")?;
    gc.stop()?;
    Ok(format!(
        "reused tuple after TIME_WAIT, idle {} s past its {} s timeout: still answered",
        idle.as_secs(),
        POOL_TIME_WAIT.as_secs()
    ))
}

/// A DNS client's pattern: 3,000 times a new socket, one query to the same
/// resolver, one answer, close, paced at 250 a second, through 512 NAT
/// ports. A replied flow that never became a stream frees its port after
/// UDP's timeout, so about 300 ports are ever in use; had one-shot flows
/// been held as streams (120 s), the 513th exchange would find none.
fn one_shot_udp_churn(n: &SnatNode) -> Result<String> {
    const EXCHANGES: u32 = 3_000;
    let pace = Duration::from_millis(4);
    let server = n.inet.run_in(|| UdpSocket::bind((INET_IP, 53)))?;
    server.set_read_timeout(Some(Duration::from_millis(50)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let ports = Arc::new(Mutex::new(HashSet::new()));
    let resolver = {
        let (stop, ports) = (stop.clone(), ports.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((len, peer)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(&buf[..len], peer);
                    if let Ok(mut p) = ports.lock() {
                        p.insert(peer.port());
                    }
                }
            }
        })
    };
    let gc = ScaledGc::start(
        n,
        Timeouts {
            udp_unreplied: CHURN_UDP_TIMEOUT,
            udp_replied: CHURN_UDP_TIMEOUT,
            ..Timeouts::default()
        },
        &[("net.netfilter.nf_conntrack_udp_timeout", CHURN_UDP_TIMEOUT)],
    )?;
    let dst = SocketAddr::from((INET_IP, 53));
    let answered = n.pod.run_in(|| {
        let start = Instant::now();
        let mut answered = 0;
        for i in 0..EXCHANGES {
            let exchange = || -> std::io::Result<bool> {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                s.send_to(&i.to_be_bytes(), dst)?;
                let mut buf = [0u8; 4];
                Ok(matches!(s.recv_from(&mut buf), Ok((4, _))) && buf == i.to_be_bytes())
            };
            if exchange().unwrap_or(false) {
                answered += 1;
            }
            if let Some(wait) = (start + pace * (i + 1)).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        answered
    });
    stop.store(true, Ordering::Relaxed);
    let _ = resolver.join();
    gc.stop()?;
    let ports = ports.lock().map_err(|_| anyhow::anyhow!("port set"))?;
    let in_range = ports.iter().all(|p| (40_000..=40_511).contains(p));
    Ok(format!(
        "{answered}/{EXCHANGES} answered, NAT ports in range: {in_range}"
    ))
}

fn counted_reordered_fragments(n: &SnatNode) {
    let s = n.dataplane().stats().expect("stats");
    let from_eni = s.hook(Hook::FromEni);
    assert_eq!(
        (from_eni.frag_held, from_eni.frag_reinjected),
        (2, 2),
        "the two early fragments waited for the first: {from_eni:?}"
    );
    assert_eq!(from_eni.drop, 0, "{from_eni:?}");
}

fn counted_churn(n: &SnatNode) {
    let s = n.dataplane().stats().expect("stats");
    let to_eni = s.hook(Hook::ToEni);
    assert_eq!(to_eni.drop_nat_no_port, 0, "{to_eni:?}");
    // Fewer mappings than exchanges: a pod port the kernel handed out again
    // within a second meets its own flow, still tracked.
    assert!(to_eni.nat_new > 2_500, "{to_eni:?}");
    let from_eni = s.hook(Hook::FromEni);
    assert!(from_eni.rev_snat >= 3_000, "every answer: {from_eni:?}");
}

fn no_counters(_: &SnatNode) {}

fn counted_snat(n: &SnatNode) {
    let s = n.dataplane().stats().expect("stats");
    assert!(
        s.hook(Hook::ToEni).snat > 0 && s.hook(Hook::FromEni).rev_snat > 0,
        "{s:?}"
    );
    assert_eq!(s.total().drop, 0, "{:?}", s.total());
    // The pod's packets went straight to the ENI, not through the node's stack.
    let from_pod = s.hook(Hook::FromPod);
    assert!(from_pod.steer_eni > 0, "{from_pod:?}");
}

/// As [`counted_snat`], and the connection's packets after its SYN were
/// translated in `from_pod` and passed by `to_eni` without a second look:
/// the record `from_pod` leaves in `cb` reaches the ENI's egress.
fn counted_snat_decided(n: &SnatNode) {
    counted_snat(n);
    let s = n.dataplane().stats().expect("stats");
    let (from_pod, to_eni) = (s.hook(Hook::FromPod), s.hook(Hook::ToEni));
    assert!(from_pod.snat > 0, "{from_pod:?}");
    assert!(
        to_eni.pass_decided >= from_pod.snat,
        "to_eni passed what from_pod translated: {to_eni:?}"
    );
}

fn counted_no_snat(n: &SnatNode) {
    let s = n.dataplane().stats().expect("stats");
    assert_eq!(s.total().snat, 0, "{:?}", s.total());
}

fn counted_icmp_error(n: &SnatNode) {
    let s = n.dataplane().stats().expect("stats");
    assert!(
        s.hook(Hook::FromEni).icmp_error_xlated >= 1,
        "{:?}",
        s.hook(Hook::FromEni)
    );
}

fn counted_mtu_to_stack(n: &SnatNode) {
    let s = n.dataplane().stats().expect("stats");
    let from_pod = s.hook(Hook::FromPod);
    assert!(
        from_pod.to_stack_mtu > 0,
        "oversized segments went to the stack: {from_pod:?}"
    );
    assert!(
        from_pod.steer_eni > 0,
        "the rest went straight out: {from_pod:?}"
    );
}

fn counted_exhaustion(n: &SnatNode) {
    let s = n.dataplane().stats().expect("stats");
    assert_eq!(
        s.hook(Hook::ToEni).drop_nat_no_port,
        1,
        "{:?}",
        s.hook(Hook::ToEni)
    );
}

fn scenarios() -> Vec<Scenario> {
    let d = SnatOptions::default();
    vec![
        Scenario {
            name: "TCP pod -> inet",
            opts: d,
            run: tcp_to_inet,
            expect: "inet saw 192.168.16.10",
            counters: counted_snat_decided,
        },
        Scenario {
            name: "UDP pod -> inet",
            opts: d,
            run: udp_to_inet,
            expect: "inet saw 192.168.16.10",
            counters: counted_snat,
        },
        Scenario {
            name: "ICMP echo pod -> inet",
            opts: d,
            run: ping_inet,
            expect: "3/3 echo replies",
            counters: counted_snat,
        },
        Scenario {
            name: "UDP pod -> VPC",
            opts: d,
            run: udp_to_vpc,
            expect: "VPC host saw 192.168.31.170",
            counters: counted_no_snat,
        },
        Scenario {
            name: "UDP pod -> excluded CIDR",
            opts: SnatOptions {
                excluded: Some(([203, 0, 113, 0], 24)),
                ..d
            },
            run: udp_to_inet,
            expect: "inet saw 192.168.31.170",
            counters: counted_no_snat,
        },
        Scenario {
            name: "external SNAT: TCP pod -> inet",
            opts: SnatOptions {
                mode: SnatMode::Off,
                ..d
            },
            run: tcp_to_inet,
            expect: "inet saw 192.168.31.170",
            counters: counted_no_snat,
        },
        Scenario {
            name: "frag-needed from a 1280 hop",
            opts: SnatOptions {
                inet_link_mtu: 1280,
                ..d
            },
            run: tcp_across_small_mtu,
            expect: "1 MiB each way, pod path MTU 1280",
            counters: counted_icmp_error,
        },
        Scenario {
            name: "pod MTU 9001, ENI 1500",
            opts: SnatOptions { pod_mtu: 9001, ..d },
            run: tcp_from_a_jumbo_pod,
            expect: "1 MiB each way, inet saw 192.168.16.10, VPC saw 192.168.31.170",
            counters: counted_mtu_to_stack,
        },
        Scenario {
            name: "fragmented UDP answer, reordered",
            opts: d,
            run: reordered_fragmented_answer,
            expect: "3 fragments last first: 3000 bytes intact from 203.0.113.10",
            counters: counted_reordered_fragments,
        },
        Scenario {
            name: "TTL-limited ping",
            opts: d,
            run: ttl_limited_ping,
            expect: "pod got: From 192.168.16.1",
            counters: counted_icmp_error,
        },
        Scenario {
            name: "2000 concurrent UDP flows",
            opts: d,
            run: many_flows,
            expect: "2000/2000 answered from {192.168.16.10}, 2000 distinct source ports",
            counters: no_counters,
        },
        Scenario {
            name: "100-port range",
            opts: SnatOptions {
                port_min: 40000,
                port_max: 40099,
                ..d
            },
            run: hundred_port_range,
            expect: "100/100 answered (ports in range: true), 101st dropped, then 100/100 again",
            counters: counted_exhaustion,
        },
        Scenario {
            name: "pooled TCP tuple reused after TIME_WAIT, then idle",
            opts: d,
            run: pooled_tuple_after_time_wait,
            expect: "reused tuple after TIME_WAIT, idle 3 s past its 2 s timeout: still answered",
            counters: counted_snat,
        },
        Scenario {
            name: "3000 one-shot UDP exchanges, 512 ports",
            opts: SnatOptions {
                port_min: 40000,
                port_max: 40511,
                ..d
            },
            run: one_shot_udp_churn,
            expect: "3000/3000 answered, NAT ports in range: true",
            counters: counted_churn,
        },
    ]
}

fn observe(s: &Scenario, plumbing: Plumbing) -> String {
    let node = SnatNode::new(&object::bytes(), SnatOptions { plumbing, ..s.opts }).expect("node");
    let seen = (s.run)(&node).unwrap_or_else(|e| format!("failed: {e:#}"));
    if plumbing == Plumbing::Trunkline {
        (s.counters)(&node);
    }
    seen
}

#[test]
fn differential_against_the_legacy_snat_chain() {
    let mut rows = Vec::new();
    for s in scenarios() {
        let legacy = observe(&s, Plumbing::Legacy);
        let trunkline = observe(&s, Plumbing::Trunkline);
        rows.push((s.name, s.expect, legacy, trunkline));
    }
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    println!(
        "\n{:<w$} | {:<60} | {}",
        "scenario",
        Plumbing::Legacy.name(),
        Plumbing::Trunkline.name()
    );
    for (name, _, legacy, trunkline) in &rows {
        println!("{name:<w$} | {legacy:<60} | {trunkline}");
    }
    for (name, expect, legacy, trunkline) in &rows {
        assert_eq!(trunkline, expect, "{name}: trunkline");
        assert_eq!(legacy, trunkline, "{name}: legacy and trunkline differ");
    }
}

#[test]
fn iperf3_transfer_through_snat() {
    let n = SnatNode::new(&object::bytes(), SnatOptions::default()).expect("node");
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
    let server = server.finish(Duration::from_secs(10)).expect("server exit");
    let server: serde_json::Value = serde_json::from_str(&server).expect("server JSON");
    assert_eq!(
        server["start"]["connected"][0]["remote_host"], "192.168.16.10",
        "the server saw the node"
    );
    let gbps = client["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    println!("iperf3 pod -> inet through trunkline SNAT: {gbps:.2} Gbit/s");
}
