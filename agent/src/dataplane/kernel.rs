//! What the running kernel offers the data path, found by probing it (the
//! helpers, program and map types the object uses), not by reading a
//! verifier log after a failed load; and the attach mode that follows.
//!
//! The floor is Linux 6.1 LTS: the oldest kernel the programs are verified
//! and tested on (`cargo xtask vm-test`). Below it the agent refuses to
//! start with one line that names the kernel and the first missing feature.

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
    util::KernelVersion,
};

use super::AttachMode;

/// The oldest kernel trunkline is verified and tested on.
pub const FLOOR: (u32, u32) = (6, 1);
/// TCX (BPF links on the TC hooks) appeared in Linux 6.6.
const TCX_SINCE: (u32, u32) = (6, 6);

/// A kernel feature the data path needs, and the release that added it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Feature {
    pub name: &'static str,
    pub since: &'static str,
    probe: Probe,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Probe {
    Program(ProgramType),
    Map(MapType),
    Helper(BpfHelper),
}

const fn helper(name: &'static str, since: &'static str, id: BpfHelper) -> Feature {
    Feature {
        name,
        since,
        probe: Probe::Helper(id),
    }
}

/// Everything the object uses, oldest first, so the first missing one is
/// the most telling.
pub const REQUIRED: &[Feature] = &[
    Feature {
        name: "BPF_PROG_TYPE_SCHED_CLS",
        since: "4.1",
        probe: Probe::Program(ProgramType::SchedClassifier),
    },
    Feature {
        name: "BPF_MAP_TYPE_PERCPU_ARRAY",
        since: "4.6",
        probe: Probe::Map(MapType::PerCpuArray),
    },
    Feature {
        name: "BPF_MAP_TYPE_LRU_HASH",
        since: "4.10",
        probe: Probe::Map(MapType::LruHash),
    },
    Feature {
        name: "BPF_MAP_TYPE_LPM_TRIE",
        since: "4.11",
        probe: Probe::Map(MapType::LpmTrie),
    },
    helper(
        "bpf_skb_vlan_push",
        "4.3",
        BpfHelper::BPF_FUNC_skb_vlan_push,
    ),
    helper(
        "bpf_skb_pull_data",
        "4.9",
        BpfHelper::BPF_FUNC_skb_pull_data,
    ),
    helper(
        "bpf_redirect_neigh",
        "5.10",
        BpfHelper::BPF_FUNC_redirect_neigh,
    ),
    helper(
        "bpf_redirect_peer",
        "5.10",
        BpfHelper::BPF_FUNC_redirect_peer,
    ),
    helper(
        "bpf_ktime_get_coarse_ns",
        "5.11",
        BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
    ),
];

/// The kernel as the data path sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSupport {
    /// `major.minor.patch` (Debian's and Ubuntu's real patch level).
    pub version: String,
    pub attach: AttachMode,
}

/// Why the data path cannot run here: one line, for the log, `health` and
/// the DaemonSet's readiness output.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Unsupported {
    #[error("kernel {version} lacks {} (Linux {}); trunkline needs Linux >= {}.{}", feature.name, feature.since, FLOOR.0, FLOOR.1)]
    Missing { version: String, feature: Feature },
    #[error("kernel {version} is older than Linux {}.{}, the oldest trunkline is verified on", FLOOR.0, FLOOR.1)]
    TooOld { version: String },
    #[error("probing the kernel's BPF support: {0}")]
    Probe(String),
}

fn current_version() -> (KernelVersion, String) {
    let v = KernelVersion::current().unwrap_or_else(|_| KernelVersion::new(0, 0, 0));
    let s = v.to_string();
    (v, s)
}

fn available(f: &Feature) -> Result<bool, String> {
    match f.probe {
        Probe::Program(t) => is_program_supported(t).map_err(|e| e.to_string()),
        Probe::Map(t) => is_map_supported(t).map_err(|e| e.to_string()),
        Probe::Helper(h) => {
            is_helper_supported(ProgramType::SchedClassifier, h).map_err(|e| e.to_string())
        }
    }
}

