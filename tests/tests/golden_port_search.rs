//! Golden packets for SNAT port search at 50 %, 90 % and 99 % occupancy of
//! one destination, in each randomisation mode: a new flow gets a free
//! port whenever the range has one (exhaustively up to 1,024 ports; in
//! re-randomised windows beyond), never a taken one, and the drop comes
//! only when the range is full. The attempts each needed are printed as a
//! histogram (`--nocapture`).

use std::collections::HashSet;

use dataplane_common::{CtKey, Hook, SnatMode};
use testbed::kernel::{
    golden::snat::{node, INET, NODE, POD},
    packets::{self, Flow},
    port_search::{occupy, open_flows, src_port, take_own_ports, Attempts, MODES},
};

/// Checks that every port handed out is in range, was free, and is unique.
fn assert_fresh(range: (u16, u16), taken: &HashSet<u16>, got: &[u16]) {
    let unique: HashSet<u16> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "a port handed out twice");
    for p in got {
        assert!((range.0..=range.1).contains(p), "port {p} out of range");
        assert!(!taken.contains(p), "port {p} was taken");
    }
}

/// A range the search covers exhaustively: every free port is found, in
/// every mode, at every occupancy, and only a full range drops.
#[test]
fn every_free_port_of_a_small_range_is_found() {
    let range = (40_000, 40_999); // 1,000 ports
    for mode in MODES {
        for percent in [50, 90, 99] {
            let mut g = node(mode, range);
            let taken = occupy(&mut g, range, 1000 * percent / 100);
            let free = 1000 - taken.len();
            take_own_ports(&mut g, mode, 20_000, free as u16 + 1);
            g.reset_stats();
            let (got, dropped) = open_flows(&g, 20_000, free as u16 + 1);
            println!("{mode:?} {percent}%: {}", Attempts::of(&g));
            assert_eq!(
                (got.len(), dropped),
                (free, 1),
                "{mode:?} at {percent}%: all {free} free ports, then a counted drop"
            );
            assert_fresh(range, &taken, &got);
            assert_eq!(g.stats(Hook::ToEni).drop_nat_no_port, 1);
        }
    }
}

/// A range larger than the probe budget (the default 32768–65535): the
/// re-randomised windows still find the free ports scattered among taken
/// ones. At 99 % the chance that one search misses every free port in
/// 1,024 probes is about 0.99^1024 ≈ 3·10⁻⁵ (a CI run once met it): the
/// flow's retransmitted SYN searches again, and two searches that both
/// give up (≈ 10⁻⁹) fail the test.
#[test]
fn a_large_range_finds_free_ports_at_high_occupancy() {
    let range = (32_768, 65_535);
    let size = 32_768usize;
    for mode in MODES {
        for percent in [50, 90, 99] {
            let mut g = node(mode, range);
            let taken = occupy(&mut g, range, size * percent / 100);
            take_own_ports(&mut g, mode, 1_000, 20);
            g.reset_stats();
            let mut got = Vec::new();
            let mut retried = 0;
            for sport in 1_000..1_020 {
                // A search gives up after 1,024 probes: at 99 % about one
                // flow in 30,000 (0.99^1024); its SYN's retransmission
                // searches again from elsewhere, as netfilter's would.
                let (mut port, dropped) = open_flows(&g, sport, 1);
                if dropped == 1 {
                    retried += 1;
                    port = open_flows(&g, sport, 1).0;
                }
                got.extend(port);
            }
            println!("{mode:?} {percent}%: {}", Attempts::of(&g));
            assert_eq!(got.len(), 20, "{mode:?} at {percent}%");
            assert!(
                retried <= 1,
                "{mode:?} at {percent}%: {retried} searches gave up"
            );
            assert_fresh(range, &taken, &got);
        }
    }
}

#[test]
fn hashrandom_hashes_the_source_port_too() {
    let port = |sport| {
        let g = node(SnatMode::Hash, (32_768, 65_535));
        let out = g.run(
            Hook::ToEni,
            &packets::tcp_syn(Flow::new(POD, INET, sport, 443)),
        );
        src_port(&out.data)
    };
    assert_eq!(port(40_000), port(40_000), "the same flow, the same port");
    let distinct: HashSet<u16> = (40_000..40_010).map(port).collect();
    assert!(
        distinct.len() >= 9,
        "flows that differ only in their source port start elsewhere: {distinct:?}"
    );
}

#[test]
fn none_keeps_the_pods_port_even_outside_the_range() {
    let range = (32_768, 65_535);
    let mut g = node(SnatMode::Sequential, range);
    let (got, _) = open_flows(&g, 1_000, 1);
    assert_eq!(got, [1_000], "netfilter keeps a free source port as it is");
    // Taken towards this destination: a port of the range instead.
    let taken = CtKey::new(INET, NODE, 443, 2_000, 6);
    assert!(g
        .ct_maps
        .insert_rev_if_free(taken, CtKey::new([192, 168, 50, 1], INET, 2_000, 443, 6)));
    g.reset_stats();
    let (got, _) = open_flows(&g, 2_000, 1);
    assert!((range.0..=range.1).contains(&got[0]), "{got:?}");
    assert_eq!(
        g.stats(Hook::ToEni).nat_alloc_try_2_4,
        1,
        "own port, then the range"
    );
}
