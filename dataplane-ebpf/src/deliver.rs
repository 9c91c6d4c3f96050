//! Delivery: into a pod, out of an ENI towards its subnet gateway, or
//! tagged out of the trunk. Each returns the verdict for the redirect.

use aya_ebpf::{
    bindings::bpf_redir_neigh,
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer, bpf_skb_vlan_push},
    programs::TcContext,
};
use dataplane_common::{
    config::CFG_F_REDIRECT_VIA_HOST_VETH,
    csum,
    verdict::{CB_VLAN_PUSHED, REDIRECT_NEIGH, REDIRECT_PEER, REDIRECT_PLAIN, REDIRECT_POD_VETH},
    Config, PodEntry,
};

use crate::{
    headers::{EthHdr, Ipv4Hdr},
    maps::ENIS,
    parse::header_mut,
    verdict::Verdict,
};

const AF_INET: u32 = 2;
const TC_ACT_REDIRECT: i64 = 7;
const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();

/// Forwarding past the stack still makes the node a routing hop, as it is
/// with the legacy plumbing (traceroute shows it): decrements the TTL and
/// updates the checksum. `false` when the TTL is spent: the caller leaves
/// the packet to the stack, which answers with ICMP time exceeded.
#[inline(always)]
pub fn hop(ctx: &TcContext, l3_off: usize) -> bool {
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
fn pod_macs(ctx: &TcContext, pod: &PodEntry) -> bool {
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
        // SAFETY: helper call with plain arguments.
        let rc = unsafe { bpf_redirect(pod.host_ifindex, 0) };
        Verdict::redirect(rc, pod.host_ifindex, REDIRECT_POD_VETH)
    } else {
        // SAFETY: helper call with plain arguments.
        let rc = unsafe { bpf_redirect_peer(pod.host_ifindex, 0) };
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
    // SAFETY: helper call with plain arguments.
    let rc = unsafe { bpf_redirect(pod.host_ifindex, 0) };
    Verdict::redirect(rc, pod.host_ifindex, REDIRECT_PLAIN)
}

/// Out of ENI `ifindex` towards its subnet gateway, the gateway's MAC
/// resolved by the kernel's neighbour table: no route table needed.
#[inline(always)]
pub fn out_of_eni(ifindex: u32) -> Verdict {
    let Some(eni) = ENIS.get_ptr(&ifindex) else {
        return Verdict::Pass;
    };
    // SAFETY: valid map value pointer; EniEntry is plain data.
    let gateway = unsafe { (*eni).gateway_ip };
    // SAFETY: an all-zero bpf_redir_neigh is valid (plain integers).
    let mut params: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    params.nh_family = AF_INET;
    params.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(gateway);
    // SAFETY: params lives for the call; the size is the struct's.
    let rc = unsafe {
        bpf_redirect_neigh(
            ifindex,
            &mut params,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    Verdict::redirect(rc, ifindex, REDIRECT_NEIGH)
}

/// A branch pod's packet out of the trunk as its branch ENI would send it:
/// 802.1Q tag with its VLAN id, source MAC the branch ENI's, destination the
/// subnet gateway's MAC as the agent learnt it.
#[inline(always)]
pub fn to_trunk(ctx: &mut TcContext, pod: &PodEntry) -> Verdict {
    let trunk = pod.eni_ifindex;
    let Some(eni) = ENIS.get_ptr(&trunk) else {
        return Verdict::Pass;
    };
    // SAFETY: valid map value pointer; EniEntry is plain data.
    let gateway_mac = unsafe { (*eni).gateway_mac };
    // SAFETY: helper call on this program's own skb.
    if unsafe { bpf_skb_vlan_push(ctx.skb.skb, ETH_P_8021Q_BE, pod.vlan_id) } != 0 {
        return Verdict::Pass;
    }
    // The push may move packet data: the header is found again.
    let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
        return Verdict::Pass;
    };
    eth.src = pod.branch_mac;
    eth.dst = gateway_mac;
    // SAFETY: this program's context; cb is writable from TC.
    unsafe {
        core::ptr::write_volatile(
            core::ptr::addr_of_mut!((*ctx.skb.skb).cb[CB_VLAN_PUSHED]),
            pod.vlan_id as u32,
        )
    };
    // SAFETY: helper call with plain arguments.
    let rc = unsafe { bpf_redirect(trunk, 0) };
    Verdict::redirect(rc, trunk, REDIRECT_PLAIN)
}
