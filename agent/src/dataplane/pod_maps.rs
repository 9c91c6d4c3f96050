//! `PODS` and `VLANS`, the maps of the pods: written only by
//! [`crate::pods::Pods`], which holds the one [`PodMaps`].

use std::net::Ipv4Addr;

use aya::maps::{HashMap, MapData};
use dataplane_common::{maps as names, Ipv4, PodEntry, VlanKey};

use super::{
    map_pin::{all, found, map_err, removed, MapOwner, MapSource},
    Result,
};

/// Write access to `PODS` and `VLANS`.
pub struct PodMaps {
    pods: HashMap<MapData, Ipv4, PodEntry>,
    vlans: HashMap<MapData, VlanKey, Ipv4>,
}

impl MapOwner for PodMaps {
    fn from_source(src: &mut MapSource<'_>) -> Result<Self> {
        Ok(Self {
            pods: src.typed(names::PODS)?,
            vlans: src.typed(names::VLANS)?,
        })
    }
}

impl PodMaps {
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
