//! `from_pod` (TC ingress of each pod's host veth): everything a pod sends
//! is steered here, without the host's routing tables.
//!
//! - a source address that is not the sending pod's → dropped, before any
//!   flow state is looked up or written (anti-spoofing);
//! - replies of flows that came in through the host stack → the stack;
//! - replies of flows opened from outside the VPC → out untranslated;
//! - strict branch pods → tagged out of the trunk, whatever the destination;
//! - service CIDRs and node-local addresses → the stack (kube-proxy);
//! - a pod on this node → straight into it;
//! - anything else → out of the ENI that owns the pod's IP (the primary ENI
//!   when SNAT applies: an established flow is translated here, a new one
//!   by `to_eni`); standard-mode branch pods out of the trunk unless SNATed.
//!
//! What leaves by an ENI with nothing left to decide is marked final
//! (`Verdict::decided`) so that the ENI's `to_eni` passes it without a
//! look: a pod's own untranslated traffic, and an established SNAT flow,
//! which is translated here, with the one `CT` lookup this direction
//! needs. A new SNAT flow, an ICMP error and a fragment still go through
//! `to_eni`, as does everything the stack routes.

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    config::CFG_F_ADOPTING,
    conntrack::{CT_F_INBOUND, CT_F_SNAT, CT_F_VIA_STACK},
    Config, CtKey, DropReason, Ipv4, PodEntry, Stats,
};

use crate::{
    conntrack, deliver, maps, nat,
    parse::{self, Fragment, Parsed},
    policy::{snat_needed, strict_branch},
    skb,
    verdict::Verdict,
};

/// Where a pod's packet goes. A struct with every field always set, not an
/// enum with payloads: the verifier rejects the partially-undefined
/// registers the compiler makes of the latter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Stack,
    /// Tagged out of the trunk (branch pods): `pod` is the sender.
    Trunk,
    /// Into another pod on this node: `pod` is the destination.
    Pod,
    /// Out of ENI `ifindex` towards its gateway.
    Eni,
}

struct Target {
    via: Via,
    pod: PodEntry,
    ifindex: u32,
    /// Nothing is left for `to_eni` to do (see the module comment).
    decided: bool,
    /// Translate the source to `nat_ip:nat_port` here (an established
    /// SNAT flow).
    snat: bool,
    nat_ip: Ipv4,
    nat_port: u16,
}

impl Target {
    #[inline(always)]
    fn new(via: Via, pod: PodEntry, ifindex: u32) -> Self {
        Self {
            via,
            pod,
            ifindex,
            decided: false,
            snat: false,
            nat_ip: [0; 4],
            nat_port: 0,
        }
    }

    /// Out of an ENI with its source as it is: final.
    #[inline(always)]
    fn eni_untranslated(pod: PodEntry, ifindex: u32) -> Self {
        Self {
            decided: true,
            ..Self::new(Via::Eni, pod, ifindex)
        }
    }

    /// Translated here and out of the primary ENI: final.
    #[inline(always)]
    fn eni_snat(pod: PodEntry, ifindex: u32, nat_ip: Ipv4, nat_port: u16) -> Self {
        Self {
            decided: true,
            snat: true,
            nat_ip,
            nat_port,
            ..Self::new(Via::Eni, pod, ifindex)
        }
    }

    #[inline(always)]
    fn stack() -> Self {
        Self::new(Via::Stack, PodEntry::default(), 0)
    }
}

/// The smallest MTU an ENI has (EC2: 1500, 9001 within a VPC).
const MIN_ENI_MTU: u16 = 1500;

#[inline(always)]
pub fn run(ctx: &mut TcContext, pkt: &Parsed, stats: &mut Stats) -> Verdict {
    let Some(cfg) = maps::config() else {
        return Verdict::Pass;
    };
    let pod = match sender(ctx, pkt) {
        Sender::Pod(pod) => pod,
        // Mid-migration: the legacy plumbing still carries this veth.
        Sender::Unknown if cfg.flags & CFG_F_ADOPTING != 0 => return Verdict::Pass,
        Sender::Unknown | Sender::Spoofed => return Verdict::Drop(DropReason::Spoofed),
    };
    let t = if pkt.is_icmp_error() && about_via_stack(ctx, pkt) {
        Target::stack()
    } else {
        decide(ctx, cfg, pkt, pod)
    };
    // Larger than the ENI's MTU (pod MTU 9001 behind a 1500 ENI): the stack
    // fragments it, or answers frag-needed when DF is set, as it does for
    // what it routes itself. Checked before our hop takes a TTL off.
    // Every ENI carries at least 1500 bytes: only larger (or GSO) packets
    // pay for the helper, and only once (`decide` has asked it already for
    // an established SNAT flow it translates here).
    if t.via == Via::Eni && !t.snat && pkt.ip_len > MIN_ENI_MTU && !skb::fits_mtu(ctx, t.ifindex) {
        stats.to_stack_mtu += 1;
        return Verdict::Pass;
    }
    if t.via == Via::Stack || !deliver::hop(ctx, pkt.l3_off) {
        stats.to_stack += 1;
        return Verdict::Pass;
    }
    match t.via {
        Via::Stack => Verdict::Pass,
        Via::Trunk => {
            stats.vlan_push += 1;
            deliver::to_trunk(ctx, &t.pod)
        }
        Via::Pod => {
            stats.steer_pod += 1;
            deliver::into_pod(ctx, cfg, &t.pod)
        }
        Via::Eni => {
            stats.steer_eni += 1;
            // An ENI we do not know: the stack routes the packet, as it
            // would have come, untranslated.
            let Some(eni) = maps::eni(t.ifindex) else {
                return Verdict::Pass;
            };
            if t.snat {
                let Ok(key) = conntrack::flow_key(pkt) else {
                    return Verdict::Drop(DropReason::FragUnknown);
                };
                if nat::snat(ctx, pkt, &key, t.nat_ip, t.nat_port).is_err() {
                    return Verdict::Drop(DropReason::MalformedL4);
                }
                stats.snat += 1;
            }
            let v = deliver::out_of(t.ifindex, &eni);
            if t.decided {
                v.decided()
            } else {
                v
            }
        }
    }
}

