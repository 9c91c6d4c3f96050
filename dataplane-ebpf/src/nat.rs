//! NAT stage: SNAT port allocation, and rewriting addresses and ports with
//! incremental checksum updates (`bpf_l3/l4_csum_replace`, which also keep
//! CHECKSUM_PARTIAL packets from veth/GSO right: for those only the
//! pseudo-header part of the L4 checksum field is updated).

use core::num::NonZeroU32;

use aya_ebpf::{bindings::BPF_NOEXIST, programs::TcContext};
use dataplane_common::{
    conntrack::{CT_F_SNAT, CT_STATE_NEW},
    csum, Config, CtEntry, CtKey, DropReason, Ipv4, SnatMode, Stats,
};

use crate::{
    conntrack::now,
    headers::Ipv4Hdr,
    headers::{
        ICMP_CSUM_OFF, ICMP_ID_OFF, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IP_DST_OFF, IP_SRC_OFF,
        L4_DPORT_OFF, L4_SPORT_OFF, TCP_CSUM_OFF, UDP_CSUM_OFF,
    },
    maps::{self, Inserted, CT, SNAT_REV},
    parse::{header_mut, Fragment, Parsed, Quoted},
    skb::{self, LoopBody},
};

/// Probes before a new flow is dropped for want of a port. A range of up
/// to this many ports is searched exhaustively. The search runs in
/// `bpf_loop`, whose body the verifier checks once, so the bound costs
/// nothing at load; it bounds the work per packet at high occupancy
/// (netfilter stops at 240 probes, `nf_nat_l4proto_unique_tuple`).
pub const NAT_MAX_TRIES: u32 = 1024;

/// A range larger than `NAT_MAX_TRIES` is searched in windows of linear
/// probes, each from a fresh random port: 512, 256, 128, 64, 64.
/// Netfilter does the same (halving windows from new random offsets):
/// linear probing alone stays inside the cluster of taken ports its first
/// choice fell in, so at high occupancy it fails while free ports exist
/// elsewhere.
#[inline(always)]
fn window_starts(tries: u32) -> bool {
    tries == 512 || tries == 768 || tries == 896 || tries == 960
}

const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

/// The port search of one new flow, as a `bpf_loop` body.
struct PortSearch {
    key: CtKey,
    node_ip: Ipv4,
    lo: u32,
    range: NonZeroU32,
    /// Offset in the range of the current window's first probe.
    base: u32,
    /// The pod's own port is probed first (`none`).
    keep_own: bool,
    windows: bool,
    /// Probes made so far.
    tries: u32,
    /// The port reserved in `SNAT_REV` (0: none yet).
    port: u16,
    /// `SNAT_REV` refused an insert for want of room: the search stops.
    full: bool,
}

impl PortSearch {
    #[inline(always)]
    fn candidate(&mut self, i: u32) -> u16 {
        if self.keep_own && i == 0 {
            return self.key.src_port;
        }
        let n = i - self.keep_own as u32; // probes into the range
        if self.windows && window_starts(n) {
            self.base = skb::random().wrapping_sub(n);
        }
        (self.lo + self.base.wrapping_add(n) % self.range) as u16
    }
}

impl LoopBody for PortSearch {
    #[inline(always)]
    fn step(&mut self, i: u32) -> bool {
        let port = self.candidate(i);
        self.tries = i + 1;
        let reply = reply_key(&self.key, self.node_ip, port);
        // Looked up first: a lookup is cheaper than a refused insert.
        if maps::snat_orig(&reply).is_some() {
            return false;
        }
        match Inserted::of(SNAT_REV.insert(reply, self.key, BPF_NOEXIST as u64)) {
            Inserted::New => {
                self.port = port;
                true
            }
            Inserted::Exists => false, // taken meanwhile by another CPU
            Inserted::Full => {
                self.full = true;
                true
            }
        }
    }
}

