//! Golden packets for the conntrack state machine: real TCP flag sequences
//! and UDP exchanges through the programs, the state each leaves in `CT`,
//! and the agent's GC timing each state out with a fake clock (the `now`
//! it is given), as netfilter would.

use std::{collections::HashSet, time::Duration};

use dataplane_common::{
    conntrack::{
        CT_F_FIN_ORIG, CT_F_FIN_REPLY, CT_F_OPENED_BY_PEER, CT_F_SNAT, CT_F_VIA_STACK,
        CT_STATE_CLOSE, CT_STATE_CLOSE_WAIT, CT_STATE_ESTABLISHED, CT_STATE_FIN_WAIT,
        CT_STATE_LAST_ACK, CT_STATE_NEW, CT_STATE_SYN_RECV, CT_STATE_TIME_WAIT,
        CT_STATE_UDP_STREAM,
    },
    CtEntry, CtKey, Hook, SnatMode,
};
use testbed::kernel::{
    golden::{
        snat::{node, INET, NODE, POD},
        Golden, TC_ACT_OK, TC_ACT_REDIRECT,
    },
    packets::{self, Flow, L3_OFF, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};
use trunkline_agent::conntrack_gc::{now_coarse_ns, Collector, Timeouts};

const SYN_ACK: u8 = TCP_SYN | TCP_ACK;
const FIN_ACK: u8 = TCP_FIN | TCP_ACK;

fn golden() -> Golden {
    node(SnatMode::Random, (32768, 65535))
}

fn sport(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[L3_OFF + 20], p[L3_OFF + 21]])
}

/// A pod's TCP flow to the internet, SNATed: its packets go through
/// `to_eni`, the server's through `from_eni` to the NAT port.
struct SnatTcp<'a> {
    g: &'a Golden,
    key: CtKey,
    nat_port: u16,
}

impl<'a> SnatTcp<'a> {
    fn open(g: &'a Golden, sport: u16) -> Self {
        let out = g.run(
            Hook::ToEni,
            &packets::tcp(Flow::new(POD, INET, sport, 443), TCP_SYN),
        );
        assert_eq!(out.action, TC_ACT_OK, "{out:?}");
        let nat_port = self::sport(&out.data);
        Self {
            g,
            key: CtKey::new(POD, INET, sport, 443, 6),
            nat_port,
        }
    }

    /// The pod sends `flags`; the NAT port it left with.
    fn pod(&self, flags: u8) -> u16 {
        let f = Flow::new(POD, INET, self.key.src_port, 443);
        let out = self.g.run(Hook::ToEni, &packets::tcp(f, flags));
        assert_eq!(out.action, TC_ACT_OK, "{out:?}");
        sport(&out.data)
    }

    /// The server sends `flags`; it is delivered to the pod.
    fn server(&self, flags: u8) {
        let f = Flow::new(INET, NODE, 443, self.nat_port);
        let out = self.g.run(Hook::FromEni, &packets::tcp(f, flags));
        assert_eq!(out.action, TC_ACT_REDIRECT, "{out:?}");
    }

    fn ct(&self) -> CtEntry {
        self.g.ct(&self.key).expect("tracked")
    }

    fn state(&self) -> u8 {
        self.ct().state
    }
}

/// One GC pass `after` from now; whether `key` survived it.
fn survives_gc(g: &mut Golden, key: &CtKey, after: Duration) -> bool {
    let mut gc = Collector::new(Timeouts::default());
    let now = now_coarse_ns() + after.as_nanos() as u64;
    gc.collect(&mut g.ct_maps, now, NODE, &HashSet::new())
        .expect("gc pass");
    g.ct(key).is_some()
}

#[test]
fn a_tcp_connection_goes_through_netfilters_states() {
    let g = golden();
    let c = SnatTcp::open(&g, 40000);
    assert_eq!(c.state(), CT_STATE_NEW, "SYN_SENT");
    c.server(SYN_ACK);
    assert_eq!(c.state(), CT_STATE_SYN_RECV);
    c.pod(TCP_ACK);
    assert_eq!(c.state(), CT_STATE_ESTABLISHED);
    c.server(TCP_ACK);
    assert_eq!(c.state(), CT_STATE_ESTABLISHED);
    // The pod closes, the server acknowledges, then closes too.
    c.pod(FIN_ACK);
    assert_eq!(
        (c.state(), c.ct().flags & (CT_F_FIN_ORIG | CT_F_FIN_REPLY)),
        (CT_STATE_FIN_WAIT, CT_F_FIN_ORIG)
    );
    c.server(TCP_ACK);
    assert_eq!(c.state(), CT_STATE_CLOSE_WAIT);
    c.server(FIN_ACK);
    assert_eq!(c.state(), CT_STATE_LAST_ACK);
    assert_eq!(c.pod(TCP_ACK), c.nat_port);
    assert_eq!(c.state(), CT_STATE_TIME_WAIT);
    assert_eq!(c.ct().flags & CT_F_SNAT, CT_F_SNAT, "still translated");
}

