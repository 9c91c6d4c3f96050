//! The maps the agent fills from its desired state — `PODS`, `ENIS`,
//! `NO_SNAT`, `SERVICE_CIDRS`, `CONFIG` — opened from their pins. The
//! agent's reconciler holds the one [`NodeMaps`]; nothing else writes them.

use std::{net::Ipv4Addr, path::Path};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData,
};
use dataplane_common::{maps as names, Config, EniEntry, Ipv4, PodEntry, VlanKey};
use ipnet::Ipv4Net;

use super::{DataplaneError, Result};

fn open(bpf_root: &Path, name: &'static str) -> Result<Map> {
    let data = MapData::from_pin(bpf_root.join(name))
        .map_err(|source| DataplaneError::Map { name, source })?;
    Map::from_map_data(data).map_err(|source| DataplaneError::Map { name, source })
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// Whether a map operation failed only because the key was absent.
fn is_not_found(e: &aya::maps::MapError) -> bool {
    matches!(
        e,
        aya::maps::MapError::KeyNotFound | aya::maps::MapError::ElementNotFound
    ) || matches!(e, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

/// `PODS` and `ENIS` for reading (also used by `inspect`).
pub struct PodsMap(HashMap<MapData, Ipv4, PodEntry>);
pub struct EnisMap(HashMap<MapData, u32, EniEntry>);

impl PodsMap {
    pub fn open(bpf_root: &Path) -> Result<Self> {
        let m = open(bpf_root, names::PODS)?;
        Ok(Self(HashMap::try_from(m).map_err(map_err(names::PODS))?))
    }
    pub fn entries(&self) -> Result<Vec<(Ipv4Addr, PodEntry)>> {
        self.0
            .iter()
            .map(|r| r.map(|(k, v)| (Ipv4Addr::from(k), v)))
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(names::PODS))
    }
}

impl EnisMap {
    pub fn open(bpf_root: &Path) -> Result<Self> {
        let m = open(bpf_root, names::ENIS)?;
        Ok(Self(HashMap::try_from(m).map_err(map_err(names::ENIS))?))
    }
    pub fn entries(&self) -> Result<Vec<(u32, EniEntry)>> {
        self.0
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(names::ENIS))
    }
}

/// Write access to the agent-owned maps.
pub struct NodeMaps {
    pods: PodsMap,
    enis: EnisMap,
    no_snat: LpmTrie<MapData, Ipv4, u32>,
    service_cidrs: LpmTrie<MapData, Ipv4, u32>,
    config: Array<MapData, Config>,
    vlans: HashMap<MapData, VlanKey, Ipv4>,
}

fn cidr_key(net: &Ipv4Net) -> Key<Ipv4> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

impl NodeMaps {
    pub fn open(bpf_root: &Path) -> Result<Self> {
        Ok(Self {
            pods: PodsMap::open(bpf_root)?,
            enis: EnisMap::open(bpf_root)?,
            no_snat: LpmTrie::try_from(open(bpf_root, names::NO_SNAT)?)
                .map_err(map_err(names::NO_SNAT))?,
            service_cidrs: LpmTrie::try_from(open(bpf_root, names::SERVICE_CIDRS)?)
                .map_err(map_err(names::SERVICE_CIDRS))?,
            config: Array::try_from(open(bpf_root, names::CONFIG)?)
                .map_err(map_err(names::CONFIG))?,
            vlans: HashMap::try_from(open(bpf_root, names::VLANS)?)
                .map_err(map_err(names::VLANS))?,
        })
    }

    /// The branch pod a tagged frame on `trunk_ifindex` with `vlan` is for.
    pub fn vlan(&self, trunk_ifindex: u32, vlan: u16) -> Result<Option<Ipv4Addr>> {
        match self.vlans.get(&VlanKey::new(trunk_ifindex, vlan), 0) {
            Ok(ip) => Ok(Some(Ipv4Addr::from(ip))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_err(names::VLANS)(e)),
        }
    }

    pub fn put_vlan(&mut self, trunk_ifindex: u32, vlan: u16, pod: Ipv4Addr) -> Result<()> {
        self.vlans
            .insert(VlanKey::new(trunk_ifindex, vlan), pod.octets(), 0)
            .map_err(map_err(names::VLANS))
    }

    /// Removes the entry; absent is fine.
    pub fn remove_vlan(&mut self, trunk_ifindex: u32, vlan: u16) -> Result<()> {
        match self.vlans.remove(&VlanKey::new(trunk_ifindex, vlan)) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_err(names::VLANS)(e)),
        }
    }

    pub fn pods(&self) -> Result<Vec<(Ipv4Addr, PodEntry)>> {
        self.pods.entries()
    }

    pub fn pod(&self, ip: Ipv4Addr) -> Result<Option<PodEntry>> {
        match self.pods.0.get(&ip.octets(), 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_err(names::PODS)(e)),
        }
    }

    pub fn put_pod(&mut self, ip: Ipv4Addr, entry: &PodEntry) -> Result<()> {
        self.pods
            .0
            .insert(ip.octets(), entry, 0)
            .map_err(map_err(names::PODS))
    }

    /// Removes `ip`'s entry; absent is fine.
    pub fn remove_pod(&mut self, ip: Ipv4Addr) -> Result<()> {
        match self.pods.0.remove(&ip.octets()) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_err(names::PODS)(e)),
        }
    }

    pub fn enis(&self) -> Result<Vec<(u32, EniEntry)>> {
        self.enis.entries()
    }

    pub fn put_eni(&mut self, ifindex: u32, entry: &EniEntry) -> Result<()> {
        self.enis
            .0
            .insert(ifindex, entry, 0)
            .map_err(map_err(names::ENIS))
    }

    pub fn remove_eni(&mut self, ifindex: u32) -> Result<()> {
        match self.enis.0.remove(&ifindex) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_err(names::ENIS)(e)),
        }
    }

    /// Makes `NO_SNAT` hold exactly `want` (CIDR → reason).
    pub fn sync_no_snat(&mut self, want: &[(Ipv4Net, u32)]) -> Result<()> {
        sync_trie(&mut self.no_snat, names::NO_SNAT, want)
    }

    /// Makes `SERVICE_CIDRS` hold exactly `want` (CIDR → reason).
    pub fn sync_service_cidrs(&mut self, want: &[(Ipv4Net, u32)]) -> Result<()> {
        sync_trie(&mut self.service_cidrs, names::SERVICE_CIDRS, want)
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(map_err(names::CONFIG))
    }

    pub fn put_config(&mut self, c: &Config) -> Result<()> {
        self.config.set(0, c, 0).map_err(map_err(names::CONFIG))
    }
}

fn sync_trie(
    trie: &mut LpmTrie<MapData, Ipv4, u32>,
    name: &'static str,
    want: &[(Ipv4Net, u32)],
) -> Result<()> {
    let have: Vec<(Key<Ipv4>, u32)> = trie
        .iter()
        .collect::<std::result::Result<_, _>>()
        .map_err(map_err(name))?;
    for (key, _) in &have {
        let keep = want.iter().any(|(n, _)| {
            cidr_key(n).prefix_len() == key.prefix_len() && cidr_key(n).data() == key.data()
        });
        if !keep {
            match trie.remove(key) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
    }
    for (net, value) in want {
        let unchanged = have.iter().any(|(k, v)| {
            k.prefix_len() == cidr_key(net).prefix_len()
                && k.data() == cidr_key(net).data()
                && v == value
        });
        if !unchanged {
            trie.insert(&cidr_key(net), value, 0)
                .map_err(map_err(name))?;
        }
    }
    Ok(())
}
