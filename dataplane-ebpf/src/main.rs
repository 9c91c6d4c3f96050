//! trunkline's kernel side: four TC programs driven by maps the agent fills.
//!
//! Every program is the same pipeline, `parse` → (later: `conntrack` → `nat`
//! → `steer`) → `verdict`, over the packet it sees at its hook. This object is
//! built only by `cargo xtask build-ebpf` (target bpfel-unknown-none).
#![no_std]
// Inline assembly on the BPF target (one masking instruction in `parse`).
#![feature(asm_experimental_arch)]
#![no_main]

mod conntrack;
mod deliver;
mod from_eni;
mod from_pod;
mod headers;
mod maps;
mod nat;
mod parse;
mod policy;
mod stats;
mod to_eni;
mod to_pod;
mod verdict;

use aya_ebpf::{macros::classifier, programs::TcContext};
use dataplane_common::Hook;

use crate::verdict::Verdict;

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
            match hook {
                Hook::ToEni => to_eni::run(ctx, &pkt, stats),
                Hook::FromEni => from_eni::run(ctx, &pkt, stats),
                Hook::FromPod => from_pod::run(ctx, &pkt, stats),
                Hook::ToPod => to_pod::run(ctx, &pkt, stats),
            }
        }
        Err(parse::ParseError::NotIpv4) => {
            stats.non_ipv4 += 1;
            Verdict::Pass
        }
        Err(parse::ParseError::Malformed(reason)) => Verdict::Drop(reason),
    };
    verdict::apply(ctx, stats, verdict)
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
