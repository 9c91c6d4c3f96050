//! Every map of the data path. The agent owns their contents; the names are
//! the pin names (`dataplane_common::maps`).

use aya_ebpf::{
    btf_maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use dataplane_common::{
    maps::{
        CT_MAX, ENIS_MAX, FRAGS_MAX, NO_SNAT_MAX, PODS_MAX, SERVICE_CIDRS_MAX, SNAT_REV_MAX,
        VLANS_MAX,
    },
    Config, CtEntry, CtKey, EniEntry, FragKey, FragPorts, Hook, Ipv4, PodEntry, Stats, VlanKey,
};

#[btf_map]
pub static PODS: HashMap<Ipv4, PodEntry, PODS_MAX> = HashMap::new();

#[btf_map]
pub static ENIS: HashMap<u32, EniEntry, ENIS_MAX> = HashMap::new();

#[btf_map]
pub static NO_SNAT: LpmTrie<Ipv4, u32, NO_SNAT_MAX> = LpmTrie::new();

#[btf_map]
pub static SERVICE_CIDRS: LpmTrie<Ipv4, u32, SERVICE_CIDRS_MAX> = LpmTrie::new();

#[btf_map]
pub static CONFIG: Array<Config, 1> = Array::new();

#[btf_map]
pub static CT: LruHashMap<CtKey, CtEntry, CT_MAX> = LruHashMap::new();

#[btf_map]
pub static SNAT_REV: LruHashMap<CtKey, CtKey, SNAT_REV_MAX> = LruHashMap::new();

#[btf_map]
pub static STATS: PerCpuArray<Stats, { Hook::COUNT }> = PerCpuArray::new();

#[btf_map]
pub static FRAGS: LruHashMap<FragKey, FragPorts, FRAGS_MAX> = LruHashMap::new();

#[btf_map]
pub static VLANS: HashMap<VlanKey, Ipv4, VLANS_MAX> = HashMap::new();

/// Whether `ip` is for the host stack: a service CIDR (kube-proxy) or an
/// address of the node itself.
#[inline(always)]
pub fn pass_to_stack(ip: Ipv4) -> bool {
    SERVICE_CIDRS.get(&Key::new(32, ip)).is_some()
}

/// The pod that owns `ip`, if it is one of this node's.
#[inline(always)]
pub fn pod(ip: &Ipv4) -> Option<PodEntry> {
    // SAFETY: valid map value pointer; PodEntry is plain data.
    PODS.get_ptr(ip).map(|p| unsafe { *p })
}

/// Whether `ip` falls in a `NO_SNAT` prefix (VPC CIDRs, exclusions).
#[inline(always)]
pub fn no_snat(ip: Ipv4) -> bool {
    NO_SNAT.get(&Key::new(32, ip)).is_some()
}

/// `CONFIG[0]` once the agent has configured the node (before that,
/// every program passes everything to the stack).
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0).filter(|c| c.primary_eni_ifindex != 0)
}
