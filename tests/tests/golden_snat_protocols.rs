//! Golden packets for SNAT of protocols without ports (GRE, ESP, ICMP
//! other than echo): translated address-only as netfilter's SNAT does,
//! replies translated back, a second pod's clash refused and counted; and
//! the node's own echo ids kept from pod mappings.

use dataplane_common::{conntrack::CT_F_SNAT, CtKey, DropReason, Hook, SnatMode, VerdictRecord};
use etherparse::{icmpv4::TimestampMessage, Icmpv4Type, IpNumber};
use testbed::kernel::{
    golden::{
        assert_passed_unchanged,
        snat::{node, INET, NODE, POD, SECONDARY_POD},
        Golden, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
    },
    packets::{self, checksum_ok, L3_OFF},
};

const GRE: IpNumber = IpNumber(47);
const ESP: IpNumber = IpNumber(50);

fn golden() -> Golden {
    node(SnatMode::Random, (32768, 65535))
}

fn addrs(p: &[u8]) -> ([u8; 4], [u8; 4]) {
    (
        p[L3_OFF + 12..L3_OFF + 16].try_into().expect("4 bytes"),
        p[L3_OFF + 16..L3_OFF + 20].try_into().expect("4 bytes"),
    )
}

fn datagram(src: [u8; 4], dst: [u8; 4], proto: IpNumber, payload: &[u8]) -> Vec<u8> {
    packets::ipv4_fragment(src, dst, proto, 0x1234, 0, false, payload)
}

#[test]
fn gre_and_esp_leave_from_the_node_ip_and_come_back() {
    let g = golden();
    for (proto, payload) in [(GRE, &b"\x00\x00\x08\x00inner"[..]), (ESP, b"spi+seq+data")] {
        let out = g.run(Hook::ToEni, &datagram(POD, INET, proto, payload));
        assert_eq!(out.action, TC_ACT_OK, "{proto:?}: {out:?}");
        assert_eq!(
            addrs(&out.data),
            (NODE, INET),
            "{proto:?}: from the node IP"
        );
        assert!(checksum_ok(&out.data[L3_OFF..L3_OFF + 20]), "IPv4 checksum");
        assert_eq!(&out.data[L3_OFF + 20..], payload, "payload untouched");
        let key = CtKey::new(POD, INET, 0, 0, proto.0);
        let ct = g.ct(&key).expect("tracked");
        assert_eq!(
            (ct.flags & CT_F_SNAT, ct.nat_ip, ct.nat_port),
            (CT_F_SNAT, NODE, 0)
        );

        let reply = g.run(Hook::FromEni, &datagram(INET, NODE, proto, payload));
        assert_eq!(reply.action, TC_ACT_REDIRECT, "{proto:?}: {reply:?}");
        assert_eq!(
            addrs(&reply.data),
            (INET, POD),
            "{proto:?}: back to the pod"
        );
        assert!(checksum_ok(&reply.data[L3_OFF..L3_OFF + 20]));
        assert_eq!(g.ct(&key).expect("tracked").packets_reply, 1);
    }
    assert_eq!(g.stats(Hook::ToEni).snat, 2);
}

#[test]
fn a_second_pods_gre_to_the_same_peer_is_refused_and_counted() {
    let mut g = golden();
    let out = g.run(Hook::ToEni, &datagram(POD, INET, GRE, b"first"));
    assert_eq!(out.action, TC_ACT_OK);
    g.reset_stats();
    let clash = g.run(Hook::ToEni, &datagram(SECONDARY_POD, INET, GRE, b"second"));
    assert_eq!(clash.action, TC_ACT_SHOT, "{clash:?}");
    assert_eq!(
        clash.verdict,
        Some(VerdictRecord::Drop {
            reason: DropReason::NatNoPort as u32
        })
    );
    assert_eq!(g.stats(Hook::ToEni).drop_nat_no_port, 1);
    // Another peer is fine, and the first pod's flow keeps working.
    let other_peer = [203, 0, 113, 99];
    let out = g.run(Hook::ToEni, &datagram(SECONDARY_POD, other_peer, GRE, b"x"));
    assert_ne!(out.action, TC_ACT_SHOT, "{out:?}");
    let out = g.run(Hook::ToEni, &datagram(POD, INET, GRE, b"again"));
    assert_eq!(addrs(&out.data), (NODE, INET));
}

