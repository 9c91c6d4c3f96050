//! `to_eni` (TC egress of every ENI): SNAT of pod traffic leaving the VPC,
//! and recording of the node's own connections so SNAT never takes their
//! ports.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::TcContext};
use dataplane_common::{
    config::CFG_F_SG_STANDARD,
    conntrack::{CT_F_SNAT, TCP_ACK, TCP_SYN},
    node::POD_F_SNAT_EXEMPT,
    Config, CtKey, DropReason, Ipv4, PodEntry, SnatMode, Stats,
};

use crate::{
    conntrack, deliver,
    headers::{ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    maps::{self, PODS, SNAT_REV},
    nat::{self, ErrorDirection},
    parse::{self, Fragment, Parsed},
    verdict::Verdict,
};

#[inline(always)]
pub fn run(ctx: &mut TcContext, pkt: &Parsed, stats: &mut Stats) -> Verdict {
    let Some(cfg) = maps::config() else {
        return Verdict::Pass;
    };
    if cfg.primary_eni_ifindex == 0 {
        return Verdict::Pass; // not configured yet
    }
    if pkt.src == cfg.node_ip {
        record_host_flow(pkt, cfg, stats);
        return Verdict::Pass;
    }
    // Fast path: an established translation is applied as it is, whatever
    // the maps say now (a VPC CIDR added later does not disturb the flow).
    if translatable(pkt) {
        if let Ok(key) = conntrack::flow_key(pkt) {
            if let Some(ct) = conntrack::lookup(&key) {
                if ct.flags & CT_F_SNAT != 0 {
                    conntrack::seen_orig(ct, pkt);
                    let (nat_ip, nat_port) = (ct.nat_ip, ct.nat_port);
                    return translate(ctx, pkt, cfg, &key, nat_ip, nat_port, stats);
                }
            }
        }
    }
    new_flow(ctx, pkt, cfg, stats)
}

/// Decides whether a packet without a translation needs one and creates it.
#[inline(always)]
fn new_flow(ctx: &mut TcContext, pkt: &Parsed, cfg: &Config, stats: &mut Stats) -> Verdict {
    let Some(pod) = PODS.get_ptr(&pkt.src) else {
        return Verdict::Pass;
    };
    // SAFETY: valid map value pointer; PodEntry is plain data.
    let pod = unsafe { *pod };
    if !snat_applies(cfg, &pod, pkt) {
        return Verdict::Pass;
    }
    if pkt.is_icmp_error() {
        return icmp_error_from_pod(ctx, pkt, cfg, stats);
    }
    if !translatable(pkt) {
        return Verdict::Pass;
    }
    // A later fragment gets here only when its first fragment was not seen.
    let key = match conntrack::flow_key(pkt) {
        Ok(k) if pkt.fragment != Fragment::Later => k,
        Ok(_) => return Verdict::Drop(DropReason::FragUnknown),
        Err(reason) => return Verdict::Drop(reason),
    };
    match nat::allocate(cfg, &key, stats) {
        Ok(entry) => translate(ctx, pkt, cfg, &key, entry.nat_ip, entry.nat_port, stats),
        Err(reason) => Verdict::Drop(reason),
    }
}

#[inline(always)]
fn translate(
    ctx: &mut TcContext,
    pkt: &Parsed,
    cfg: &Config,
    key: &CtKey,
    nat_ip: Ipv4,
    nat_port: u16,
    stats: &mut Stats,
) -> Verdict {
    if nat::snat(ctx, pkt, key, nat_ip, nat_port).is_err() {
        return Verdict::Drop(DropReason::MalformedL4);
    }
    stats.snat += 1;
    leave_primary(ctx, cfg)
}

/// SNATed packets must leave the ENI that owns the node IP.
#[inline(always)]
fn leave_primary(ctx: &TcContext, cfg: &Config) -> Verdict {
    // SAFETY: reading a context field of this program's skb.
    let here = unsafe { (*ctx.skb.skb).ifindex };
    if here == cfg.primary_eni_ifindex {
        Verdict::Pass
    } else {
        deliver::out_of_eni(cfg.primary_eni_ifindex)
    }
}

/// SNAT applies to a local non-branch pod (or a branch pod in standard
/// security-group mode) talking to a destination outside `NO_SNAT`, unless
/// SNAT is external.
#[inline(always)]
fn snat_applies(cfg: &Config, pod: &PodEntry, pkt: &Parsed) -> bool {
    cfg.snat_mode() != Some(SnatMode::Off)
        && pod.flags & POD_F_SNAT_EXEMPT == 0
        && (pod.vlan_id == 0 || cfg.flags & CFG_F_SG_STANDARD != 0)
        && !maps::no_snat(pkt.dst)
}

/// TCP, UDP and ICMP echo requests get a mapping; anything else is passed
/// as it is (no ports to tell its flows apart on the way back).
#[inline(always)]
fn translatable(pkt: &Parsed) -> bool {
    match pkt.proto {
        IPPROTO_TCP | IPPROTO_UDP => true,
        IPPROTO_ICMP => pkt.fragment == Fragment::Later || pkt.icmp_type == ICMP_ECHO_REQUEST,
        _ => false,
    }
}

/// A pod's ICMP error about a reply it got on a SNATed flow (e.g. port
/// unreachable for a late UDP reply): it must leave from the node IP and
/// quote the packet as the remote end sent it.
#[inline(always)]
fn icmp_error_from_pod(
    ctx: &mut TcContext,
    pkt: &Parsed,
    cfg: &Config,
    stats: &mut Stats,
) -> Verdict {
    let Some(q) = parse::parse_quoted(ctx, pkt) else {
        return Verdict::Pass;
    };
    // The quoted packet is a reply: its reverse is the pod's original flow.
    let orig = CtKey::new(q.dst, q.src, q.dst_port, q.src_port, q.proto);
    let Some(ct) = conntrack::lookup(&orig) else {
        return Verdict::Pass;
    };
    let (nat_ip, nat_port) = (ct.nat_ip, ct.nat_port);
    if nat::icmp_error(
        ctx,
        pkt,
        &q,
        ErrorDirection::Outbound,
        nat_ip,
        orig.src_port,
        nat_port,
    )
    .is_err()
    {
        return Verdict::Drop(DropReason::MalformedL4);
    }
    stats.icmp_error_xlated += 1;
    stats.snat += 1;
    leave_primary(ctx, cfg)
}

/// A new connection of the node itself (TCP SYN, or UDP) is entered in
/// `SNAT_REV` as an identity mapping, so port allocation skips its port
/// towards that destination.
#[inline(always)]
fn record_host_flow(pkt: &Parsed, cfg: &Config, stats: &mut Stats) {
    let new_flow = match pkt.proto {
        IPPROTO_TCP => pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        IPPROTO_UDP => pkt.fragment != Fragment::Later,
        _ => false,
    };
    if !new_flow {
        return;
    }
    let orig = CtKey::new(pkt.src, pkt.dst, pkt.src_port, pkt.dst_port, pkt.proto);
    let reply = nat::reply_key(&orig, cfg.node_ip, pkt.src_port);
    match SNAT_REV.get_ptr(&reply) {
        None => {
            if SNAT_REV.insert(reply, orig, BPF_NOEXIST as u64).is_ok() {
                stats.host_flow += 1;
            }
        }
        Some(existing) => {
            // SAFETY: valid map value pointer; CtKey is plain data.
            if unsafe { (*existing).src_ip } != cfg.node_ip {
                stats.host_port_conflict += 1;
            }
        }
    }
}
