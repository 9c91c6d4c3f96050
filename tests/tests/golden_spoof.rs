//! Golden packets for anti-spoofing in `from_pod`: a packet received on a
//! pod's host veth whose source address is not that pod's is dropped and
//! counted (`drop_spoofed`) before any flow state is read or written.
//! Each packet runs as received on a named host veth (`Golden::run_on`),
//! so the same bytes are tried from their owner's veth and from another's.

use dataplane_common::{
    conntrack::{CT_F_INBOUND, CT_STATE_ESTABLISHED, CT_STATE_SYN_RECV},
    verdict::{REDIRECT_NEIGH, REDIRECT_PEER},
    CtKey, DropReason, Hook, SnatMode, VerdictRecord,
};
use testbed::kernel::{
    golden::{
        assert_redirected,
        snat::{
            node, BRANCH_HOST_IFINDEX, BRANCH_POD, HOST_IFINDEX, INET, LO, NODE, PEER, POD,
            SECONDARY_ENI, SECONDARY_HOST_IFINDEX, SECONDARY_POD,
        },
        Golden, Outcome, TC_ACT_SHOT,
    },
    packets::{self, Flow, TCP_ACK, TCP_RST, TCP_SYN},
};

fn golden() -> Golden {
    node(SnatMode::Random, (32768, 65535))
}

fn assert_spoofed(out: &Outcome) {
    assert_eq!(out.action, TC_ACT_SHOT, "{out:?}");
    assert_eq!(
        out.verdict,
        Some(VerdictRecord::Drop {
            reason: DropReason::Spoofed as u32
        }),
        "{out:?}"
    );
}

#[test]
fn another_pods_address_is_dropped_and_counted() {
    let mut g = golden();
    g.reset_stats();
    // The secondary-ENI pod's address, sent from the primary pod's veth:
    // out of the secondary ENI it would pass EC2's source check.
    let pkt = packets::udp(Flow::new(SECONDARY_POD, PEER, 5000, 53), b"q");
    assert_spoofed(&g.run_on(Hook::FromPod, &pkt, HOST_IFINDEX));
    let s = g.stats(Hook::FromPod);
    assert_eq!((s.drop, s.drop_spoofed, s.steer_eni), (1, 1, 0), "{s:?}");
    // The same bytes from their owner's veth leave by its ENI.
    let out = g.run_on(Hook::FromPod, &pkt, SECONDARY_HOST_IFINDEX);
    assert_redirected(&out, SECONDARY_ENI, REDIRECT_NEIGH);
    assert_eq!(g.stats(Hook::FromPod).drop_spoofed, 1);
}

#[test]
fn a_strict_branch_pods_address_is_not_a_way_around_its_security_groups() {
    let g = golden();
    // From a regular pod's veth, the branch pod's address would be tagged
    // out of the trunk with the branch pod's VLAN and MAC.
    let pkt = packets::tcp_syn(Flow::new(BRANCH_POD, PEER, 40000, 443));
    let out = g.run_on(Hook::FromPod, &pkt, HOST_IFINDEX);
    assert_spoofed(&out);
    assert_eq!(out.vlan_pushed, 0, "no tag pushed");
    assert_eq!(g.stats(Hook::FromPod).vlan_push, 0);
    // From the branch pod's own veth it is tagged.
    let out = g.run_on(Hook::FromPod, &pkt, BRANCH_HOST_IFINDEX);
    assert_ne!(out.vlan_pushed, 0, "{out:?}");
}

#[test]
fn addresses_no_pod_was_given_are_dropped() {
    let mut g = golden();
    g.reset_stats();
    let sources = [
        NODE,                // the node's own address: its SNAT ports, its replies
        [192, 168, 31, 199], // a VPC address no pod here has
        [0, 0, 0, 0],
        INET,
    ];
    for src in sources {
        let pkt = packets::udp(Flow::new(src, PEER, 5000, 53), b"q");
        assert_spoofed(&g.run_on(Hook::FromPod, &pkt, HOST_IFINDEX));
    }
    let s = g.stats(Hook::FromPod);
    assert_eq!(s.drop_spoofed, sources.len() as u64, "{s:?}");
    assert_eq!((s.to_stack, s.steer_eni, s.steer_pod), (0, 0, 0), "{s:?}");
}