/// Allocates a node port for the new flow `key` and inserts both conntrack
/// entries: the reverse first (`NOEXIST`, which is the per-destination
/// uniqueness check), then the forward one, rolling the reverse back if
/// another CPU created the flow meanwhile.
///
/// The first choice depends on the mode, as with netfilter's SNAT flags:
/// `--random-fully` a random port; `--random` a hash of the whole flow
/// (the same flow gets the same port, another source port another one);
/// none the pod's own port, kept when it is free even outside the range,
/// then a random one.
#[inline(always)]
pub fn allocate(cfg: &Config, key: &CtKey, stats: &mut Stats) -> Result<CtEntry, DropReason> {
    let lo = cfg.port_min as u32;
    let hi = cfg.port_max as u32;
    // NonZeroU32: `%` by it cannot panic, which the verifier requires.
    let range = match NonZeroU32::new(if hi >= lo && lo != 0 { hi - lo + 1 } else { 1 }) {
        Some(r) => r,
        None => NonZeroU32::MIN,
    };
    let mode = cfg.snat_mode();
    let keep_own = mode == Some(SnatMode::Sequential) && key.src_port != 0;
    // For source NAT netfilter starts from a random offset unless the
    // flow's own port is kept (`nf_nat_l4proto_unique_tuple`).
    let base = match mode {
        Some(SnatMode::Hash) => flow_hash(key),
        _ => skb::random(),
    };
    let probes = range.get() + keep_own as u32;
    let mut search = PortSearch {
        key: *key,
        node_ip: cfg.node_ip,
        lo,
        range,
        base,
        keep_own,
        windows: range.get() > NAT_MAX_TRIES,
        tries: 0,
        port: 0,
        full: false,
    };
    skb::bounded_loop(probes.min(NAT_MAX_TRIES), &mut search);
    if search.full {
        return Err(DropReason::CtFull);
    }
    if search.port == 0 {
        stats.nat_probes += search.tries as u64;
        return Err(DropReason::NatNoPort);
    }
    let (port, tries) = (search.port, search.tries);
    let reply = reply_key(key, cfg.node_ip, port);
    let t = now();
    let entry = CtEntry {
        created_ns: t,
        last_seen_ns: t,
        nat_ip: cfg.node_ip,
        nat_port: port,
        state: CT_STATE_NEW,
        flags: CT_F_SNAT,
        ..CtEntry::default()
    };
    insert_flow(key, entry, &reply, tries, stats)
}

/// Inserts the new flow's `CT` entry once its reverse is reserved; rolls
/// the reverse back if another CPU created the flow first (its entry
/// wins) or the table is full.
#[inline(always)]
fn insert_flow(
    key: &CtKey,
    entry: CtEntry,
    reply: &CtKey,
    tries: u32,
    stats: &mut Stats,
) -> Result<CtEntry, DropReason> {
    let inserted = Inserted::of(CT.insert(*key, entry, BPF_NOEXIST as u64));
    if inserted == Inserted::New {
        stats.count_alloc(tries);
        return Ok(entry);
    }
    let _ = SNAT_REV.remove(reply);
    match (inserted, maps::ct(key)) {
        (Inserted::Exists, Some(winner)) => {
            stats.ct_race += 1;
            Ok(winner)
        }
        _ => Err(DropReason::CtFull),
    }
}

/// Maps a new flow of a protocol without ports to the node IP alone: its
/// replies are told apart by (source, protocol) only, so a second pod's
/// flow of that protocol to the same destination is refused (netfilter
/// clashes there too) and counted as `nat_no_port`.
#[inline(always)]
pub fn allocate_address_only(
    cfg: &Config,
    key: &CtKey,
    stats: &mut Stats,
) -> Result<CtEntry, DropReason> {
    let reply = reply_key(key, cfg.node_ip, 0);
    if maps::snat_orig(&reply).is_some() {
        return Err(DropReason::NatNoPort);
    }
    match Inserted::of(SNAT_REV.insert(reply, *key, BPF_NOEXIST as u64)) {
        Inserted::New => {}
        Inserted::Exists => return Err(DropReason::NatNoPort),
        Inserted::Full => return Err(DropReason::CtFull),
    }
    let t = now();
    let entry = CtEntry {
        created_ns: t,
        last_seen_ns: t,
        nat_ip: cfg.node_ip,
        nat_port: 0,
        state: CT_STATE_NEW,
        flags: CT_F_SNAT,
        ..CtEntry::default()
    };
    insert_flow(key, entry, &reply, 1, stats)
}

