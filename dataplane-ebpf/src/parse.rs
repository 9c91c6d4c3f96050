//! The first stage: Ethernet, optional 802.1Q, IPv4 (with options and
//! fragments), and the TCP/UDP/ICMP header. All bounds checks of the data
//! path live in [`header`].

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use dataplane_common::{DropReason, Ipv4};

use crate::headers::{
    EthHdr, IcmpHdr, Ipv4Hdr, TcpHdr, UdpHdr, VlanHdr, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q,
    ETH_P_IP, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_PARAMETER_PROB,
    ICMP_TIME_EXCEEDED, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HLEN, IP_MF,
    IP_OFFSET_MASK, VLAN_HLEN,
};
use crate::skb;

/// The most header bytes any stage reads: Ethernet + 802.1Q + IPv4 with
/// full options + ICMP error header + the quoted IPv4 header with full
/// options + 8 bytes of its L4 header.
const MAX_PARSED_HDR: u32 = (ETH_HLEN + VLAN_HLEN + 60 + 8 + 60 + 8) as u32;

/// The deepest offset any header starts at (see [`MAX_PARSED_HDR`]).
const MAX_HDR_OFF: usize = MAX_PARSED_HDR as usize;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    None,
    /// Offset 0 with more fragments to come: carries the L4 header.
    First,
    /// Offset > 0: no L4 header; matched later by (src, dst, id, proto).
    Later,
}

pub enum ParseError {
    /// ARP, IPv6, a runt frame...: not ours, the stack decides.
    NotIpv4,
    /// A header claims more than the packet holds.
    Malformed(DropReason),
}

/// What the later stages need to know about a packet. Ports are host order.
pub struct Parsed {
    pub l3_off: usize,
    pub l4_off: usize,
    /// 802.1Q VLAN id, from the frame or from skb metadata; 0 = untagged.
    pub vlan_id: u16,
    /// The tag is in the frame bytes (not only in skb metadata).
    pub vlan_tagged: bool,
    pub src: Ipv4,
    pub dst: Ipv4,
    pub proto: u8,
    pub ip_id: u16,
    pub fragment: Fragment,
    /// The fragment's offset in its datagram, in bytes (0 unless `Later`).
    pub frag_offset: u16,
    /// IP_MF: more fragments of this datagram follow.
    pub more_fragments: bool,
    /// Whether `src_port`/`dst_port` are the flow's: always, except for a
    /// later fragment until `frags::track` found its first fragment's.
    pub ports_known: bool,
    /// TCP/UDP source port; echo request identifier; 0 otherwise.
    pub src_port: u16,
    /// TCP/UDP destination port; echo reply identifier; 0 otherwise.
    pub dst_port: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// TCP flags byte (FIN, SYN, RST, ACK...); 0 for other protocols.
    pub tcp_flags: u8,
    /// IPv4 total length: the datagram's bytes, for conntrack counters.
    pub ip_len: u16,
}

impl Parsed {
    #[inline(always)]
    pub fn has_ip_options(&self) -> bool {
        self.l4_off - self.l3_off > IPV4_MIN_HLEN
    }

    /// Bytes after the IP header: this fragment's share of the datagram.
    #[inline(always)]
    pub fn ip_payload_len(&self) -> u16 {
        self.ip_len
            .saturating_sub((self.l4_off - self.l3_off) as u16)
    }
}

/// A power-of-two mask above [`MAX_HDR_OFF`]: every offset below it is
/// left unchanged by `& HDR_OFF_MASK`.
const HDR_OFF_MASK: u64 = 0xff;
const _: () = assert!(MAX_HDR_OFF as u64 <= HDR_OFF_MASK && (HDR_OFF_MASK + 1).is_power_of_two());

