//! Golden packets through every steering branch: which interface a packet
//! is redirected to and how, the Ethernet addresses it leaves with, the
//! VLAN tag pushed or popped, the TTL of a routing hop, and the verdict.

use dataplane_common::{
    config::{CFG_F_REDIRECT_VIA_HOST_VETH, CFG_F_SG_STANDARD},
    conntrack::CT_F_VIA_STACK,
    verdict::{REDIRECT_NEIGH, REDIRECT_PEER, REDIRECT_PLAIN, REDIRECT_POD_VETH},
    Config, CtKey, DropReason, Hook, SnatMode, VerdictRecord,
};
use testbed::kernel::{
    golden::{
        assert_passed_unchanged, assert_redirected,
        snat::{
            node, BRANCH_HOST_IFINDEX, BRANCH_MAC, BRANCH_POD, BRANCH_POD_MAC, BRANCH_VLAN,
            GATEWAY_MAC, HOST_IFINDEX, INET, LO, NODE, PEER, POD, SECONDARY_ENI,
            SECONDARY_HOST_IFINDEX, SECONDARY_POD, SECONDARY_POD_MAC, TRUNK,
        },
        Golden, Outcome, TC_ACT_SHOT,
    },
    packets::{self, checksum_ok, Flow, HOST_VETH_MAC, L3_OFF, POD_MAC},
};

const SERVICE_IP: [u8; 4] = [10, 100, 0, 10];

fn steer_node() -> Golden {
    node(SnatMode::Random, (32768, 65535))
}

fn ttl(p: &[u8]) -> u8 {
    p[L3_OFF + 8]
}

/// A routing hop: TTL one less, IPv4 checksum still right.
fn assert_hop(out: &Outcome, sent: &[u8]) {
    assert_eq!(ttl(&out.data), ttl(sent) - 1);
    assert!(
        checksum_ok(&out.data[L3_OFF..L3_OFF + 20]),
        "IPv4 checksum after the TTL change"
    );
}

#[test]
fn pod_traffic_leaves_the_eni_that_owns_its_ip() {
    let g = steer_node();
    // Primary-ENI pod to a VPC peer: out of the primary (LO here), via its gateway.
    let pkt = packets::tcp_syn(Flow::new(POD, PEER, 40000, 443));
    let out = g.run(Hook::FromPod, &pkt);
    assert_redirected(&out, LO, REDIRECT_NEIGH);
    assert_hop(&out, &pkt);
    // Secondary-ENI pod to the VPC: out of the secondary ENI.
    let pkt = packets::tcp_syn(Flow::new(SECONDARY_POD, PEER, 40000, 443));
    let out = g.run(Hook::FromPod, &pkt);
    assert_redirected(&out, SECONDARY_ENI, REDIRECT_NEIGH);
    assert_eq!(out.vlan_pushed, 0, "no tag on an ENI");
    // Secondary-ENI pod leaving the VPC: SNAT applies, so the primary ENI.
    let out = g.run(
        Hook::FromPod,
        &packets::tcp_syn(Flow::new(SECONDARY_POD, INET, 40000, 443)),
    );
    assert_redirected(&out, LO, REDIRECT_NEIGH);
    assert_eq!(g.stats(Hook::FromPod).steer_eni, 3);
}

#[test]
fn same_node_pods_are_one_redirect_apart() {
    let g = steer_node();
    let pkt = packets::udp(Flow::new(POD, SECONDARY_POD, 5000, 53), b"hi");
    let out = g.run(Hook::FromPod, &pkt);
    assert_redirected(&out, SECONDARY_HOST_IFINDEX, REDIRECT_PEER);
    assert_eq!(
        &out.data[0..6],
        &SECONDARY_POD_MAC,
        "to the destination pod's MAC"
    );
    assert_eq!(&out.data[6..12], &HOST_VETH_MAC, "from its host veth");
    assert_hop(&out, &pkt);
    assert_eq!(g.stats(Hook::FromPod).steer_pod, 1);
}

#[test]
fn services_and_the_node_itself_go_to_the_stack_untouched() {
    let g = steer_node();
    for dst in [SERVICE_IP, NODE] {
        let pkt = packets::tcp_syn(Flow::new(POD, dst, 40000, 80));
        assert_passed_unchanged(&g.run(Hook::FromPod, &pkt), &pkt);
    }
    assert_eq!(g.stats(Hook::FromPod).to_stack, 2);
}

#[test]
fn a_spent_ttl_is_left_to_the_stack_to_answer() {
    let g = steer_node();
    let mut pkt = packets::tcp_syn(Flow::new(POD, PEER, 40000, 443));
    packets::set_ttl(&mut pkt, 1);
    assert_passed_unchanged(&g.run(Hook::FromPod, &pkt), &pkt);
}

