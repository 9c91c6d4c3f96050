//! Delivery: into a pod, out of an ENI towards its subnet gateway, or
//! tagged out of the trunk. Each returns the verdict for the redirect.

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    config::CFG_F_REDIRECT_VIA_HOST_VETH,
    csum,
    verdict::{CB_VLAN_PUSHED, REDIRECT_NEIGH, REDIRECT_PEER, REDIRECT_PLAIN, REDIRECT_POD_VETH},
    Config, EniEntry, PodEntry,
};

use crate::{
    headers::{EthHdr, Ipv4Hdr},
    maps,
    parse::header_mut,
    skb,
    verdict::Verdict,
};

const TC_ACT_REDIRECT: i64 = 7;

/// Forwarding past the stack still makes the node a routing hop, as it is
/// with the legacy plumbing (traceroute shows it): decrements the TTL and
/// updates the checksum. `false` when the TTL is spent: the caller leaves
/// the packet to the stack, which answers with ICMP time exceeded.
#[inline(always)]
pub fn hop(ctx: &mut TcContext, l3_off: usize) -> bool {
    let Some(ip) = header_mut::<Ipv4Hdr>(ctx, l3_off) else {
        return false;
    };
    if ip.ttl <= 1 {
        return false;
    }
    let before = [ip.ttl, ip.protocol];
    ip.ttl -= 1;
    ip.check = csum::replace2(ip.check, before, [ip.ttl, ip.protocol]);
    true
}

pub const fn redirect_ok(rc: i64) -> bool {
    rc == TC_ACT_REDIRECT
}

/// Ethernet addresses as the pod expects them: to its MAC, from its host veth.
#[inline(always)]
fn pod_macs(ctx: &mut TcContext, pod: &PodEntry) -> bool {
    let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
        return false;
    };
    eth.dst = pod.mac;
    eth.src = pod.host_mac;
    true
}

/// Into the pod from a TC ingress hook: `bpf_redirect_peer` straight into
/// its namespace, or out of its host veth when configured so (another
/// agent's TC program there must see it).
#[inline(always)]
pub fn into_pod(ctx: &mut TcContext, cfg: &Config, pod: &PodEntry) -> Verdict {
    if !pod_macs(ctx, pod) {
        return Verdict::Pass;
    }
    if cfg.flags & CFG_F_REDIRECT_VIA_HOST_VETH != 0 {
        let rc = skb::redirect(pod.host_ifindex);
        Verdict::redirect(rc, pod.host_ifindex, REDIRECT_POD_VETH)
    } else {
        // No device's receive path runs between here and the pod's IP
        // layer to set the type for the pod's MAC; set it ourselves.
        skb::set_pkt_type_host(ctx);
        let rc = skb::redirect_peer(pod.host_ifindex);
        Verdict::redirect(rc, pod.host_ifindex, REDIRECT_PEER)
    }
}

/// Into the pod from an egress hook (the host stack routed it out of an
/// ENI for want of a route): out of the pod's host veth, where `to_pod`
/// sees it as stack traffic.
#[inline(always)]
pub fn stack_into_pod(ctx: &mut TcContext, pod: &PodEntry) -> Verdict {
    if !pod_macs(ctx, pod) {
        return Verdict::Pass;
    }
    let rc = skb::redirect(pod.host_ifindex);
    Verdict::redirect(rc, pod.host_ifindex, REDIRECT_PLAIN)
}

/// Out of ENI `ifindex` towards its subnet gateway, the gateway's MAC
/// resolved by the kernel's neighbour table: no route table needed.
#[inline(always)]
pub fn out_of_eni(ifindex: u32) -> Verdict {
    match maps::eni(ifindex) {
        Some(eni) => out_of(ifindex, &eni),
        None => Verdict::Pass,
    }
}

/// [`out_of_eni`] for an ENI entry the caller has read.
#[inline(always)]
pub fn out_of(ifindex: u32, eni: &EniEntry) -> Verdict {
    let rc = skb::redirect_neigh(ifindex, eni.gateway_ip);
    Verdict::redirect(rc, ifindex, REDIRECT_NEIGH)
}

/// A branch pod's packet out of the trunk as its branch ENI would send it:
/// 802.1Q tag with its VLAN id, source MAC the branch ENI's, destination the
/// subnet gateway's MAC as the agent learnt it.
#[inline(always)]
pub fn to_trunk(ctx: &mut TcContext, pod: &PodEntry) -> Verdict {
    let trunk = pod.eni_ifindex;
    let Some(eni) = maps::eni(trunk) else {
        return Verdict::Pass;
    };
    if !skb::vlan_push(ctx, pod.vlan_id) {
        return Verdict::Pass;
    }
    // The push may move packet data: the header is found again.
    let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
        return Verdict::Pass;
    };
    eth.src = pod.branch_mac;
    eth.dst = eni.gateway_mac;
    skb::set_cb::<CB_VLAN_PUSHED>(ctx, pod.vlan_id as u32);
    let rc = skb::redirect(trunk);
    Verdict::redirect(rc, trunk, REDIRECT_PLAIN)
}