#[test]
fn icmp_other_than_echo_is_translated_address_only() {
    let g = golden();
    // An ICMP timestamp request (type 13).
    let request = packets::icmp(
        POD,
        INET,
        Icmpv4Type::TimestampRequest(TimestampMessage {
            id: 7,
            seq: 1,
            originate_timestamp: 0,
            receive_timestamp: 0,
            transmit_timestamp: 0,
        }),
    );
    let out = g.run(Hook::ToEni, &request);
    assert_eq!(out.action, TC_ACT_OK, "{out:?}");
    assert_eq!(addrs(&out.data), (NODE, INET));
    assert_eq!(
        &out.data[L3_OFF + 20..],
        &request[L3_OFF + 20..],
        "ICMP untouched"
    );
    assert!(g.ct(&CtKey::new(POD, INET, 0, 0, 1)).is_some());
}

/// The node's own ping is recorded like its TCP and UDP connections, so a
/// pod's echo mapping never takes its id (and with it the node's replies).
#[test]
fn the_nodes_echo_id_is_kept_from_pod_mappings() {
    let mut g = node(SnatMode::Sequential, (32768, 65535));
    let host = packets::icmp_echo(NODE, INET, 777, 1);
    assert_passed_unchanged(&g.run(Hook::ToEni, &host), &host);
    assert_eq!(g.stats(Hook::ToEni).host_flow, 1);
    g.reset_stats();
    // `none` would keep the pod's own id 777; it is the node's, so not.
    let out = g.run(Hook::ToEni, &packets::icmp_echo(POD, INET, 777, 1));
    assert_eq!(out.action, TC_ACT_OK, "{out:?}");
    let id = u16::from_be_bytes([out.data[L3_OFF + 24], out.data[L3_OFF + 25]]);
    assert_ne!(id, 777, "the node's id");
    assert!(id >= 32768, "{id}");
    // The node's reply goes to the stack, the pod's to the pod.
    let reply = packets::icmp_echo_reply(INET, NODE, 777, 1);
    assert_passed_unchanged(&g.run(Hook::FromEni, &reply), &reply);
    let reply = packets::icmp_echo_reply(INET, NODE, id, 1);
    assert_eq!(g.run(Hook::FromEni, &reply).action, TC_ACT_REDIRECT);
}

/// The record of the node's echo id outlives GC passes for ICMP's timeout
/// (30 s) after a pass first saw it, as netfilter's entry for the node's
/// ping does, and goes after; the next echo request records it again.
/// (Raw ping sockets carry no id in /proc, so GC cannot ask the node.)
#[test]
fn the_nodes_echo_id_is_kept_through_gc_for_icmps_timeout() {
    use std::collections::HashSet;
    use trunkline_agent::conntrack_gc::{now_coarse_ns, Collector, Timeouts};

    let mut g = node(SnatMode::Sequential, (32768, 65535));
    let host = packets::icmp_echo(NODE, INET, 778, 1);
    assert_passed_unchanged(&g.run(Hook::ToEni, &host), &host);
    // An echo request keys its id as the source port, the reply as the
    // destination port.
    let reply_key = CtKey::new(INET, NODE, 0, 778, 1);
    let recorded = |g: &Golden| g.snat_rev(&reply_key);
    assert_eq!(
        recorded(&g),
        Some(CtKey::new(NODE, INET, 778, 0, 1)),
        "the node's echo id as an identity entry"
    );
    let mut gc = Collector::new(Timeouts::default());
    let now = now_coarse_ns();
    let sec = 1_000_000_000u64;
    let none = HashSet::new();
    for (at, kept) in [(0, true), (29, true), (31, false)] {
        let r = gc
            .collect(&mut g.ct_maps, now + at * sec, NODE, &none)
            .expect("gc");
        assert_eq!(recorded(&g).is_some(), kept, "after {at} s: {r:?}");
    }
    g.reset_stats();
    assert_passed_unchanged(&g.run(Hook::ToEni, &host), &host);
    assert_eq!(g.stats(Hook::ToEni).host_flow, 1, "recorded again");
    assert!(recorded(&g).is_some());
}
