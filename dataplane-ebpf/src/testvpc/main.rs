//! Test fixture, not part of the data path: EC2's side of a trunk ENI in
//! the simulated VPC. Attached to the VPC end of the node's trunk link:
//! - ingress (from the node): a tagged frame is accepted only when its VLAN
//!   is a registered branch ENI's and its source MAC and IP are that ENI's;
//!   the tag comes off and the frame goes on into the VPC. Untagged frames
//!   (the trunk's own traffic) pass; anything else is dropped and counted.
//! - egress (to the node): a frame for a branch ENI's IP gets its VLAN tag
//!   and that ENI's MAC as destination, as EC2 delivers it: not the trunk's
//!   own MAC, so the node receives it as `PACKET_OTHERHOST`.
#![no_std]
#![no_main]

use aya_ebpf::{
    btf_maps::{HashMap, PerCpuArray},
    helpers::{bpf_skb_vlan_pop, bpf_skb_vlan_push},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use dataplane_common::{
    testvpc::{BranchEni, TrunkStats},
    Ipv4,
};

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;

#[btf_map]
static BRANCH_BY_VLAN: HashMap<u16, BranchEni, 256> = HashMap::new();

#[btf_map]
static BRANCH_BY_IP: HashMap<Ipv4, u16, 256> = HashMap::new();

#[btf_map]
static TRUNK_STATS: PerCpuArray<TrunkStats, 1> = PerCpuArray::new();

#[inline(always)]
fn bytes<const N: usize>(ctx: &TcContext, off: usize) -> Option<[u8; N]> {
    if off > 64 {
        return None;
    }
    let start = ctx.data();
    if start + off + N > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds checked above.
    Some(unsafe { *((start + off) as *const [u8; N]) })
}

#[inline(always)]
fn stats() -> Option<&'static mut TrunkStats> {
    // SAFETY: this CPU's slot.
    TRUNK_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Frames from the node.
#[classifier]
pub fn vpc_trunk_in(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: context fields of this program's skb.
    let (present, tci) = unsafe { ((*skb).vlan_present, (*skb).vlan_tci) };
    let (vlan, l3) = if present != 0 {
        ((tci & 0x0fff) as u16, ETH_HLEN)
    } else {
        match bytes::<4>(&ctx, 12) {
            Some([0x81, 0x00, t0, t1]) => (u16::from_be_bytes([t0, t1]) & 0x0fff, ETH_HLEN + 4),
            _ => return TC_ACT_OK, // untagged: the trunk ENI's own traffic
        }
    };
    let Some(branch) = BRANCH_BY_VLAN.get_ptr(&vlan) else {
        return reject();
    };
    // SAFETY: valid map value pointer.
    let branch = unsafe { *branch };
    let (Some(src_mac), Some(ethertype)) = (bytes::<6>(&ctx, 6), bytes::<2>(&ctx, l3 - 2)) else {
        return reject();
    };
    let src_ip = if u16::from_be_bytes(ethertype) == ETH_P_IP {
        bytes::<4>(&ctx, l3 + 12)
    } else {
        None
    };
    if src_mac != branch.mac || src_ip != Some(branch.ip) {
        return reject();
    }
    // SAFETY: helper on this program's skb.
    if unsafe { bpf_skb_vlan_pop(skb) } != 0 {
        return reject();
    }
    if let Some(s) = stats() {
        s.accepted += 1;
    }
    TC_ACT_OK
}

#[inline(always)]
fn reject() -> i32 {
    if let Some(s) = stats() {
        s.rejected += 1;
    }
    TC_ACT_SHOT
}

/// Frames to the node.
#[classifier]
pub fn vpc_trunk_out(ctx: TcContext) -> i32 {
    let (Some(ethertype), Some(dst)) = (bytes::<2>(&ctx, 12), bytes::<4>(&ctx, ETH_HLEN + 16))
    else {
        return TC_ACT_OK;
    };
    if u16::from_be_bytes(ethertype) != ETH_P_IP {
        return TC_ACT_OK;
    }
    let Some(vlan) = BRANCH_BY_IP.get_ptr(&dst) else {
        return TC_ACT_OK;
    };
    // SAFETY: valid map value pointer.
    let vlan = unsafe { *vlan };
    let Some(branch) = BRANCH_BY_VLAN.get_ptr(&vlan) else {
        return TC_ACT_OK;
    };
    // SAFETY: valid map value pointer.
    let mac = unsafe { (*branch).mac };
    if ctx.store(0, &mac, 0).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: helper on this program's skb.
    if unsafe { bpf_skb_vlan_push(ctx.skb.skb, ETH_P_8021Q.to_be(), vlan) } != 0 {
        return TC_ACT_SHOT;
    }
    if let Some(s) = stats() {
        s.tagged += 1;
    }
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
