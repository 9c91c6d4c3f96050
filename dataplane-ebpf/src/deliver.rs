//! Delivery: into a pod (after reverse NAT), and out of the primary ENI
//! (SNATed traffic must leave the interface that owns the node IP, or the
//! VPC's source/destination check drops it).

use aya_ebpf::{
    bindings::bpf_redir_neigh,
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use dataplane_common::{
    config::CFG_F_REDIRECT_VIA_HOST_VETH,
    verdict::{REDIRECT_NEIGH, REDIRECT_PEER, REDIRECT_PLAIN},
    Config, Ipv4,
};

use crate::{
    headers::EthHdr,
    maps::{ENIS, PODS},
    parse::header_mut,
    verdict::Verdict,
};

const AF_INET: u32 = 2;
const TC_ACT_REDIRECT: i64 = 7;

/// Sends the packet to the pod that owns `pod_ip`: Ethernet addresses set
/// as the pod expects them (its MAC, from its host veth), then
/// `bpf_redirect_peer` into its namespace, or `bpf_redirect` out of the
/// host veth when configured so (another agent's TC program there must see
/// it). `Pass` when the pod is unknown: the stack decides.
#[inline(always)]
pub fn to_pod(ctx: &mut TcContext, cfg: &Config, pod_ip: &Ipv4) -> Verdict {
    let Some(pod) = PODS.get_ptr(pod_ip) else {
        return Verdict::Pass;
    };
    // SAFETY: valid map value pointer; PodEntry is plain data.
    let pod = unsafe { *pod };
    let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
        return Verdict::Pass;
    };
    eth.dst = pod.mac;
    eth.src = pod.host_mac;
    if cfg.flags & CFG_F_REDIRECT_VIA_HOST_VETH != 0 {
        // SAFETY: helper call with plain arguments.
        let rc = unsafe { bpf_redirect(pod.host_ifindex, 0) };
        Verdict::redirect(rc, pod.host_ifindex, REDIRECT_PLAIN)
    } else {
        // SAFETY: helper call with plain arguments.
        let rc = unsafe { bpf_redirect_peer(pod.host_ifindex, 0) };
        Verdict::redirect(rc, pod.host_ifindex, REDIRECT_PEER)
    }
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

pub const fn redirect_ok(rc: i64) -> bool {
    rc == TC_ACT_REDIRECT
}