#[test]
fn strict_branch_pods_go_tagged_out_of_the_trunk_for_everything() {
    let g = steer_node();
    for dst in [INET, PEER, NODE, POD] {
        let pkt = packets::tcp_syn(Flow::new(BRANCH_POD, dst, 40000, 443));
        let out = g.run(Hook::FromPod, &pkt);
        assert_redirected(&out, TRUNK, REDIRECT_PLAIN);
        assert_eq!(
            out.vlan_pushed,
            u32::from(BRANCH_VLAN),
            "tagged with the branch VLAN ({dst:?})"
        );
        assert_eq!(&out.data[6..12], &BRANCH_MAC, "from the branch ENI's MAC");
        assert_eq!(&out.data[0..6], &GATEWAY_MAC, "to the subnet gateway");
        assert_eq!(
            &out.data[L3_OFF + 12..L3_OFF + 16],
            &BRANCH_POD,
            "never SNATed"
        );
        assert_hop(&out, &pkt);
    }
}

#[test]
fn standard_mode_branch_pods_reach_the_node_directly_and_leave_the_vpc_snated() {
    let mut g = steer_node();
    g.node_maps
        .put_config(&Config {
            node_ip: NODE,
            primary_eni_ifindex: LO,
            flags: CFG_F_SG_STANDARD,
            ..Config::default()
        })
        .expect("CONFIG");
    let to_node = packets::tcp_syn(Flow::new(BRANCH_POD, NODE, 40000, 10250));
    assert_passed_unchanged(&g.run(Hook::FromPod, &to_node), &to_node);
    let out = g.run(
        Hook::FromPod,
        &packets::tcp_syn(Flow::new(BRANCH_POD, INET, 40000, 443)),
    );
    assert_redirected(&out, LO, REDIRECT_NEIGH);
    let out = g.run(
        Hook::FromPod,
        &packets::tcp_syn(Flow::new(BRANCH_POD, PEER, 40000, 443)),
    );
    assert_redirected(&out, TRUNK, REDIRECT_PLAIN);
    assert_eq!(out.vlan_pushed, u32::from(BRANCH_VLAN));
}

#[test]
fn flows_that_came_through_the_stack_answer_through_it() {
    let g = steer_node();
    // kubelet-like probe from the node to the pod, delivered by the stack.
    let probe = packets::tcp_syn(Flow::new(NODE, POD, 51000, 8080));
    assert_passed_unchanged(&g.run(Hook::ToPod, &probe), &probe);
    let key = CtKey::new(POD, NODE, 8080, 51000, 6);
    let ct = g
        .ct(&key)
        .expect("via-stack entry keyed from the pod's side");
    assert_eq!(ct.flags & CT_F_VIA_STACK, CT_F_VIA_STACK);
    assert_eq!(g.stats(Hook::ToPod).via_stack_new, 1);
    // A NodePort client (after kube-proxy's DNAT) gets the same treatment,
    // and the pod's answer goes back into the stack, not to an ENI.
    let nodeport = packets::tcp_syn(Flow::new(INET, POD, 33000, 8080));
    g.run(Hook::ToPod, &nodeport);
    let answer = packets::tcp_syn(Flow::new(POD, INET, 8080, 33000));
    assert_passed_unchanged(&g.run(Hook::FromPod, &answer), &answer);
    // A pod on this node reaching this one through the stack (a ClusterIP
    // kube-proxy DNATed) is via stack too: the answer must be un-DNATed.
    let via_service = packets::tcp_syn(Flow::new(SECONDARY_POD, POD, 34000, 8080));
    g.run(Hook::ToPod, &via_service);
    let key = CtKey::new(POD, SECONDARY_POD, 8080, 34000, 6);
    assert!(g.ct(&key).is_some());
    // Mid-flow packets (no SYN) open nothing.
    let mut mid = packets::tcp_syn(Flow::new(INET, POD, 33001, 8080));
    mid[L3_OFF + 20 + 13] = 0x10; // ACK only
    g.run(Hook::ToPod, &mid);
    let key = CtKey::new(POD, INET, 8080, 33001, 6);
    assert!(g.ct(&key).is_none());
}

#[test]
fn strict_branch_pods_refuse_what_did_not_come_through_the_trunk() {
    let g = steer_node();
    let probe = packets::tcp_syn(Flow::new(NODE, BRANCH_POD, 51000, 8080));
    let out = g.run(Hook::ToPod, &probe);
    assert_eq!(out.action, TC_ACT_SHOT);
    assert_eq!(
        out.verdict,
        Some(VerdictRecord::Drop {
            reason: DropReason::StrictNotTrunk as u32
        })
    );
}

#[test]
fn vpc_traffic_for_a_local_pod_goes_straight_in() {
    let g = steer_node();
    let pkt = packets::udp(Flow::new(PEER, SECONDARY_POD, 5000, 53), b"q");
    let out = g.run(Hook::FromEni, &pkt);
    assert_redirected(&out, SECONDARY_HOST_IFINDEX, REDIRECT_PEER);
    assert_eq!(&out.data[0..6], &SECONDARY_POD_MAC);
    assert_hop(&out, &pkt);
    // Untagged traffic for a strict branch pod is not delivered.
    let pkt = packets::udp(Flow::new(PEER, BRANCH_POD, 5000, 53), b"q");
    assert_passed_unchanged(&g.run(Hook::FromEni, &pkt), &pkt);
}

