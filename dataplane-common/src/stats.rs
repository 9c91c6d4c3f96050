//! Per-CPU counters (`STATS`): one slot per program, one named field per
//! counter so that `bpftool map dump pinned .../STATS` prints names.

use crate::user_pod;

/// The four attach points; the index of each program's slot in `STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// TC ingress of a pod's host veth.
    FromPod = 0,
    /// TC egress of an ENI.
    ToEni = 1,
    /// TC ingress of an ENI.
    FromEni = 2,
    /// TC egress of a pod's host veth.
    ToPod = 3,
}

impl Hook {
    pub const ALL: [Hook; 4] = [Hook::FromPod, Hook::ToEni, Hook::FromEni, Hook::ToPod];
    pub const COUNT: usize = Self::ALL.len();

    /// The program (ELF symbol) name.
    pub const fn program_name(self) -> &'static str {
        match self {
            Hook::FromPod => "from_pod",
            Hook::ToEni => "to_eni",
            Hook::FromEni => "from_eni",
            Hook::ToPod => "to_pod",
        }
    }
}

/// Why a packet was dropped. Each reason has its own counter in [`Stats`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// IPv4 header truncated, IHL < 5, or total length beyond the frame.
    MalformedL3 = 1,
    /// TCP/UDP/ICMP header truncated in a packet that must carry it.
    MalformedL4 = 2,
    /// No free SNAT port towards this (destination IP, port, protocol)
    /// within the allocation attempts.
    NatNoPort = 3,
    /// A non-first fragment of a pod datagram whose first fragment was not
    /// seen: its flow (and so its translation) is unknown.
    FragUnknown = 4,
    /// A new flow refused: `CT` or `SNAT_REV` is full (netfilter's "table
    /// full, dropping packet"); no live flow is evicted to make room.
    CtFull = 5,
    /// A tagged frame on a trunk whose VLAN is no branch pod's, or whose
    /// destination is not that pod.
    VlanUnknown = 6,
    /// Strict security-group mode: traffic for a branch pod that did not
    /// come through its branch ENI.
    StrictNotTrunk = 7,
    /// A packet from a pod's host veth whose source address is not that
    /// pod's (another pod's, the node's, or no address we gave out).
    Spoofed = 8,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::MalformedL3,
        DropReason::MalformedL4,
        DropReason::NatNoPort,
        DropReason::FragUnknown,
        DropReason::CtFull,
        DropReason::VlanUnknown,
        DropReason::StrictNotTrunk,
        DropReason::Spoofed,
    ];

    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::MalformedL3),
            2 => Some(Self::MalformedL4),
            3 => Some(Self::NatNoPort),
            4 => Some(Self::FragUnknown),
            5 => Some(Self::CtFull),
            6 => Some(Self::VlanUnknown),
            7 => Some(Self::StrictNotTrunk),
            8 => Some(Self::Spoofed),
            _ => None,
        }
    }

    /// The counter's field name in [`Stats`].
    pub const fn counter_name(self) -> &'static str {
        match self {
            Self::MalformedL3 => "drop_malformed_l3",
            Self::MalformedL4 => "drop_malformed_l4",
            Self::NatNoPort => "drop_nat_no_port",
            Self::FragUnknown => "drop_frag_unknown",
            Self::CtFull => "drop_ct_full",
            Self::VlanUnknown => "drop_vlan_unknown",
            Self::StrictNotTrunk => "drop_strict_not_trunk",
            Self::Spoofed => "drop_spoofed",
        }
    }
}

