//! Writing the maps the way the agent does, for data-path tests that run
//! without an agent (golden packets, the mini node).

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData};
use dataplane_common::{maps as names, Config, CtEntry, CtKey, EniEntry, Ipv4, PodEntry, VlanKey};
use trunkline_agent::dataplane::Dataplane;

pub fn set_config(dp: &mut Dataplane, cfg: Config) {
    let map = dp.map_mut(names::CONFIG).expect("CONFIG");
    let mut a: Array<&mut MapData, Config> = Array::try_from(map).expect("CONFIG type");
    a.set(0, cfg, 0).expect("CONFIG[0]");
}

pub fn add_pod(dp: &mut Dataplane, ip: Ipv4, pod: PodEntry) {
    let map = dp.map_mut(names::PODS).expect("PODS");
    let mut m: HashMap<&mut MapData, Ipv4, PodEntry> = HashMap::try_from(map).expect("PODS type");
    m.insert(ip, pod, 0).expect("PODS insert");
}

pub fn add_eni(dp: &mut Dataplane, ifindex: u32, eni: EniEntry) {
    let map = dp.map_mut(names::ENIS).expect("ENIS");
    let mut m: HashMap<&mut MapData, u32, EniEntry> = HashMap::try_from(map).expect("ENIS type");
    m.insert(ifindex, eni, 0).expect("ENIS insert");
}

pub fn add_no_snat(dp: &mut Dataplane, ip: Ipv4, prefix: u32, reason: u32) {
    let map = dp.map_mut(names::NO_SNAT).expect("NO_SNAT");
    let mut m: LpmTrie<&mut MapData, Ipv4, u32> = LpmTrie::try_from(map).expect("NO_SNAT type");
    m.insert(&Key::new(prefix, ip), reason, 0)
        .expect("NO_SNAT insert");
}

pub fn ct(dp: &Dataplane, key: &CtKey) -> Option<CtEntry> {
    let map = dp.map(names::CT).expect("CT");
    let m: HashMap<&MapData, CtKey, CtEntry> = HashMap::try_from(map).expect("CT type");
    m.get(key, 0).ok()
}

pub fn pod(dp: &Dataplane, ip: Ipv4) -> Option<PodEntry> {
    let map = dp.map(names::PODS).expect("PODS");
    let m: HashMap<&MapData, Ipv4, PodEntry> = HashMap::try_from(map).expect("PODS type");
    m.get(&ip, 0).ok()
}

pub fn snat_rev(dp: &Dataplane, key: &CtKey) -> Option<CtKey> {
    let map = dp.map(names::SNAT_REV).expect("SNAT_REV");
    let m: HashMap<&MapData, CtKey, CtKey> = HashMap::try_from(map).expect("SNAT_REV type");
    m.get(key, 0).ok()
}

/// Number of entries in `CT`.
pub fn ct_len(dp: &Dataplane) -> usize {
    let map = dp.map(names::CT).expect("CT");
    let m: HashMap<&MapData, CtKey, CtEntry> = HashMap::try_from(map).expect("CT type");
    m.keys().filter(Result::is_ok).count()
}

pub fn put_ct(dp: &mut Dataplane, key: CtKey, entry: CtEntry) {
    let map = dp.map_mut(names::CT).expect("CT");
    let mut m: HashMap<&mut MapData, CtKey, CtEntry> = HashMap::try_from(map).expect("CT type");
    m.insert(key, entry, 0).expect("CT insert");
}

pub fn add_vlan(dp: &mut Dataplane, trunk_ifindex: u32, vlan: u16, pod_ip: Ipv4) {
    let map = dp.map_mut(names::VLANS).expect("VLANS");
    let mut m: HashMap<&mut MapData, VlanKey, Ipv4> = HashMap::try_from(map).expect("VLANS type");
    m.insert(VlanKey::new(trunk_ifindex, vlan), pod_ip, 0)
        .expect("VLANS insert");
}

/// A `SERVICE_CIDRS` entry: destinations handed to the host stack.
pub fn add_pass_to_stack(dp: &mut Dataplane, ip: Ipv4, prefix: u32, reason: u32) {
    let map = dp.map_mut(names::SERVICE_CIDRS).expect("SERVICE_CIDRS");
    let mut m: LpmTrie<&mut MapData, Ipv4, u32> =
        LpmTrie::try_from(map).expect("SERVICE_CIDRS type");
    m.insert(&Key::new(prefix, ip), reason, 0)
        .expect("SERVICE_CIDRS insert");
}

pub fn put_snat_rev(dp: &mut Dataplane, reply: CtKey, orig: CtKey) {
    let map = dp.map_mut(names::SNAT_REV).expect("SNAT_REV");
    let mut m: HashMap<&mut MapData, CtKey, CtKey> = HashMap::try_from(map).expect("SNAT_REV type");
    m.insert(reply, orig, 0).expect("SNAT_REV insert");
}
