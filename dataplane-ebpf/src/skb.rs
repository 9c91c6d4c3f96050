//! The data path's calls into the kernel, each behind a safe function: the
//! skb's context fields, the redirect and VLAN helpers, the clock and the
//! random source. With `parse` (packet bytes) and `maps` (map values) this
//! is one of the three places that hold `unsafe`; the stages and the
//! per-hook routes hold none.
//!
//! A helper that may move packet data (`vlan_push`, `vlan_pop`,
//! `pull`) takes the context by `&mut`, so no header reference obtained
//! before the call can still be alive after it.

use core::{
    ffi::c_void,
    ptr::{addr_of_mut, write_volatile},
};

use aya_ebpf::{
    bindings::bpf_redir_neigh,
    helpers::{
        bpf_check_mtu, bpf_clone_redirect, bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_loop,
        bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer, bpf_skb_change_tail,
        bpf_skb_change_type, bpf_skb_load_bytes, bpf_skb_store_bytes, bpf_skb_vlan_pop,
        bpf_skb_vlan_push,
    },
    programs::TcContext,
};
use dataplane_common::{fragments::HELD_FRAME_BYTES, Ipv4};

const AF_INET: u32 = 2;
const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();

/// The ifindex of the device the program runs on.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a context field of this program's skb.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The VLAN id the kernel moved from the frame into skb metadata (at TC
/// ingress it usually has), if any.
#[inline(always)]
pub fn vlan_meta(ctx: &TcContext) -> Option<u16> {
    // SAFETY: reading context fields of this program's skb.
    let (present, tci) = unsafe { ((*ctx.skb.skb).vlan_present, (*ctx.skb.skb).vlan_tci) };
    (present != 0).then_some((tci & 0x0fff) as u16)
}

/// Makes the first `len` bytes direct-access readable (GSO and paged skbs
/// may hold headers outside the linear area). Best effort: a packet it
/// cannot pull is then simply shorter to the parser.
#[inline(always)]
pub fn pull(ctx: &mut TcContext, len: u32) {
    let _ = ctx.pull_data(len);
}

/// Pushes an 802.1Q tag with `vlan_id`; `false` if the kernel refused.
#[inline(always)]
pub fn vlan_push(ctx: &mut TcContext, vlan_id: u16) -> bool {
    // SAFETY: helper call on this program's own skb.
    unsafe { bpf_skb_vlan_push(ctx.skb.skb, ETH_P_8021Q_BE, vlan_id) == 0 }
}

/// Pops the outer VLAN tag; `false` if the kernel refused.
#[inline(always)]
pub fn vlan_pop(ctx: &mut TcContext) -> bool {
    // SAFETY: helper call on this program's own skb.
    unsafe { bpf_skb_vlan_pop(ctx.skb.skb) == 0 }
}

/// `bpf_redirect(ifindex, 0)`: out of `ifindex` (TC_ACT_REDIRECT on success).
#[inline(always)]
pub fn redirect(ifindex: u32) -> i64 {
    // SAFETY: helper call with plain arguments.
    unsafe { bpf_redirect(ifindex, 0) }
}

/// `skb->pkt_type` value for a frame addressed to this host.
const PACKET_HOST: u32 = 0;

/// Marks the frame as addressed to this host (`PACKET_HOST`), as the
/// receiving device's `eth_type_trans` would for the MAC it now carries.
/// Before Linux 6.15 `bpf_redirect_peer` kept the type the frame arrived
/// with, and the pod's IP layer drops a `PACKET_OTHERHOST` frame: one EC2
/// delivered to a branch ENI's MAC on the trunk is one. The helper is
/// called only when the type differs.
#[inline(always)]
pub fn set_pkt_type_host(ctx: &TcContext) {
    // SAFETY: reading a context field of this program's skb.
    let current = unsafe { (*ctx.skb.skb).pkt_type };
    if current != PACKET_HOST {
        // SAFETY: helper on this program's skb; it changes no packet data.
        // It fails only for types it refuses to set, which HOST is not.
        unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) };
    }
}