/// Who sent a packet that arrived on a pod's veth.
enum Sender {
    /// The pod its source address was given to, from that pod's own veth.
    Pod(PodEntry),
    /// Another pod's address: it would take that pod's replies, its SNAT
    /// ports or, for a strict branch pod, its security groups.
    Spoofed,
    /// An address no pod has (the node's, one never given out).
    Unknown,
}

/// The sender check. Nothing but `CONFIG` and `PODS` is read before it
/// holds, so a spoofed packet cannot create, refresh or close a flow.
#[inline(always)]
fn sender(ctx: &TcContext, pkt: &Parsed) -> Sender {
    match maps::pod(&pkt.src) {
        Some(pod) if pod.host_ifindex == skb::ifindex(ctx) => Sender::Pod(pod),
        Some(_) => Sender::Spoofed,
        None => Sender::Unknown,
    }
}

/// Whether the pod's ICMP error is about a packet the stack delivered (a
/// NodePort's UDP datagram to a closed port): the stack must translate it
/// back, as it translated the packet it quotes.
#[inline(always)]
fn about_via_stack(ctx: &TcContext, pkt: &Parsed) -> bool {
    let Some(q) = parse::parse_quoted(ctx, pkt) else {
        return false;
    };
    // The quoted packet came to the pod: its reverse is the pod-side key.
    let pod_side = CtKey::new(q.dst, q.src, q.dst_port, q.src_port, q.proto);
    matches!(conntrack::lookup(&pod_side), Some(ct) if ct.flags & CT_F_VIA_STACK != 0)
}

#[inline(always)]
fn decide(ctx: &TcContext, cfg: &Config, pkt: &Parsed, pod: PodEntry) -> Target {
    if let Ok(key) = conntrack::flow_key(pkt) {
        if let Some(ct) = conntrack::lookup(&key) {
            if ct.flags & CT_F_VIA_STACK != 0 {
                conntrack::seen_from_pod(ct, pkt);
                return Target::stack();
            }
            if ct.flags & CT_F_SNAT != 0 {
                let primary = cfg.primary_eni_ifindex;
                // Translated here only when it leaves by us whole; an
                // ICMP error, a fragment, or a packet the stack must
                // fragment first is left to `to_eni`, which accounts it.
                if pkt.is_icmp_error()
                    || pkt.fragment != Fragment::None
                    || (pkt.ip_len > MIN_ENI_MTU && !skb::fits_mtu(ctx, primary))
                {
                    return Target::new(Via::Eni, pod, primary);
                }
                conntrack::seen_from_pod(ct, pkt);
                return Target::eni_snat(pod, primary, ct.nat_ip, ct.nat_port);
            }
            if ct.flags & CT_F_INBOUND != 0 {
                // Opened from outside the VPC: answered untranslated.
                conntrack::seen_from_pod(ct, pkt);
                return untranslated(pod);
            }
        }
    }
    if strict_branch(cfg, &pod) {
        return Target::new(Via::Trunk, pod, 0);
    }
    if pkt.dst == cfg.node_ip || maps::pass_to_stack(pkt.dst) {
        return Target::stack();
    }
    if let Some(dst) = maps::pod(&pkt.dst) {
        // A strict branch pod is reached only through its branch ENI.
        if !strict_branch(cfg, &dst) {
            return Target::new(Via::Pod, dst, 0);
        }
    }
    if snat_needed(cfg, &pod, pkt.dst) {
        Target::new(Via::Eni, pod, cfg.primary_eni_ifindex)
    } else {
        untranslated(pod)
    }
}

/// Where a pod's packet leaves when it keeps its own source address: the
/// trunk for a (standard-mode) branch pod, else the ENI that owns its IP.
#[inline(always)]
fn untranslated(pod: PodEntry) -> Target {
    if pod.vlan_id != 0 {
        Target::new(Via::Trunk, pod, 0)
    } else {
        Target::eni_untranslated(pod, pod.eni_ifindex)
    }
}
