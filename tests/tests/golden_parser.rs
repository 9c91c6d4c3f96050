//! Golden packets through the parser stage of every program: one test per
//! parser branch, asserting the TC action, the verdict record, the packet
//! bytes and the counters.

use dataplane_common::{DropReason, Hook, PodEntry, Stats, VerdictRecord};
use etherparse::IpNumber;
use testbed::kernel::{
    golden::{assert_passed_unchanged, Golden, Outcome, TC_ACT_SHOT},
    packets::{self, Flow, L3_OFF},
};

const POD: [u8; 4] = [192, 168, 31, 170];
const INET: [u8; 4] = [203, 0, 113, 10];
const FLOW: Flow = Flow::new(POD, INET, 40000, 443);

/// A node that knows only the pod `POD` (so `from_pod` accepts its packets
/// as the pod's own) and has no configuration: every program passes what
/// it parsed, and the parser alone decides.
fn parser_node() -> Golden {
    let mut g = Golden::load();
    let pod = PodEntry {
        host_ifindex: 42,
        ..PodEntry::default()
    };
    g.pod_maps.put_pod(POD.into(), &pod).expect("PODS");
    g
}

/// Runs `packet` through `hook` on a fresh counter slate.
fn run(g: &mut Golden, hook: Hook, packet: &[u8]) -> (Outcome, Stats) {
    g.reset_stats();
    let out = g.run(hook, packet);
    (out, g.stats(hook))
}

/// Only the named counters moved, by exactly the given amounts.
fn assert_counters(s: &Stats, expected: &[(&str, u64)]) {
    for (name, value) in Stats::NAMES.iter().zip(s.values()) {
        let want = expected
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v);
        assert_eq!(
            value, want,
            "counter {name}: got {value}, want {want} (all: {s:?})"
        );
    }
}

#[test]
fn tcp_is_parsed_and_passed() {
    let mut g = parser_node();
    let pkt = packets::tcp_syn(FLOW);
    let (out, s) = run(&mut g, Hook::FromPod, &pkt);
    assert_passed_unchanged(&out, &pkt);
    assert_counters(&s, &[("pass", 1), ("tcp", 1)]);
}

#[test]
fn udp_and_icmp_are_parsed() {
    let mut g = parser_node();
    let pkt = packets::udp(FLOW, b"hello");
    let (out, s) = run(&mut g, Hook::FromPod, &pkt);
    assert_passed_unchanged(&out, &pkt);
    assert_counters(&s, &[("pass", 1), ("udp", 1)]);

    let pkt = packets::icmp_echo(POD, INET, 7, 1);
    let (out, s) = run(&mut g, Hook::FromPod, &pkt);
    assert_passed_unchanged(&out, &pkt);
    assert_counters(&s, &[("pass", 1), ("icmp", 1)]);
}

#[test]
fn vlan_tagged_frame_is_parsed_through_the_tag() {
    let mut g = parser_node();
    let pkt = packets::udp_vlan(FLOW, 7, b"tagged");
    assert_eq!(
        &pkt[12..14],
        &[0x81, 0x00],
        "test packet must carry an 802.1Q tag"
    );
    let (out, s) = run(&mut g, Hook::FromEni, &pkt);
    assert_passed_unchanged(&out, &pkt);
    assert_counters(&s, &[("pass", 1), ("vlan_tagged", 1), ("udp", 1)]);
}

#[test]
fn ip_options_move_the_l4_header() {
    let mut g = parser_node();
    // Record Route (7), length 7, pointer 4, one empty slot, then EOL.
    let options = [7, 7, 4, 0, 0, 0, 0, 0];
    let pkt = packets::tcp_syn_with_ip_options(FLOW, &options);
    assert_eq!(pkt[L3_OFF] & 0x0f, 7, "IHL must be 7 (28 bytes)");
    let (out, s) = run(&mut g, Hook::FromPod, &pkt);
    assert_passed_unchanged(&out, &pkt);
    // tcp counted means the L4 header was found after the options.
    assert_counters(&s, &[("pass", 1), ("ip_options", 1), ("tcp", 1)]);
}

