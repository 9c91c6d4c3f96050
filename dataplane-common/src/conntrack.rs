//! Connection tracking (`CT`, `SNAT_REV`).

use crate::{assert_no_padding, user_pod, Ipv4};

/// A flow 5-tuple. In `CT` it is the original direction as the pod sent it;
/// in `SNAT_REV` it is the reply as it arrives at the node (node IP, NAT port).
/// For ICMP echo the identifier stands in both port fields' place: `src_port`
/// holds it and `dst_port` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src_ip: Ipv4,
    pub dst_ip: Ipv4,
    /// Host byte order.
    pub src_port: u16,
    /// Host byte order.
    pub dst_port: u16,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP).
    pub proto: u8,
    /// Always zero: keys are hashed byte for byte.
    pub _pad: [u8; 3],
}
assert_no_padding!(CtKey {
    src_ip: Ipv4,
    dst_ip: Ipv4,
    src_port: u16,
    dst_port: u16,
    proto: u8,
    _pad: [u8; 3],
});

impl CtKey {
    pub const fn new(src_ip: Ipv4, dst_ip: Ipv4, src_port: u16, dst_port: u16, proto: u8) -> Self {
        Self {
            src_ip,
            dst_ip,
            src_port,
            dst_port,
            proto,
            _pad: [0; 3],
        }
    }

    /// The same flow seen from the other end.
    pub const fn reversed(&self) -> Self {
        Self::new(
            self.dst_ip,
            self.src_ip,
            self.dst_port,
            self.src_port,
            self.proto,
        )
    }

    /// The reply of this (pod-side) flow after SNAT to `nat_ip:nat_port`,
    /// as it arrives from the destination: the `SNAT_REV` key.
    pub const fn snat_reply(&self, nat_ip: Ipv4, nat_port: u16) -> Self {
        Self::new(self.dst_ip, nat_ip, self.dst_port, nat_port, self.proto)
    }
}

/// `CT` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// `bpf_ktime_get_coarse_ns` at creation (CLOCK_MONOTONIC_COARSE, readable by the agent).
    pub created_ns: u64,
    /// `bpf_ktime_get_coarse_ns` of the last packet in either direction.
    pub last_seen_ns: u64,
    pub packets_orig: u64,
    pub bytes_orig: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
    /// Translated source address (the node IP) when `CT_F_SNAT` is set.
    pub nat_ip: Ipv4,
    /// Translated source port (host order) when `CT_F_SNAT` is set.
    pub nat_port: u16,
    /// `CT_STATE_*` (see [`crate::flow_state`]).
    pub state: u8,
    /// `CT_F_*` bits.
    pub flags: u8,
}
assert_no_padding!(CtEntry {
    created_ns: u64,
    last_seen_ns: u64,
    packets_orig: u64,
    bytes_orig: u64,
    packets_reply: u64,
    bytes_reply: u64,
    nat_ip: Ipv4,
    nat_port: u16,
    state: u8,
    flags: u8,
});

/// Flow is source-NATed to `nat_ip:nat_port`.
pub const CT_F_SNAT: u8 = 1 << 0;
/// Flow went through the host stack (NodePort, probes, or a pod's flow to a
/// Service whose backend is elsewhere): its packets from the other side go
/// back through the stack, which un-NATs them.
pub const CT_F_VIA_STACK: u8 = 1 << 1;
/// Flow opened from outside the VPC CIDRs straight to a pod (peered VPC,
/// on-premises, NLB with client IP): as with netfilter, whose NAT decision
/// is made at a flow's first packet, the pod's replies are never SNATed.
pub const CT_F_INBOUND: u8 = 1 << 2;
/// The pod's peer opened the flow (the stack delivered its first packet to
/// the pod, or it came from outside the VPC): the pod's packets are the
/// replies. Without it, the pod opened the flow.
pub const CT_F_OPENED_BY_PEER: u8 = 1 << 5;

// `CtEntry::state` values and the FIN flags, with the transitions.
pub use crate::flow_state::{
    CT_F_FIN_ORIG, CT_F_FIN_REPLY, CT_STATE_CLOSE, CT_STATE_CLOSE_WAIT, CT_STATE_ESTABLISHED,
    CT_STATE_FIN_WAIT, CT_STATE_LAST_ACK, CT_STATE_NEW, CT_STATE_SYN_RECV, CT_STATE_TIME_WAIT,
    CT_STATE_UDP_STREAM,
};

/// TCP flag bits as they appear in the header's 14th byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

user_pod!(CtKey, CtEntry);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_reversal_is_an_involution() {
        let k = CtKey::new([10, 0, 0, 1], [203, 0, 113, 10], 40000, 443, 6);
        let r = k.reversed();
        assert_eq!(r.src_ip, [203, 0, 113, 10]);
        assert_eq!(r.dst_port, 40000);
        assert_eq!(r.reversed(), k);
    }

    #[test]
    fn the_snat_reply_comes_from_the_destination_to_the_nat_address() {
        let k = CtKey::new([10, 0, 0, 1], [203, 0, 113, 10], 40000, 443, 6);
        let r = k.snat_reply([192, 168, 16, 10], 50000);
        assert_eq!(
            r,
            CtKey::new([203, 0, 113, 10], [192, 168, 16, 10], 443, 50000, 6)
        );
        assert_eq!(k.snat_reply(k.src_ip, k.src_port), k.reversed());
    }

    #[test]
    fn sizes_are_stable() {
        assert_eq!(core::mem::size_of::<CtKey>(), 16);
        assert_eq!(core::mem::size_of::<CtEntry>(), 56);
    }
}