/// `off & HDR_OFF_MASK`, computed in the very register the caller then adds
/// to the packet pointer.
///
/// Why: a comparison bounds only the register it is made on. LLVM freely
/// compares one copy of an offset and adds another (a reload of the same
/// stack slot). Linux 6.8+ links such copies; 6.1 does not when the value was
/// spilled before it was bounded, and rejects the program with "math between
/// pkt pointer and register with unbounded min value". LLVM cannot see through
/// inline assembly, so it can neither drop this AND (it is a no-op for the
/// offsets that reach it) nor move the bound away from the use; the result
/// is bounded by construction, and a bounded scalar keeps its bounds across
/// spills on every kernel trunkline supports.
#[inline(always)]
fn verifier_bounded(off: usize) -> usize {
    let mut v = off as u64;
    // SAFETY: one ALU instruction on a register; no memory, no stack, no
    // control flow.
    unsafe {
        core::arch::asm!(
            "{v} &= {mask}",
            v = inout(reg) v,
            mask = const HDR_OFF_MASK,
            options(pure, nomem, nostack),
        )
    };
    v as usize
}

/// The address of a `T` at `off` bytes into the packet, if the packet
/// holds it: the single bounds check of the data path.
#[inline(always)]
fn checked<T>(ctx: &TcContext, off: usize) -> Option<usize> {
    // No header lies deeper; this also makes the mask below a no-op.
    if off > MAX_HDR_OFF {
        return None;
    }
    let off = verifier_bounded(off);
    let start = ctx.data();
    let at = start + off;
    if at + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(at)
}

/// A reference to a `T` at `off` bytes into the packet.
#[inline(always)]
pub fn header<T>(ctx: &TcContext, off: usize) -> Option<&T> {
    // SAFETY: `checked` proved the bytes are inside the packet (and the
    // verifier proves it again); every T here is a plain header struct
    // valid for any bytes.
    checked::<T>(ctx, off).map(|p| unsafe { &*(p as *const T) })
}

/// Like [`header`], writable (direct packet access; the verifier unclones
/// the skb for programs that write). It borrows the context mutably, so
/// two writable headers, or a writable header across a helper that may
/// move packet data, do not compile.
#[inline(always)]
pub fn header_mut<T>(ctx: &mut TcContext, off: usize) -> Option<&mut T> {
    // SAFETY: as in `header`; the `&mut` borrow of the context makes this
    // the only reference to these bytes while it lives.
    checked::<T>(ctx, off).map(|p| unsafe { &mut *(p as *mut T) })
}

#[inline(always)]
pub fn parse(ctx: &mut TcContext) -> Result<Parsed, ParseError> {
    // Headers of GSO/paged skbs may sit outside the linear area that direct
    // packet access sees: pull what we parse, once, only when needed.
    let want = if ctx.len() < MAX_PARSED_HDR {
        ctx.len()
    } else {
        MAX_PARSED_HDR
    };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        skb::pull(ctx, want);
    }

    let eth: &EthHdr = header(ctx, 0).ok_or(ParseError::NotIpv4)?;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut l3_off = ETH_HLEN;
    let mut vlan_id = 0u16;
    let mut vlan_tagged = false;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan: &VlanHdr = header(ctx, ETH_HLEN).ok_or(ParseError::NotIpv4)?;
        vlan_id = u16::from_be(vlan.tci) & 0x0fff;
        ether_type = u16::from_be(vlan.ether_type);
        vlan_tagged = true;
        l3_off = ETH_HLEN + VLAN_HLEN;
    } else {
        // At TC ingress the kernel has usually moved the tag into skb metadata.
        if let Some(id) = skb::vlan_meta(ctx) {
            vlan_id = id;
        }
    }
    if ether_type != ETH_P_IP {
        return Err(ParseError::NotIpv4);
    }

    let malformed_l3 = ParseError::Malformed(DropReason::MalformedL3);
    let ip: &Ipv4Hdr = header(ctx, l3_off).ok_or(malformed_l3)?;
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be(ip.tot_len) as usize;
    if ip.version_ihl >> 4 != 4
        || ihl < IPV4_MIN_HLEN
        || tot_len < ihl
        || l3_off + tot_len > ctx.len() as usize
    {
        return Err(ParseError::Malformed(DropReason::MalformedL3));
    }
    let frag_off = u16::from_be(ip.frag_off);
    let fragment = if frag_off & IP_OFFSET_MASK != 0 {
        Fragment::Later
    } else if frag_off & IP_MF != 0 {
        Fragment::First
    } else {
        Fragment::None
    };

    let mut pkt = Parsed {
        l3_off,
        l4_off: l3_off + ihl,
        vlan_id,
        vlan_tagged,
        src: ip.src,
        dst: ip.dst,
        proto: ip.protocol,
        ip_id: u16::from_be(ip.id),
        fragment,
        frag_offset: (frag_off & IP_OFFSET_MASK) << 3,
        more_fragments: frag_off & IP_MF != 0,
        ports_known: fragment != Fragment::Later,
        src_port: 0,
        dst_port: 0,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags: 0,
        ip_len: tot_len as u16,
    };
    if fragment == Fragment::Later {
        return Ok(pkt);
    }
    parse_l4(ctx, &mut pkt)?;
    Ok(pkt)
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, pkt: &mut Parsed) -> Result<(), ParseError> {
    let malformed_l4 = ParseError::Malformed(DropReason::MalformedL4);
    match pkt.proto {
        IPPROTO_TCP => {
            let tcp: &TcpHdr = header(ctx, pkt.l4_off).ok_or(malformed_l4)?;
            pkt.src_port = u16::from_be(tcp.source);
            pkt.dst_port = u16::from_be(tcp.dest);
            pkt.tcp_flags = (u16::from_be(tcp.doff_flags) & 0xff) as u8;
        }
        IPPROTO_UDP => {
            let udp: &UdpHdr = header(ctx, pkt.l4_off).ok_or(malformed_l4)?;
            pkt.src_port = u16::from_be(udp.source);
            pkt.dst_port = u16::from_be(udp.dest);
        }
        IPPROTO_ICMP => {
            let icmp: &IcmpHdr = header(ctx, pkt.l4_off).ok_or(malformed_l4)?;
            pkt.icmp_type = icmp.icmp_type;
            pkt.icmp_code = icmp.code;
            // Echo id in the port slot that makes the reply key the
            // reversed request key: request (id, 0), reply (0, id).
            if icmp.icmp_type == ICMP_ECHO_REPLY {
                pkt.dst_port = u16::from_be(icmp.id);
            } else if icmp.icmp_type == ICMP_ECHO_REQUEST {
                pkt.src_port = u16::from_be(icmp.id);
            }
        }
        _ => {}
    }
    Ok(())
}

