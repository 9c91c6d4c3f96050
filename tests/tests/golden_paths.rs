//! Golden packets for the flows a node serves beyond "the pod opens it":
//! a Service whose backend is elsewhere in the VPC (the host stack DNATs
//! it, so the backend's replies must go back through the stack to be
//! un-DNATed), and connections opened from outside the VPC CIDRs straight
//! to a pod (whose replies must keep the pod's address: netfilter decides
//! NAT at a flow's first packet, and that packet was inbound).

use dataplane_common::{
    conntrack::{
        CT_F_INBOUND, CT_F_OPENED_BY_PEER, CT_F_SNAT, CT_F_VIA_STACK, CT_STATE_ESTABLISHED,
        CT_STATE_NEW, CT_STATE_SYN_RECV,
    },
    verdict::{REDIRECT_NEIGH, REDIRECT_PEER},
    CtKey, Hook, SnatMode,
};
use testbed::kernel::{
    golden::{
        assert_passed_unchanged, assert_redirected,
        snat::{node, HOST_IFINDEX, INET, LO, NODE, PEER, POD},
        Golden, TC_ACT_OK,
    },
    packets::{self, Flow, L3_OFF, TCP_ACK, TCP_SYN},
};

fn golden() -> Golden {
    node(SnatMode::Random, (32768, 65535))
}

fn syn_ack(f: Flow) -> Vec<u8> {
    packets::tcp(f, TCP_SYN | TCP_ACK)
}

fn ack(f: Flow) -> Vec<u8> {
    packets::tcp(f, TCP_ACK)
}

fn src(p: &[u8]) -> [u8; 4] {
    p[L3_OFF + 12..L3_OFF + 16].try_into().expect("4 bytes")
}

fn sport(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[L3_OFF + 20], p[L3_OFF + 21]])
}

#[test]
fn a_services_remote_backend_answers_through_the_stack() {
    let g = golden();
    // The pod's SYN to a ClusterIP went to the stack (from_pod); kube-proxy
    // DNATed it to a backend elsewhere in the VPC and routed it out of the
    // primary ENI: to_eni sees it without our verdict record.
    let to_backend = Flow::new(POD, PEER, 40000, 53);
    let syn = packets::tcp_syn(to_backend);
    assert_passed_unchanged(&g.run(Hook::ToEni, &syn), &syn);
    let key = CtKey::new(POD, PEER, 40000, 53, 6);
    let ct = g.ct(&key).expect("the flow is tracked from the pod's side");
    assert_eq!(ct.flags, CT_F_VIA_STACK, "tracked, not translated");
    assert_eq!((ct.state, ct.packets_orig), (CT_STATE_NEW, 1));
    assert_eq!(g.stats(Hook::ToEni).via_stack_new, 1);
    assert!(g.snat_rev(&key.reversed()).is_none(), "no SNAT for the VPC");

    // The backend's SYN-ACK goes to the stack (which un-DNATs it), not
    // straight into the pod.
    let answer = syn_ack(Flow::new(PEER, POD, 53, 40000));
    assert_passed_unchanged(&g.run(Hook::FromEni, &answer), &answer);
    let ct = g.ct(&key).expect("still tracked");
    assert_eq!((ct.state, ct.packets_reply), (CT_STATE_SYN_RECV, 1));
    assert_eq!(g.stats(Hook::FromEni).to_stack, 1);

    // Later packets of the flow keep to the same path and refresh it.
    let more = ack(to_backend);
    assert_passed_unchanged(&g.run(Hook::ToEni, &more), &more);
    let ct = g.ct(&key).expect("tracked");
    assert_eq!((ct.state, ct.packets_orig), (CT_STATE_ESTABLISHED, 2));
    assert_eq!(g.stats(Hook::ToEni).via_stack_new, 1, "no second entry");
    let answer = ack(Flow::new(PEER, POD, 53, 40000));
    assert_passed_unchanged(&g.run(Hook::FromEni, &answer), &answer);

    // UDP (a resolver's query through a connected socket) the same way.
    let query = packets::udp(Flow::new(POD, PEER, 41000, 53), b"query");
    assert_passed_unchanged(&g.run(Hook::ToEni, &query), &query);
    let reply = packets::udp(Flow::new(PEER, POD, 53, 41000), b"answer");
    assert_passed_unchanged(&g.run(Hook::FromEni, &reply), &reply);
    assert_eq!(g.stats(Hook::ToEni).via_stack_new, 2);
}