/// A connection pool reusing its source port after TIME_WAIT: the new SYN
/// reopens the flow (same NAT port), which then lives as long as an
/// established flow, not 120 s from its first close.
#[test]
fn a_syn_after_time_wait_reopens_the_flow_on_its_port() {
    let mut g = golden();
    let (key, port) = {
        let c = SnatTcp::open(&g, 40001);
        c.server(SYN_ACK);
        c.pod(TCP_ACK);
        c.pod(FIN_ACK);
        c.server(FIN_ACK);
        c.pod(TCP_ACK);
        assert_eq!(c.state(), CT_STATE_TIME_WAIT);
        assert_eq!(c.pod(TCP_SYN), c.nat_port, "reopened on the same port");
        assert_eq!(c.state(), CT_STATE_NEW);
        assert_eq!(c.ct().flags & (CT_F_FIN_ORIG | CT_F_FIN_REPLY), 0);
        c.server(SYN_ACK);
        c.pod(TCP_ACK);
        assert_eq!(c.state(), CT_STATE_ESTABLISHED);
        (c.key, c.nat_port)
    };
    assert!(port >= 32768);
    assert!(
        survives_gc(&mut g, &key, Duration::from_secs(3600)),
        "an idle hour is nothing for an established flow"
    );
    let reply = CtKey::new(INET, NODE, 443, port, 6);
    assert_eq!(g.snat_rev(&reply), Some(key));
}

#[test]
fn a_reset_closes_with_the_short_timeout() {
    let mut g = golden();
    let (key, port) = {
        let c = SnatTcp::open(&g, 40002);
        c.server(SYN_ACK);
        c.pod(TCP_ACK);
        c.server(TCP_RST);
        assert_eq!(c.state(), CT_STATE_CLOSE);
        (c.key, c.nat_port)
    };
    assert!(survives_gc(&mut g, &key, Duration::from_secs(9)));
    assert!(
        !survives_gc(&mut g, &key, Duration::from_secs(12)),
        "10 s after an RST, as netfilter"
    );
    let reply = CtKey::new(INET, NODE, 443, port, 6);
    assert_eq!(g.snat_rev(&reply), None, "its reverse entry went with it");
}

#[test]
fn each_tcp_state_times_out_as_netfilters() {
    let mut g = golden();
    // (what the flow saw, its state, netfilter's timeout in seconds)
    type Step = fn(&SnatTcp);
    let cases: [(u16, Step, u8, u64); 5] = [
        (41000, |_| {}, CT_STATE_NEW, 120),
        (41001, |c| c.server(SYN_ACK), CT_STATE_SYN_RECV, 60),
        (
            41002,
            |c| {
                c.server(SYN_ACK);
                c.pod(TCP_ACK);
                c.pod(FIN_ACK);
            },
            CT_STATE_FIN_WAIT,
            120,
        ),
        (
            41003,
            |c| {
                c.server(SYN_ACK);
                c.pod(TCP_ACK);
                c.server(FIN_ACK);
                c.pod(TCP_ACK);
            },
            CT_STATE_CLOSE_WAIT,
            60,
        ),
        (
            41004,
            |c| {
                c.server(SYN_ACK);
                c.pod(TCP_ACK);
                c.server(FIN_ACK);
                c.pod(FIN_ACK);
            },
            CT_STATE_LAST_ACK,
            30,
        ),
    ];
    for (sport, steps, state, secs) in cases {
        let key = {
            let c = SnatTcp::open(&g, sport);
            steps(&c);
            assert_eq!(c.state(), state, "port {sport}");
            c.key
        };
        assert!(
            survives_gc(&mut g, &key, Duration::from_secs(secs - 2)),
            "state {state} lives {secs} s"
        );
        assert!(
            !survives_gc(&mut g, &key, Duration::from_secs(secs + 2)),
            "state {state} is gone after {secs} s"
        );
    }
}

