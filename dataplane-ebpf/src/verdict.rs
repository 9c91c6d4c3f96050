//! The last stage: count the verdict, record it in `cb` (see
//! `dataplane_common::verdict`) and turn it into a TC action.

use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use dataplane_common::{
    verdict::{
        CB_MAGIC, CB_MAGIC_VALUE, CB_REASON, CB_TARGET_IFINDEX, CB_VERDICT, VERDICT_DROP,
        VERDICT_PASS, VERDICT_REDIRECT,
    },
    DropReason, Stats,
};

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_REDIRECT: i32 = 7;

pub enum Verdict {
    /// Hand the packet to the kernel stack.
    Pass,
    /// A redirect helper accepted the packet for `ifindex`.
    Redirect { ifindex: u32, how: u32 },
    /// Drop it and count why.
    Drop(DropReason),
}

impl Verdict {
    /// The verdict for a redirect helper's return code: its TC_ACT_REDIRECT,
    /// or (a helper refused, e.g. bad ifindex) the stack as a fallback.
    #[inline(always)]
    pub fn redirect(rc: i64, ifindex: u32, how: u32) -> Self {
        if crate::deliver::redirect_ok(rc) {
            Verdict::Redirect { ifindex, how }
        } else {
            Verdict::Pass
        }
    }
}

#[inline(always)]
pub fn apply(ctx: &mut TcContext, stats: &mut Stats, verdict: Verdict) -> i32 {
    let skb = ctx.skb.skb;
    match verdict {
        Verdict::Pass => {
            stats.pass += 1;
            record(skb, VERDICT_PASS, 0, 0);
            TC_ACT_OK
        }
        Verdict::Redirect { ifindex, how } => {
            stats.redirect += 1;
            record(skb, VERDICT_REDIRECT, ifindex, how);
            TC_ACT_REDIRECT
        }
        Verdict::Drop(reason) => {
            stats.count_drop(reason);
            record(skb, VERDICT_DROP, 0, reason as u32);
            TC_ACT_SHOT
        }
    }
}

/// Writes the record into `cb[0..3]`. Each word is a separate volatile
/// store at a constant offset from the context pointer: the verifier
/// rejects context stores through a derived pointer, which is what the
/// compiler makes of a slice write.
#[inline(always)]
fn record(skb: *mut __sk_buff, verdict: u32, ifindex: u32, reason: u32) {
    // SAFETY: `skb` is this program's context; cb is writable from TC.
    unsafe {
        write_volatile(addr_of_mut!((*skb).cb[CB_VERDICT]), verdict);
        write_volatile(addr_of_mut!((*skb).cb[CB_TARGET_IFINDEX]), ifindex);
        write_volatile(addr_of_mut!((*skb).cb[CB_REASON]), reason);
        write_volatile(addr_of_mut!((*skb).cb[CB_MAGIC]), CB_MAGIC_VALUE);
    }
}

/// Whether the packet was put into this pod's host veth by our own ingress
/// program (a record that went through the stack would have been zeroed).
#[inline(always)]
pub fn delivered_by_us(ctx: &TcContext) -> bool {
    let skb = ctx.skb.skb;
    // SAFETY: reading this program's context.
    unsafe {
        (*skb).cb[CB_MAGIC] == CB_MAGIC_VALUE
            && (*skb).cb[CB_VERDICT] == VERDICT_REDIRECT
            && (*skb).cb[CB_REASON] == dataplane_common::verdict::REDIRECT_POD_VETH
    }
}