#[test]
fn a_spoofed_packet_creates_no_flow_and_no_mapping() {
    let g = golden();
    // From another veth, a packet that would open a SNATed flow: nothing
    // reaches to_eni, and no map but PODS is read.
    let pkt = packets::tcp_syn(Flow::new(POD, INET, 40000, 443));
    assert_spoofed(&g.run_on(Hook::FromPod, &pkt, SECONDARY_HOST_IFINDEX));
    assert_eq!(g.ct_len(), 0, "no conntrack entry");
    assert!(g.ct_maps.rev_entries().expect("SNAT_REV").is_empty());
}

#[test]
fn a_spoofed_reset_does_not_close_anothers_connection() {
    let g = golden();
    // A client outside the VPC opens a connection to the pod; the pod answers.
    let syn = packets::tcp_syn(Flow::new(INET, POD, 50000, 8443));
    assert_redirected(&g.run(Hook::FromEni, &syn), HOST_IFINDEX, REDIRECT_PEER);
    let key = CtKey::new(POD, INET, 8443, 50000, 6);
    let syn_ack = packets::tcp(Flow::new(POD, INET, 8443, 50000), TCP_SYN | TCP_ACK);
    assert_redirected(
        &g.run_on(Hook::FromPod, &syn_ack, HOST_IFINDEX),
        LO,
        REDIRECT_NEIGH,
    );
    let ack = packets::tcp(Flow::new(INET, POD, 50000, 8443), TCP_ACK);
    g.run(Hook::FromEni, &ack);
    let before = g.ct(&key).expect("tracked");
    assert_eq!(
        (before.state, before.flags & CT_F_INBOUND),
        (CT_STATE_ESTABLISHED, CT_F_INBOUND)
    );
    // Another pod forges the pod's RST: dropped, the flow untouched.
    let rst = packets::tcp(Flow::new(POD, INET, 8443, 50000), TCP_RST);
    assert_spoofed(&g.run_on(Hook::FromPod, &rst, SECONDARY_HOST_IFINDEX));
    assert_eq!(g.ct(&key), Some(before), "the flow as it was");
    // The state machine does move on the pod's own packets (the control).
    assert_ne!(before.state, CT_STATE_SYN_RECV);
    g.run_on(Hook::FromPod, &rst, HOST_IFINDEX);
    assert_ne!(g.ct(&key).map(|c| c.state), Some(before.state));
}

#[test]
fn while_a_migration_adopts_pods_unknown_sources_go_to_the_stack() {
    use dataplane_common::config::CFG_F_ADOPTING;
    let mut g = golden();
    let mut cfg = g.node_maps.config().expect("CONFIG");
    cfg.flags |= CFG_F_ADOPTING;
    g.node_maps.put_config(&cfg).expect("CONFIG");
    // A pod being adopted: programs attached, PODS entry not yet written.
    // The legacy plumbing still carries it, so the stack gets its packets.
    let adoptee = packets::udp(Flow::new([192, 168, 31, 199], PEER, 5000, 53), b"q");
    let out = g.run_on(Hook::FromPod, &adoptee, 45);
    assert_eq!(out.verdict, Some(VerdictRecord::Pass), "{out:?}");
    assert_eq!(out.data, adoptee);
    // Another pod's address is still a forgery.
    let forged = packets::udp(Flow::new(SECONDARY_POD, PEER, 5000, 53), b"q");
    assert_spoofed(&g.run_on(Hook::FromPod, &forged, HOST_IFINDEX));
    // Once adopting is over, the unknown source is dropped too.
    cfg.flags &= !CFG_F_ADOPTING;
    g.node_maps.put_config(&cfg).expect("CONFIG");
    assert_spoofed(&g.run_on(Hook::FromPod, &adoptee, 45));
}
