//! SNAT port search at a given occupancy of one destination: the taken
//! ports other pods hold, the new flows that must find free ones, and the
//! data path's histogram of attempts. Shared by the golden tests (which
//! assert on it) and `cargo xtask bench` (which records it).

use std::collections::HashSet;

use dataplane_common::{CtKey, DropReason, Hook, SnatMode, VerdictRecord};
use serde::Serialize;

use super::{
    golden::{
        snat::{INET, NODE, POD},
        Golden, TC_ACT_OK, TC_ACT_SHOT,
    },
    packets::{self, Flow, L3_OFF},
};

pub const MODES: [SnatMode; 3] = [SnatMode::Random, SnatMode::Hash, SnatMode::Sequential];

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
pub fn occupy(g: &mut Golden, (lo, hi): (u16, u16), taken: usize) -> HashSet<u16> {
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
pub fn take_own_ports(g: &mut Golden, mode: SnatMode, first: u16, n: u16) {
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

pub fn src_port(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[L3_OFF + 20], p[L3_OFF + 21]])
}

/// Opens `n` new flows from POD to INET:443; the NAT port of each that
/// got one, and how many were dropped for want of a port.
pub fn open_flows(g: &Golden, first_sport: u16, n: u16) -> (Vec<u16>, usize) {
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

/// The data path's own count of attempts per new mapping (`nat_alloc_try_*`).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Attempts {
    pub flows: u64,
    pub try_1: u64,
    pub try_2_4: u64,
    pub try_5_16: u64,
    pub try_17_plus: u64,
    /// Of `try_17_plus`, those past one window of 128 ports.
    pub try_129_plus: u64,
    pub mean: f64,
}

impl Attempts {
    pub fn of(g: &Golden) -> Self {
        let s = g.stats(Hook::ToEni);
        Self {
            flows: s.nat_new,
            try_1: s.nat_alloc_try_1,
            try_2_4: s.nat_alloc_try_2_4,
            try_5_16: s.nat_alloc_try_5_16,
            try_17_plus: s.nat_alloc_try_17_plus,
            try_129_plus: s.nat_alloc_try_129_plus,
            mean: s.nat_probes as f64 / s.nat_new.max(1) as f64,
        }
    }
}

impl std::fmt::Display for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "1: {}, 2-4: {}, 5-16: {}, 17+: {} (129+: {}), mean {:.1} probes",
            self.try_1, self.try_2_4, self.try_5_16, self.try_17_plus, self.try_129_plus, self.mean
        )
    }
}

/// `flows` new flows, one after another, at `percent` occupancy of the
/// default range (32768–65535) in `mode`: the attempts they took and how
/// many found no port. Each flow is removed once it has its port, so every
/// one searches the same occupancy.
pub fn at_occupancy(mode: SnatMode, percent: usize, flows: u16) -> (Attempts, usize) {
    let range = (32_768, 65_535);
    let mut g = super::golden::snat::node(mode, range);
    occupy(&mut g, range, 32_768 * percent / 100);
    take_own_ports(&mut g, mode, 1_000, flows);
    g.reset_stats();
    let mut no_port = 0;
    for i in 0..flows {
        let sport = 1_000 + i;
        let (got, dropped) = open_flows(&g, sport, 1);
        no_port += dropped;
        for nat_port in got {
            let flow = CtKey::new(POD, INET, sport, 443, 6);
            let reply = CtKey::new(INET, NODE, 443, nat_port, 6);
            g.ct_maps
                .remove_rev_batch(&[reply])
                .expect("removing the new mapping");
            g.ct_maps
                .remove_ct_batch(&[flow])
                .expect("removing the new flow");
        }
    }
    (Attempts::of(&g), no_port)
}
