//! `FRAG_PORTS` and `FRAG_HELD` from userspace. The data path creates
//! both, and removes a datagram's entry once it has passed whole and a
//! held fragment once it re-injected it; one [`FragMaps`] (the GC thread)
//! removes what a lost fragment left behind, after the reassembly timeout.

use std::time::Duration;

use aya::maps::{HashMap, IterableMap, MapData};
use dataplane_common::{maps as names, FragEntry, FragKey, HeldFragment, HeldKey};
use map_batch::Reader;

use super::{
    map_pin::{MapOwner, MapSource},
    DataplaneError, Result,
};

/// Held frames per syscall: each is 16 KiB, so 32 are half a megabyte of
/// buffer, and the whole map (128) is read in 4 calls.
const HELD_CHUNK: usize = 32;
/// Datagram entries per syscall (16 bytes each).
const PORTS_CHUNK: usize = 4096;

/// Write access to the fragment maps (LRU hashes; aya's `HashMap` serves both kinds).
pub struct FragMaps {
    ports: HashMap<MapData, FragKey, FragEntry>,
    held: HashMap<MapData, HeldKey, HeldFragment>,
}

/// What a [`FragMaps::expire`] pass found and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragExpiry {
    /// `FRAG_PORTS` entries before the pass.
    pub datagrams: usize,
    /// Of those, removed: older than the timeout.
    pub datagrams_expired: usize,
    /// `FRAG_HELD` entries before the pass.
    pub held: usize,
    /// Of those, removed: their first fragment never came in time.
    pub held_expired: usize,
}

impl MapOwner for FragMaps {
    fn from_source(src: &mut MapSource<'_>) -> Result<Self> {
        Ok(Self {
            ports: src.typed(names::FRAG_PORTS)?,
            held: src.typed(names::FRAG_HELD)?,
        })
    }
}

impl FragMaps {
    /// Removes datagram entries created, and held fragments held, more
    /// than `timeout` before `now_ns` (CLOCK_MONOTONIC_COARSE, as the data
    /// path stamps them).
    pub fn expire(&self, now_ns: u64, timeout: Duration) -> Result<FragExpiry> {
        let timeout = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let old = |stamp: u64| now_ns.saturating_sub(stamp) > timeout;
        let ports: Vec<(FragKey, FragEntry)> =
            read(names::FRAG_PORTS, self.ports.map(), PORTS_CHUNK)?;
        let stale: Vec<FragKey> = ports
            .iter()
            .filter(|(_, e)| old(e.created_ns))
            .map(|(k, _)| *k)
            .collect();
        let datagrams_expired =
            map_batch::delete(self.ports.map(), &stale).map_err(batch_err(names::FRAG_PORTS))?;
        let held: Vec<(HeldKey, HeldFragment)> =
            read(names::FRAG_HELD, self.held.map(), HELD_CHUNK)?;
        let stale: Vec<HeldKey> = held
            .iter()
            .filter(|(_, h)| old(h.held_ns))
            .map(|(k, _)| *k)
            .collect();
        let held_expired =
            map_batch::delete(self.held.map(), &stale).map_err(batch_err(names::FRAG_HELD))?;
        Ok(FragExpiry {
            datagrams: ports.len(),
            datagrams_expired,
            held: held.len(),
            held_expired,
        })
    }

    /// Every datagram entry (tests, `inspect`).
    pub fn datagrams(&self) -> Result<Vec<(FragKey, FragEntry)>> {
        read(names::FRAG_PORTS, self.ports.map(), PORTS_CHUNK)
    }

    /// The keys of every held fragment (tests, `inspect`).
    pub fn held_keys(&self) -> Result<Vec<HeldKey>> {
        let held: Vec<(HeldKey, HeldFragment)> =
            read(names::FRAG_HELD, self.held.map(), HELD_CHUNK)?;
        Ok(held.into_iter().map(|(k, _)| k).collect())
    }
}

fn read<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    map: &MapData,
    chunk: usize,
) -> Result<Vec<(K, V)>> {
    Reader::new(map, chunk)
        .and_then(Reader::collect_all)
        .map_err(batch_err(name))
}

fn batch_err(name: &'static str) -> impl Fn(map_batch::BatchError) -> DataplaneError {
    move |source| DataplaneError::Batch { name, source }
}
