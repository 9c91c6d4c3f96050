//! `CT` and `SNAT_REV` from userspace. The data path creates and updates
//! flows; in userspace one [`CtMaps`] removes (conntrack GC), repairs
//! (GC) and imports (migration from aws-node) them: the agent opens it
//! once and hands it from migration to GC. [`CtView`] only reads
//! (`inspect`). Whole-table reads and GC's deletes are batched
//! (`map_batch`): one syscall per few thousand flows, not two per flow.

use std::path::Path;

use aya::maps::{HashMap, IterableMap, MapData};
use dataplane_common::{maps as names, CtEntry, CtKey};
use map_batch::Reader;

use super::{
    map_pin::{found, map_err, open_typed, MapOwner, MapSource},
    DataplaneError, Result,
};

/// Entries per syscall in batched walks: 4,096 flows are ~220 KB of
/// buffers, and a table of 1M flows is read in ~256 calls.
pub const WALK_CHUNK: usize = 4096;

/// `bpf_map_update_elem` flag: insert only if absent (linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

/// Write access to `CT` and `SNAT_REV`.
pub struct CtMaps {
    ct: HashMap<MapData, CtKey, CtEntry>,
    rev: HashMap<MapData, CtKey, CtKey>,
}

/// `CT` for reading.
pub struct CtView(HashMap<MapData, CtKey, CtEntry>);

impl CtView {
    pub fn open(bpf_root: &Path) -> Result<Self> {
        Ok(Self(open_typed(bpf_root, names::CT)?))
    }

    pub fn entries(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        read_all(names::CT, self.0.map())
    }
}

impl MapOwner for CtMaps {
    fn from_source(src: &mut MapSource<'_>) -> Result<Self> {
        Ok(Self {
            ct: src.typed(names::CT)?,
            rev: src.typed(names::SNAT_REV)?,
        })
    }
}

impl CtMaps {
    pub fn ct_entries(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        read_all(names::CT, self.ct.map())
    }

    pub fn rev_entries(&self) -> Result<Vec<(CtKey, CtKey)>> {
        read_all(names::SNAT_REV, self.rev.map())
    }

    /// `CT` read [`WALK_CHUNK`] flows at a time; flows removed during the
    /// walk are not seen later in it, and the walk always ends.
    pub fn ct_walk(&self) -> Result<CtWalk<'_>> {
        Reader::new(self.ct.map(), WALK_CHUNK)
            .map(CtWalk)
            .map_err(batch_err(names::CT))
    }

    /// Removes these flows' `CT` entries (absent ones are skipped); how
    /// many were removed.
    pub fn remove_ct_batch(&self, keys: &[CtKey]) -> Result<usize> {
        map_batch::delete(self.ct.map(), keys).map_err(batch_err(names::CT))
    }

    /// Removes these `SNAT_REV` entries (absent ones are skipped); how many
    /// were removed.
    pub fn remove_rev_batch(&self, replies: &[CtKey]) -> Result<usize> {
        map_batch::delete(self.rev.map(), replies).map_err(batch_err(names::SNAT_REV))
    }

    /// `CT[key]` as it is now (GC re-reads a flow before removing it).
    pub fn flow(&self, key: &CtKey) -> Result<Option<CtEntry>> {
        found(names::CT, self.ct.get(key, 0))
    }

    /// `SNAT_REV[reply]` as it is now: the flow a reply belongs to.
    pub fn reverse(&self, reply: &CtKey) -> Result<Option<CtKey>> {
        found(names::SNAT_REV, self.rev.get(reply, 0))
    }

    /// How many flows `CT` holds at most (its size when it was created).
    pub fn ct_capacity(&self) -> Result<u32> {
        self.ct
            .map()
            .info()
            .map(|i| i.max_entries())
            .map_err(map_err(names::CT))
    }

    /// Inserts `SNAT_REV[reply] = orig` unless `reply` is taken (a new
    /// flow may have taken the port meanwhile); whether it was inserted.
    pub fn insert_rev_if_free(&mut self, reply: CtKey, orig: CtKey) -> bool {
        self.rev.insert(reply, orig, BPF_NOEXIST).is_ok()
    }

    /// Takes over a connection another conntrack tracked (migration):
    /// `CT[key]` and, for a translated flow, `SNAT_REV[reply]`. Overwrites
    /// whatever the data path recorded for these tuples meanwhile (an
    /// identity "host flow" entry for the already-translated packets).
    pub fn adopt(&mut self, key: CtKey, entry: CtEntry, reply: Option<CtKey>) -> Result<()> {
        if let Some(r) = reply {
            self.rev
                .insert(r, key, 0)
                .map_err(map_err(names::SNAT_REV))?;
        }
        self.ct.insert(key, entry, 0).map_err(map_err(names::CT))
    }
}

/// A chunked walk of `CT` ([`CtMaps::ct_walk`]).
pub struct CtWalk<'m>(Reader<'m, CtKey, CtEntry>);

impl CtWalk<'_> {
    /// The next flows (keys and entries, as long as each other), or `None`
    /// at the end of the table.
    pub fn next_chunk(&mut self) -> Result<Option<(&[CtKey], &[CtEntry])>> {
        self.0.next_chunk().map_err(batch_err(names::CT))
    }
}

fn read_all<K: aya::Pod, V: aya::Pod>(name: &'static str, map: &MapData) -> Result<Vec<(K, V)>> {
    Reader::new(map, WALK_CHUNK)
        .and_then(Reader::collect_all)
        .map_err(batch_err(name))
}

fn batch_err(name: &'static str) -> impl Fn(map_batch::BatchError) -> DataplaneError {
    move |source| DataplaneError::Batch { name, source }
}
