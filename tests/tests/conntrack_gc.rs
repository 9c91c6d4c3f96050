//! Conntrack GC on the real pinned maps: flows expire by protocol and
//! state with both halves removed together, LRU damage is repaired or
//! cleaned, host connections are forgotten when their socket is gone, and
//! a flow collected after its timeout leaves the data path working.

use std::{collections::HashSet, time::Duration};

use dataplane_common::{
    conntrack::{CT_F_SNAT, CT_F_VIA_STACK, CT_STATE_ESTABLISHED},
    CtEntry, CtKey,
};
use testbed::{
    drivers::traffic,
    kernel::{
        bpffs::BpffsMount,
        golden::{ct_entry, snat_rev},
        object,
    },
    topology::snat_node::{SnatNode, SnatOptions, INET_IP, NODE_IP},
};
use trunkline_agent::{
    conntrack_gc::{now_coarse_ns, Collector, Timeouts},
    dataplane::{CtMaps, Dataplane, MapOwner},
};

const NODE: [u8; 4] = [192, 168, 16, 10];
const POD: [u8; 4] = [192, 168, 31, 170];
const INET: [u8; 4] = [203, 0, 113, 10];
const SEC: u64 = 1_000_000_000;

fn snat_flow(
    maps: &mut CtMaps,
    sport: u16,
    proto: u8,
    state: u8,
    last_seen: u64,
    nat_port: u16,
) -> (CtKey, CtKey) {
    let key = CtKey::new(POD, INET, sport, 443, proto);
    let reply = CtKey::new(INET, NODE, 443, nat_port, proto);
    let ct = CtEntry {
        last_seen_ns: last_seen,
        nat_ip: NODE,
        nat_port,
        state,
        flags: CT_F_SNAT,
        ..Default::default()
    };
    maps.adopt(key, ct, Some(reply)).expect("CT, SNAT_REV");
    (key, reply)
}

#[test]
fn flows_expire_together_and_lru_damage_is_cleaned() {
    let bpffs = BpffsMount::new().expect("bpffs");
    let _dp = Dataplane::load_pinned(&object::bytes(), bpffs.path()).expect("load");
    let mut maps = CtMaps::open(bpffs.path()).expect("pinned CT maps");
    let now = 1_000 * SEC;
    // An idle UDP flow (30 s unreplied timeout) and a busy TCP one.
    let (udp, udp_reply) = snat_flow(&mut maps, 5353, 17, 0, now - 31 * SEC, 40001);
    let (tcp, tcp_reply) = snat_flow(&mut maps, 40000, 6, CT_STATE_ESTABLISHED, now - SEC, 40002);
    // A live flow whose reverse the LRU evicted, and a reverse whose flow it evicted.
    let key = CtKey::new(POD, INET, 40003, 443, 6);
    let ct = CtEntry {
        last_seen_ns: now,
        nat_ip: NODE,
        nat_port: 40003,
        state: CT_STATE_ESTABLISHED,
        flags: CT_F_SNAT,
        ..Default::default()
    };
    maps.adopt(key, ct, None).expect("CT");
    let orphan = CtKey::new(INET, NODE, 443, 40004, 6);
    assert!(maps.insert_rev_if_free(orphan, CtKey::new(POD, INET, 40004, 443, 6)));
    // A NodePort flow that came through the stack and went quiet.
    let via = CtKey::new(POD, INET, 8080, 33000, 6);
    let quiet = CtEntry {
        last_seen_ns: now - 121 * SEC,
        flags: CT_F_VIA_STACK,
        ..Default::default()
    };
    maps.adopt(via, quiet, None).expect("CT");
    // Two host connections: one still open, one closed.
    let open_host = CtKey::new(NODE, INET, 50001, 443, 6);
    let closed_host = CtKey::new(NODE, INET, 50002, 443, 6);
    for h in [open_host, closed_host] {
        assert!(maps.insert_rev_if_free(CtKey::new(INET, NODE, 443, h.src_port, 6), h));
    }
    let sockets: HashSet<CtKey> = [open_host].into();

    let mut gc = Collector::new(Timeouts::default());
    let r = gc.collect(&mut maps, now, NODE, &sockets).expect("gc");
    assert_eq!(
        (
            r.ct_scanned,
            r.expired,
            r.rev_repaired,
            r.host_flows_removed
        ),
        (4, 2, 1, 1),
        "{r:?}"
    );
    assert_eq!(
        r.rev_orphans_removed, 0,
        "an orphan is only suspected on first sight"
    );
    assert!(
        ct_entry(&maps, &udp).is_none() && snat_rev(&maps, &udp_reply).is_none(),
        "both halves go"
    );
    assert!(ct_entry(&maps, &via).is_none());
    assert!(ct_entry(&maps, &tcp).is_some() && snat_rev(&maps, &tcp_reply).is_some());
    assert_eq!(
        snat_rev(&maps, &CtKey::new(INET, NODE, 443, 40003, 6)),
        Some(key),
        "reverse repaired"
    );
    assert!(snat_rev(&maps, &CtKey::new(INET, NODE, 443, 50001, 6)).is_some());
    assert!(snat_rev(&maps, &CtKey::new(INET, NODE, 443, 50002, 6)).is_none());

    let r = gc.collect(&mut maps, now, NODE, &sockets).expect("gc");
    assert_eq!((r.rev_orphans_removed, r.lru_evictions()), (1, 1), "{r:?}");
    assert!(snat_rev(&maps, &orphan).is_none());
    assert_eq!((r.ct_entries, r.rev_entries), (2, 3), "{r:?}");
}

