//! `to_eni` (TC egress of every ENI): SNAT of pod traffic leaving the VPC,
//! recording of the node's own connections so SNAT never takes their
//! ports, and of pod flows the host stack routed here (a Service whose
//! backend is elsewhere) so that their replies go back through it.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::TcContext};
use dataplane_common::{
    conntrack::{CT_F_SNAT, CT_F_VIA_STACK, TCP_ACK, TCP_SYN},
    Config, CtKey, DropReason, Ipv4, PodEntry, Stats,
};

use crate::{
    conntrack, deliver,
    headers::{ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    maps::{self, Inserted, SNAT_REV},
    nat::{self, ErrorDirection},
    parse::{self, Fragment, Parsed},
    policy::{snat_needed, strict_branch},
    skb,
    verdict::{redirected_by_us, Verdict},
};

#[inline(always)]
pub fn run(ctx: &mut TcContext, pkt: &Parsed, stats: &mut Stats) -> Verdict {
    let Some(cfg) = maps::config() else {
        return Verdict::Pass;
    };
    // The host stack has no routes to pods: what it sends to one (probes,
    // NodePort after kube-proxy's DNAT) leaves by the default route and is
    // turned into the pod here. Strict branch pods are reached through
    // the VPC and their branch ENI instead.
    if let Some(pod) = maps::pod(&pkt.dst) {
        if !strict_branch(cfg, &pod) {
            stats.steer_pod += 1;
            return deliver::stack_into_pod(ctx, &pod);
        }
    }
    if pkt.src == cfg.node_ip {
        record_host_flow(pkt, cfg, stats);
        return Verdict::Pass;
    }
    // Fast path: an established translation is applied as it is, whatever
    // the maps say now (a VPC CIDR added later does not disturb the flow).
    if !pkt.is_icmp_error() {
        if let Ok(key) = conntrack::flow_key(pkt) {
            if let Some(ct) = conntrack::lookup(&key) {
                if ct.flags & CT_F_SNAT != 0 {
                    conntrack::seen_from_pod(ct, pkt);
                    let (nat_ip, nat_port) = (ct.nat_ip, ct.nat_port);
                    return translate(ctx, pkt, cfg, &key, nat_ip, nat_port, stats);
                }
                // Tracked untranslated (opened from outside, or through the
                // stack): its NAT decision was made at its first packet.
                // Counted once: not again after our own redirect to the
                // ENI that owns the pod's IP.
                if ct.flags & CT_F_VIA_STACK != 0 && !redirected_by_us(ctx) {
                    conntrack::seen_from_pod(ct, pkt);
                }
                return match maps::pod(&pkt.src) {
                    Some(pod) => steer_source(ctx, &pod),
                    None => Verdict::Pass,
                };
            }
        }
    }
    new_flow(ctx, pkt, cfg, stats)
}

/// Decides whether a packet without a translation needs one and creates it.
#[inline(always)]
fn new_flow(ctx: &mut TcContext, pkt: &Parsed, cfg: &Config, stats: &mut Stats) -> Verdict {
    let Some(pod) = maps::pod(&pkt.src) else {
        return Verdict::Pass;
    };
    if !snat_needed(cfg, &pod, pkt.dst) {
        if !redirected_by_us(ctx) {
            if let Err(reason) = note_via_stack(pkt, stats) {
                return Verdict::Drop(reason);
            }
        }
        return steer_source(ctx, &pod);
    }
    if pkt.is_icmp_error() {
        return icmp_error_from_pod(ctx, pkt, cfg, stats);
    }
    // A later fragment gets here only when its first fragment was not seen.
    let key = match conntrack::flow_key(pkt) {
        Ok(k) if pkt.fragment != Fragment::Later => k,
        Ok(_) => return Verdict::Drop(DropReason::FragUnknown),
        Err(reason) => return Verdict::Drop(reason),
    };
    let mapping = if has_ports(pkt) {
        nat::allocate(cfg, &key, stats)
    } else {
        nat::allocate_address_only(cfg, &key, stats)
    };
    match mapping {
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

/// A pod's new flow that the host stack routed out of an ENI (`from_pod`
/// hands Service traffic to the stack; kube-proxy DNATed it to a backend
/// elsewhere in the VPC): tracked "via stack", so that `from_eni` gives
/// the backend's replies to the stack to be un-DNATed instead of putting
/// them straight into the pod. A full table refuses the flow.
#[inline(always)]
fn note_via_stack(pkt: &Parsed, stats: &mut Stats) -> Result<(), DropReason> {
    if !conntrack::opens_flow(pkt) {
        return Ok(());
    }
    if let Ok(key) = conntrack::flow_key(pkt) {
        if conntrack::start(&key, CT_F_VIA_STACK, pkt)? {
            stats.via_stack_new += 1;
        }
    }
    Ok(())
}

/// SNATed packets must leave the ENI that owns the node IP.
#[inline(always)]
fn leave_primary(ctx: &TcContext, cfg: &Config) -> Verdict {
    if skb::ifindex(ctx) == cfg.primary_eni_ifindex {
        Verdict::Pass
    } else {
        deliver::out_of_eni(cfg.primary_eni_ifindex)
    }
}

/// A pod's packet the host stack routed out of an ENI other than the one
/// owning its IP: the VPC's source/destination check would drop it there.
/// (This replaces every `from <pod> lookup <table>` rule.)
#[inline(always)]
fn steer_source(ctx: &TcContext, pod: &PodEntry) -> Verdict {
    let here = skb::ifindex(ctx);
    if pod.vlan_id != 0 || pod.eni_ifindex == here || pod.eni_ifindex == 0 {
        return Verdict::Pass;
    }
    deliver::out_of_eni(pod.eni_ifindex)
}

/// TCP, UDP and ICMP echo get a port (or id) mapping; other protocols
/// (SCTP, GRE, ESP, ICMP other than echo) are translated address-only, as
/// netfilter's SNAT does, so one pod at a time talks that protocol to a
/// given destination through the node IP.
#[inline(always)]
fn has_ports(pkt: &Parsed) -> bool {
    match pkt.proto {
        IPPROTO_TCP | IPPROTO_UDP => true,
        IPPROTO_ICMP => pkt.icmp_type == ICMP_ECHO_REQUEST,
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
    if ct.flags & CT_F_SNAT == 0 {
        // About a flow the stack translated (via stack): the stack has
        // already made the error match what the remote end sent.
        return Verdict::Pass;
    }
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

/// A new connection of the node itself (TCP SYN, UDP, echo request) is entered in
/// `SNAT_REV` as an identity mapping, so port allocation skips its port
/// towards that destination.
#[inline(always)]
fn record_host_flow(pkt: &Parsed, cfg: &Config, stats: &mut Stats) {
    // Echo requests too: a pod's echo mapping must not take the id of the
    // node's own ping, or it would get its replies.
    let new_flow = match pkt.proto {
        IPPROTO_TCP => pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        IPPROTO_UDP => pkt.fragment != Fragment::Later,
        IPPROTO_ICMP => pkt.fragment == Fragment::None && pkt.icmp_type == ICMP_ECHO_REQUEST,
        _ => false,
    };
    if !new_flow {
        return;
    }
    let orig = CtKey::new(pkt.src, pkt.dst, pkt.src_port, pkt.dst_port, pkt.proto);
    let reply = nat::reply_key(&orig, cfg.node_ip, pkt.src_port);
    match maps::snat_orig(&reply) {
        None => match Inserted::of(SNAT_REV.insert(reply, orig, BPF_NOEXIST as u64)) {
            Inserted::New => stats.host_flow += 1,
            Inserted::Exists => {}
            // The node's own traffic is never refused; unrecorded, its port
            // may be handed to a pod's flow (then `host_port_conflict`).
            Inserted::Full => stats.host_flow_untracked += 1,
        },
        Some(existing) => {
            if existing.src_ip != cfg.node_ip {
                stats.host_port_conflict += 1;
            }
        }
    }
}
