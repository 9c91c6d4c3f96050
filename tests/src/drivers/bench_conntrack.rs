//! Conntrack costs for `cargo xtask bench`: a GC pass over a table of 1M
//! flows (the agent's own `Collector` on the data path's own maps, batched
//! reads and deletes) against one element-by-element walk of the same
//! table (what GC did four times per pass before), and the SNAT port
//! search's attempts at 50, 90 and 99 % occupancy in each mode.

use std::{collections::HashSet, time::Instant};

use anyhow::{Context, Result};
use aya::maps::{HashMap, MapData};
use dataplane_common::{
    conntrack::{CT_F_SNAT, CT_STATE_NEW},
    maps as names, CtEntry, CtKey, SnatMode,
};
use serde::Serialize;
use trunkline_agent::conntrack_gc::Collector;

use crate::kernel::{
    golden::Golden,
    port_search::{self, Attempts, MODES},
};

const SEC: u64 = 1_000_000_000;
const NODE: [u8; 4] = [192, 168, 16, 10];
const POD: [u8; 4] = [192, 168, 31, 170];

#[derive(Debug, Serialize)]
pub struct GcCost {
    pub flows: usize,
    pub table_capacity: u32,
    /// Flows that had expired (unreplied UDP idle 31 s), one in two.
    pub expired_flows: usize,
    /// The first pass: scan, re-read and delete up to its budget.
    pub first_pass_ms: f64,
    pub first_pass_removed: usize,
    pub budget: usize,
    /// Passes, and their total time, until every expired flow was gone.
    pub passes_to_clean: usize,
    pub clean_ms: f64,
    /// A pass that finds nothing to remove: the steady-state cost.
    pub idle_pass_ms: f64,
    /// Reading the whole table in batches, and element by element (aya's
    /// walk: `get_next_key` and a lookup per flow).
    pub batched_read_ms: f64,
    pub per_element_read_ms: f64,
}

/// The `i`-th flow: a pod's UDP flow to its own remote address (unique
/// reverse keys for up to 2^24 flows).
fn flow(i: usize, now_ns: u64) -> (CtKey, CtEntry, CtKey) {
    let remote = [198, 18 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let key = CtKey::new(POD, remote, 40_000, 53, 17);
    let entry = CtEntry {
        created_ns: now_ns - 40 * SEC,
        // One in two idle past UDP's 30 s unreplied timeout.
        last_seen_ns: if i.is_multiple_of(2) {
            now_ns - 31 * SEC
        } else {
            now_ns
        },
        nat_ip: NODE,
        nat_port: 40_000,
        state: CT_STATE_NEW,
        flags: CT_F_SNAT,
        ..Default::default()
    };
    (key, entry, key.snat_reply(NODE, 40_000))
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// GC over `flows` flows in tables a quarter larger (below early drop).
pub fn gc_cost(flows: usize) -> Result<GcCost> {
    let capacity = u32::try_from(flows + flows / 4).context("table size")?;
    let mut g = Golden::load_sized(&[(names::CT, capacity), (names::SNAT_REV, capacity)]);
    let now = 100_000 * SEC; // a fake clock: only ages matter
    let started = Instant::now();
    for i in 0..flows {
        let (key, entry, reply) = flow(i, now);
        g.ct_maps
            .adopt(key, entry, Some(reply))
            .with_context(|| format!("flow {i} of {flows}"))?;
    }
    eprintln!(
        "bench: {flows} flows written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let batched = Instant::now();
    let read = g.ct_maps.ct_entries()?.len();
    let batched_read_ms = ms(batched);
    anyhow::ensure!(read == flows, "read {read} of {flows} flows");
    // The same table element by element, in a map of its own.
    let mut copy = HashMap::<MapData, CtKey, CtEntry>::create(capacity, 0)?;
    for i in 0..flows {
        let (key, entry, _) = flow(i, now);
        copy.insert(key, entry, 0)?;
    }
    let walk = Instant::now();
    let walked = copy.iter().filter(|r| r.is_ok()).count();
    let per_element_read_ms = ms(walk);
    anyhow::ensure!(walked == flows, "walked {walked} of {flows} flows");
    drop(copy);

    let mut gc = Collector::default();
    let mut passes = 0;
    let mut removed = 0;
    let mut first = (0.0, 0);
    let clean = Instant::now();
    // Bounded: each pass removes up to its budget (or everything left).
    while passes < 64 {
        let t = Instant::now();
        let r = gc.collect(&mut g.ct_maps, now, NODE, &HashSet::new())?;
        passes += 1;
        removed += r.expired;
        if passes == 1 {
            first = (ms(t), r.expired);
        }
        if !r.budget_exhausted {
            break;
        }
    }
    let clean_ms = ms(clean);
    let expired_flows = flows.div_ceil(2);
    anyhow::ensure!(
        removed == expired_flows,
        "GC removed {removed} of {expired_flows} expired flows in {passes} passes"
    );
    let idle = Instant::now();
    let r = gc.collect(&mut g.ct_maps, now, NODE, &HashSet::new())?;
    let idle_pass_ms = ms(idle);
    anyhow::ensure!(
        r.expired == 0 && r.ct_scanned == flows - expired_flows,
        "{r:?}"
    );
    Ok(GcCost {
        flows,
        table_capacity: capacity,
        expired_flows,
        first_pass_ms: first.0,
        first_pass_removed: first.1,
        budget: gc.budget,
        passes_to_clean: passes,
        clean_ms,
        idle_pass_ms,
        batched_read_ms,
        per_element_read_ms,
    })
}

#[derive(Debug, Serialize)]
pub struct SearchCost {
    pub mode: &'static str,
    pub occupancy_percent: usize,
    pub attempts: Attempts,
    /// New flows that found no port (0 unless the range is full).
    pub no_port: usize,
}

fn mode_name(m: SnatMode) -> &'static str {
    match m {
        SnatMode::Random => "prng",
        SnatMode::Hash => "hashrandom",
        SnatMode::Sequential => "none",
        SnatMode::Off => "off",
    }
}

/// Attempts per new mapping of `flows` flows at 50, 90 and 99 % occupancy
/// of one destination's ports (the default range), per mode.
pub fn port_search(flows: u16) -> Vec<SearchCost> {
    let mut out = Vec::new();
    for mode in MODES {
        for percent in [50, 90, 99] {
            let (attempts, no_port) = port_search::at_occupancy(mode, percent, flows);
            eprintln!(
                "bench: port search {} at {percent}%: {attempts}",
                mode_name(mode)
            );
            out.push(SearchCost {
                mode: mode_name(mode),
                occupancy_percent: percent,
                attempts,
                no_port,
            });
        }
    }
    out
}
