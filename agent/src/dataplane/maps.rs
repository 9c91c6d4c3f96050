//! Typed access to the maps, from a loaded [`Dataplane`] or from the pins
//! alone (so `inspect` works while the agent is down).

use std::{borrow::Borrow, path::Path};

use aya::maps::{MapData, PerCpuArray};
use dataplane_common::{maps as names, Hook, Stats};

use super::{
    map_pin::{map_err, open_typed},
    Dataplane, DataplaneError, Result,
};

/// The counters of every hook, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsByHook {
    pub per_hook: [Stats; Hook::COUNT],
}

impl StatsByHook {
    pub fn hook(&self, hook: Hook) -> &Stats {
        &self.per_hook[hook as usize]
    }

    /// All hooks added together.
    pub fn total(&self) -> Stats {
        let mut t = Stats::default();
        for s in &self.per_hook {
            t.accumulate(s);
        }
        t
    }
}

fn sum_stats<T: Borrow<MapData>>(map: &PerCpuArray<T, Stats>) -> Result<StatsByHook> {
    let mut out = StatsByHook::default();
    for hook in Hook::ALL {
        let per_cpu = map.get(&(hook as u32), 0).map_err(map_err(names::STATS))?;
        for cpu in per_cpu.iter() {
            out.per_hook[hook as usize].accumulate(cpu);
        }
    }
    Ok(out)
}

impl Dataplane {
    /// `STATS`, summed over CPUs.
    pub fn stats(&self) -> Result<StatsByHook> {
        let map = self
            .ebpf()
            .map(names::STATS)
            .ok_or(DataplaneError::MissingMap(names::STATS))?;
        let map = PerCpuArray::<_, Stats>::try_from(map).map_err(map_err(names::STATS))?;
        sum_stats(&map)
    }

    /// Zeroes `STATS` (tests reset counters between cases).
    pub fn reset_stats(&mut self) -> Result<()> {
        let map = self
            .ebpf_mut()
            .map_mut(names::STATS)
            .ok_or(DataplaneError::MissingMap(names::STATS))?;
        let mut map = PerCpuArray::<_, Stats>::try_from(map).map_err(map_err(names::STATS))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io {
            path: "/sys/devices/system/cpu/possible".into(),
            source: e,
        })?;
        for hook in Hook::ALL {
            let zero =
                aya::maps::PerCpuValues::try_from(vec![Stats::default(); cpus]).map_err(|e| {
                    DataplaneError::Io {
                        path: "STATS".into(),
                        source: e,
                    }
                })?;
            map.set(hook as u32, zero, 0)
                .map_err(map_err(names::STATS))?;
        }
        Ok(())
    }
}

/// `STATS` opened from its pin under `bpf_root`.
pub struct PinnedStats {
    map: PerCpuArray<MapData, Stats>,
}

impl PinnedStats {
    pub fn open(bpf_root: &Path) -> Result<Self> {
        Ok(Self {
            map: open_typed(bpf_root, names::STATS)?,
        })
    }

    pub fn read(&self) -> Result<StatsByHook> {
        sum_stats(&self.map)
    }
}

/// Reads the pinned `STATS` under `bpf_root`.
pub fn read_stats(bpf_root: &Path) -> Result<StatsByHook> {
    PinnedStats::open(bpf_root)?.read()
}
