//! The last stage: count the verdict, record it in `cb` (see
//! `dataplane_common::verdict`) and turn it into a TC action.

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    verdict::{
        CB_MAGIC, CB_MAGIC_VALUE, CB_REASON, CB_TARGET_IFINDEX, CB_VERDICT, REDIRECT_DECIDED,
        VERDICT_DROP, VERDICT_PASS, VERDICT_REDIRECT,
    },
    DropReason, Stats,
};

use crate::skb;

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
    /// TC_ACT_SHOT for a packet that is not lost: held, or re-injected as
    /// a copy (`frags`).
    Consumed,
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

    /// The same verdict, a redirect marked final (`REDIRECT_DECIDED`): the
    /// `to_eni` it reaches passes it untouched.
    #[inline(always)]
    pub fn decided(self) -> Self {
        match self {
            Verdict::Redirect { ifindex, how } => Verdict::Redirect {
                ifindex,
                how: how | REDIRECT_DECIDED,
            },
            other => other,
        }
    }
}

#[inline(always)]
pub fn apply(ctx: &mut TcContext, stats: &mut Stats, verdict: Verdict) -> i32 {
    match verdict {
        Verdict::Pass => {
            stats.pass += 1;
            record(ctx, VERDICT_PASS, 0, 0);
            TC_ACT_OK
        }
        Verdict::Redirect { ifindex, how } => {
            stats.redirect += 1;
            record(ctx, VERDICT_REDIRECT, ifindex, how);
            TC_ACT_REDIRECT
        }
        Verdict::Drop(reason) => {
            stats.count_drop(reason);
            record(ctx, VERDICT_DROP, 0, reason as u32);
            TC_ACT_SHOT
        }
        Verdict::Consumed => {
            stats.consumed += 1;
            TC_ACT_SHOT
        }
    }
}

/// Writes the record into `cb[0..3]`, a word at a time (see `skb::set_cb`).
#[inline(always)]
fn record(ctx: &mut TcContext, verdict: u32, ifindex: u32, reason: u32) {
    skb::set_cb::<CB_VERDICT>(ctx, verdict);
    skb::set_cb::<CB_TARGET_IFINDEX>(ctx, ifindex);
    skb::set_cb::<CB_REASON>(ctx, reason);
    skb::set_cb::<CB_MAGIC>(ctx, CB_MAGIC_VALUE);
}

/// Whether one of our programs redirected the packet here, rather than the
/// host stack routing it (a record that went through the stack would have
/// been zeroed).
#[inline(always)]
pub fn redirected_by_us(ctx: &TcContext) -> bool {
    skb::cb::<CB_MAGIC>(ctx) == CB_MAGIC_VALUE && skb::cb::<CB_VERDICT>(ctx) == VERDICT_REDIRECT
}

/// Whether `from_pod` redirected the packet here with its decision final
/// (see `Verdict::decided`).
#[inline(always)]
pub fn decided_upstream(ctx: &TcContext) -> bool {
    redirected_by_us(ctx) && skb::cb::<CB_REASON>(ctx) & REDIRECT_DECIDED != 0
}

/// Whether the packet was put into this pod's host veth by our own ingress
/// program (a record that went through the stack would have been zeroed).
#[inline(always)]
pub fn delivered_by_us(ctx: &TcContext) -> bool {
    skb::cb::<CB_MAGIC>(ctx) == CB_MAGIC_VALUE
        && skb::cb::<CB_VERDICT>(ctx) == VERDICT_REDIRECT
        && skb::cb::<CB_REASON>(ctx) == dataplane_common::verdict::REDIRECT_POD_VETH
}
