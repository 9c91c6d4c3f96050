//! Packets for golden tests, built with etherparse.

use etherparse::{
    EtherType, Ethernet2Header, IpFragOffset, IpNumber, Ipv4Header, PacketBuilder, VlanId,
};

pub const POD_MAC: [u8; 6] = [0x0a, 0x58, 0xc0, 0xa8, 0x1f, 0xaa];
pub const HOST_VETH_MAC: [u8; 6] = [0x0a, 0x58, 0xc0, 0xa8, 0x1f, 0x01];

/// A flow's endpoints.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
}

impl Flow {
    pub const fn new(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Self {
        Self {
            src,
            dst,
            sport,
            dport,
        }
    }
}

fn eth() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2(POD_MAC, HOST_VETH_MAC)
}

/// Writes a finished etherparse builder into a fresh buffer.
pub trait Writable {
    fn write_to_vec(self, payload: &[u8]) -> Vec<u8>;
}

macro_rules! writable {
    ($($t:ty),+) => {$(
        impl Writable for etherparse::PacketBuilderStep<$t> {
            fn write_to_vec(self, payload: &[u8]) -> Vec<u8> {
                let mut v = Vec::with_capacity(self.size(payload.len()));
                self.write(&mut v, payload).expect("building packet");
                v
            }
        }
    )+};
}
writable!(
    etherparse::TcpHeader,
    etherparse::UdpHeader,
    etherparse::Icmpv4Header
);

pub fn tcp_syn(f: Flow) -> Vec<u8> {
    tcp(f, TCP_SYN)
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A TCP segment without payload and with these flags (`TCP_*` bits).
pub fn tcp(f: Flow, flags: u8) -> Vec<u8> {
    let mut b = eth()
        .ipv4(f.src, f.dst, 64)
        .tcp(f.sport, f.dport, 1000, 64240);
    if flags & TCP_SYN != 0 {
        b = b.syn();
    }
    if flags & TCP_FIN != 0 {
        b = b.fin();
    }
    if flags & TCP_RST != 0 {
        b = b.rst();
    }
    if flags & TCP_ACK != 0 {
        b = b.ack(2000);
    }
    b.write_to_vec(&[])
}

pub fn udp(f: Flow, payload: &[u8]) -> Vec<u8> {
    eth()
        .ipv4(f.src, f.dst, 64)
        .udp(f.sport, f.dport)
        .write_to_vec(payload)
}

pub fn icmp_echo(src: [u8; 4], dst: [u8; 4], id: u16, seq: u16) -> Vec<u8> {
    eth()
        .ipv4(src, dst, 64)
        .icmpv4_echo_request(id, seq)
        .write_to_vec(b"trunkline-ping")
}

pub fn icmp_echo_reply(src: [u8; 4], dst: [u8; 4], id: u16, seq: u16) -> Vec<u8> {
    eth()
        .ipv4(src, dst, 64)
        .icmpv4_echo_reply(id, seq)
        .write_to_vec(b"trunkline-ping")
}

/// An ICMP message of any type (timestamp, router solicitation, ...).
pub fn icmp(src: [u8; 4], dst: [u8; 4], kind: etherparse::Icmpv4Type) -> Vec<u8> {
    eth().ipv4(src, dst, 64).icmpv4(kind).write_to_vec(&[])
}

/// UDP inside an 802.1Q tag.
pub fn udp_vlan(f: Flow, vlan: u16, payload: &[u8]) -> Vec<u8> {
    let vid = VlanId::try_new(vlan).expect("vlan id");
    let b = eth()
        .single_vlan(vid)
        .ipv4(f.src, f.dst, 64)
        .udp(f.sport, f.dport);
    b.write_to_vec(payload)
}

/// TCP SYN whose IPv4 header carries `options` (a multiple of 4 bytes).
pub fn tcp_syn_with_ip_options(f: Flow, options: &[u8]) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, f.src, f.dst).expect("ipv4");
    ip.options = options
        .try_into()
        .expect("ip options: a multiple of 4, at most 40 bytes");
    let b = eth()
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(f.sport, f.dport, 1000, 64240)
        .syn();
    b.write_to_vec(&[])
}

/// One IPv4 fragment with raw `l4_bytes` as its payload.
pub fn ipv4_fragment(
    src: [u8; 4],
    dst: [u8; 4],
    proto: IpNumber,
    id: u16,
    offset_units: u16,
    more: bool,
    l4_bytes: &[u8],
) -> Vec<u8> {
    let mut ip = Ipv4Header::new(l4_bytes.len() as u16, 64, proto, src, dst).expect("ipv4");
    ip.identification = id;
    ip.more_fragments = more;
    ip.fragment_offset = IpFragOffset::try_new(offset_units).expect("fragment offset");
    ip.header_checksum = ip.calc_header_checksum();
    let mut v = Vec::new();
    Ethernet2Header {
        source: POD_MAC,
        destination: HOST_VETH_MAC,
        ether_type: EtherType::IPV4,
    }
    .write(&mut v)
    .expect("eth");
    ip.write(&mut v).expect("ipv4 header");
    v.extend_from_slice(l4_bytes);
    v
}

/// An ARP request (not IPv4).
pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::new();
    Ethernet2Header {
        source: POD_MAC,
        destination: [0xff; 6],
        ether_type: EtherType::ARP,
    }
    .write(&mut v)
    .expect("eth");
    v.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    v.extend_from_slice(&POD_MAC);
    v.extend_from_slice(&sender);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&target);
    v
}

/// Byte offset of the IPv4 header in an untagged Ethernet frame.
pub const L3_OFF: usize = 14;

/// RFC 1071 ones-complement sum of `data` (odd length padded).
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Whether the Internet checksum over `data` (which contains its own
/// checksum field) verifies.
pub fn checksum_ok(data: &[u8]) -> bool {
    fold(sum16(data, 0)) == 0xffff
}

/// Whether a TCP or UDP segment's checksum verifies with the pseudo header.
pub fn l4_checksum_ok(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> bool {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    fold(sum16(segment, sum16(&pseudo, 0))) == 0xffff
}

/// An ICMP error from `from` to `to` quoting the first 28 bytes (IPv4
/// header + 8) of `quoted_frame`'s datagram.
pub fn icmp_error(
    from: [u8; 4],
    to: [u8; 4],
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    quoted_frame: &[u8],
) -> Vec<u8> {
    let ihl = usize::from(quoted_frame[L3_OFF] & 0x0f) * 4;
    let quoted = &quoted_frame[L3_OFF..L3_OFF + ihl + 8];
    let mut icmp = vec![icmp_type, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(quoted);
    let c = !fold(sum16(&icmp, 0));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4_fragment(from, to, IpNumber::ICMP, 0x4242, 0, false, &icmp)
}

/// Sets the IPv4 TTL of an untagged frame and recomputes the header checksum.
pub fn set_ttl(frame: &mut [u8], ttl: u8) {
    frame[L3_OFF + 8] = ttl;
    let ihl = usize::from(frame[L3_OFF] & 0x0f) * 4;
    frame[L3_OFF + 10..L3_OFF + 12].copy_from_slice(&[0, 0]);
    let c = !fold(sum16(&frame[L3_OFF..L3_OFF + ihl], 0));
    frame[L3_OFF + 10..L3_OFF + 12].copy_from_slice(&c.to_be_bytes());
}