#[test]
fn a_udp_exchange_is_a_stream_only_when_it_lasts() {
    let mut g = golden();
    let query = |sport| packets::udp(Flow::new(POD, INET, sport, 53), b"q");
    // One query, one answer (a resolver lookup): netfilter's 30 s.
    let out = g.run(Hook::ToEni, &query(5000));
    let port = sport(&out.data);
    let answer = packets::udp(Flow::new(INET, NODE, 53, port), b"a");
    assert_eq!(g.run(Hook::FromEni, &answer).action, TC_ACT_REDIRECT);
    let key = CtKey::new(POD, INET, 5000, 53, 17);
    assert_eq!(g.ct(&key).expect("CT").state, CT_STATE_ESTABLISHED);
    assert!(survives_gc(&mut g, &key, Duration::from_secs(28)));
    assert!(
        !survives_gc(&mut g, &key, Duration::from_secs(32)),
        "a replied lookup keeps its port 30 s, not 120 s"
    );

    // A flow still active 2 s after it started becomes a stream (120 s).
    let out = g.run(Hook::ToEni, &query(5001));
    let port = sport(&out.data);
    let answer = packets::udp(Flow::new(INET, NODE, 53, port), b"a");
    g.run(Hook::FromEni, &answer);
    let key = CtKey::new(POD, INET, 5001, 53, 17);
    // Age the flow by 3 s (its start moved back), then one more packet.
    let mut ct = g.ct(&key).expect("CT");
    ct.created_ns -= 3_000_000_000;
    g.ct_maps.adopt(key, ct, None).expect("rewrite CT");
    g.run(Hook::ToEni, &query(5001));
    assert_eq!(g.ct(&key).expect("CT").state, CT_STATE_UDP_STREAM);
    assert!(survives_gc(&mut g, &key, Duration::from_secs(100)));
    assert!(!survives_gc(&mut g, &key, Duration::from_secs(125)));
}

/// A NodePort connection the stack delivered to the pod: refreshed and
/// moved through its states by both directions (the stack's packets in
/// `to_pod`, the pod's in `from_pod`), with the pod as the answerer.
#[test]
fn a_flow_through_the_stack_is_kept_by_both_directions() {
    let g = golden();
    let client = Flow::new(INET, POD, 50000, 8080);
    let to_pod = |flags| g.run(Hook::ToPod, &packets::tcp(client, flags));
    let from_pod = |flags| {
        g.run(
            Hook::FromPod,
            &packets::tcp(Flow::new(POD, INET, 8080, 50000), flags),
        )
    };
    assert_eq!(to_pod(TCP_SYN).action, TC_ACT_OK);
    let key = CtKey::new(POD, INET, 8080, 50000, 6);
    let ct = g.ct(&key).expect("tracked from the pod's side");
    assert_eq!(ct.flags, CT_F_VIA_STACK | CT_F_OPENED_BY_PEER);
    from_pod(SYN_ACK);
    assert_eq!(g.ct(&key).expect("CT").state, CT_STATE_SYN_RECV);
    to_pod(TCP_ACK);
    let ct = g.ct(&key).expect("CT");
    assert_eq!(
        (ct.state, ct.packets_orig, ct.packets_reply),
        (CT_STATE_ESTABLISHED, 2, 1),
        "the client's packets count as the opener's"
    );
    assert_eq!(
        g.stats(Hook::ToPod).via_stack_new,
        1,
        "looked up, not reinserted"
    );
    // The client closes first.
    to_pod(FIN_ACK);
    from_pod(TCP_ACK);
    assert_eq!(g.ct(&key).expect("CT").state, CT_STATE_CLOSE_WAIT);
}

/// The pod answers a NodePort's UDP datagram with port unreachable: the
/// error goes to the stack, which translates it back as it translated the
/// datagram (the client must see the node's address and NodePort quoted),
/// instead of leaving untranslated or with a source of 0.0.0.0.
#[test]
fn an_icmp_error_about_a_flow_through_the_stack_goes_back_through_it() {
    let g = golden();
    let datagram = packets::udp(Flow::new(INET, POD, 50001, 8081), b"to a closed port");
    assert_eq!(g.run(Hook::ToPod, &datagram).action, TC_ACT_OK);
    let err = packets::icmp_error(POD, INET, 3, 3, [0; 4], &datagram);
    let out = g.run(Hook::FromPod, &err);
    testbed::kernel::golden::assert_passed_unchanged(&out, &err);
    assert_eq!(g.stats(Hook::FromPod).to_stack, 1);
    // The same error about a datagram that did not come through the stack
    // is the data path's to steer (here: out towards the ENI for SNAT).
    let direct = packets::udp(Flow::new(INET, POD, 50002, 8081), b"direct");
    let err = packets::icmp_error(POD, INET, 3, 3, [0; 4], &direct);
    assert_ne!(g.run(Hook::FromPod, &err).action, TC_ACT_OK);
}
