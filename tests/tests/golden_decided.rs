//! Golden packets for the decision `from_pod` hands on (`REDIRECT_DECIDED`):
//! an established SNAT flow is translated in `from_pod`, to the same bytes
//! `to_eni` would have made, and a pod's untranslated traffic leaves final;
//! `to_eni` then passes such a packet without a look. What still needs
//! `to_eni` (a new SNAT flow, a fragment, a packet the stack must fragment,
//! anything the stack routes) is not marked.

use dataplane_common::{
    verdict::{decided, REDIRECT_NEIGH},
    CtKey, Hook, SnatMode, VerdictRecord,
};
use etherparse::IpNumber;
use testbed::kernel::{
    golden::{
        assert_redirected,
        snat::{node, INET, LO, NODE, PEER, POD, SECONDARY_ENI, SECONDARY_POD},
        Golden, Outcome, TC_ACT_OK, TC_ACT_REDIRECT,
    },
    packets::{self, checksum_ok, l4_checksum_ok, set_ttl, Flow, L3_OFF, TCP_ACK, TCP_SYN},
};

const L4: usize = L3_OFF + 20;
const PORTS: (u16, u16) = (32768, 65535);

fn src_ip(p: &[u8]) -> [u8; 4] {
    p[L3_OFF + 12..L3_OFF + 16].try_into().expect("4 bytes")
}

fn src_port(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[L4], p[L4 + 1]])
}

fn ttl(p: &[u8]) -> u8 {
    p[L3_OFF + 8]
}

/// The IPv4 header and TCP checksums verify (recomputed here).
fn assert_tcp_checksums(p: &[u8]) {
    assert!(checksum_ok(&p[L3_OFF..L4]), "IPv4 header checksum");
    let dst = p[L3_OFF + 16..L3_OFF + 20].try_into().expect("4 bytes");
    assert!(l4_checksum_ok(src_ip(p), dst, 6, &p[L4..]), "TCP checksum");
}

/// Opens `flow` as the kernel carries a pod's first packet: `from_pod`
/// (not final: a new SNAT flow), then `to_eni` on what it left, which
/// allocates the mapping. Returns the NAT port.
fn open(g: &Golden, flow: Flow) -> u16 {
    let syn = packets::tcp(flow, TCP_SYN);
    let out = g.run(Hook::FromPod, &syn);
    assert_redirected(&out, LO, REDIRECT_NEIGH);
    assert!(
        !decided(&out.cb),
        "a new SNAT flow is to_eni's to translate"
    );
    let out = g.run_after(Hook::ToEni, &out, LO);
    assert_eq!(out.action, TC_ACT_OK, "{out:?}");
    assert_eq!(src_ip(&out.data), NODE);
    src_port(&out.data)
}

fn assert_decided_redirect(out: &Outcome, ifindex: u32) {
    assert_redirected(out, ifindex, REDIRECT_NEIGH);
    assert!(decided(&out.cb), "marked final: {:?}", out.cb);
}

#[test]
fn an_established_snat_flow_is_translated_in_from_pod_as_to_eni_would() {
    let mut g = node(SnatMode::Random, PORTS);
    let flow = Flow::new(POD, INET, 41000, 443);
    let port = open(&g, flow);
    g.reset_stats();

    let ack = packets::tcp(flow, TCP_ACK);
    let out = g.run(Hook::FromPod, &ack);
    assert_decided_redirect(&out, LO);
    assert_eq!((src_ip(&out.data), src_port(&out.data)), (NODE, port));
    assert_eq!(ttl(&out.data), ttl(&ack) - 1, "one hop taken");
    assert_tcp_checksums(&out.data);

    // The same packet through the old way (untranslated out of from_pod,
    // translated by to_eni) comes out byte for byte the same.
    let mut hopped = ack.clone();
    set_ttl(&mut hopped, ttl(&ack) - 1);
    let by_to_eni = g.run_redirected(Hook::ToEni, &hopped, LO);
    assert_eq!(by_to_eni.action, TC_ACT_OK, "{by_to_eni:?}");
    assert_eq!(
        out.data, by_to_eni.data,
        "from_pod's translation is to_eni's"
    );

    // to_eni passes the final packet as it is, and counts only that.
    let passed = g.run_after(Hook::ToEni, &out, LO);
    assert_eq!(passed.action, TC_ACT_OK, "{passed:?}");
    assert_eq!(passed.data, out.data, "passed untouched");
    let (from_pod, to_eni) = (g.stats(Hook::FromPod), g.stats(Hook::ToEni));
    assert_eq!((from_pod.snat, from_pod.steer_eni), (1, 1), "{from_pod:?}");
    assert_eq!(
        (to_eni.pass_decided, to_eni.snat, to_eni.tcp),
        (1, 1, 1),
        "the decided packet is not parsed again (tcp counts the other run): {to_eni:?}"
    );

    // The flow was accounted once per packet after the one that made the
    // mapping: the ACK in from_pod, the old-way ACK in to_eni; the final
    // packet's pass through to_eni is not a second count.
    let ct = g.ct(&CtKey::new(POD, INET, 41000, 443, 6)).expect("CT");
    assert_eq!(ct.packets_orig, 2, "{ct:?}");
}