/// The reply tuple of `orig` once its source is `nat_ip:nat_port`.
#[inline(always)]
pub fn reply_key(orig: &CtKey, nat_ip: Ipv4, nat_port: u16) -> CtKey {
    CtKey::new(orig.dst_ip, nat_ip, orig.dst_port, nat_port, orig.proto)
}

/// A cheap, well-mixed hash of the flow (murmur3's finaliser over its words).
#[inline(always)]
fn flow_hash(k: &CtKey) -> u32 {
    let mut h = u32::from_ne_bytes(k.src_ip)
        ^ u32::from_ne_bytes(k.dst_ip).rotate_left(13)
        ^ ((k.dst_port as u32) << 16 | k.proto as u32)
        ^ (k.src_port as u32).rotate_left(7);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Where in the L4 header the translated "port" of this protocol lives, and
/// where its checksum is; `None` when the packet has no such header.
#[inline(always)]
fn port_field(proto: u8, icmp_id: bool, source: bool) -> Option<usize> {
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => Some(if source { L4_SPORT_OFF } else { L4_DPORT_OFF }),
        IPPROTO_ICMP if icmp_id => Some(ICMP_ID_OFF),
        _ => None,
    }
}

/// Rewrites the IPv4 source (`addr_off` = IP_SRC_OFF) or destination and,
/// unless the packet is a later fragment, the L4 port/id at `port_off`.
/// The L4 checksum goes through the helper (it knows CHECKSUM_PARTIAL);
/// the IPv4 header is written directly with its checksum updated inline.
#[inline(always)]
fn rewrite(
    ctx: &mut TcContext,
    pkt: &Parsed,
    addr_off: usize,
    old_ip: Ipv4,
    new_ip: Ipv4,
    port_off: Option<usize>,
    old_port: u16,
    new_port: u16,
) -> Result<(), i64> {
    let l4 = pkt.l4_off;
    if pkt.fragment != Fragment::Later {
        let (from, to) = (
            u32::from_ne_bytes(old_ip) as u64,
            u32::from_ne_bytes(new_ip) as u64,
        );
        match pkt.proto {
            IPPROTO_TCP => {
                ctx.l4_csum_replace(l4 + TCP_CSUM_OFF, from, to, BPF_F_PSEUDO_HDR | 4)?
            }
            IPPROTO_UDP => ctx.l4_csum_replace(
                l4 + UDP_CSUM_OFF,
                from,
                to,
                BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 4,
            )?,
            _ => {} // ICMP has no pseudo header
        }
        if let Some(off) = port_off {
            if old_port != new_port {
                let (pf, pt) = (old_port.to_be() as u64, new_port.to_be() as u64);
                match pkt.proto {
                    IPPROTO_TCP => ctx.l4_csum_replace(l4 + TCP_CSUM_OFF, pf, pt, 2)?,
                    IPPROTO_UDP => {
                        ctx.l4_csum_replace(l4 + UDP_CSUM_OFF, pf, pt, BPF_F_MARK_MANGLED_0 | 2)?
                    }
                    _ => ctx.l4_csum_replace(l4 + ICMP_CSUM_OFF, pf, pt, 2)?,
                }
                set_port(ctx, l4 + off, new_port)?;
            }
        }
    }
    set_ipv4_addr(ctx, pkt.l3_off, addr_off, new_ip)
}

/// Writes a 16-bit port/id (host order in, network order out) directly.
#[inline(always)]
fn set_port(ctx: &mut TcContext, off: usize, port: u16) -> Result<(), i64> {
    let p: &mut [u8; 2] = header_mut(ctx, off).ok_or(-1i64)?;
    *p = port.to_be_bytes();
    Ok(())
}