/// The datagram an ICMP error quotes (RFC 792: its IPv4 header and the
/// first 8 bytes of its payload), as it travelled. Ports as in [`Parsed`].
pub struct Quoted {
    pub l3_off: usize,
    pub l4_off: usize,
    pub src: Ipv4,
    pub dst: Ipv4,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Parsed {
    /// Destination unreachable (incl. fragmentation needed), time exceeded,
    /// parameter problem: the errors that quote the offending datagram.
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        self.proto == IPPROTO_ICMP
            && self.fragment == Fragment::None
            && matches!(
                self.icmp_type,
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROB
            )
    }
}

/// Parses the datagram quoted by the ICMP error `pkt`; `None` if the quote
/// is too short or not a TCP/UDP/ICMP-echo datagram we could have translated.
#[inline(always)]
pub fn parse_quoted(ctx: &TcContext, pkt: &Parsed) -> Option<Quoted> {
    let l3_off = pkt.l4_off + size_of::<IcmpHdr>();
    let ip: &Ipv4Hdr = header(ctx, l3_off)?;
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return None;
    }
    let l4_off = l3_off + ihl;
    // Every quoted L4 header we translate starts with 8 bytes we need.
    let l4: &UdpHdr = header(ctx, l4_off)?;
    let mut q = Quoted {
        l3_off,
        l4_off,
        src: ip.src,
        dst: ip.dst,
        proto: ip.protocol,
        src_port: u16::from_be(l4.source),
        dst_port: u16::from_be(l4.dest),
    };
    match ip.protocol {
        IPPROTO_TCP | IPPROTO_UDP => Some(q),
        IPPROTO_ICMP => {
            let icmp: &IcmpHdr = header(ctx, l4_off)?;
            match icmp.icmp_type {
                ICMP_ECHO_REQUEST => {
                    q.src_port = u16::from_be(icmp.id);
                    q.dst_port = 0;
                }
                ICMP_ECHO_REPLY => {
                    q.src_port = 0;
                    q.dst_port = u16::from_be(icmp.id);
                }
                _ => return None,
            }
            Some(q)
        }
        _ => None,
    }
}
