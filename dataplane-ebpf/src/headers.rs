//! Wire formats of the headers the parser reads. Written here rather than
//! taken from a crate: six tiny `#[repr(C)]` structs whose layout is the RFCs',
//! and the kernel crate stays free of dependencies the toolchain cannot build.

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROB: u8 = 12;

/// Byte offsets of fields the NAT stage rewrites.
pub const IP_SRC_OFF: usize = 12;
pub const IP_DST_OFF: usize = 16;
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;
pub const ICMP_CSUM_OFF: usize = 2;
pub const ICMP_ID_OFF: usize = 4;
pub const L4_SPORT_OFF: usize = 0;
pub const L4_DPORT_OFF: usize = 2;

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_MIN_HLEN: usize = 20;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Big endian.
    pub ether_type: u16,
}

#[repr(C)]
pub struct VlanHdr {
    /// Big endian: PCP(3) DEI(1) VID(12).
    pub tci: u16,
    /// Big endian: the encapsulated ethertype.
    pub ether_type: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    /// Big endian: flags(3) fragment offset(13).
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET_MASK: u16 = 0x1fff;

#[repr(C)]
pub struct TcpHdr {
    pub source: u16,
    pub dest: u16,
    pub seq: u32,
    pub ack_seq: u32,
    pub doff_flags: u16,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

#[repr(C)]
pub struct UdpHdr {
    pub source: u16,
    pub dest: u16,
    pub len: u16,
    pub check: u16,
}

#[repr(C)]
pub struct IcmpHdr {
    pub icmp_type: u8,
    pub code: u8,
    pub checksum: u16,
    /// Echo identifier (echo request/reply); otherwise unused/MTU.
    pub id: u16,
    pub sequence: u16,
}
