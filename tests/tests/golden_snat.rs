//! Golden packets through the SNAT pipeline (`to_eni` out, `from_eni` back):
//! every branch, with the output bytes checked (addresses, ports, Ethernet
//! addresses, checksums recomputed independently) and the conntrack state
//! and counters it leaves.

use dataplane_common::{
    config::CFG_F_SG_STANDARD,
    conntrack::{CT_F_SNAT, CT_STATE_SYN_RECV},
    verdict::{REDIRECT_NEIGH, REDIRECT_PEER},
    Config, CtKey, DropReason, Hook, SnatMode, VerdictRecord,
};
use etherparse::IpNumber;
use testbed::kernel::{
    golden::{
        assert_passed_unchanged,
        snat::{
            node, node_on, BRANCH_POD, EXCLUDED, EXEMPT_POD, HOST_IFINDEX, INET, LO, NODE, PEER,
            POD, ROUTER, SECONDARY_ENI,
        },
        Golden, Outcome, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
    },
    packets::{
        self, checksum_ok, l4_checksum_ok, Flow, HOST_VETH_MAC, L3_OFF, POD_MAC, TCP_ACK, TCP_SYN,
    },
};

const L4: usize = L3_OFF + 20;

fn src_ip(p: &[u8]) -> [u8; 4] {
    p[L3_OFF + 12..L3_OFF + 16].try_into().unwrap()
}
fn dst_ip(p: &[u8]) -> [u8; 4] {
    p[L3_OFF + 16..L3_OFF + 20].try_into().unwrap()
}
fn port_at(p: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([p[off], p[off + 1]])
}

