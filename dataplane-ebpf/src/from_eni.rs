//! `from_eni` (TC ingress of every ENI): replies to SNATed flows, and ICMP
//! errors about them, translated back and delivered into the pod; traffic
//! for local pods delivered straight in; tagged frames on the trunk
//! untagged and delivered to their branch pod.

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    conntrack::{CT_F_INBOUND, CT_F_OPENED_BY_PEER, CT_F_VIA_STACK},
    Config, CtKey, DropReason, PodEntry, Stats, VlanKey,
};

use crate::{
    conntrack, deliver, frags,
    headers::ETH_HLEN,
    maps,
    nat::{self, ErrorDirection},
    parse::{self, Fragment, Parsed},
    policy::snat_needed,
    skb,
    verdict::Verdict,
};

#[inline(always)]
pub fn run(ctx: &mut TcContext, pkt: &Parsed, stats: &mut Stats) -> Verdict {
    let Some(cfg) = maps::config() else {
        return Verdict::Pass;
    };
    if pkt.vlan_id != 0 {
        return from_trunk(ctx, cfg, pkt, stats);
    }
    match pkt.fragment {
        Fragment::Later if !pkt.ports_known && for_this_node(cfg, pkt) => {
            if frags::hold(ctx, pkt, stats) {
                return Verdict::Consumed;
            }
        }
        Fragment::First => {
            if frags::release_held(ctx, pkt, stats) {
                return Verdict::Consumed;
            }
        }
        _ => {}
    }
    if pkt.dst != cfg.node_ip {
        // Traffic for a local pod (from the VPC); a strict branch pod's only
        // arrives tagged on the trunk.
        return match maps::pod(&pkt.dst) {
            Some(pod) if pod.vlan_id == 0 => into_local_pod(ctx, cfg, pkt, &pod, stats),
            _ => Verdict::Pass,
        };
    }
    if pkt.is_icmp_error() {
        return icmp_error_to_node(ctx, pkt, stats);
    }
    let Ok(reply) = conntrack::flow_key(pkt) else {
        // A later fragment that could not be held: the stack's.
        return Verdict::Pass;
    };
    let Some(orig) = maps::snat_orig(&reply) else {
        return Verdict::Pass; // the node's own traffic
    };
    if orig.src_ip == cfg.node_ip {
        return Verdict::Pass; // a host connection's identity entry
    }
    // Translated back only for a pod the data path serves; otherwise to the
    // stack untouched, since whatever owns the pod owns the flow too. During
    // a migration from aws-node that is netfilter until the pod's `PODS`
    // entry switches both directions at once: a reply translated here but
    // delivered by the stack clashes with netfilter's own entry for the
    // flow, which rewrites its source port, and the pod resets the
    // connection.
    let Some(pod) = maps::pod(&orig.src_ip) else {
        return Verdict::Pass;
    };
    if let Some(ct) = conntrack::lookup(&orig) {
        conntrack::seen_to_pod(ct, pkt);
    }
    if nat::rev_snat(ctx, pkt, &reply, &orig).is_err() {
        return Verdict::Drop(DropReason::MalformedL4);
    }
    stats.rev_snat += 1;
    hop_into_pod(ctx, cfg, &pod, pkt.l3_off)
}

/// Whether a fragment is for the node IP or one of its (untagged) pods,
/// the destinations `run` translates or delivers: only their fragments are
/// held.
#[inline(always)]
fn for_this_node(cfg: &Config, pkt: &Parsed) -> bool {
    pkt.dst == cfg.node_ip || matches!(maps::pod(&pkt.dst), Some(pod) if pod.vlan_id == 0)
}

