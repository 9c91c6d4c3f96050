//! `from_eni` (TC ingress of every ENI): replies to SNATed flows, and ICMP
//! errors about them, translated back and delivered into the pod.

use aya_ebpf::programs::TcContext;
use dataplane_common::{CtKey, Stats};

use crate::{
    conntrack, deliver,
    maps::{self, SNAT_REV},
    nat::{self, ErrorDirection},
    parse::{self, Parsed},
    verdict::Verdict,
};

#[inline(always)]
pub fn run(ctx: &mut TcContext, pkt: &Parsed, stats: &mut Stats) -> Verdict {
    let Some(cfg) = maps::config() else {
        return Verdict::Pass;
    };
    if cfg.primary_eni_ifindex == 0 || pkt.dst != cfg.node_ip {
        return Verdict::Pass;
    }
    if pkt.is_icmp_error() {
        return icmp_error_to_node(ctx, pkt, stats);
    }
    let Ok(reply) = conntrack::flow_key(pkt) else {
        // A later fragment of a datagram we did not see start: not ours.
        return Verdict::Pass;
    };
    let Some(orig) = SNAT_REV.get_ptr(&reply) else {
        return Verdict::Pass; // the node's own traffic
    };
    // SAFETY: valid map value pointer; CtKey is plain data.
    let orig = unsafe { *orig };
    if orig.src_ip == cfg.node_ip {
        return Verdict::Pass; // a host connection's identity entry
    }
    if let Some(ct) = conntrack::lookup(&orig) {
        conntrack::seen_reply(ct, pkt);
    }
    if nat::rev_snat(ctx, pkt, &reply, &orig).is_err() {
        return Verdict::Drop(dataplane_common::DropReason::MalformedL4);
    }
    stats.rev_snat += 1;
    deliver::to_pod(ctx, cfg, &orig.src_ip)
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
    let Some(orig) = SNAT_REV.get_ptr(&quoted.reversed()) else {
        return Verdict::Pass;
    };
    // SAFETY: valid map value pointer; CtKey is plain data.
    let orig = unsafe { *orig };
    if orig.src_ip == cfg.node_ip {
        return Verdict::Pass;
    }
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
        return Verdict::Drop(dataplane_common::DropReason::MalformedL4);
    }
    stats.icmp_error_xlated += 1;
    stats.rev_snat += 1;
    deliver::to_pod(ctx, cfg, &orig.src_ip)
}