/// `bpf_redirect_peer(ifindex, 0)`: into the namespace of veth `ifindex`'s
/// peer, without a second pass through the backlog.
#[inline(always)]
pub fn redirect_peer(ifindex: u32) -> i64 {
    // SAFETY: helper call with plain arguments.
    unsafe { bpf_redirect_peer(ifindex, 0) }
}

/// `bpf_redirect_neigh` out of `ifindex` towards IPv4 next hop `gateway`,
/// its MAC resolved by the kernel's neighbour table.
#[inline(always)]
pub fn redirect_neigh(ifindex: u32, gateway: Ipv4) -> i64 {
    // SAFETY: an all-zero bpf_redir_neigh is valid (plain integers).
    let mut params: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    params.nh_family = AF_INET;
    params.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(gateway);
    // SAFETY: params lives for the call; the size is the struct's.
    unsafe {
        bpf_redirect_neigh(
            ifindex,
            &mut params,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    }
}

/// Reads word `I` of `skb->cb`.
#[inline(always)]
pub fn cb<const I: usize>(ctx: &TcContext) -> u32 {
    // SAFETY: reading this program's context (an index past cb's five
    // words does not compile).
    unsafe { (*ctx.skb.skb).cb[I] }
}

/// Writes word `I` of `skb->cb`. A separate volatile store at a constant
/// offset from the context pointer: the verifier rejects context stores
/// through a derived pointer, which is what the compiler makes of a slice
/// write.
#[inline(always)]
pub fn set_cb<const I: usize>(ctx: &mut TcContext, value: u32) {
    // SAFETY: this program's context; cb is writable from TC.
    unsafe { write_volatile(addr_of_mut!((*ctx.skb.skb).cb[I]), value) }
}

/// CLOCK_MONOTONIC_COARSE in ns: a few ns to read (vs ~20 for the precise
/// clock), tick resolution is plenty for timeouts of seconds, and the agent
/// reads the same clock with clock_gettime(CLOCK_MONOTONIC_COARSE).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// A pseudo-random 32-bit number (per-CPU state in the kernel).
#[inline(always)]
pub fn random() -> u32 {
    // SAFETY: helper without arguments.
    unsafe { bpf_get_prandom_u32() }
}

/// One iteration of a [`bounded_loop`].
pub trait LoopBody {
    /// Runs iteration `i`; `true` ends the loop.
    fn step(&mut self, i: u32) -> bool;
}

/// The callback `bpf_loop` calls: a subprogram the verifier checks once,
/// however many times it runs.
#[inline(never)]
extern "C" fn loop_step<T: LoopBody>(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `&mut T` that `bounded_loop` passed, alive and
    // not otherwise borrowed for the whole `bpf_loop` call.
    let body = unsafe { &mut *(ctx as *mut T) };
    body.step(i as u32) as i64
}

/// Runs `body.step(0..n)` until a step returns `true`, with `bpf_loop`
/// (Linux 5.17): unlike an unrolled or bounded loop, its body is verified
/// once, so a search of many probes costs the verifier nothing per probe.
#[inline(always)]
pub fn bounded_loop<T: LoopBody>(n: u32, body: &mut T) {
    // SAFETY: `loop_step::<T>` has the callback signature `bpf_loop`
    // requires, and `body` outlives the call.
    unsafe {
        bpf_loop(
            n,
            loop_step::<T> as *mut c_void,
            body as *mut T as *mut c_void,
            0,
        );
    }
}

/// Whether the packet fits the MTU of device `ifindex`; for a GSO packet,
/// whether each of its segments does (`bpf_check_mtu`, Linux 5.12). A
/// redirect skips the forwarding path's own MTU check, so the caller asks
/// first.
#[inline(always)]
pub fn fits_mtu(ctx: &TcContext, ifindex: u32) -> bool {
    const BPF_MTU_CHK_SEGS: u64 = 1;
    let mut mtu_len = 0u32;
    // SAFETY: the program's own skb, and a pointer to a local the helper
    // writes the MTU into.
    let rc = unsafe {
        bpf_check_mtu(
            ctx.skb.skb as *mut c_void,
            ifindex,
            &mut mtu_len,
            0,
            BPF_MTU_CHK_SEGS,
        )
    };
    // 1 and 2 (frag needed, a segment too big) say it does not fit; an
    // error (no such device) says nothing, and the redirect decides.
    rc <= 0
}

/// The shortest frame a buffer copy accepts: an Ethernet header.
const MIN_FRAME: u64 = 14;
/// Frame lengths a buffer copy accepts are `MIN_FRAME + (x & LEN_MASK)`.
const LEN_MASK: u64 = 0x3fff;
const _: () = assert!(MIN_FRAME + LEN_MASK < HELD_FRAME_BYTES as u64);

/// `len` bounded for the verifier within `[MIN_FRAME, HELD_FRAME_BYTES)`:
/// computed as `((len - 14) & mask) + 14` in the register the helper call
/// then takes, so that both bounds hold on it however LLVM copies it (see
/// `parse::verifier_bounded` for why a comparison alone does not do; a
/// helper's size must be bounded below too, since it must not be zero).
/// `None` for lengths the buffer cannot hold or shorter than an Ethernet
/// header, for which the arithmetic would not be a no-op.
#[inline(always)]
fn frame_len(len: u32) -> Option<u32> {
    let len = len as u64;
    if !(MIN_FRAME..=MIN_FRAME + LEN_MASK).contains(&len) {
        return None;
    }
    let mut v = len;
    // SAFETY: three ALU instructions on a register; no memory, no stack,
    // no control flow.
    unsafe {
        core::arch::asm!(
            "{v} -= {min}",
            "{v} &= {mask}",
            "{v} += {min}",
            v = inout(reg) v,
            min = const MIN_FRAME,
            mask = const LEN_MASK,
            options(pure, nomem, nostack),
        )
    };
    Some(v as u32)
}

/// Copies the whole frame, from its Ethernet header, into `buf`; its
/// length, or `None` if it does not fit.
#[inline(always)]
pub fn copy_frame(ctx: &TcContext, buf: &mut [u8; HELD_FRAME_BYTES]) -> Option<u32> {
    let len = frame_len(ctx.len())?;
    // SAFETY: `buf` holds HELD_FRAME_BYTES > len bytes; the helper reads
    // the skb (paged or not) and fails if it is shorter than `len`.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            0,
            buf.as_mut_ptr() as *mut c_void,
            len,
        )
    };
    (rc == 0).then_some(len)
}

