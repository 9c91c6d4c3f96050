//! Fragment tracking: only a datagram's first fragment carries its ports
//! (RFC 791), so each hook remembers them (`FRAG_PORTS`) until the
//! datagram's last byte has passed; `from_eni` holds a later fragment that
//! arrives before its first (`FRAG_HELD`) and re-injects it once the first
//! has come, as netfilter's reassembly would accept them in any order.

use crate::{assert_no_padding, user_pod, Hook, Ipv4};

/// `FRAG_PORTS` key: one datagram (RFC 791's source, destination, protocol
/// and identification, as the packet carries them where `hook` sees it),
/// at one hook. A datagram a pod sends crosses `from_pod` and then
/// `to_eni` with the same addresses: each hook counts its bytes itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src_ip: Ipv4,
    pub dst_ip: Ipv4,
    /// IPv4 identification, host order.
    pub id: u16,
    pub proto: u8,
    /// The [`Hook`] that keeps this entry, as its `u32` value.
    pub hook: u8,
}
assert_no_padding!(FragKey {
    src_ip: Ipv4,
    dst_ip: Ipv4,
    id: u16,
    proto: u8,
    hook: u8,
});

impl FragKey {
    pub const fn new(src_ip: Ipv4, dst_ip: Ipv4, id: u16, proto: u8, hook: Hook) -> Self {
        Self {
            src_ip,
            dst_ip,
            id,
            proto,
            hook: hook as u8,
        }
    }
}

/// `FRAG_PORTS` value: the first fragment's ports (host order) and how
/// much of the datagram has passed. The hook removes the entry when
/// `seen` reaches `total`; the agent's GC removes entries older than
/// [`FRAG_TIMEOUT_NS`] (a datagram that lost a fragment).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    pub src_port: u16,
    pub dst_port: u16,
    /// Payload bytes (after the IP header) of the fragments seen so far.
    pub seen: u16,
    /// The datagram's payload length, known once its last fragment (MF
    /// clear) has passed; 0 until then.
    pub total: u16,
    /// When the first fragment passed (CLOCK_MONOTONIC_COARSE, ns).
    pub created_ns: u64,
}
assert_no_padding!(FragEntry {
    src_port: u16,
    dst_port: u16,
    seen: u16,
    total: u16,
    created_ns: u64,
});

impl FragEntry {
    /// Counts a fragment of `len` payload bytes at byte `offset`, the last
    /// one when `more` is clear; whether the datagram is then complete.
    /// Duplicates count twice (netfilter drops them): the entry then goes
    /// early and the duplicate's successors wait in `FRAG_HELD` or age out.
    pub fn count(&mut self, offset: u16, len: u16, more: bool) -> bool {
        self.seen = self.seen.saturating_add(len);
        if !more {
            self.total = offset.saturating_add(len);
        }
        self.total != 0 && self.seen >= self.total
    }
}

/// Netfilter's and the IP layer's reassembly timeout
/// (`net.ipv4.ipfrag_time`, 30 s): a datagram not complete by then is lost.
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;

/// Later fragments of one datagram `FRAG_HELD` keeps before its first has
/// come. Four covers reordering on the wire (a fragment or two overtaken);
/// a datagram whose first fragment comes after more is lost, as before.
pub const HELD_SLOTS: u32 = 4;

/// Bytes of one held frame: room for the largest frame an ENI receives (MTU
/// 9001 plus the Ethernet header) and then some, so that a length can be
/// bounded for the verifier by a mask (16 KiB) plus the Ethernet header.
pub const HELD_FRAME_BYTES: usize = 16_400;

/// `FRAG_HELD` key: slot `slot` of a datagram's held fragments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeldKey {
    pub frag: FragKey,
    pub slot: u32,
}
assert_no_padding!(HeldKey {
    frag: FragKey,
    slot: u32,
});

/// `FRAG_HELD` value: a whole frame as it arrived, from its Ethernet header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldFragment {
    /// When it was held (CLOCK_MONOTONIC_COARSE, ns).
    pub held_ns: u64,
    /// Bytes of `frame` in use.
    pub len: u32,
    pub _pad: u32,
    pub frame: [u8; HELD_FRAME_BYTES],
}
assert_no_padding!(HeldFragment {
    held_ns: u64,
    len: u32,
    _pad: u32,
    frame: [u8; HELD_FRAME_BYTES],
});

user_pod!(FragKey, FragEntry, HeldKey, HeldFragment);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_is_complete_when_its_bytes_reach_the_last_fragments_end() {
        // 3,000 payload bytes in fragments of 1,480, 1,480 and 40.
        let mut e = FragEntry {
            seen: 1480,
            ..FragEntry::default()
        };
        assert!(!e.count(1480, 1480, true));
        assert!(e.count(2960, 40, false));
    }

    #[test]
    fn the_last_fragment_first_leaves_the_datagram_open_until_the_rest_came() {
        let mut e = FragEntry {
            seen: 1480,
            ..FragEntry::default()
        };
        assert!(!e.count(2960, 40, false), "1,480 bytes still missing");
        assert_eq!(e.total, 3000);
        assert!(e.count(1480, 1480, true));
    }

    #[test]
    fn keys_of_two_hooks_differ() {
        let a = FragKey::new([10, 0, 0, 1], [10, 0, 0, 2], 7, 17, Hook::FromPod);
        let b = FragKey::new([10, 0, 0, 1], [10, 0, 0, 2], 7, 17, Hook::ToEni);
        assert_ne!(a, b);
    }
}
