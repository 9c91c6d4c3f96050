//! Fragment stage. Only a datagram's first fragment carries its ports:
//! each hook remembers them in `FRAG_PORTS` for the later fragments, and
//! removes the entry once the datagram has passed whole.
//!
//! Netfilter reassembles before it translates, so under aws-node a
//! datagram's fragments may come in any order. A TC program cannot wait
//! for a packet; `from_eni` instead holds a later fragment that comes
//! before its first (a copy in `FRAG_HELD`), and when the first comes it
//! re-injects the first and every held fragment into the ENI's ingress.
//! They then pass `from_eni` again like fragments in order, to wherever
//! their flow goes (a pod, the stack), since `FRAG_PORTS` knows their
//! ports by then.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::TcContext};
use dataplane_common::{
    fragments::{FragEntry, FragKey, HeldKey, HELD_SLOTS},
    Hook, Stats,
};

use crate::{
    maps::{self, FRAG_HELD, FRAG_PORTS},
    parse::{Fragment, Parsed},
    skb,
};

#[inline(always)]
fn key(pkt: &Parsed, hook: Hook) -> FragKey {
    FragKey::new(pkt.src, pkt.dst, pkt.ip_id, pkt.proto, hook)
}

/// Records a first fragment's ports at `hook`, or gives a later fragment
/// those of its first (`pkt.ports_known`); counts the datagram's bytes and
/// removes its entry once they are all through.
#[inline(always)]
pub fn track(pkt: &mut Parsed, hook: Hook, stats: &mut Stats) {
    match pkt.fragment {
        Fragment::None => {}
        Fragment::First => {
            let entry = FragEntry {
                src_port: pkt.src_port,
                dst_port: pkt.dst_port,
                seen: pkt.ip_payload_len(),
                total: 0,
                created_ns: skb::now(),
            };
            // Any earlier entry is an older datagram's with the same id.
            // Best effort: without an entry the later fragments are
            // unknown, as they would be had this one been lost.
            let _ = FRAG_PORTS.insert(key(pkt, hook), entry, 0);
        }
        Fragment::Later => {
            let k = key(pkt, hook);
            let Some(entry) = maps::frag_entry(&k) else {
                return;
            };
            pkt.src_port = entry.src_port;
            pkt.dst_port = entry.dst_port;
            pkt.ports_known = true;
            if entry.count(pkt.frag_offset, pkt.ip_payload_len(), pkt.more_fragments) {
                let _ = FRAG_PORTS.remove(&k);
                stats.frag_done += 1;
            }
        }
    }
}

/// A later fragment at `from_eni` whose first has not come: held, to be
/// re-injected with it (`true`: the packet is consumed). `false` when it
/// cannot be held (too large, or all of its datagram's slots taken).
#[inline(always)]
pub fn hold(ctx: &mut TcContext, pkt: &Parsed, stats: &mut Stats) -> bool {
    let Some(scratch) = maps::frag_scratch() else {
        return false;
    };
    let Some(len) = skb::copy_frame(ctx, &mut scratch.frame) else {
        stats.frag_unheld += 1;
        return false;
    };
    scratch.len = len;
    scratch.held_ns = skb::now();
    let frag = key(pkt, Hook::FromEni);
    for slot in 0..HELD_SLOTS {
        let k = HeldKey { frag, slot };
        // Looked up first: cheaper than an insert refused because the
        // slot is taken.
        if maps::held(&k).is_some() {
            continue;
        }
        if FRAG_HELD.insert(&k, &*scratch, BPF_NOEXIST as u64).is_err() {
            continue;
        }
        stats.frag_held += 1;
        // The first fragment may have come on another CPU after this one
        // missed its entry, and looked for held fragments before this was
        // held: then this one takes itself back and goes round again, now
        // known. Removal is the claim: if the first's CPU removed it, that
        // CPU re-injects it.
        if maps::frag_entry(&frag).is_some() && FRAG_HELD.remove(&k).is_ok() {
            let ifindex = skb::ifindex(ctx);
            if skb::reinject(ctx, ifindex) {
                stats.frag_reinjected += 1;
            }
        }
        return true;
    }
    stats.frag_unheld += 1;
    false
}

/// A first fragment at `from_eni` with fragments held for it: it and each
/// held one are re-injected (`true`: this copy is consumed). `FRAG_PORTS`
/// already has the first's ports (`track` ran), so all of them pass
/// `from_eni` again as known fragments.
#[inline(always)]
pub fn release_held(ctx: &mut TcContext, pkt: &Parsed, stats: &mut Stats) -> bool {
    let frag = key(pkt, Hook::FromEni);
    if !any_held(&frag) {
        return false;
    }
    let ifindex = skb::ifindex(ctx);
    // The first goes ahead of the others through the same backlog.
    if !skb::reinject(ctx, ifindex) {
        // Handled here then; the held ones age out.
        return false;
    }
    for slot in 0..HELD_SLOTS {
        let k = HeldKey { frag, slot };
        let Some(held) = maps::held(&k) else {
            continue;
        };
        if !skb::replace_frame(ctx, &held.frame, held.len) {
            // The packet is now neither frame; the rest age out.
            break;
        }
        // Removal is the claim (see `hold`).
        if FRAG_HELD.remove(&k).is_ok() && skb::reinject(ctx, ifindex) {
            stats.frag_reinjected += 1;
        }
    }
    true
}

#[inline(always)]
fn any_held(frag: &FragKey) -> bool {
    for slot in 0..HELD_SLOTS {
        if maps::held(&HeldKey { frag: *frag, slot }).is_some() {
            return true;
        }
    }
    false
}
