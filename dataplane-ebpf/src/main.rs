//! trunkline's kernel side: four TC programs driven by maps the agent fills.
//!
//! Every program has the same shape (`run` below): one shared `parse` of
//! the packet and `frags` (a later fragment's ports), then the decision of its hook (`from_pod`, `to_eni`,
//! `from_eni`, `to_pod`, one file each), which calls the shared stages
//! (`conntrack`, `nat`, `policy`, `deliver`), then one shared `verdict`
//! that counts, records and returns the TC action. The maps and their
//! typed accessors are in `maps`.
//!
//! `unsafe` lives in three modules only: `parse` (the one bounds check
//! before packet access), `maps` (reading map values) and `skb` (context
//! fields and kernel helpers). Everything else is safe Rust.
//!
//! Built for bpfel-unknown-none by the agent's build script and by
//! `cargo xtask build-ebpf` (both through `ebpf-build`).
#![no_std]
// Inline assembly on the BPF target (one masking instruction in `parse`).
#![feature(asm_experimental_arch)]
#![no_main]

// The three modules that may hold `unsafe`:
mod maps;
mod parse;
mod skb;

// Everything else is checked to hold none.
#[deny(unsafe_code)]
mod conntrack;
#[deny(unsafe_code)]
mod deliver;
#[deny(unsafe_code)]
mod frags;
#[deny(unsafe_code)]
mod from_eni;
#[deny(unsafe_code)]
mod from_pod;
#[deny(unsafe_code)]
mod headers;
#[deny(unsafe_code)]
mod nat;
#[deny(unsafe_code)]
mod policy;
#[deny(unsafe_code)]
mod stats;
#[deny(unsafe_code)]
mod to_eni;
#[deny(unsafe_code)]
mod to_pod;
#[deny(unsafe_code)]
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
    // `from_pod` decided (and translated) this packet: nothing to repeat.
    if hook == Hook::ToEni && verdict::decided_upstream(ctx) {
        stats.pass_decided += 1;
        return verdict::TC_ACT_OK;
    }
    let verdict = match parse::parse(ctx) {
        Ok(mut pkt) => {
            stats::count_parsed(stats, &pkt);
            frags::track(&mut pkt, hook, stats);
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