#[test]
fn untranslated_pod_traffic_leaves_its_eni_final() {
    let mut g = node(SnatMode::Random, PORTS);
    g.reset_stats();
    // A pod on the primary ENI to a VPC peer: no SNAT, out of the primary.
    let pkt = packets::udp(Flow::new(POD, PEER, 41001, 53), b"q");
    let out = g.run(Hook::FromPod, &pkt);
    assert_decided_redirect(&out, LO);
    assert_eq!(src_ip(&out.data), POD, "untranslated");
    let passed = g.run_after(Hook::ToEni, &out, LO);
    assert_eq!((passed.action, &passed.data), (TC_ACT_OK, &out.data));

    // A secondary-ENI pod to the peer: out of the ENI that owns its IP.
    let pkt = packets::udp(Flow::new(SECONDARY_POD, PEER, 41002, 53), b"q");
    let out = g.run(Hook::FromPod, &pkt);
    assert_decided_redirect(&out, SECONDARY_ENI);
    assert_eq!(src_ip(&out.data), SECONDARY_POD);
    assert_eq!(g.stats(Hook::ToEni).pass_decided, 1);
    assert_eq!(g.ct_len(), 0, "untranslated traffic keeps no state");
}

#[test]
fn to_eni_trusts_only_a_final_record() {
    let mut g = node(SnatMode::Random, PORTS);
    g.reset_stats();
    let syn = packets::tcp(Flow::new(POD, INET, 41003, 443), TCP_SYN);

    // A packet the pod could have SNATed, marked final: passed as it is,
    // no mapping made (to_eni believes from_pod, which never marks a new
    // SNAT flow; the magic word keeps anything else's cb out).
    let marked = Outcome {
        action: TC_ACT_REDIRECT,
        verdict: VerdictRecord::from_cb(&final_record()),
        data: syn.clone(),
        vlan_pushed: 0,
        cb: final_record(),
        duration_ns: 0,
    };
    let out = g.run_after(Hook::ToEni, &marked, LO);
    assert_eq!((out.action, &out.data), (TC_ACT_OK, &syn), "{out:?}");
    assert_eq!(g.ct_len(), 0);

    // The same record without the magic word (not ours): looked at, and
    // translated.
    let mut cb = final_record();
    cb[dataplane_common::verdict::CB_MAGIC] = 0;
    let forged = Outcome { cb, ..marked };
    let out = g.run_after(Hook::ToEni, &forged, LO);
    assert_eq!(out.verdict, Some(VerdictRecord::Pass), "{out:?}");
    assert_eq!(src_ip(&out.data), NODE, "translated by to_eni");
    let s = g.stats(Hook::ToEni);
    assert_eq!((s.pass_decided, s.snat), (1, 1), "{s:?}");
}

/// The record `from_pod` leaves on a final redirect out of `LO`.
fn final_record() -> [u32; 5] {
    use dataplane_common::verdict::*;
    let mut cb = [0; 5];
    cb[CB_VERDICT] = VERDICT_REDIRECT;
    cb[CB_TARGET_IFINDEX] = LO;
    cb[CB_REASON] = REDIRECT_NEIGH | REDIRECT_DECIDED;
    cb[CB_MAGIC] = CB_MAGIC_VALUE;
    cb
}

#[test]
fn what_to_eni_must_still_see_is_not_marked() {
    let mut g = node(SnatMode::Random, PORTS);
    let flow = Flow::new(POD, INET, 41004, 4000);
    open(&g, flow);
    g.reset_stats();
    // A first fragment of the established flow: to_eni keeps the
    // fragment's ports for the later ones, so it goes there.
    let frags = packets::ipv4_fragment(POD, INET, IpNumber::TCP, 0x77, 0, true, &tcp_segment(flow));
    let out = g.run(Hook::FromPod, &frags);
    assert_redirected(&out, LO, REDIRECT_NEIGH);
    assert!(!decided(&out.cb), "a fragment is not final");
    assert_eq!(src_ip(&out.data), POD, "not translated in from_pod");
    assert_eq!(g.stats(Hook::FromPod).snat, 0);
}

/// A TCP segment of `flow` (header and 24 bytes), as a fragment's payload.
fn tcp_segment(flow: Flow) -> Vec<u8> {
    let whole = packets::tcp(flow, TCP_ACK);
    let mut seg = whole[L4..].to_vec();
    seg.extend_from_slice(&[0x61; 24]);
    seg
}