/// Traffic from the VPC for a pod on this node goes straight in, unless it
/// answers a flow the pod opened through the host stack (a Service whose
/// backend is elsewhere): then the stack un-NATs it. A flow opened from
/// outside the VPC CIDRs is tracked, so that the pod's replies are not
/// SNATed (`CT_F_INBOUND`).
#[inline(always)]
fn into_local_pod(
    ctx: &mut TcContext,
    cfg: &Config,
    pkt: &Parsed,
    pod: &PodEntry,
    stats: &mut Stats,
) -> Verdict {
    if let Ok(key) = conntrack::flow_key(pkt) {
        let pod_side = key.reversed();
        match conntrack::lookup(&pod_side) {
            Some(ct) if ct.flags & CT_F_VIA_STACK != 0 => {
                conntrack::seen_to_pod(ct, pkt);
                stats.to_stack += 1;
                return Verdict::Pass;
            }
            Some(ct) => {
                if ct.flags & CT_F_INBOUND != 0 {
                    conntrack::seen_to_pod(ct, pkt);
                }
            }
            None => {
                if conntrack::opens_flow(pkt) && snat_needed(cfg, pod, pkt.src) {
                    match conntrack::start(&pod_side, CT_F_INBOUND | CT_F_OPENED_BY_PEER, pkt) {
                        Ok(true) => stats.inbound_new += 1,
                        Ok(false) => {}
                        // Untracked, the pod's answer would be SNATed.
                        Err(reason) => return Verdict::Drop(reason),
                    }
                }
            }
        }
    }
    stats.steer_pod += 1;
    hop_into_pod(ctx, cfg, pod, pkt.l3_off)
}

/// The node is a routing hop on the way in too (see `deliver::hop`).
#[inline(always)]
fn hop_into_pod(ctx: &mut TcContext, cfg: &Config, pod: &PodEntry, l3_off: usize) -> Verdict {
    if !deliver::hop(ctx, l3_off) {
        return Verdict::Pass;
    }
    deliver::into_pod(ctx, cfg, pod)
}

/// A tagged frame on a trunk: the branch ENI with that VLAN id is a pod's;
/// the tag comes off and the packet goes into the pod.
#[inline(always)]
fn from_trunk(ctx: &mut TcContext, cfg: &Config, pkt: &Parsed, stats: &mut Stats) -> Verdict {
    let trunk = skb::ifindex(ctx);
    let Some(pod_ip) = maps::vlan_pod(&VlanKey::new(trunk, pkt.vlan_id)) else {
        return Verdict::Drop(DropReason::VlanUnknown);
    };
    let pod = match maps::pod(&pod_ip) {
        Some(pod) if pkt.dst == pod_ip => pod,
        _ => return Verdict::Drop(DropReason::VlanUnknown),
    };
    if !skb::vlan_pop(ctx) {
        return Verdict::Drop(DropReason::MalformedL3);
    }
    stats.vlan_pop += 1;
    // The tag is gone: the IPv4 header now follows the Ethernet header.
    hop_into_pod(ctx, cfg, &pod, ETH_HLEN)
}

/// An ICMP error (fragmentation needed, TTL exceeded, unreachable) about a
/// packet a pod sent through SNAT: back to the pod, quoting its own packet.
#[inline(always)]
fn icmp_error_to_node(ctx: &mut TcContext, pkt: &Parsed, stats: &mut Stats) -> Verdict {
    let Some(cfg) = maps::config() else {
        return Verdict::Pass;
    };
    let Some(q) = parse::parse_quoted(ctx, pkt) else {
        return Verdict::Pass;
    };
    // The quote is the packet as it left: its reverse is the reply tuple.
    let quoted = CtKey::new(q.src, q.dst, q.src_port, q.dst_port, q.proto);
    let Some(orig) = maps::snat_orig(&quoted.reversed()) else {
        return Verdict::Pass;
    };
    if orig.src_ip == cfg.node_ip {
        return Verdict::Pass;
    }
    let Some(pod) = maps::pod(&orig.src_ip) else {
        return Verdict::Pass; // not ours: see `run`
    };
    if nat::icmp_error(
        ctx,
        pkt,
        &q,
        ErrorDirection::Inbound,
        orig.src_ip,
        q.src_port,
        orig.src_port,
    )
    .is_err()
    {
        return Verdict::Drop(DropReason::MalformedL4);
    }
    stats.icmp_error_xlated += 1;
    stats.rev_snat += 1;
    hop_into_pod(ctx, cfg, &pod, pkt.l3_off)
}
