//! The last stage: count the verdict, record it in `cb` (see
//! `dataplane_common::verdict`) and turn it into a TC action.

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    verdict::{CB_REASON, CB_TARGET_IFINDEX, CB_VERDICT, VERDICT_DROP, VERDICT_PASS},
    DropReason, Stats,
};

pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;

pub enum Verdict {
    /// Hand the packet to the kernel stack.
    Pass,
    /// Drop it and count why.
    Drop(DropReason),
}

#[inline(always)]
pub fn apply(ctx: &mut TcContext, stats: &mut Stats, verdict: Verdict) -> i32 {
    let cb = ctx.cb_mut();
    match verdict {
        Verdict::Pass => {
            stats.pass += 1;
            record(cb, VERDICT_PASS, 0, 0);
            TC_ACT_OK
        }
        Verdict::Drop(reason) => {
            stats.count_drop(reason);
            record(cb, VERDICT_DROP, 0, reason as u32);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn record(cb: &mut [u32], verdict: u32, ifindex: u32, reason: u32) {
    if cb.len() > CB_REASON {
        cb[CB_VERDICT] = verdict;
        cb[CB_TARGET_IFINDEX] = ifindex;
        cb[CB_REASON] = reason;
    }
}
