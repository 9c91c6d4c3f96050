//! `CT` and `SNAT_REV` from userspace. The data path creates and updates
//! flows; in userspace one [`CtMaps`] removes (conntrack GC), repairs
//! (GC) and imports (migration from aws-node) them: the agent opens it
//! once and hands it from migration to GC. [`CtView`] only reads
//! (`inspect`).

use std::path::Path;

use aya::maps::{HashMap, IterableMap, MapData};
use dataplane_common::{maps as names, CtEntry, CtKey};

use super::{
    map_pin::{all, found, map_err, open_typed, removed, MapOwner, MapSource},
    Result,
};

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
        all(names::CT, self.0.iter())
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
        all(names::CT, self.ct.iter())
    }

    pub fn rev_entries(&self) -> Result<Vec<(CtKey, CtKey)>> {
        all(names::SNAT_REV, self.rev.iter())
    }

    /// `CT[key]` as it is now (GC re-reads a flow before removing it).
    pub fn flow(&self, key: &CtKey) -> Result<Option<CtEntry>> {
        found(names::CT, self.ct.get(key, 0))
    }

    /// How many flows `CT` holds at most (its size when it was created).
    pub fn ct_capacity(&self) -> Result<u32> {
        self.ct
            .map()
            .info()
            .map(|i| i.max_entries())
            .map_err(map_err(names::CT))
    }

    /// Whether `SNAT_REV` has `reply`.
    pub fn has_rev(&self, reply: &CtKey) -> Result<bool> {
        Ok(found(names::SNAT_REV, self.rev.get(reply, 0))?.is_some())
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

    /// Removes a flow's `CT` entry; absent is fine.
    pub fn remove_ct(&mut self, k: &CtKey) -> Result<()> {
        removed(names::CT, self.ct.remove(k))
    }

    /// Removes a `SNAT_REV` entry; absent is fine.
    pub fn remove_rev(&mut self, k: &CtKey) -> Result<()> {
        removed(names::SNAT_REV, self.rev.remove(k))
    }
}
