//! The maps that describe the node — `ENIS`, `CONFIG`, `NO_SNAT`,
//! `SERVICE_CIDRS` — opened from their pins. The node reconciler
//! ([`crate::node::reconcile::NodeReconciler`]) holds the one
//! [`NodeMaps`]; nothing else writes them (readers use [`super::views`]).

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, MapData,
};
use dataplane_common::{maps as names, Config, EniEntry, Ipv4};
use ipnet::Ipv4Net;

use super::{
    map_pin::{all, map_err, removed, MapOwner, MapSource},
    Result,
};

/// Write access to the node's maps.
pub struct NodeMaps {
    enis: HashMap<MapData, u32, EniEntry>,
    no_snat: LpmTrie<MapData, Ipv4, u32>,
    service_cidrs: LpmTrie<MapData, Ipv4, u32>,
    config: Array<MapData, Config>,
}

fn cidr_key(net: &Ipv4Net) -> Key<Ipv4> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

impl MapOwner for NodeMaps {
    fn from_source(src: &mut MapSource<'_>) -> Result<Self> {
        Ok(Self {
            enis: src.typed(names::ENIS)?,
            no_snat: src.typed(names::NO_SNAT)?,
            service_cidrs: src.typed(names::SERVICE_CIDRS)?,
            config: src.typed(names::CONFIG)?,
        })
    }
}

impl NodeMaps {
    pub fn enis(&self) -> Result<Vec<(u32, EniEntry)>> {
        all(names::ENIS, self.enis.iter())
    }

    pub fn put_eni(&mut self, ifindex: u32, entry: &EniEntry) -> Result<()> {
        self.enis
            .insert(ifindex, entry, 0)
            .map_err(map_err(names::ENIS))
    }

    pub fn remove_eni(&mut self, ifindex: u32) -> Result<()> {
        removed(names::ENIS, self.enis.remove(&ifindex))
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

fn same(a: &Key<Ipv4>, b: &Key<Ipv4>) -> bool {
    a.prefix_len() == b.prefix_len() && a.data() == b.data()
}

fn sync_trie(
    trie: &mut LpmTrie<MapData, Ipv4, u32>,
    name: &'static str,
    want: &[(Ipv4Net, u32)],
) -> Result<()> {
    let have: Vec<(Key<Ipv4>, u32)> = all(name, trie.iter())?;
    for (key, _) in &have {
        if !want.iter().any(|(n, _)| same(&cidr_key(n), key)) {
            removed(name, trie.remove(key))?;
        }
    }
    for (net, value) in want {
        let unchanged = have
            .iter()
            .any(|(k, v)| same(k, &cidr_key(net)) && v == value);
        if !unchanged {
            trie.insert(&cidr_key(net), value, 0)
                .map_err(map_err(name))?;
        }
    }
    Ok(())
}
