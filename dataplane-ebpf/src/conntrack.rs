//! Conntrack stage: flow keys and the `CT` entry of a flow.

use aya_ebpf::bindings::BPF_NOEXIST;
use dataplane_common::{
    conntrack::{CT_F_OPENED_BY_PEER, CT_STATE_NEW, TCP_ACK, TCP_SYN},
    flow_state, CtEntry, CtKey, DropReason,
};

use crate::{
    headers::{ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    maps::{self, Inserted, CT},
    parse::{Fragment, Parsed},
};

/// The packet's flow key in the direction it travels; a later fragment's
/// carries its first fragment's ports (`frags::track` found them), and
/// without them it has none.
#[inline(always)]
pub fn flow_key(pkt: &Parsed) -> Result<CtKey, DropReason> {
    if !pkt.ports_known {
        return Err(DropReason::FragUnknown);
    }
    Ok(CtKey::new(
        pkt.src,
        pkt.dst,
        pkt.src_port,
        pkt.dst_port,
        pkt.proto,
    ))
}

pub use crate::skb::now;

/// The first packet of a flow: TCP SYN, an ICMP echo request, any UDP.
#[inline(always)]
pub fn opens_flow(pkt: &Parsed) -> bool {
    if pkt.fragment == Fragment::Later {
        return false;
    }
    match pkt.proto {
        IPPROTO_TCP => pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        IPPROTO_UDP => true,
        IPPROTO_ICMP => pkt.icmp_type == ICMP_ECHO_REQUEST,
        _ => false,
    }
}

/// Starts tracking flow `key` untranslated (`flags` say how its packets
/// go) with `pkt`, its first packet. Entries are keyed from the pod's side
/// whoever opened the flow; "orig" counts the opener's packets and "reply"
/// the answerer's, so the first answer makes the flow established.
/// `Ok(false)` if the flow was already tracked; `CtFull` if the table
/// has no room: the packet is then dropped, as netfilter drops a new flow
/// it cannot track (untracked, its replies would miss the way back).
#[inline(always)]
pub fn start(key: &CtKey, flags: u8, pkt: &Parsed) -> Result<bool, DropReason> {
    let t = now();
    let entry = CtEntry {
        created_ns: t,
        last_seen_ns: t,
        packets_orig: 1,
        bytes_orig: pkt.ip_len as u64,
        state: CT_STATE_NEW,
        flags,
        ..CtEntry::default()
    };
    match Inserted::of(CT.insert(*key, entry, BPF_NOEXIST as u64)) {
        Inserted::New => Ok(true),
        Inserted::Exists => Ok(false),
        Inserted::Full => Err(DropReason::CtFull),
    }
}

/// The flow's entry, if tracked.
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<&'static mut CtEntry> {
    maps::ct_mut(key)
}

/// Accounts a packet the pod sent on a tracked flow.
#[inline(always)]
pub fn seen_from_pod(ct: &mut CtEntry, pkt: &Parsed) {
    let reply = ct.flags & CT_F_OPENED_BY_PEER != 0;
    seen(ct, pkt, reply);
}

/// Accounts a packet sent to the pod on a tracked flow.
#[inline(always)]
pub fn seen_to_pod(ct: &mut CtEntry, pkt: &Parsed) {
    let reply = ct.flags & CT_F_OPENED_BY_PEER == 0;
    seen(ct, pkt, reply);
}

/// Accounts a packet of the opener's (`reply` false) or the answerer's
/// direction.
#[inline(always)]
fn seen(ct: &mut CtEntry, pkt: &Parsed, reply: bool) {
    touch(ct);
    if reply {
        ct.packets_reply += 1;
        ct.bytes_reply += pkt.ip_len as u64;
    } else {
        ct.packets_orig += 1;
        ct.bytes_orig += pkt.ip_len as u64;
    }
    advance(ct, pkt, reply);
}

/// Updates last-seen only when the coarse clock has moved, so that most
/// packets do not write that word.
#[inline(always)]
fn touch(ct: &mut CtEntry) {
    let t = now();
    if ct.last_seen_ns != t {
        ct.last_seen_ns = t;
    }
}

/// Moves the flow's state as netfilter's state machine would (see
/// `dataplane_common::flow_state`); writes only what changes.
#[inline(always)]
fn advance(ct: &mut CtEntry, pkt: &Parsed, reply: bool) {
    let (state, flags) = match pkt.proto {
        IPPROTO_TCP => flow_state::tcp_next(ct.state, ct.flags, pkt.tcp_flags, reply),
        IPPROTO_UDP => (
            flow_state::udp_next(ct.state, reply, ct.last_seen_ns.wrapping_sub(ct.created_ns)),
            ct.flags,
        ),
        _ => (flow_state::other_next(ct.state, reply), ct.flags),
    };
    if state != ct.state {
        if state == CT_STATE_NEW {
            // Reopened: the new connection's age counts from now.
            ct.created_ns = ct.last_seen_ns;
        }
        ct.state = state;
    }
    if flags != ct.flags {
        ct.flags = flags;
    }
}