#[test]
fn flows_the_data_path_steered_itself_stay_off_the_stack() {
    let g = golden();
    // from_pod sent this one straight out of the ENI (our record in cb):
    // nothing to un-NAT, so nothing is tracked and the answer goes
    // straight into the pod.
    let direct = packets::tcp_syn(Flow::new(POD, PEER, 40001, 443));
    let out = g.run_redirected(Hook::ToEni, &direct, LO);
    assert_eq!(out.action, TC_ACT_OK, "{out:?}");
    assert!(g.ct(&CtKey::new(POD, PEER, 40001, 443, 6)).is_none());
    assert_eq!(g.stats(Hook::ToEni).via_stack_new, 0);
    let answer = syn_ack(Flow::new(PEER, POD, 443, 40001));
    assert_redirected(&g.run(Hook::FromEni, &answer), HOST_IFINDEX, REDIRECT_PEER);
    // Only a flow's first packet opens an entry: a mid-flow packet the
    // stack routed (say, after an agent restart) is left as it was.
    let mid = ack(Flow::new(POD, PEER, 40002, 443));
    g.run(Hook::ToEni, &mid);
    assert!(g.ct(&CtKey::new(POD, PEER, 40002, 443, 6)).is_none());
}

#[test]
fn a_connection_from_outside_the_vpc_is_answered_untranslated() {
    let g = golden();
    // A client outside the VPC CIDRs (peered VPC, on-premises, an NLB that
    // keeps the client's address) connects to the pod's IP.
    let syn = packets::tcp_syn(Flow::new(INET, POD, 50000, 8443));
    assert_redirected(&g.run(Hook::FromEni, &syn), HOST_IFINDEX, REDIRECT_PEER);
    let key = CtKey::new(POD, INET, 8443, 50000, 6);
    let ct = g.ct(&key).expect("tracked from the pod's side");
    assert_eq!(ct.flags, CT_F_INBOUND | CT_F_OPENED_BY_PEER);
    assert_eq!(g.stats(Hook::FromEni).inbound_new, 1);

    // The pod's SYN-ACK leaves its own ENI with its own address and port.
    let answer = syn_ack(Flow::new(POD, INET, 8443, 50000));
    let out = g.run(Hook::FromPod, &answer);
    assert_redirected(&out, LO, REDIRECT_NEIGH);
    assert_eq!((src(&out.data), sport(&out.data)), (POD, 8443));
    let ct = g.ct(&key).expect("tracked");
    assert_eq!(ct.state, CT_STATE_SYN_RECV, "the pod answered");
    assert_eq!(ct.flags & CT_F_SNAT, 0);
    // And to_eni, where a pod-opened flow to that address is translated,
    // leaves it as it is.
    let out = g.run_redirected(Hook::ToEni, &answer, LO);
    assert_eq!(out.action, TC_ACT_OK, "{out:?}");
    assert_eq!(out.data, answer, "not SNATed");
    assert_eq!(g.stats(Hook::ToEni).snat, 0);
    assert!(g
        .snat_rev(&CtKey::new(INET, NODE, 50000, 8443, 6))
        .is_none());

    // The client's next packets still go straight in.
    let more = ack(Flow::new(INET, POD, 50000, 8443));
    assert_redirected(&g.run(Hook::FromEni, &more), HOST_IFINDEX, REDIRECT_PEER);
    let ct = g.ct(&key).expect("tracked");
    assert_eq!((ct.state, ct.packets_orig), (CT_STATE_ESTABLISHED, 2));
}

#[test]
fn udp_from_outside_the_vpc_is_answered_untranslated_too() {
    let g = golden();
    let query = packets::udp(Flow::new(INET, POD, 5353, 9000), b"hello");
    assert_redirected(&g.run(Hook::FromEni, &query), HOST_IFINDEX, REDIRECT_PEER);
    let answer = packets::udp(Flow::new(POD, INET, 9000, 5353), b"world");
    let out = g.run_redirected(Hook::ToEni, &answer, LO);
    assert_eq!(out.data, answer, "not SNATed");
    // Without the inbound packet first, the same datagram is the pod's own
    // new flow to the internet, and SNATed as before.
    let own = packets::udp(Flow::new(POD, INET, 9001, 5353), b"mine");
    let out = g.run_redirected(Hook::ToEni, &own, LO);
    assert_eq!(src(&out.data), NODE, "the pod's own flow is SNATed");
    assert_eq!(g.stats(Hook::ToEni).snat, 1);
}

#[test]
fn inbound_from_the_vpc_or_mid_flow_is_not_tracked() {
    let g = golden();
    // A VPC peer's connection needs no entry: nothing would SNAT the reply.
    let syn = packets::tcp_syn(Flow::new(PEER, POD, 50001, 8443));
    assert_redirected(&g.run(Hook::FromEni, &syn), HOST_IFINDEX, REDIRECT_PEER);
    assert!(g.ct(&CtKey::new(POD, PEER, 8443, 50001, 6)).is_none());
    // A packet from outside that opens nothing (no SYN) is delivered and
    // not tracked.
    let mid = ack(Flow::new(INET, POD, 50002, 8443));
    assert_redirected(&g.run(Hook::FromEni, &mid), HOST_IFINDEX, REDIRECT_PEER);
    assert!(g.ct(&CtKey::new(POD, INET, 8443, 50002, 6)).is_none());
    assert_eq!(g.stats(Hook::FromEni).inbound_new, 0);
}
