//! Counting into this CPU's `STATS` slot for the running program.

use dataplane_common::{Hook, Stats};

use crate::headers::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use crate::{
    maps,
    parse::{Fragment, Parsed},
};

/// This CPU's counters for `hook`.
#[inline(always)]
pub fn slot(hook: Hook) -> Option<&'static mut Stats> {
    maps::stats(hook)
}

/// What the parser saw.
#[inline(always)]
pub fn count_parsed(s: &mut Stats, pkt: &Parsed) {
    if pkt.vlan_id != 0 || pkt.vlan_tagged {
        s.vlan_tagged += 1;
    }
    if pkt.has_ip_options() {
        s.ip_options += 1;
    }
    match pkt.fragment {
        Fragment::None => {}
        Fragment::First => s.fragment_first += 1,
        Fragment::Later => s.fragment_later += 1,
    }
    match pkt.proto {
        IPPROTO_TCP => s.tcp += 1,
        IPPROTO_UDP => s.udp += 1,
        IPPROTO_ICMP => s.icmp += 1,
        _ => s.other_l4 += 1,
    }
}
