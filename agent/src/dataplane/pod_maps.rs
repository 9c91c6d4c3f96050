//! `PODS` and `VLANS`, the maps of the pods: written only by
//! [`crate::pods::Pods`], which holds the one [`PodMaps`].

use std::{net::Ipv4Addr, path::Path};

use aya::maps::{HashMap, Map, MapData};
use dataplane_common::{maps as names, Ipv4, PodEntry, VlanKey};

use super::{
    map_pin::{all, found, map_err, open, removed},
    Dataplane, Result,
};

/// Write access to `PODS` and `VLANS`.
pub struct PodMaps {
    pods: HashMap<MapData, Ipv4, PodEntry>,
    vlans: HashMap<MapData, VlanKey, Ipv4>,
}

impl PodMaps {
    pub fn open(bpf_root: &Path) -> Result<Self> {
        Self::new(|name| open(bpf_root, name))
    }

    /// The maps of `dp`, moved out of it: for a data path without an agent
    /// (golden-packet tests, benchmarks), where the maps may not be pinned.
    /// `dp` keeps no handle and a second take fails, so there is still one
    /// writer; the agent opens the pins instead.
    pub fn take_from(dp: &mut Dataplane) -> Result<Self> {
        Self::new(|name| dp.take_map(name))
    }

    fn new(mut map: impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            pods: HashMap::try_from(map(names::PODS)?).map_err(map_err(names::PODS))?,
            vlans: HashMap::try_from(map(names::VLANS)?).map_err(map_err(names::VLANS))?,
        })
    }

    pub fn pods(&self) -> Result<Vec<(Ipv4Addr, PodEntry)>> {
        let it = self
            .pods
            .iter()
            .map(|r| r.map(|(k, v)| (Ipv4Addr::from(k), v)));
        all(names::PODS, it)
    }

    pub fn pod(&self, ip: Ipv4Addr) -> Result<Option<PodEntry>> {
        found(names::PODS, self.pods.get(&ip.octets(), 0))
    }

    pub fn put_pod(&mut self, ip: Ipv4Addr, entry: &PodEntry) -> Result<()> {
        self.pods
            .insert(ip.octets(), entry, 0)
            .map_err(map_err(names::PODS))
    }

    /// Removes `ip`'s entry; absent is fine.
    pub fn remove_pod(&mut self, ip: Ipv4Addr) -> Result<()> {
        removed(names::PODS, self.pods.remove(&ip.octets()))
    }

    /// Every `VLANS` entry: (trunk ifindex, VLAN id, branch pod IP).
    pub fn vlans(&self) -> Result<Vec<(u32, u16, Ipv4Addr)>> {
        let it = self
            .vlans
            .iter()
            .map(|r| r.map(|(k, v)| (k.trunk_ifindex, k.vlan_id, Ipv4Addr::from(v))));
        all(names::VLANS, it)
    }

    /// The branch pod a tagged frame on `trunk_ifindex` with `vlan` is for.
    pub fn vlan(&self, trunk_ifindex: u32, vlan: u16) -> Result<Option<Ipv4Addr>> {
        let r = self.vlans.get(&VlanKey::new(trunk_ifindex, vlan), 0);
        Ok(found(names::VLANS, r)?.map(Ipv4Addr::from))
    }

    pub fn put_vlan(&mut self, trunk_ifindex: u32, vlan: u16, pod: Ipv4Addr) -> Result<()> {
        self.vlans
            .insert(VlanKey::new(trunk_ifindex, vlan), pod.octets(), 0)
            .map_err(map_err(names::VLANS))
    }

    /// Removes the entry; absent is fine.
    pub fn remove_vlan(&mut self, trunk_ifindex: u32, vlan: u16) -> Result<()> {
        removed(
            names::VLANS,
            self.vlans.remove(&VlanKey::new(trunk_ifindex, vlan)),
        )
    }
}
