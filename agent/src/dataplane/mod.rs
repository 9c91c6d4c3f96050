//! Loading the kernel object, pinning its maps, attaching its programs, and
//! typed access to the maps.

mod attach;
mod bpffs;
mod ct_maps;
mod frag_maps;
pub mod kernel;
mod links;
mod map_pin;
mod maps;
mod node_maps;
mod pod_attach;
mod pod_maps;
mod views;

use std::path::{Path, PathBuf};

use aya::{programs::SchedClassifier, Ebpf, EbpfLoader};
use dataplane_common::{maps as names, Hook};

pub use attach::{AttachMode, Attachment};
pub use bpffs::{ensure_bpffs_dir, is_bpffs};
pub use ct_maps::{CtMaps, CtView, CtWalk, WALK_CHUNK};
pub use frag_maps::{FragExpiry, FragMaps};
pub use links::{links_dir, list_link_pins, remove_link_pin, LinkPin, LINKS_DIR};
pub use map_pin::{MapOwner, MapSource};
pub use maps::{read_stats, PinnedStats, StatsByHook};
pub use node_maps::NodeMaps;
pub use pod_attach::detach_pod;
pub use pod_maps::PodMaps;
pub use views::{ConfigMap, EnisMap, PodsMap, VlansMap};

/// Errors of the loader, with the object, path or interface they concern.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{path}: not on a bpf filesystem (mount -t bpf bpf <dir>, or point --bpf-root at /sys/fs/bpf/...)")]
    NotBpffs { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {name}: {source}")]
    Batch {
        name: &'static str,
        #[source]
        source: map_batch::BatchError,
    },
    #[error("attaching {program} to {iface}: {reason}")]
    Attach {
        program: &'static str,
        iface: String,
        reason: String,
    },
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// The loaded data path: programs verified and loaded, maps created (or
/// re-opened from their pins), and the attachments made through it.
pub struct Dataplane {
    ebpf: Ebpf,
    bpf_root: Option<PathBuf>,
    attachments: Vec<Attachment>,
    /// Existing attachments found at start get this object's programs
    /// (an upgrade); otherwise they are left exactly as they are.
    replace_existing: bool,
}

impl Dataplane {
    /// Loads `object` and pins every map as `<bpf_root>/<MAP>`. A map that is
    /// already pinned there is re-used, not replaced, so the data path keeps
    /// its state across agent restarts.
    pub fn load_pinned(object: &[u8], bpf_root: &Path) -> Result<Self> {
        Self::load_pinned_sized(object, bpf_root, &[])
    }

    /// Like [`Self::load_pinned`], with some maps' `max_entries` changed.
    /// A size applies when the map is created: a map already pinned keeps
    /// the size it was created with (see [`pinned_capacity`]).
    pub fn load_pinned_sized(
        object: &[u8],
        bpf_root: &Path,
        sizes: &[(&str, u32)],
    ) -> Result<Self> {
        ensure_bpffs_dir(bpf_root)?;
        let pins: Vec<(&'static str, PathBuf)> =
            names::ALL.iter().map(|n| (*n, bpf_root.join(n))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        for (name, size) in sizes {
            loader.map_max_entries(name, *size);
        }
        let ebpf = loader.load(object)?;
        let dp = Self::finish_load(ebpf, Some(bpf_root.to_path_buf()))?;
        remove_retired_pins(bpf_root)?;
        Ok(dp)
    }

    /// Loads `object` with private, unpinned maps (golden-packet tests, benchmarks).
    pub fn load_unpinned(object: &[u8]) -> Result<Self> {
        Self::load_unpinned_sized(object, &[])
    }

    /// Like [`Self::load_unpinned`], with some maps' `max_entries` changed
    /// (e.g. conntrack sized for a busy node).
    pub fn load_unpinned_sized(object: &[u8], sizes: &[(&str, u32)]) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        for (name, size) in sizes {
            loader.map_max_entries(name, *size);
        }
        let ebpf = loader.load(object)?;
        Self::finish_load(ebpf, None)
    }

    fn finish_load(mut ebpf: Ebpf, bpf_root: Option<PathBuf>) -> Result<Self> {
        for name in names::ALL {
            if ebpf.map(name).is_none() {
                return Err(DataplaneError::MissingMap(name));
            }
        }
        for hook in Hook::ALL {
            let name = hook.program_name();
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram(name))?
                .try_into()
                .map_err(|source| DataplaneError::Program { name, source })?;
            prog.load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        tracing::debug!(bpf_root = ?bpf_root, "data path loaded");
        Ok(Self {
            ebpf,
            bpf_root,
            attachments: Vec::new(),
            replace_existing: false,
        })
    }

    /// Whether attachments that already exist (pinned ENI links, pod
    /// filters) are switched to this object's programs, atomically
    /// (`bpf_link_update` / a netlink filter replace): on for an upgrade,
    /// off for a plain restart, which leaves the data path untouched.
    pub fn set_replace_existing(&mut self, on: bool) {
        self.replace_existing = on;
    }

    /// Where the maps are pinned, if they are.
    pub fn bpf_root(&self) -> Option<&Path> {
        self.bpf_root.as_deref()
    }

    /// The loaded program of `hook` (for attaching or `test_run`).
    pub fn program(&self, hook: Hook) -> Result<&SchedClassifier> {
        let name = hook.program_name();
        self.ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }

    fn program_mut(&mut self, hook: Hook) -> Result<&mut SchedClassifier> {
        let name = hook.program_name();
        self.ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }

    /// Attaches `hook`'s program to `iface` in the calling thread's network
    /// namespace (TCX where the kernel has it, else clsact with trunkline's
    /// own priority and handle). Detached when `self` is dropped.
    pub fn attach(&mut self, iface: &str, hook: Hook) -> Result<AttachMode> {
        let prog = self.program_mut(hook)?;
        let attachment = attach::attach(prog, iface, hook)?;
        let mode = attachment.mode;
        self.attachments.push(attachment);
        Ok(mode)
    }

    /// What has been attached through this handle.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Moves map `name` out of the loaded object, for a typed owner
    /// ([`MapOwner::take_from`]); a second take fails.
    pub(crate) fn take_map(&mut self, name: &'static str) -> Result<aya::maps::Map> {
        self.ebpf
            .take_map(name)
            .ok_or(DataplaneError::MissingMap(name))
    }

    pub(crate) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// Unpins the maps an earlier version pinned and this one does not use
/// (`names::RETIRED`), once this version's programs are loaded: the
/// programs of the earlier version still attached keep their own
/// references until they are replaced.
fn remove_retired_pins(bpf_root: &Path) -> Result<()> {
    for name in names::RETIRED {
        let pin = bpf_root.join(name);
        match std::fs::remove_file(&pin) {
            Ok(()) => tracing::info!(
                map = name,
                "removed the pin of a map this version no longer uses"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataplaneError::Io { path: pin, source }),
        }
    }
    Ok(())
}

/// `max_entries` of the map pinned as `<bpf_root>/<name>`, if it is there.
pub fn pinned_capacity(bpf_root: &Path, name: &str) -> Option<u32> {
    aya::maps::MapInfo::from_pin(bpf_root.join(name))
        .ok()
        .map(|i| i.max_entries())
}

/// Whether pinned map `name` is an LRU hash: `CT` and `SNAT_REV` pinned by
/// a version before full tables refused new flows (a pinned map keeps its
/// type until the maps are created again).
pub fn pinned_is_lru(bpf_root: &Path, name: &str) -> bool {
    aya::maps::MapInfo::from_pin(bpf_root.join(name))
        .ok()
        .and_then(|i| i.map_type().ok())
        == Some(aya::maps::MapType::LruHash)
}

/// The default size of `CT` and `SNAT_REV` for a node with `cpus` CPUs:
/// kube-proxy's rule for netfilter's table (32,768 per CPU), with the
/// compiled-in 262,144 as the floor rather than kube-proxy's 131,072
/// (netfilter reclaims room continuously, the agent's GC every few
/// seconds, so the table gets more headroom).
pub fn conntrack_entries_for(cpus: usize) -> u32 {
    let per_cpu = u32::try_from(cpus)
        .unwrap_or(u32::MAX)
        .saturating_mul(32_768);
    per_cpu.max(names::CT_MAX as u32)
}