#[test]
fn a_collected_flow_is_replaced_by_a_working_new_one() {
    let n = SnatNode::new(&object::bytes(), SnatOptions::default()).expect("node");
    let first = traffic::udp_echo(&n.pod, &n.inet, INET_IP, 5300, 1).expect("udp");
    assert_eq!(first.peer.ip(), std::net::IpAddr::V4(NODE_IP));
    let mut maps = CtMaps::open(n.bpffs.path()).expect("maps");
    let mut gc = Collector::new(Timeouts::default());
    let now = now_coarse_ns();
    let live = gc
        .collect(&mut maps, now, NODE_IP.octets(), &HashSet::new())
        .expect("gc now");
    assert_eq!(live.expired, 0, "{live:?}");
    assert!(live.ct_entries >= 1);
    // Past the UDP timeouts (30 s replied, 120 s stream) the flow is collected.
    let later = gc
        .collect(
            &mut maps,
            now + Duration::from_secs(181).as_nanos() as u64,
            NODE_IP.octets(),
            &HashSet::new(),
        )
        .expect("gc later");
    assert!(later.expired >= 1, "{later:?}");
    assert_eq!((later.ct_entries, later.rev_entries), (0, 0), "{later:?}");
    let again = traffic::udp_echo(&n.pod, &n.inet, INET_IP, 5300, 1).expect("udp after GC");
    assert_eq!(again.peer.ip(), std::net::IpAddr::V4(NODE_IP));
}

/// The conntrack tables are sized when they are created (from the node's
/// CPUs by default, or `TRUNKLINE_CONNTRACK_MAX`), and a restart with
/// another size keeps the pinned maps, and their flows, as they are.
#[test]
fn conntrack_tables_are_sized_at_creation_and_kept_across_restarts() {
    use dataplane_common::maps::{CT, SNAT_REV};
    use trunkline_agent::dataplane::{conntrack_entries_for, pinned_capacity};
    assert_eq!(conntrack_entries_for(1), 262_144, "the floor");
    assert_eq!(conntrack_entries_for(16), 524_288, "32,768 per CPU");
    let bpffs = BpffsMount::new().expect("bpffs");
    let sizes = [(CT, 4_096), (SNAT_REV, 4_096)];
    let dp = Dataplane::load_pinned_sized(&object::bytes(), bpffs.path(), &sizes).expect("load");
    assert_eq!(pinned_capacity(bpffs.path(), CT), Some(4_096));
    assert_eq!(pinned_capacity(bpffs.path(), SNAT_REV), Some(4_096));
    let mut maps = CtMaps::open(bpffs.path()).expect("CT maps");
    let (key, _) = snat_flow(&mut maps, 40000, 6, CT_STATE_ESTABLISHED, 1, 40000);
    drop((dp, maps));
    let bigger = [(CT, 8_192), (SNAT_REV, 8_192)];
    let _dp =
        Dataplane::load_pinned_sized(&object::bytes(), bpffs.path(), &bigger).expect("reload");
    assert_eq!(pinned_capacity(bpffs.path(), CT), Some(4_096), "kept");
    let maps = CtMaps::open(bpffs.path()).expect("CT maps");
    assert!(ct_entry(&maps, &key).is_some(), "with its flows");
}

