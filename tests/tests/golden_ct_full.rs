//! Golden packets for full conntrack tables: a new flow is refused and
//! counted (`drop_ct_full`, netfilter's "table full, dropping packet")
//! whichever path would track it, established flows keep working (nothing
//! is evicted to make room), the node's own connections are never refused,
//! and room the GC makes is used again.

use std::collections::HashSet;

use dataplane_common::{maps as names, CtEntry, CtKey, DropReason, Hook, SnatMode, VerdictRecord};
use testbed::kernel::{
    golden::{
        snat::{configure, INET, LO, NODE, POD},
        Golden, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
    },
    packets::{self, Flow, L3_OFF, TCP_ACK, TCP_SYN},
};
use trunkline_agent::conntrack_gc::{now_coarse_ns, Collector, Timeouts};

/// The smallest size the agent accepts (`TRUNKLINE_CONNTRACK_MAX`).
const TABLE: u32 = 1024;

fn golden() -> Golden {
    let sized = Golden::load_sized(&[(names::CT, TABLE), (names::SNAT_REV, TABLE)]);
    configure(sized, SnatMode::Random, (32768, 65535), LO)
}

fn sport(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[L3_OFF + 20], p[L3_OFF + 21]])
}

fn dropped_full(out: &testbed::kernel::golden::Outcome) -> bool {
    out.action == TC_ACT_SHOT
        && out.verdict
            == Some(VerdictRecord::Drop {
                reason: DropReason::CtFull as u32,
            })
}

/// A pod's TCP connection to the internet, established; its NAT port.
fn established(g: &Golden) -> u16 {
    let out = g.run(
        Hook::ToEni,
        &packets::tcp(Flow::new(POD, INET, 40000, 443), TCP_SYN),
    );
    assert_eq!(out.action, TC_ACT_OK, "{out:?}");
    let nat_port = sport(&out.data);
    let answer = g.run(
        Hook::FromEni,
        &packets::tcp(Flow::new(INET, NODE, 443, nat_port), TCP_SYN | TCP_ACK),
    );
    assert_eq!(answer.action, TC_ACT_REDIRECT, "{answer:?}");
    nat_port
}