/// Writes the IPv4 header at `l3_off`'s source or destination address and
/// updates its checksum inline (RFC 1624).
#[inline(always)]
fn set_ipv4_addr(
    ctx: &mut TcContext,
    l3_off: usize,
    addr_off: usize,
    new_ip: Ipv4,
) -> Result<(), i64> {
    let ip: &mut Ipv4Hdr = header_mut(ctx, l3_off).ok_or(-1i64)?;
    let field = if addr_off == IP_SRC_OFF {
        &mut ip.src
    } else {
        &mut ip.dst
    };
    let old = *field;
    *field = new_ip;
    ip.check = csum::replace4(ip.check, old, new_ip);
    Ok(())
}

/// Source NAT of an outgoing pod packet to `nat_ip:nat_port`.
#[inline(always)]
pub fn snat(
    ctx: &mut TcContext,
    pkt: &Parsed,
    key: &CtKey,
    nat_ip: Ipv4,
    nat_port: u16,
) -> Result<(), i64> {
    let port_off = port_field(pkt.proto, true, true);
    rewrite(
        ctx,
        pkt,
        IP_SRC_OFF,
        pkt.src,
        nat_ip,
        port_off,
        key.src_port,
        nat_port,
    )
}

/// Reverse NAT of a reply: destination back to the pod's address and port.
#[inline(always)]
pub fn rev_snat(ctx: &mut TcContext, pkt: &Parsed, reply: &CtKey, orig: &CtKey) -> Result<(), i64> {
    let port_off = port_field(pkt.proto, true, false);
    rewrite(
        ctx,
        pkt,
        IP_DST_OFF,
        pkt.dst,
        orig.src_ip,
        port_off,
        reply.dst_port,
        orig.src_port,
    )
}

/// Which way an ICMP error travels.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ErrorDirection {
    /// From outside to the node IP, about a packet the node sent: the outer
    /// destination and the quoted source go back to the pod.
    Inbound,
    /// From a pod, about a reply it received: the outer source and the
    /// quoted destination become the node's.
    Outbound,
}

/// Translates an ICMP error and the datagram it quotes: the outer address
/// and the quoted mirror-image address become `new_ip`, the quoted port (or
/// echo id) becomes `new_port`.
///
/// Checksums: the quoted IPv4 header's checksum is updated with its
/// address, so the ICMP checksum over that header is unchanged; the quoted
/// L4 checksum is left as quoted (receivers match errors by addresses and
/// ports and do not verify it), so the ICMP checksum is adjusted for the
/// quoted port alone.
#[inline(always)]
pub fn icmp_error(
    ctx: &mut TcContext,
    pkt: &Parsed,
    q: &Quoted,
    dir: ErrorDirection,
    new_ip: Ipv4,
    old_port: u16,
    new_port: u16,
) -> Result<(), i64> {
    let (outer_off, quoted_off, quoted_port_off) = match dir {
        ErrorDirection::Inbound => (IP_DST_OFF, IP_SRC_OFF, L4_SPORT_OFF),
        ErrorDirection::Outbound => (IP_SRC_OFF, IP_DST_OFF, L4_DPORT_OFF),
    };
    let quoted_port_off = if q.proto == IPPROTO_ICMP {
        ICMP_ID_OFF
    } else {
        quoted_port_off
    };
    if old_port != new_port {
        let (pf, pt) = (old_port.to_be() as u64, new_port.to_be() as u64);
        ctx.l4_csum_replace(pkt.l4_off + ICMP_CSUM_OFF, pf, pt, 2)?;
        set_port(ctx, q.l4_off + quoted_port_off, new_port)?;
    }
    // The quoted header's checksum moves with its address, so the ICMP
    // checksum over that header stays right; then the outer header.
    set_ipv4_addr(ctx, q.l3_off, quoted_off, new_ip)?;
    set_ipv4_addr(ctx, pkt.l3_off, outer_off, new_ip)?;
    Ok(())
}