/// A connection pool reconnecting from the same source port after the
/// previous connection closed (the server closed first and holds
/// TIME_WAIT), then idling: the new SYN reopens the flow on its NAT port,
/// so a GC pass after 121 idle seconds (netfilter's TIME_WAIT is 120 s)
/// keeps it, and the connection goes on. With a flow left "closing", GC
/// would cut it and its next segment would leave from another port, to
/// be reset by the server.
#[test]
fn a_pooled_tuple_reused_after_time_wait_survives_an_idle_gc() {
    use std::{
        io::{Read, Write},
        net::{SocketAddr, TcpListener, TcpStream},
    };

    use dataplane_common::conntrack::CT_STATE_TIME_WAIT;
    use socket2::{Domain, Socket, Type};
    use testbed::topology::mini_node::POD_IP;

    let n = SnatNode::new(&object::bytes(), SnatOptions::default()).expect("node");
    let server_at = SocketAddr::from((INET_IP, 5700));
    let listener = n
        .inet
        .run_in(|| TcpListener::bind(server_at))
        .expect("listen");
    let pod_at = SocketAddr::from((POD_IP, 41000));
    let connect = || -> TcpStream {
        n.pod
            .run_in(|| -> std::io::Result<TcpStream> {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                s.set_reuse_address(true)?;
                s.bind(&pod_at.into())?;
                s.connect_timeout(&server_at.into(), traffic::timeout())?;
                s.set_read_timeout(Some(traffic::timeout()))?;
                Ok(s.into())
            })
            .expect("connect from the pool's port")
    };
    let exchange = |client: &mut TcpStream, server: &mut TcpStream, what: &[u8]| {
        client.write_all(what).expect("send");
        let mut got = vec![0; what.len()];
        server.read_exact(&mut got).expect("server reads");
        assert_eq!(got, what);
    };
    let key = CtKey::new(POD_IP.octets(), INET_IP.octets(), 41000, 5700, 6);
    let maps = CtMaps::open(n.bpffs.path()).expect("maps");
    let state = |maps: &CtMaps| ct_entry(maps, &key).map(|e| (e.state, e.nat_port));

    let mut first = connect();
    let (mut served, peer) = listener.accept().expect("accept");
    served
        .set_read_timeout(Some(traffic::timeout()))
        .expect("timeout");
    exchange(&mut first, &mut served, b"first");
    drop(served); // the server closes first: TIME_WAIT is on its side
    let mut eof = [0u8; 1];
    assert_eq!(first.read(&mut eof).expect("EOF"), 0);
    drop(first);
    let deadline = std::time::Instant::now() + traffic::timeout();
    while state(&maps).map(|s| s.0) != Some(CT_STATE_TIME_WAIT) {
        assert!(std::time::Instant::now() < deadline, "{:?}", state(&maps));
        std::thread::sleep(Duration::from_millis(20));
    }
    let nat_port = peer.port();

    let mut second = connect();
    let (mut served, again) = listener.accept().expect("accept the reused tuple");
    served
        .set_read_timeout(Some(traffic::timeout()))
        .expect("timeout");
    assert_eq!(again, peer, "the same NAT port");
    exchange(&mut second, &mut served, b"second");
    assert_eq!(
        state(&maps),
        Some((dataplane_common::conntrack::CT_STATE_ESTABLISHED, nat_port))
    );

    // 121 s of idling, as the GC sees it.
    let mut maps = maps;
    let mut gc = Collector::new(Timeouts::default());
    let later = now_coarse_ns() + Duration::from_secs(121).as_nanos() as u64;
    gc.collect(&mut maps, later, NODE_IP.octets(), &HashSet::new())
        .expect("gc");
    assert!(
        ct_entry(&maps, &key).is_some(),
        "the pooled connection is kept"
    );
    exchange(&mut second, &mut served, b"after the idle");
    let mut back = [0u8; 4];
    served.write_all(b"pong").expect("server answers");
    second
        .read_exact(&mut back)
        .expect("the pod gets the answer");
    assert_eq!(&back, b"pong");
}

/// `n` pods' UDP flows to INET from source ports `first..`, last seen at
/// `last_seen`, each with its reverse entry.
fn udp_flows(maps: &mut CtMaps, first: u16, n: u16, last_seen: u64) -> Vec<(CtKey, CtKey)> {
    (0..n)
        .map(|i| snat_flow(maps, first + i, 17, 0, last_seen, first + i))
        .collect()
}