macro_rules! define_stats {
    ($( $(#[$doc:meta])* $field:ident ),+ $(,)?) => {
        /// `STATS` value (one per CPU per [`Hook`]).
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            $( $(#[$doc])* pub $field: u64, )+
        }

        impl Stats {
            /// Counter names in field order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),+];

            /// Counter values in field order (same order as [`Self::NAMES`]).
            pub fn values(&self) -> [u64; Self::NAMES.len()] {
                [$(self.$field),+]
            }

            /// Adds another slot (e.g. another CPU's) into this one.
            pub fn accumulate(&mut self, other: &Self) {
                $( self.$field = self.$field.wrapping_add(other.$field); )+
            }

            /// The value of the counter called `name`.
            pub fn get(&self, name: &str) -> Option<u64> {
                match name {
                    $( stringify!($field) => Some(self.$field), )+
                    _ => None,
                }
            }
        }
    };
}

define_stats! {
    /// Verdict TC_ACT_OK: handed to the kernel stack.
    pass,
    /// Verdict TC_ACT_REDIRECT.
    redirect,
    /// Verdict TC_ACT_SHOT (the drop_* counters say why).
    drop,
    /// Not IPv4 (ARP, IPv6, ...): passed untouched.
    non_ipv4,
    /// Carried an 802.1Q tag (in the frame or in skb metadata).
    vlan_tagged,
    /// IPv4 header with options (IHL > 5).
    ip_options,
    /// First fragment of a fragmented datagram (carries the L4 header).
    fragment_first,
    /// Non-first fragment (no L4 header).
    fragment_later,
    tcp,
    udp,
    icmp,
    /// IPv4 with another L4 protocol.
    other_l4,
    /// Pod packets whose source was translated to the node IP.
    snat,
    /// Replies (and ICMP errors) translated back to the pod.
    rev_snat,
    /// ICMP errors whose embedded header was translated (either direction).
    icmp_error_xlated,
    /// New SNAT mappings (flows).
    nat_new,
    /// New mappings by attempts needed: 1, 2–4, 5–16, 17 or more.
    nat_alloc_try_1,
    nat_alloc_try_2_4,
    nat_alloc_try_5_16,
    nat_alloc_try_17_plus,
    /// Of those, mappings that needed 129 attempts or more (a destination
    /// nearly out of ports).
    nat_alloc_try_129_plus,
    /// Port probes made by new mappings, found or not (mean attempts:
    /// this over `nat_new`).
    nat_probes,
    /// A new flow's conntrack entry raced another CPU's; the winner was kept.
    ct_race,
    /// New host connections from the node IP recorded, so SNAT avoids their ports.
    host_flow,
    /// New host connections not recorded because `SNAT_REV` was full (the
    /// node's traffic is never refused).
    host_flow_untracked,
    /// A host connection took a port an existing SNAT mapping holds.
    host_port_conflict,
    /// Pod packets sent straight out of the ENI that owns their IP.
    steer_eni,
    /// Packets delivered straight into a pod (same node, or from an ENI).
    steer_pod,
    /// Branch-pod packets tagged and sent out of the trunk.
    vlan_push,
    /// Tagged frames from the trunk untagged and delivered to their branch pod.
    vlan_pop,
    /// Packets left to the host stack on purpose (services, node-local, via-stack flows).
    to_stack,
    /// Packets `to_eni` passed without a look: `from_pod` had decided and
    /// (for an established SNAT flow) translated them already.
    pass_decided,
    /// Pod packets larger than the MTU of the ENI they would leave by, left
    /// to the stack to fragment or to answer with frag-needed.
    to_stack_mtu,
    /// New flows that came through the host stack: into a pod (NodePort,
    /// probes; `to_pod`), or from a pod out of an ENI (a Service with a
    /// backend elsewhere; `to_eni`).
    via_stack_new,
    /// New flows opened from outside the VPC CIDRs straight to a pod, whose
    /// replies are therefore not SNATed (`from_eni`).
    inbound_new,
    /// Verdict TC_ACT_SHOT for a packet that is not lost: a later fragment
    /// held for its first, or a first fragment re-injected with the
    /// fragments held for it (`from_eni`).
    consumed,
    /// Later fragments held because their first fragment had not come yet.
    frag_held,
    /// Later fragments that could not be held (all of their datagram's
    /// slots taken, or a frame too large): handled as before, unknown.
    frag_unheld,
    /// Held fragments re-injected once their first fragment came.
    frag_reinjected,
    /// `FRAG_PORTS` entries removed because their datagram had passed whole.
    frag_done,
    drop_malformed_l3,
    drop_malformed_l4,
    drop_nat_no_port,
    drop_frag_unknown,
    drop_ct_full,
    drop_vlan_unknown,
    drop_strict_not_trunk,
    drop_spoofed,
}

// Every field is a u64, so no padding is possible; the size is a multiple of 8.
const _: () = assert!(core::mem::size_of::<Stats>() == Stats::NAMES.len() * 8);

impl Stats {
    /// Counts one drop for `reason`.
    #[inline(always)]
    pub fn count_drop(&mut self, reason: DropReason) {
        self.drop += 1;
        match reason {
            DropReason::MalformedL3 => self.drop_malformed_l3 += 1,
            DropReason::MalformedL4 => self.drop_malformed_l4 += 1,
            DropReason::NatNoPort => self.drop_nat_no_port += 1,
            DropReason::FragUnknown => self.drop_frag_unknown += 1,
            DropReason::CtFull => self.drop_ct_full += 1,
            DropReason::VlanUnknown => self.drop_vlan_unknown += 1,
            DropReason::StrictNotTrunk => self.drop_strict_not_trunk += 1,
            DropReason::Spoofed => self.drop_spoofed += 1,
        }
    }

    /// Counts a new mapping that needed `tries` attempts.
    #[inline(always)]
    pub fn count_alloc(&mut self, tries: u32) {
        self.nat_new += 1;
        match tries {
            0..=1 => self.nat_alloc_try_1 += 1,
            2..=4 => self.nat_alloc_try_2_4 += 1,
            5..=16 => self.nat_alloc_try_5_16 += 1,
            _ => self.nat_alloc_try_17_plus += 1,
        }
        if tries > 128 {
            self.nat_alloc_try_129_plus += 1;
        }
        self.nat_probes += tries as u64;
    }
}

user_pod!(Stats);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_attempts_land_in_their_bucket() {
        let mut s = Stats::default();
        for tries in [1, 2, 4, 5, 16, 17, 32, 128, 129, 1024] {
            s.count_alloc(tries);
        }
        assert_eq!(s.nat_new, 10);
        assert_eq!(
            (
                s.nat_alloc_try_1,
                s.nat_alloc_try_2_4,
                s.nat_alloc_try_5_16,
                s.nat_alloc_try_17_plus,
                s.nat_alloc_try_129_plus,
            ),
            (1, 2, 2, 5, 2)
        );
        assert_eq!(
            s.nat_probes,
            1 + 2 + 4 + 5 + 16 + 17 + 32 + 128 + 129 + 1024
        );
    }

    #[test]
    fn every_drop_reason_has_its_counter() {
        for reason in DropReason::ALL {
            let mut s = Stats::default();
            s.count_drop(reason);
            assert_eq!(s.drop, 1);
            assert_eq!(s.get(reason.counter_name()), Some(1), "{reason:?}");
            assert_eq!(DropReason::from_u32(reason as u32), Some(reason));
            // exactly two counters moved: `drop` and the reason's own
            assert_eq!(s.values().iter().sum::<u64>(), 2);
        }
        assert_eq!(DropReason::from_u32(0), None);
    }

    #[test]
    fn names_match_values_and_accumulate_adds() {
        let mut a = Stats {
            tcp: 3,
            pass: 1,
            ..Default::default()
        };
        let b = Stats {
            tcp: 4,
            drop: 2,
            ..Default::default()
        };
        a.accumulate(&b);
        assert_eq!(a.get("tcp"), Some(7));
        assert_eq!(a.get("drop"), Some(2));
        assert_eq!(a.get("nope"), None);
        let idx = Stats::NAMES.iter().position(|n| *n == "tcp").unwrap();
        assert_eq!(a.values()[idx], 7);
    }

    #[test]
    fn hooks_index_their_slots() {
        for (i, h) in Hook::ALL.iter().enumerate() {
            assert_eq!(*h as usize, i);
        }
        assert_eq!(Hook::ToPod.program_name(), "to_pod");
    }
}
