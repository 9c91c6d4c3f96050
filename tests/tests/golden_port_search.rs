//! Golden packets for SNAT port search at 50 %, 90 % and 99 % occupancy of
//! one destination, in each randomisation mode: a new flow gets a free
//! port whenever the range has one (exhaustively up to 1,024 ports; in
//! re-randomised windows beyond), never a taken one, and the drop comes
//! only when the range is full. The attempts each needed are printed as a
//! histogram (`--nocapture`).

use std::collections::HashSet;

use dataplane_common::{CtKey, DropReason, Hook, SnatMode, VerdictRecord};
use testbed::kernel::{
    golden::{
        snat::{node, INET, NODE, POD},
        Golden, TC_ACT_OK, TC_ACT_SHOT,
    },
    packets::{self, Flow, L3_OFF},
};

const MODES: [SnatMode; 3] = [SnatMode::Random, SnatMode::Hash, SnatMode::Sequential];

/// A small deterministic generator (xorshift64), so the taken ports are
/// scattered the same way on every run.
struct Scatter(u64);

impl Scatter {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Takes `taken` of the ports in `lo..=hi` towards INET:443, scattered, as
/// other pods' flows would: `SNAT_REV` entries the search must skip.
fn occupy(g: &mut Golden, (lo, hi): (u16, u16), taken: usize) -> HashSet<u16> {
    let mut ports: Vec<u16> = (lo..=hi).collect();
    let mut rng = Scatter(0x9e37_79b9_7f4a_7c15);
    for i in (1..ports.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        ports.swap(i, j);
    }
    ports.truncate(taken);
    for (n, &p) in ports.iter().enumerate() {
        let other_pod = [192, 168, 50, (n % 250) as u8 + 1];
        let orig = CtKey::new(other_pod, INET, 10_000 + (n / 250) as u16, 443, 6);
        assert!(
            g.ct_maps
                .insert_rev_if_free(CtKey::new(INET, NODE, 443, p, 6), orig),
            "port {p}"
        );
    }
    ports.into_iter().collect()
}

/// `none` keeps a pod's free source port even outside the range: taking
/// the pods' own ports `first..first + n` towards INET:443 makes it search
/// the range, as the other modes do.
fn take_own_ports(g: &mut Golden, mode: SnatMode, first: u16, n: u16) {
    if mode != SnatMode::Sequential {
        return;
    }
    for p in first..first + n {
        let orig = CtKey::new([192, 168, 60, 1], INET, p, 443, 6);
        assert!(g
            .ct_maps
            .insert_rev_if_free(CtKey::new(INET, NODE, 443, p, 6), orig));
    }
}

fn src_port(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[L3_OFF + 20], p[L3_OFF + 21]])
}

/// Opens `n` new flows from POD to INET:443; the NAT port of each that
/// got one, and how many were dropped for want of a port.
fn open_flows(g: &Golden, first_sport: u16, n: u16) -> (Vec<u16>, usize) {
    let mut got = Vec::new();
    let mut dropped = 0;
    for i in 0..n {
        let syn = packets::tcp_syn(Flow::new(POD, INET, first_sport + i, 443));
        let out = g.run(Hook::ToEni, &syn);
        match out.action {
            TC_ACT_OK => got.push(src_port(&out.data)),
            TC_ACT_SHOT => {
                assert_eq!(
                    out.verdict,
                    Some(VerdictRecord::Drop {
                        reason: DropReason::NatNoPort as u32
                    })
                );
                dropped += 1;
            }
            other => panic!("action {other}: {out:?}"),
        }
    }
    (got, dropped)
}

fn histogram(g: &Golden) -> String {
    let s = g.stats(Hook::ToEni);
    format!(
        "1: {}, 2-4: {}, 5-16: {}, 17+: {} (129+: {}), mean {:.1} probes",
        s.nat_alloc_try_1,
        s.nat_alloc_try_2_4,
        s.nat_alloc_try_5_16,
        s.nat_alloc_try_17_plus,
        s.nat_alloc_try_129_plus,
        s.nat_probes as f64 / s.nat_new.max(1) as f64
    )
}

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
            println!("{mode:?} {percent}%: {}", histogram(&g));
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
/// ones. At 99 % the chance that one flow misses every free port in 1,024
/// probes is about 0.99^1024 ≈ 3·10⁻⁵.
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
            let (got, dropped) = open_flows(&g, 1_000, 20);
            println!("{mode:?} {percent}%: {}", histogram(&g));
            assert_eq!((got.len(), dropped), (20, 0), "{mode:?} at {percent}%");
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