/// Old flows of nobody (an unreplied UDP flow last seen at boot) until the
/// table refuses; how many went in. Bounded: the table holds `TABLE`.
fn fill_ct(g: &mut Golden) -> u32 {
    let mut n = 0;
    while n < 2 * TABLE {
        let key = CtKey::new([10, 9, (n >> 8) as u8, n as u8], INET, 5353, 53, 17);
        if g.ct_maps.adopt(key, CtEntry::default(), None).is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// The same for `SNAT_REV` (reverse entries of no flow).
fn fill_rev(g: &mut Golden) -> u32 {
    let mut n = 0;
    while n < 2 * TABLE {
        let reply = CtKey::new(INET, NODE, 53, 1 + n as u16, 17);
        let orig = CtKey::new([10, 9, (n >> 8) as u8, n as u8], INET, 5353, 53, 17);
        if !g.ct_maps.insert_rev_if_free(reply, orig) {
            break;
        }
        n += 1;
    }
    n
}

#[test]
fn a_full_ct_refuses_new_flows_on_every_path_and_keeps_the_established_ones() {
    let mut g = golden();
    let nat_port = established(&g);
    let filled = fill_ct(&mut g);
    assert_eq!(filled, TABLE - 1, "the table held the flow and the fillers");
    g.reset_stats();

    // A new SNAT flow: refused, and its reserved reverse entry rolled back.
    let udp = Flow::new(POD, INET, 41000, 53);
    assert!(dropped_full(&g.run(Hook::ToEni, &packets::udp(udp, b"q"))));
    assert!(g.ct(&CtKey::new(POD, INET, 41000, 53, 17)).is_none());
    assert_eq!(
        g.ct_maps.rev_entries().expect("SNAT_REV").len(),
        1,
        "only the established flow's reverse entry"
    );
    // Inbound from outside the VPC: untracked, the answer would be SNATed.
    let inbound = packets::tcp(Flow::new(INET, POD, 50000, 8080), TCP_SYN);
    assert!(dropped_full(&g.run(Hook::FromEni, &inbound)));
    // Through the stack into the pod (NodePort): untracked, the answer
    // would miss the stack's un-DNAT.
    let nodeport = packets::tcp(Flow::new(INET, POD, 50001, 8080), TCP_SYN);
    assert!(dropped_full(&g.run(Hook::ToPod, &nodeport)));
    assert_eq!(g.stats(Hook::ToEni).drop_ct_full, 1);
    assert_eq!(g.stats(Hook::FromEni).drop_ct_full, 1);
    assert_eq!(g.stats(Hook::ToPod).drop_ct_full, 1);

    // The established connection was not evicted: same port both ways.
    let out = g.run(
        Hook::ToEni,
        &packets::tcp(Flow::new(POD, INET, 40000, 443), TCP_ACK),
    );
    assert_eq!((out.action, sport(&out.data)), (TC_ACT_OK, nat_port));
    let back = g.run(
        Hook::FromEni,
        &packets::tcp(Flow::new(INET, NODE, 443, nat_port), TCP_ACK),
    );
    assert_eq!(back.action, TC_ACT_REDIRECT, "{back:?}");

    // A GC pass a minute on (the fake clock: a VM may have booted less
    // than 30 s ago) expires the fillers (unreplied UDP, last seen at
    // boot) and keeps the connection; the new flow then goes through.
    let mut gc = Collector::new(Timeouts::default());
    let later = now_coarse_ns() + 60_000_000_000;
    let report = gc
        .collect(&mut g.ct_maps, later, NODE, &HashSet::new())
        .expect("gc pass");
    assert_eq!(report.expired, filled as usize, "{report:?}");
    assert!(g.ct(&CtKey::new(POD, INET, 40000, 443, 6)).is_some());
    let out = g.run(Hook::ToEni, &packets::udp(udp, b"q"));
    assert_eq!(out.action, TC_ACT_OK, "{out:?}");
    assert_eq!(&out.data[L3_OFF + 12..L3_OFF + 16], &NODE);
}

#[test]
fn a_full_snat_rev_refuses_new_mappings_but_never_the_nodes_own_connections() {
    let mut g = golden();
    let nat_port = established(&g);
    assert_eq!(fill_rev(&mut g), TABLE - 1);
    g.reset_stats();

    let udp = Flow::new(POD, INET, 41000, 53);
    let out = g.run(Hook::ToEni, &packets::udp(udp, b"q"));
    assert!(dropped_full(&out), "{out:?}");
    assert!(g.ct(&CtKey::new(POD, INET, 41000, 53, 17)).is_none());
    let stats = g.stats(Hook::ToEni);
    assert_eq!((stats.drop_ct_full, stats.drop_nat_no_port), (1, 0));

    // The node's own connection leaves untouched, counted as unrecorded.
    let host = packets::tcp(Flow::new(NODE, INET, 45000, 443), TCP_SYN);
    let out = g.run(Hook::ToEni, &host);
    assert_eq!(out.action, TC_ACT_OK, "{out:?}");
    assert_eq!(out.data, host, "passed unchanged");
    let stats = g.stats(Hook::ToEni);
    assert_eq!((stats.host_flow, stats.host_flow_untracked), (0, 1));

    // The established connection still translates.
    let out = g.run(
        Hook::ToEni,
        &packets::tcp(Flow::new(POD, INET, 40000, 443), TCP_ACK),
    );
    assert_eq!((out.action, sport(&out.data)), (TC_ACT_OK, nat_port));
}

/// Nearly full, the GC drops unassured flows idle 1 s as netfilter's early
/// drop does, and keeps assured ones and fresh ones; with room to spare it
/// drops nothing early.
#[test]
fn a_nearly_full_table_early_drops_unassured_flows() {
    use dataplane_common::conntrack::{CT_STATE_ESTABLISHED, CT_STATE_NEW, CT_STATE_UDP_STREAM};
    let mut g = golden();
    // A fake clock an hour on: "5 s ago" must not precede boot.
    let now = now_coarse_ns() + 3_600_000_000_000;
    let five_s_ago = now - 5_000_000_000;
    let entry = |state, last_seen_ns| CtEntry {
        state,
        last_seen_ns,
        created_ns: last_seen_ns,
        ..CtEntry::default()
    };
    let key = |n: u32, proto| CtKey::new([10, 9, (n >> 8) as u8, n as u8], INET, 5353, 53, proto);
    let put = |g: &mut Golden, n, proto, e| g.ct_maps.adopt(key(n, proto), e, None).expect("CT");
    // Half full: unassured 5 s-old UDP flows are within their 30 s.
    for n in 0..TABLE / 2 {
        put(&mut g, n, 17, entry(CT_STATE_NEW, five_s_ago));
    }
    let mut gc = Collector::new(Timeouts::default());
    let r = gc
        .collect(&mut g.ct_maps, now, NODE, &HashSet::new())
        .expect("gc pass");
    assert_eq!(
        (r.pressure, r.early_dropped, r.expired),
        (false, 0, 0),
        "{r:?}"
    );

    // 96 % full, with assured flows (a UDP stream, an established TCP
    // connection) and an unassured one seen just now among them.
    let stream = TABLE / 2;
    put(&mut g, stream, 17, entry(CT_STATE_UDP_STREAM, five_s_ago));
    put(&mut g, stream, 6, entry(CT_STATE_ESTABLISHED, five_s_ago));
    put(&mut g, stream + 1, 17, entry(CT_STATE_NEW, now));
    for n in stream + 2..TABLE * 96 / 100 {
        put(&mut g, n, 17, entry(CT_STATE_NEW, five_s_ago));
    }
    let unassured_old = (TABLE * 96 / 100 - stream - 2 + TABLE / 2) as usize;
    let r = gc
        .collect(&mut g.ct_maps, now, NODE, &HashSet::new())
        .expect("gc pass");
    assert!(r.pressure, "{r:?}");
    assert_eq!((r.early_dropped, r.expired), (unassured_old, 0), "{r:?}");
    for kept in [key(stream, 17), key(stream, 6), key(stream + 1, 17)] {
        assert!(g.ct(&kept).is_some(), "{kept:?} kept");
    }
    assert_eq!(g.ct_len(), 3);
}