#[test]
fn first_and_later_fragments() {
    let mut g = parser_node();
    // First fragment: offset 0, MF set, carries the UDP header.
    let udp_hdr_and_data = [
        0x9c, 0x40, 0x00, 0x35, 0x00, 0x30, 0x00, 0x00, 1, 2, 3, 4, 5, 6, 7, 8,
    ];
    let first =
        packets::ipv4_fragment(POD, INET, IpNumber::UDP, 0x1234, 0, true, &udp_hdr_and_data);
    let (out, s) = run(&mut g, Hook::FromPod, &first);
    assert_passed_unchanged(&out, &first);
    assert_counters(&s, &[("pass", 1), ("fragment_first", 1), ("udp", 1)]);

    // Later fragment: offset 2 (16 bytes), no L4 header, even if its bytes
    // are few. It is the last (no MF) and the 16 + 2 bytes are all there:
    // the datagram is done and its entry goes.
    let later = packets::ipv4_fragment(POD, INET, IpNumber::UDP, 0x1234, 2, false, &[9, 9]);
    let (out, s) = run(&mut g, Hook::FromPod, &later);
    assert_passed_unchanged(&out, &later);
    assert_counters(
        &s,
        &[
            ("pass", 1),
            ("fragment_later", 1),
            ("udp", 1),
            ("frag_done", 1),
        ],
    );
}

#[test]
fn non_ipv4_is_passed_untouched() {
    let mut g = parser_node();
    let pkt = packets::arp_request(POD, [169, 254, 1, 1]);
    let (out, s) = run(&mut g, Hook::FromPod, &pkt);
    assert_passed_unchanged(&out, &pkt);
    assert_counters(&s, &[("pass", 1), ("non_ipv4", 1)]);
}

fn assert_dropped(out: &Outcome, reason: DropReason) {
    assert_eq!(out.action, TC_ACT_SHOT, "{out:?}");
    assert_eq!(
        out.verdict,
        Some(VerdictRecord::Drop {
            reason: reason as u32
        })
    );
}

#[test]
fn ipv4_header_longer_than_the_packet_is_a_counted_drop() {
    // (BPF_PROG_TEST_RUN itself refuses an IPv4 frame shorter than a bare
    // 20-byte header, so truncation is exercised through IHL.)
    let mut g = parser_node();
    let mut pkt = packets::udp(FLOW, b"hello");
    pkt[L3_OFF] = 0x4f; // IHL 15: a 60-byte header in a 33-byte datagram
    let (out, s) = run(&mut g, Hook::FromPod, &pkt);
    assert_dropped(&out, DropReason::MalformedL3);
    assert_counters(&s, &[("drop", 1), ("drop_malformed_l3", 1)]);
}

#[test]
fn bad_ihl_and_overlong_total_length_are_dropped() {
    let mut g = parser_node();
    let mut pkt = packets::tcp_syn(FLOW);
    pkt[L3_OFF] = 0x44; // IHL 4: less than the minimum header
    let (out, s) = run(&mut g, Hook::ToEni, &pkt);
    assert_dropped(&out, DropReason::MalformedL3);
    assert_counters(&s, &[("drop", 1), ("drop_malformed_l3", 1)]);

    let mut pkt = packets::udp(FLOW, b"0123456789");
    pkt.truncate(pkt.len() - 4); // total length now claims 4 bytes more than the frame has
    let (out, s) = run(&mut g, Hook::ToEni, &pkt);
    assert_dropped(&out, DropReason::MalformedL3);
    assert_counters(&s, &[("drop", 1), ("drop_malformed_l3", 1)]);
}

#[test]
fn truncated_l4_header_is_a_counted_drop() {
    let mut g = parser_node();
    // A consistent IPv4 header (total length 24) around 4 bytes of "TCP".
    let pkt = packets::ipv4_fragment(
        POD,
        INET,
        IpNumber::TCP,
        1,
        0,
        false,
        &[0x9c, 0x40, 0x01, 0xbb],
    );
    let (out, s) = run(&mut g, Hook::FromPod, &pkt);
    assert_dropped(&out, DropReason::MalformedL4);
    assert_counters(&s, &[("drop", 1), ("drop_malformed_l4", 1)]);
}

#[test]
fn each_program_counts_in_its_own_slot() {
    let mut g = parser_node();
    let pkt = packets::udp(FLOW, b"x");
    for hook in Hook::ALL {
        g.reset_stats();
        let out = g.run(hook, &pkt);
        assert_passed_unchanged(&out, &pkt);
        for other in Hook::ALL {
            let want = u64::from(other == hook);
            assert_eq!(g.stats(other).udp, want, "{hook:?} ran, {other:?} counted");
        }
    }
}