#[test]
fn tagged_frames_from_the_trunk_reach_their_branch_pod_untagged() {
    let g = steer_node();
    let pkt = packets::udp_vlan(
        Flow::new(PEER, BRANCH_POD, 5000, 53),
        BRANCH_VLAN,
        b"tagged",
    );
    let out = g.run(Hook::FromEni, &pkt);
    assert_redirected(&out, BRANCH_HOST_IFINDEX, REDIRECT_PEER);
    assert_eq!(
        &out.data[12..14],
        &[0x08, 0x00],
        "the tag is gone: IPv4 follows the MACs"
    );
    assert_eq!(out.data.len(), pkt.len() - 4);
    assert_eq!(&out.data[0..6], &BRANCH_POD_MAC);
    assert_eq!(ttl(&out.data), ttl(&pkt[4..]) - 1);
    assert_eq!(g.stats(Hook::FromEni).vlan_pop, 1);

    // A VLAN no branch pod has, or a destination that is not the VLAN's pod.
    for bad in [
        packets::udp_vlan(Flow::new(PEER, BRANCH_POD, 5000, 53), 9, b"x"),
        packets::udp_vlan(Flow::new(PEER, POD, 5000, 53), BRANCH_VLAN, b"x"),
    ] {
        let out = g.run(Hook::FromEni, &bad);
        assert_eq!(out.action, TC_ACT_SHOT, "{out:?}");
        assert_eq!(
            out.verdict,
            Some(VerdictRecord::Drop {
                reason: DropReason::VlanUnknown as u32
            })
        );
    }
}

#[test]
fn stack_traffic_routed_out_of_an_eni_is_corrected() {
    let g = steer_node();
    // The stack sent a secondary-ENI pod's packet out of the primary (LO).
    let pkt = packets::tcp_syn(Flow::new(SECONDARY_POD, PEER, 40000, 443));
    assert_redirected(&g.run(Hook::ToEni, &pkt), SECONDARY_ENI, REDIRECT_NEIGH);
    // The stack has no route to pods: a probe it sent out of the ENI goes into the pod.
    let probe = packets::tcp_syn(Flow::new(NODE, POD, 51000, 8080));
    let out = g.run(Hook::ToEni, &probe);
    assert_redirected(&out, HOST_IFINDEX, REDIRECT_PLAIN);
    assert_eq!(
        (&out.data[0..6], &out.data[6..12]),
        (&POD_MAC[..], &HOST_VETH_MAC[..])
    );
}

#[test]
fn plain_redirect_mode_delivers_through_the_host_veth() {
    let mut g = steer_node();
    g.node_maps
        .put_config(&Config {
            node_ip: NODE,
            primary_eni_ifindex: LO,
            flags: CFG_F_REDIRECT_VIA_HOST_VETH,
            ..Config::default()
        })
        .expect("CONFIG");
    let out = g.run(
        Hook::FromEni,
        &packets::udp(Flow::new(PEER, POD, 5000, 53), b"q"),
    );
    assert_redirected(&out, HOST_IFINDEX, REDIRECT_POD_VETH);
}

/// A pod packet larger than the MTU of the ENI it would leave by goes to
/// the stack (which fragments it or answers frag-needed) instead of being
/// redirected past the forwarding path's MTU check; one that fits is
/// redirected. A veth of MTU 1500 in the harness's namespace stands for the
/// primary ENI (`bpf_check_mtu` looks the device up in the namespace the
/// program runs in).
#[test]
fn a_packet_larger_than_its_enis_mtu_goes_to_the_stack() {
    use testbed::kernel::golden::{snat::configure, Golden};
    let g = Golden::load();
    let ns = g.netns();
    ns.ip(&[
        "link", "add", "eni0", "mtu", "1500", "type", "veth", "peer", "name", "eni0p",
    ])
    .expect("a device standing for the ENI");
    ns.ip(&["link", "set", "eni0", "up"]).expect("up");
    let eni = ns.ifindex("eni0").expect("ifindex");
    let mut g = configure(g, SnatMode::Random, (32768, 65535), eni);
    g.reset_stats();
    let big = packets::udp(Flow::new(POD, PEER, 5000, 53), &[7; 1600]);
    assert_passed_unchanged(&g.run(Hook::FromPod, &big), &big);
    let s = g.stats(Hook::FromPod);
    assert_eq!((s.to_stack_mtu, s.steer_eni), (1, 0), "{s:?}");
    let small = packets::udp(Flow::new(POD, PEER, 5000, 53), &[7; 1400]);
    assert_redirected(&g.run(Hook::FromPod, &small), eni, REDIRECT_NEIGH);
    assert_eq!(g.stats(Hook::FromPod).steer_eni, 1);
}
