//! Read-only views of the maps, opened from their pins: what `inspect`,
//! the metrics and the tests read. They have no write method, so whoever
//! holds one cannot change the data path; each map's one writer is its
//! owner's type ([`super::PodMaps`], [`super::NodeMaps`], [`super::CtMaps`]).

use std::{net::Ipv4Addr, path::Path};

use aya::maps::{Array, HashMap, MapData};
use dataplane_common::{maps as names, Config, EniEntry, Ipv4, PodEntry, VlanKey};

use super::{
    map_pin::{all, found, map_err, open_typed},
    Result,
};

/// `PODS`: pod IP → its entry.
pub struct PodsMap(HashMap<MapData, Ipv4, PodEntry>);
/// `ENIS`: ifindex → ENI.
pub struct EnisMap(HashMap<MapData, u32, EniEntry>);
/// `VLANS`: (trunk ifindex, VLAN id) → branch pod IP.
pub struct VlansMap(HashMap<MapData, VlanKey, Ipv4>);
/// `CONFIG[0]`.
pub struct ConfigMap(Array<MapData, Config>);

impl PodsMap {
    pub fn open(bpf_root: &Path) -> Result<Self> {
        Ok(Self(open_typed(bpf_root, names::PODS)?))
    }
    pub fn entries(&self) -> Result<Vec<(Ipv4Addr, PodEntry)>> {
        let it = self
            .0
            .iter()
            .map(|r| r.map(|(k, v)| (Ipv4Addr::from(k), v)));
        all(names::PODS, it)
    }
}

impl EnisMap {
    pub fn open(bpf_root: &Path) -> Result<Self> {
        Ok(Self(open_typed(bpf_root, names::ENIS)?))
    }
    pub fn entries(&self) -> Result<Vec<(u32, EniEntry)>> {
        all(names::ENIS, self.0.iter())
    }
}

impl VlansMap {
    pub fn open(bpf_root: &Path) -> Result<Self> {
        Ok(Self(open_typed(bpf_root, names::VLANS)?))
    }
    /// The branch pod a tagged frame on `trunk_ifindex` with `vlan` is for.
    pub fn get(&self, trunk_ifindex: u32, vlan: u16) -> Result<Option<Ipv4Addr>> {
        let r = self.0.get(&VlanKey::new(trunk_ifindex, vlan), 0);
        Ok(found(names::VLANS, r)?.map(Ipv4Addr::from))
    }
}

impl ConfigMap {
    pub fn open(bpf_root: &Path) -> Result<Self> {
        Ok(Self(open_typed(bpf_root, names::CONFIG)?))
    }
    pub fn get(&self) -> Result<Config> {
        self.0.get(&0, 0).map_err(map_err(names::CONFIG))
    }
}
