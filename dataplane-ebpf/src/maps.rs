//! Every map of the data path. The agent owns their contents; the names are
//! the pin names (`dataplane_common::maps`).

use aya_ebpf::{
    btf_maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use dataplane_common::{
    maps::{
        CT_MAX, ENIS_MAX, FRAG_HELD_MAX, FRAG_PORTS_MAX, NO_SNAT_MAX, PODS_MAX, SERVICE_CIDRS_MAX,
        SNAT_REV_MAX, VLANS_MAX,
    },
    Config, CtEntry, CtKey, EniEntry, FragEntry, FragKey, HeldFragment, HeldKey, Hook, Ipv4,
    PodEntry, Stats, VlanKey,
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

// `CT` and `SNAT_REV` are plain (preallocated) hash maps, not LRU ones: a
// full table refuses the new flow (`drop_ct_full`, netfilter's "table full,
// dropping packet") instead of evicting a live flow whose next packet would
// leave from another port; the agent's GC makes room, dropping unassured
// flows first when the table is nearly full.
#[btf_map]
pub static CT: HashMap<CtKey, CtEntry, CT_MAX> = HashMap::new();

#[btf_map]
pub static SNAT_REV: HashMap<CtKey, CtKey, SNAT_REV_MAX> = HashMap::new();

#[btf_map]
pub static STATS: PerCpuArray<Stats, { Hook::COUNT }> = PerCpuArray::new();

// LRU: an entry goes when its datagram has passed whole, or when the
// agent's GC finds it older than the reassembly timeout; evicting one
// still in use costs at most that datagram.
#[btf_map]
pub static FRAG_PORTS: LruHashMap<FragKey, FragEntry, FRAG_PORTS_MAX> = LruHashMap::new();

// A plain hash, not LRU: the kernel's LRU maps take free nodes per CPU in
// batches and evict long before they are full, and with 128 entries that
// lost held fragments at low occupancy (seen on 6.1). Full, a hold is
// refused (`frag_unheld`); the GC removes what waited past the timeout.
#[btf_map]
pub static FRAG_HELD: HashMap<HeldKey, HeldFragment, FRAG_HELD_MAX> = HashMap::new();

// Where a frame is copied before it is inserted into `FRAG_HELD`: a map
// update copies its value from memory of the value's size, and 16 KiB is
// far beyond the 512-byte stack.
#[btf_map]
pub static FRAG_SCRATCH: PerCpuArray<HeldFragment, 1> = PerCpuArray::new();

#[btf_map]
pub static VLANS: HashMap<VlanKey, Ipv4, VLANS_MAX> = HashMap::new();

/// `-EEXIST` from a map update: the `BPF_NOEXIST` key is there already.
const EEXIST: i32 = 17;

/// How an insert with `BPF_NOEXIST` into `CT` or `SNAT_REV` went.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The key was there already (another CPU, or an earlier packet).
    Exists,
    /// The table is full (`-E2BIG`; any other failure is treated alike).
    Full,
}

impl Inserted {
    #[inline(always)]
    pub fn of(result: Result<(), i32>) -> Self {
        match result {
            Ok(()) => Self::New,
            Err(e) if e == -EEXIST => Self::Exists,
            Err(_) => Self::Full,
        }
    }
}

/// Whether `ip` is for the host stack: a service CIDR (kube-proxy) or an
/// address of the node itself.
#[inline(always)]
pub fn pass_to_stack(ip: Ipv4) -> bool {
    SERVICE_CIDRS.get(&Key::new(32, ip)).is_some()
}

// Map values are read through the accessors below, the one place that
// dereferences a map value pointer. Each value type is plain data valid for
// any bytes, and the pointer stays valid for the whole program run (the
// kernel frees removed elements after an RCU grace period); values are
// copied out, except the two entries a program updates in place.

/// The pod that owns `ip`, if it is one of this node's.
#[inline(always)]
pub fn pod(ip: &Ipv4) -> Option<PodEntry> {
    // SAFETY: see above.
    PODS.get_ptr(ip).map(|p| unsafe { *p })
}

/// ENI `ifindex`'s entry.
#[inline(always)]
pub fn eni(ifindex: u32) -> Option<EniEntry> {
    // SAFETY: see above.
    ENIS.get_ptr(&ifindex).map(|p| unsafe { *p })
}

/// The pod IP behind branch ENI `key` (trunk, VLAN id).
#[inline(always)]
pub fn vlan_pod(key: &VlanKey) -> Option<Ipv4> {
    // SAFETY: see above.
    VLANS.get_ptr(key).map(|p| unsafe { *p })
}

/// The original tuple of a SNATed flow, by its reply tuple.
#[inline(always)]
pub fn snat_orig(reply: &CtKey) -> Option<CtKey> {
    // SAFETY: see above.
    SNAT_REV.get_ptr(reply).map(|p| unsafe { *p })
}

/// A fragmented datagram's entry at one hook, updated in place (only the
/// CPUs that see its fragments write it; a lost update leaves the entry
/// to the GC).
#[inline(always)]
pub fn frag_entry(key: &FragKey) -> Option<&'static mut FragEntry> {
    // SAFETY: see above; the reference is not kept past this run.
    FRAG_PORTS.get_ptr_mut(key).map(|p| unsafe { &mut *p })
}

/// A held fragment, read in place (16 KiB is no value to copy).
#[inline(always)]
pub fn held(key: &HeldKey) -> Option<&'static HeldFragment> {
    // SAFETY: see above; the reference is not kept past this run.
    FRAG_HELD.get_ptr(key).map(|p| unsafe { &*p })
}

/// This CPU's scratch frame (see `FRAG_SCRATCH`).
#[inline(always)]
pub fn frag_scratch() -> Option<&'static mut HeldFragment> {
    // SAFETY: a per-CPU slot, as for `stats`.
    FRAG_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// A copy of flow `key`'s conntrack entry.
#[inline(always)]
pub fn ct(key: &CtKey) -> Option<CtEntry> {
    // SAFETY: see above.
    CT.get_ptr(key).map(|p| unsafe { *p })
}

/// Flow `key`'s conntrack entry, updated in place. Concurrent updates
/// from other CPUs only race on counters and timestamps, which are
/// advisory (the agent's GC reads them with a grace period).
#[inline(always)]
pub fn ct_mut(key: &CtKey) -> Option<&'static mut CtEntry> {
    // SAFETY: see above; the reference is not kept past this run.
    CT.get_ptr_mut(key).map(|p| unsafe { &mut *p })
}

/// This CPU's counters for `hook`. Per-CPU: plain increments, no atomics.
#[inline(always)]
pub fn stats(hook: Hook) -> Option<&'static mut Stats> {
    // SAFETY: see above; a per-CPU array slot is only touched by programs
    // running on this CPU, and a TC program is not preempted by another
    // on the same CPU.
    STATS.get_ptr_mut(hook as u32).map(|p| unsafe { &mut *p })
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