/// IPv4 header checksum and the L4 checksum (pseudo header for TCP/UDP) verify.
fn assert_checksums(p: &[u8]) {
    let ihl = usize::from(p[L3_OFF] & 0x0f) * 4;
    let tot = usize::from(u16::from_be_bytes([p[L3_OFF + 2], p[L3_OFF + 3]]));
    assert!(
        checksum_ok(&p[L3_OFF..L3_OFF + ihl]),
        "IPv4 header checksum"
    );
    let l4 = &p[L3_OFF + ihl..L3_OFF + tot];
    match p[L3_OFF + 9] {
        6 => assert!(l4_checksum_ok(src_ip(p), dst_ip(p), 6, l4), "TCP checksum"),
        17 if l4[6..8] != [0, 0] => {
            assert!(l4_checksum_ok(src_ip(p), dst_ip(p), 17, l4), "UDP checksum")
        }
        1 => assert!(checksum_ok(l4), "ICMP checksum"),
        _ => {}
    }
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

/// The pod's SYN leaves from the node IP and a port of the range; both
/// conntrack entries exist and point at each other.
fn snat_syn(g: &Golden, flow: Flow) -> u16 {
    let out = g.run(Hook::ToEni, &packets::tcp_syn(flow));
    assert_eq!(
        (out.action, out.verdict),
        (TC_ACT_OK, Some(VerdictRecord::Pass)),
        "{out:?}"
    );
    assert_eq!(src_ip(&out.data), NODE);
    assert_eq!(dst_ip(&out.data), flow.dst);
    assert_eq!(port_at(&out.data, L4 + 2), flow.dport);
    assert_checksums(&out.data);
    port_at(&out.data, L4)
}

#[test]
fn new_tcp_flow_is_translated_and_tracked() {
    let mut g = node(SnatMode::Random, (32768, 65535));
    g.reset_stats();
    let flow = Flow::new(POD, INET, 40000, 443);
    let port = snat_syn(&g, flow);
    assert!(port >= 32768, "{port}");

    let key = CtKey::new(POD, INET, 40000, 443, 6);
    let ct = g.ct(&key).expect("CT entry");
    assert_eq!(
        (ct.nat_ip, ct.nat_port, ct.flags & CT_F_SNAT),
        (NODE, port, CT_F_SNAT)
    );
    let rev = g.snat_rev(&CtKey::new(INET, NODE, 443, port, 6));
    assert_eq!(rev, Some(key));
    let s = g.stats(Hook::ToEni);
    assert_eq!((s.snat, s.nat_new, s.nat_alloc_try_1, s.pass), (1, 1, 1, 1));
}

#[test]
fn established_flow_keeps_its_port() {
    let mut g = node(SnatMode::Random, (32768, 65535));
    let flow = Flow::new(POD, INET, 40001, 443);
    let first = snat_syn(&g, flow);
    g.reset_stats();
    for _ in 0..3 {
        assert_eq!(snat_syn(&g, flow), first);
    }
    let s = g.stats(Hook::ToEni);
    assert_eq!((s.snat, s.nat_new), (3, 0));
    let ct = g.ct(&CtKey::new(POD, INET, 40001, 443, 6)).expect("CT");
    assert_eq!(
        ct.packets_orig, 3,
        "the first packet is counted at creation"
    );
}

#[test]
fn reply_is_translated_back_and_delivered_into_the_pod() {
    let mut g = node(SnatMode::Random, (32768, 65535));
    let port = snat_syn(&g, Flow::new(POD, INET, 40002, 443));
    g.reset_stats();
    let reply = packets::tcp(Flow::new(INET, NODE, 443, port), TCP_SYN | TCP_ACK);
    let out = g.run(Hook::FromEni, &reply);
    assert_eq!(out.action, TC_ACT_REDIRECT, "{out:?}");
    assert_eq!(
        out.verdict,
        Some(VerdictRecord::Redirect {
            ifindex: HOST_IFINDEX,
            how: REDIRECT_PEER
        })
    );
    assert_eq!(&out.data[0..6], &POD_MAC, "to the pod's MAC");
    assert_eq!(&out.data[6..12], &HOST_VETH_MAC, "from its host veth");
    assert_eq!((src_ip(&out.data), dst_ip(&out.data)), (INET, POD));
    assert_eq!(
        (port_at(&out.data, L4), port_at(&out.data, L4 + 2)),
        (443, 40002)
    );
    assert_checksums(&out.data);
    let s = g.stats(Hook::FromEni);
    assert_eq!((s.rev_snat, s.redirect), (1, 1));
    let ct = g.ct(&CtKey::new(POD, INET, 40002, 443, 6)).expect("CT");
    assert_eq!((ct.state, ct.packets_reply), (CT_STATE_SYN_RECV, 1));
}

/// A reply whose pod the data path does not serve (a pod still on
/// aws-node's plumbing during a migration) goes to the stack untranslated:
/// netfilter owns that flow until the pod's `PODS` entry appears.
#[test]
fn reply_for_a_pod_not_served_passes_untranslated() {
    let mut g = node(SnatMode::Random, (32768, 65535));
    let other_pod = [192, 168, 10, 77];
    let orig = CtKey::new(other_pod, INET, 40003, 443, 6);
    let reply_key = CtKey::new(INET, NODE, 443, 50001, 6);
    assert!(g.ct_maps.insert_rev_if_free(reply_key, orig));
    g.reset_stats();
    let reply = packets::tcp_syn(Flow::new(INET, NODE, 443, 50001));
    let out = g.run(Hook::FromEni, &reply);
    assert_passed_unchanged(&out, &reply);
    assert_eq!(g.stats(Hook::FromEni).rev_snat, 0);
    // Once the pod is served, the same reply is translated and delivered.
    let pod = g
        .pod_maps
        .pod(POD.into())
        .expect("PODS")
        .expect("the fixture's pod");
    g.pod_maps.put_pod(other_pod.into(), &pod).expect("PODS");
    let out = g.run(Hook::FromEni, &reply);
    assert_eq!(out.action, TC_ACT_REDIRECT, "{out:?}");
    assert_eq!((src_ip(&out.data), dst_ip(&out.data)), (INET, other_pod));
    assert_checksums(&out.data);
}

#[test]
fn udp_round_trip_and_zero_checksum_stays_zero() {
    let g = node(SnatMode::Random, (32768, 65535));
    let flow = Flow::new(POD, INET, 5353, 53);
    let out = g.run(Hook::ToEni, &packets::udp(flow, b"query"));
    assert_eq!(src_ip(&out.data), NODE);
    assert_checksums(&out.data);
    let port = port_at(&out.data, L4);
    let reply = packets::udp(Flow::new(INET, NODE, 53, port), b"answer");
    let back = g.run(Hook::FromEni, &reply);
    assert_eq!(back.action, TC_ACT_REDIRECT);
    assert_eq!(
        (dst_ip(&back.data), port_at(&back.data, L4 + 2)),
        (POD, 5353)
    );
    assert_checksums(&back.data);

    // A UDP datagram without checksum (0) keeps having none.
    let mut nocsum = packets::udp(Flow::new(POD, INET, 5354, 53), b"q");
    nocsum[L4 + 6..L4 + 8].copy_from_slice(&[0, 0]);
    let out = g.run(Hook::ToEni, &nocsum);
    assert_eq!(src_ip(&out.data), NODE);
    assert_eq!(&out.data[L4 + 6..L4 + 8], &[0, 0]);
    assert_checksums(&out.data);
}

#[test]
fn icmp_echo_id_is_the_port() {
    let g = node(SnatMode::Random, (32768, 65535));
    let out = g.run(Hook::ToEni, &packets::icmp_echo(POD, INET, 0x0777, 1));
    assert_eq!(src_ip(&out.data), NODE);
    assert_checksums(&out.data);
    let nat_id = port_at(&out.data, L4 + 4);
    assert!(nat_id >= 32768);
    // Echo reply: type 0, same id.
    let reply = packets::icmp_echo_reply(INET, NODE, nat_id, 1);
    assert_checksums(&reply);
    let back = g.run(Hook::FromEni, &reply);
    assert_eq!(back.action, TC_ACT_REDIRECT, "{back:?}");
    assert_eq!(
        (dst_ip(&back.data), port_at(&back.data, L4 + 4)),
        (POD, 0x0777)
    );
    assert_checksums(&back.data);
}

#[test]
fn inbound_icmp_errors_reach_the_pod_quoting_its_own_packet() {
    let mut g = node(SnatMode::Random, (32768, 65535));
    let port = snat_syn(&g, Flow::new(POD, INET, 40003, 443));
    // What left the node, as a router quotes it in "fragmentation needed" (MTU 1400).
    let left = packets::tcp_syn(Flow::new(NODE, INET, port, 443));
    let err = packets::icmp_error(ROUTER, NODE, 3, 4, [0, 0, 0x05, 0x78], &left);
    assert_checksums(&err);
    g.reset_stats();
    let out = g.run(Hook::FromEni, &err);
    assert_eq!(
        out.verdict,
        Some(VerdictRecord::Redirect {
            ifindex: HOST_IFINDEX,
            how: REDIRECT_PEER
        })
    );
    assert_eq!((src_ip(&out.data), dst_ip(&out.data)), (ROUTER, POD));
    let q = L4 + 8; // the quoted IPv4 header
    assert_eq!(
        &out.data[q + 12..q + 16],
        &POD,
        "quoted source is the pod again"
    );
    assert_eq!(
        port_at(&out.data, q + 20),
        40003,
        "quoted source port is the pod's"
    );
    assert!(
        checksum_ok(&out.data[q..q + 20]),
        "quoted IPv4 header checksum"
    );
    assert_eq!(&out.data[L4 + 6..L4 + 8], &[0x05, 0x78], "the MTU is kept");
    assert_checksums(&out.data);
    let s = g.stats(Hook::FromEni);
    assert_eq!((s.icmp_error_xlated, s.rev_snat), (1, 1));

    // Time exceeded quoting an echo request (a TTL-limited ping).
    let out = g.run(Hook::ToEni, &packets::icmp_echo(POD, INET, 0x0abc, 1));
    let nat_id = port_at(&out.data, L4 + 4);
    let err = packets::icmp_error(ROUTER, NODE, 11, 0, [0; 4], &out.data);
    let back = g.run(Hook::FromEni, &err);
    assert_eq!(back.action, TC_ACT_REDIRECT, "{back:?}");
    assert_eq!(dst_ip(&back.data), POD);
    assert_eq!(&back.data[q + 12..q + 16], &POD);
    assert_eq!(
        port_at(&back.data, q + 20 + 4),
        0x0abc,
        "quoted echo id is the pod's (was {nat_id})"
    );
    assert_checksums(&back.data);
}

#[test]
fn outbound_icmp_error_from_a_pod_is_translated() {
    let g = node(SnatMode::Random, (32768, 65535));
    let out = g.run(
        Hook::ToEni,
        &packets::udp(Flow::new(POD, INET, 5355, 53), b"q"),
    );
    let port = port_at(&out.data, L4);
    // The pod got a reply it no longer wants: port unreachable, quoting the reply as it saw it.
    let seen_by_pod = packets::udp(Flow::new(INET, POD, 53, 5355), b"late answer");
    let err = packets::icmp_error(POD, INET, 3, 3, [0; 4], &seen_by_pod);
    let out = g.run(Hook::ToEni, &err);
    assert_eq!(out.action, TC_ACT_OK, "{out:?}");
    assert_eq!((src_ip(&out.data), dst_ip(&out.data)), (NODE, INET));
    let q = L4 + 8;
    assert_eq!(
        &out.data[q + 16..q + 20],
        &NODE,
        "quoted destination is the node"
    );
    assert_eq!(
        port_at(&out.data, q + 22),
        port,
        "quoted destination port is the NAT port"
    );
    assert_checksums(&out.data);
}

#[test]
fn fragments_follow_their_first_fragment() {
    let mut g = node(SnatMode::Random, (32768, 65535));
    let udp_hdr = [
        0x15, 0xb3, 0x00, 0x35, 0x00, 0x18, 0x00, 0x00, 1, 2, 3, 4, 5, 6, 7, 8,
    ];
    let first = packets::ipv4_fragment(POD, INET, IpNumber::UDP, 0x77, 0, true, &udp_hdr);
    let out = g.run(Hook::ToEni, &first);
    assert_eq!(src_ip(&out.data), NODE);
    assert!(checksum_ok(&out.data[L3_OFF..L4]));
    let port = port_at(&out.data, L4);
    assert_ne!(port, 0x15b3);

    let later = packets::ipv4_fragment(POD, INET, IpNumber::UDP, 0x77, 2, false, &[9; 8]);
    let out = g.run(Hook::ToEni, &later);
    assert_eq!(out.action, TC_ACT_OK, "{out:?}");
    assert_eq!(src_ip(&out.data), NODE);
    assert_eq!(
        &out.data[L4..],
        &[9; 8],
        "a later fragment's payload is not touched"
    );
    assert!(checksum_ok(&out.data[L3_OFF..L4]));

    // The reply's fragments: the first one finds the flow, the later one its first.
    let rfirst = packets::ipv4_fragment(
        INET,
        NODE,
        IpNumber::UDP,
        0x99,
        0,
        true,
        &[
            0x00,
            0x35,
            (port >> 8) as u8,
            port as u8,
            0x00,
            0x18,
            0x00,
            0x00,
            1,
            2,
            3,
            4,
            5,
            6,
            7,
            8,
        ],
    );
    let back = g.run(Hook::FromEni, &rfirst);
    assert_eq!(
        (back.action, dst_ip(&back.data), port_at(&back.data, L4 + 2)),
        (TC_ACT_REDIRECT, POD, 0x15b3)
    );
    let rlater = packets::ipv4_fragment(INET, NODE, IpNumber::UDP, 0x99, 2, false, &[7; 8]);
    let back = g.run(Hook::FromEni, &rlater);
    assert_eq!((back.action, dst_ip(&back.data)), (TC_ACT_REDIRECT, POD));
    assert!(checksum_ok(&back.data[L3_OFF..L4]));

    // A later fragment whose first fragment was never seen cannot be translated.
    g.reset_stats();
    let orphan = packets::ipv4_fragment(POD, INET, IpNumber::UDP, 0x1111, 4, false, &[1; 8]);
    assert_dropped(&g.run(Hook::ToEni, &orphan), DropReason::FragUnknown);
    assert_eq!(g.stats(Hook::ToEni).drop_frag_unknown, 1);
}

#[test]
fn vpc_and_excluded_destinations_keep_the_pod_ip() {
    let mut g = node(SnatMode::Random, (32768, 65535));
    g.reset_stats();
    // As from_pod sent them out of the ENI (its record in cb): a pod flow
    // the host stack routed here is tracked instead (see golden_paths).
    for dst in [PEER, EXCLUDED] {
        let pkt = packets::tcp_syn(Flow::new(POD, dst, 40004, 443));
        assert_passed_unchanged(&g.run_redirected(Hook::ToEni, &pkt, LO), &pkt);
    }
    assert_eq!(g.stats(Hook::ToEni).snat, 0);
    assert_eq!(g.ct_len(), 0, "no conntrack for untranslated flows");
}

#[test]
fn external_snat_translates_nothing() {
    let g = node(SnatMode::Off, (32768, 65535));
    let pkt = packets::tcp_syn(Flow::new(POD, INET, 40005, 443));
    assert_passed_unchanged(&g.run_redirected(Hook::ToEni, &pkt, LO), &pkt);
    assert_eq!(g.ct_len(), 0);
}

#[test]
fn branch_and_exempt_pods_are_never_snated_in_strict_mode() {
    let g = node(SnatMode::Random, (32768, 65535));
    for pod in [BRANCH_POD, EXEMPT_POD] {
        let pkt = packets::tcp_syn(Flow::new(pod, INET, 40006, 443));
        assert_passed_unchanged(&g.run(Hook::ToEni, &pkt), &pkt);
    }
    // Standard mode: a branch pod leaving the VPC is SNATed like any pod.
    let mut g = node(SnatMode::Random, (32768, 65535));
    g.node_maps
        .put_config(&Config {
            node_ip: NODE,
            primary_eni_ifindex: LO,
            flags: CFG_F_SG_STANDARD,
            ..Config::default()
        })
        .expect("CONFIG");
    let out = g.run(
        Hook::ToEni,
        &packets::tcp_syn(Flow::new(BRANCH_POD, INET, 40006, 443)),
    );
    assert_eq!(src_ip(&out.data), NODE);
}

#[test]
fn ports_are_unique_per_destination_and_exhaustion_is_a_counted_drop() {
    let mut g = node(SnatMode::Random, (50000, 50003));
    let mut ports: Vec<u16> = (0..4)
        .map(|i| snat_syn(&g, Flow::new(POD, INET, 41000 + i, 443)))
        .collect();
    ports.sort_unstable();
    assert_eq!(
        ports,
        [50000, 50001, 50002, 50003],
        "four flows, four distinct ports"
    );

    g.reset_stats();
    let fifth = packets::tcp_syn(Flow::new(POD, INET, 41004, 443));
    assert_dropped(&g.run(Hook::ToEni, &fifth), DropReason::NatNoPort);
    let s = g.stats(Hook::ToEni);
    assert_eq!((s.drop_nat_no_port, s.nat_new), (1, 0));
    assert!(
        g.ct(&CtKey::new(POD, INET, 41004, 443, 6)).is_none(),
        "no half flow"
    );

    // The first four keep working, and another destination has its own ports.
    assert!(ports.contains(&snat_syn(&g, Flow::new(POD, INET, 41000, 443))));
    let other = snat_syn(&g, Flow::new(POD, INET, 41004, 8443));
    assert!((50000..=50003).contains(&other));
}

#[test]
fn host_connections_from_the_node_ip_keep_their_ports() {
    let mut g = node(SnatMode::Random, (50000, 50001));
    g.reset_stats();
    // The node itself connects from 50001 to the same destination.
    let host = packets::tcp_syn(Flow::new(NODE, INET, 50001, 443));
    assert_passed_unchanged(&g.run(Hook::ToEni, &host), &host);
    assert_eq!(g.stats(Hook::ToEni).host_flow, 1);
    // A pod flow can only get 50000; the next one has nothing left.
    assert_eq!(snat_syn(&g, Flow::new(POD, INET, 42000, 443)), 50000);
    let next = packets::tcp_syn(Flow::new(POD, INET, 42001, 443));
    assert_dropped(&g.run(Hook::ToEni, &next), DropReason::NatNoPort);
    // The host connection's replies go to the host stack untouched.
    let reply = packets::tcp_syn(Flow::new(INET, NODE, 443, 50001));
    assert_passed_unchanged(&g.run(Hook::FromEni, &reply), &reply);
}

#[test]
fn snat_leaving_a_secondary_eni_is_sent_out_of_the_primary() {
    // The packet runs on LO, which is not the primary ENI here.
    let g = node_on(SnatMode::Random, (32768, 65535), SECONDARY_ENI);
    let out = g.run(
        Hook::ToEni,
        &packets::tcp_syn(Flow::new(POD, INET, 40007, 443)),
    );
    assert_eq!(out.action, TC_ACT_REDIRECT, "{out:?}");
    assert_eq!(
        out.verdict,
        Some(VerdictRecord::Redirect {
            ifindex: SECONDARY_ENI,
            how: REDIRECT_NEIGH
        })
    );
    assert_eq!(src_ip(&out.data), NODE);
}

#[test]
fn hashrandom_is_deterministic_and_none_keeps_the_source_port() {
    let flow = Flow::new(POD, INET, 40008, 443);
    let a = snat_syn(&node(SnatMode::Hash, (32768, 65535)), flow);
    let b = snat_syn(&node(SnatMode::Hash, (32768, 65535)), flow);
    assert_eq!(
        a, b,
        "--random: the same flow maps to the same port on a fresh node"
    );

    let g = node(SnatMode::Sequential, (32768, 65535));
    assert_eq!(
        snat_syn(&g, flow),
        40008,
        "no randomisation: the pod's port is kept when free"
    );
}