/// A pass removes at most its budget and asks for the next pass at once;
/// the following passes remove the rest, never a live flow.
#[test]
fn a_pass_removes_at_most_its_budget_and_the_next_takes_the_rest() {
    let bpffs = BpffsMount::new().expect("bpffs");
    let _dp = Dataplane::load_pinned(&object::bytes(), bpffs.path()).expect("load");
    let mut maps = CtMaps::open(bpffs.path()).expect("pinned CT maps");
    let now = 1_000 * SEC;
    let expired = udp_flows(&mut maps, 20_000, 250, now - 31 * SEC);
    let live = udp_flows(&mut maps, 30_000, 10, now);
    let mut gc = Collector::new(Timeouts::default());
    gc.budget = 100;
    let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
    let mut removed = Vec::new();
    for pass in 0..3 {
        let r = gc
            .collect(&mut maps, now, NODE, &HashSet::new())
            .expect("gc");
        removed.push(r.expired);
        let next = trunkline_agent::conntrack_gc::next_interval(max, &r, min, max);
        assert_eq!(
            (r.budget_exhausted, next == min),
            (pass < 2, pass < 2),
            "pass {pass}: {r:?}"
        );
    }
    assert_eq!(removed, [100, 100, 50]);
    for (key, reply) in expired {
        assert!(ct_entry(&maps, &key).is_none() && snat_rev(&maps, &reply).is_none());
    }
    for (key, reply) in live {
        assert!(ct_entry(&maps, &key).is_some() && snat_rev(&maps, &reply).is_some());
    }
}

/// Flows deleted and refreshed by someone else while a pass walks the
/// table (the data path, a second agent handle): the pass ends without an
/// error, and the passes after it leave no expired flow and no reverse
/// entry of a removed one. (An element-by-element walk restarts when its key
/// vanishes; the batched walk resumes from its bucket.)
#[test]
fn a_pass_ends_while_flows_vanish_under_it() {
    let bpffs = BpffsMount::new().expect("bpffs");
    let _dp = Dataplane::load_pinned(&object::bytes(), bpffs.path()).expect("load");
    let mut maps = CtMaps::open(bpffs.path()).expect("pinned CT maps");
    let now = 1_000 * SEC;
    let expired = udp_flows(&mut maps, 10_000, 20_000, now - 31 * SEC);
    let live = udp_flows(&mut maps, 40_000, 20_000, now);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let vanishing: Vec<CtKey> = live.iter().step_by(2).map(|(k, _)| *k).collect();
    let vanishing_replies: Vec<CtKey> = live.iter().step_by(2).map(|(_, r)| *r).collect();
    let other = {
        let path = bpffs.path().to_path_buf();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let other = CtMaps::open(&path).expect("a second handle");
            // Bounded: one delete per key, in slices, until stopped or done.
            for (keys, replies) in vanishing.chunks(64).zip(vanishing_replies.chunks(64)) {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                other.remove_rev_batch(replies).expect("delete reverses");
                other.remove_ct_batch(keys).expect("delete flows");
            }
        })
    };
    let mut gc = Collector::new(Timeouts::default());
    let first = gc
        .collect(&mut maps, now, NODE, &HashSet::new())
        .expect("gc under deletes");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    other.join().expect("the deleting thread");
    assert!(first.ct_scanned <= 40_000, "no flow seen twice: {first:?}");
    // An orphan is removed on its second sighting: two more passes.
    for _ in 0..2 {
        gc.collect(&mut maps, now, NODE, &HashSet::new())
            .expect("later pass");
    }
    for (key, reply) in &expired {
        assert!(ct_entry(&maps, key).is_none() && snat_rev(&maps, reply).is_none());
    }
    let mut kept = 0;
    for (key, reply) in &live {
        match ct_entry(&maps, key) {
            Some(_) => {
                kept += 1;
                assert!(
                    snat_rev(&maps, reply).is_some(),
                    "a live flow keeps its reverse"
                );
            }
            None => assert!(
                snat_rev(&maps, reply).is_none(),
                "no reverse without its flow"
            ),
        }
    }
    assert!(
        kept >= 10_000,
        "the flows nobody deleted are all kept: {kept}"
    );
}