/// Makes the packet the first `len` bytes of `frame` (a frame held
/// earlier), its length and checksum state adjusted. `false` if the
/// kernel refused; the packet is then in no defined state and must not be
/// delivered.
#[inline(always)]
pub fn replace_frame(ctx: &mut TcContext, frame: &[u8; HELD_FRAME_BYTES], len: u32) -> bool {
    const BPF_F_RECOMPUTE_CSUM: u64 = 1;
    let Some(len) = frame_len(len) else {
        return false;
    };
    // SAFETY: helper on this program's skb; it moves packet data, which is
    // why the context is borrowed mutably.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, len, 0) } != 0 {
        return false;
    }
    // SAFETY: `frame` holds more than `len` bytes; the skb is now `len`
    // long. RECOMPUTE_CSUM keeps a CHECKSUM_COMPLETE sum right.
    let rc = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb,
            0,
            frame.as_ptr() as *const c_void,
            len,
            BPF_F_RECOMPUTE_CSUM,
        )
    };
    rc == 0
}

/// `bpf_clone_redirect(ifindex, BPF_F_INGRESS)`: a copy of the packet as it
/// is now is received again on `ifindex` (through the backlog, so after
/// this program has returned), and runs that device's ingress programs.
#[inline(always)]
pub fn reinject(ctx: &mut TcContext, ifindex: u32) -> bool {
    const BPF_F_INGRESS: u64 = 1;
    // SAFETY: helper on this program's skb with plain arguments.
    unsafe { bpf_clone_redirect(ctx.skb.skb, ifindex, BPF_F_INGRESS) == 0 }
}
