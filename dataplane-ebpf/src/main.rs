//! trunkline's kernel side: four TC programs driven by maps the agent fills.
//!
//! Every program is the same pipeline, `parse` → (later: `conntrack` → `nat`
//! → `steer`) → `verdict`, over the packet it sees at its hook. This object is
//! built only by `cargo xtask build-ebpf` (target bpfel-unknown-none).
#![no_std]
#![no_main]

mod headers;
mod maps;
mod parse;
mod stats;
mod verdict;

use aya_ebpf::{macros::classifier, programs::TcContext};
use dataplane_common::Hook;

use crate::{parse::Parsed, verdict::Verdict};

/// TC ingress of each pod's host veth: everything a pod sends.
#[classifier]
pub fn from_pod(mut ctx: TcContext) -> i32 {
    run(&mut ctx, Hook::FromPod)
}

/// TC egress of every ENI.
#[classifier]
pub fn to_eni(mut ctx: TcContext) -> i32 {
    run(&mut ctx, Hook::ToEni)
}

/// TC ingress of every ENI.
#[classifier]
pub fn from_eni(mut ctx: TcContext) -> i32 {
    run(&mut ctx, Hook::FromEni)
}

/// TC egress of each pod's host veth: what the host stack delivers to a pod.
#[classifier]
pub fn to_pod(mut ctx: TcContext) -> i32 {
    run(&mut ctx, Hook::ToPod)
}

#[inline(always)]
fn run(ctx: &mut TcContext, hook: Hook) -> i32 {
    let Some(stats) = stats::slot(hook) else {
        // The per-CPU slot of an array always exists; never reached.
        return verdict::TC_ACT_OK;
    };
    let verdict = match parse::parse(ctx) {
        Ok(pkt) => {
            stats::count_parsed(stats, &pkt);
            decide(&pkt)
        }
        Err(parse::ParseError::NotIpv4) => {
            stats.non_ipv4 += 1;
            Verdict::Pass
        }
        Err(parse::ParseError::Malformed(reason)) => Verdict::Drop(reason),
    };
    verdict::apply(ctx, stats, verdict)
}

/// The translation and steering stages plug in here; until they do, every
/// well-formed IPv4 packet goes to the kernel stack.
#[inline(always)]
fn decide(_pkt: &Parsed) -> Verdict {
    Verdict::Pass
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // BPF programs cannot unwind; the verifier rejects any reachable panic.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
