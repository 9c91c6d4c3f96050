//! Map keys, values and constants shared by the kernel programs
//! (`dataplane-ebpf`), the agent and the tests.
//!
//! Every type here is `#[repr(C)]` and free of implicit padding (checked at
//! compile time by [`assert_no_padding!`]): the kernel copies keys and values
//! byte for byte, and a padding byte with garbage in it would make two equal
//! keys hash differently. Addresses are stored as byte arrays in network
//! order (`[u8; 4]`, `[u8; 6]`) so that `bpftool map dump` prints them as
//! readable octets; ports are stored in host order for the same reason.
#![no_std]

pub mod config;
pub mod conntrack;
pub mod csum;
pub mod flow_state;
pub mod fragments;
#[cfg(feature = "host")]
pub mod mac;
pub mod maps;
pub mod node;
pub mod stats;
pub mod testvpc;
pub mod verdict;

pub use config::{Config, SnatMode};
pub use conntrack::{CtEntry, CtKey};
pub use fragments::{FragEntry, FragKey, HeldFragment, HeldKey};
#[cfg(feature = "host")]
pub use mac::{MacAddr, MacParseError};
pub use node::{EniEntry, EniRole, PodEntry, VlanKey};
pub use stats::{DropReason, Hook, Stats};
pub use verdict::VerdictRecord;

/// An IPv4 address in network byte order, as it appears in a packet.
pub type Ipv4 = [u8; 4];
/// An Ethernet MAC address.
pub type Mac = [u8; 6];

/// Fails to compile when `$t` has implicit padding: its size must equal the
/// sum of its fields' sizes.
#[macro_export]
macro_rules! assert_no_padding {
    ($t:ty { $($field:ident: $ft:ty),+ $(,)? }) => {
        const _: () = {
            assert!(
                core::mem::size_of::<$t>() == 0 $(+ core::mem::size_of::<$ft>())+,
                concat!(stringify!($t), " has implicit padding")
            );
        };
    };
}

/// Implements `aya::Pod` for the listed types when the `user` feature is on.
macro_rules! user_pod {
    ($($t:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: every listed type is #[repr(C)], Copy, and has no
            // padding (checked by assert_no_padding!), so any byte pattern
            // of its size is a valid value.
            unsafe impl aya::Pod for $t {}
        )+
    };
}
pub(crate) use user_pod;