/// Probes the running kernel.
pub fn probe() -> Result<KernelSupport, Unsupported> {
    let (v, version) = current_version();
    for feature in REQUIRED {
        let ok =
            available(feature).map_err(|e| Unsupported::Probe(format!("{}: {e}", feature.name)))?;
        if !ok {
            return Err(Unsupported::Missing {
                version,
                feature: *feature,
            });
        }
    }
    let at_least =
        |(major, minor): (u32, u32)| v >= KernelVersion::new(major as u8, minor as u8, 0);
    if !at_least(FLOOR) {
        return Err(Unsupported::TooOld { version });
    }
    Ok(KernelSupport {
        version,
        attach: attach_mode(),
    })
}

/// The attach mode for this kernel (TCX from 6.6, else clsact + cls_bpf),
/// decided once per process: the kernel does not change under it.
pub fn attach_mode() -> AttachMode {
    static MODE: std::sync::OnceLock<AttachMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        let (v, _) = current_version();
        if v >= KernelVersion::new(TCX_SINCE.0 as u8, TCX_SINCE.1 as u8, 0) {
            AttachMode::Tcx
        } else {
            AttachMode::Clsact
        }
    })
}

/// What loading one program cost on this kernel (from the kernel's own
/// program info after a successful load).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProgramCost {
    pub program: &'static str,
    /// Instructions the verifier processed (Linux 5.16+).
    pub verified_insns: Option<u32>,
    /// Translated (post-verifier) size in bytes.
    pub xlated_bytes: Option<u32>,
    pub jited_bytes: u32,
    /// Wall time of the program's BPF_PROG_LOAD: verification and JIT.
    pub load_us: u64,
}

/// Loads every program of `object` into the verifier, one at a time (maps
/// unpinned), and reports each one's cost.
pub fn load_report(object: &[u8]) -> Result<Vec<ProgramCost>, super::DataplaneError> {
    use super::DataplaneError;
    let mut ebpf = aya::EbpfLoader::new().load(object)?;
    let mut out = Vec::new();
    for hook in dataplane_common::Hook::ALL {
        let name = hook.program_name();
        let prog: &mut aya::programs::SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        let started = std::time::Instant::now();
        prog.load()
            .map_err(|source| DataplaneError::Program { name, source })?;
        let load_us = started.elapsed().as_micros() as u64;
        let info = prog
            .info()
            .map_err(|source| DataplaneError::Program { name, source })?;
        out.push(ProgramCost {
            program: name,
            verified_insns: info.verified_instruction_count(),
            xlated_bytes: info.size_translated(),
            jited_bytes: info.size_jitted(),
            load_us,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_kernel_feature_and_floor() {
        let e = Unsupported::Missing {
            version: "5.10.223".into(),
            feature: REQUIRED[REQUIRED.len() - 1],
        };
        assert_eq!(
            e.to_string(),
            "kernel 5.10.223 lacks bpf_ktime_get_coarse_ns (Linux 5.11); trunkline needs Linux >= 6.1"
        );
    }

    #[test]
    fn features_are_listed_oldest_first_within_each_kind() {
        let helpers: Vec<&str> = REQUIRED
            .iter()
            .filter(|f| matches!(f.probe, Probe::Helper(_)))
            .map(|f| f.since)
            .collect();
        let mut sorted = helpers.clone();
        sorted.sort_by_key(|s| {
            let (a, b) = s.split_once('.').unwrap_or((s, "0"));
            (a.parse::<u32>().unwrap_or(0), b.parse::<u32>().unwrap_or(0))
        });
        assert_eq!(helpers, sorted);
    }

    /// This machine runs the data path (the tests do): the probe agrees.
    #[test]
    fn the_running_kernel_is_supported() {
        let k = probe().expect("the test machine's kernel runs the data path");
        assert_eq!(k.attach, attach_mode());
    }
}
