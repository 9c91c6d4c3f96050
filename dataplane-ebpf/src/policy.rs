//! The decisions the pipelines share, in one place: does a pod's traffic
//! need SNAT, and is a pod a strict security-group (branch) pod.

use dataplane_common::{
    config::CFG_F_SG_STANDARD, node::POD_F_SNAT_EXEMPT, Config, Ipv4, PodEntry, SnatMode,
};

use crate::maps;

/// A branch pod in strict mode: every packet goes through its branch ENI.
#[inline(always)]
pub fn strict_branch(cfg: &Config, pod: &PodEntry) -> bool {
    pod.vlan_id != 0 && cfg.flags & CFG_F_SG_STANDARD == 0
}

/// SNAT applies to a local non-branch pod (or a branch pod in standard
/// security-group mode) talking to a destination outside `NO_SNAT`, unless
/// SNAT is external.
#[inline(always)]
pub fn snat_needed(cfg: &Config, pod: &PodEntry, dst: Ipv4) -> bool {
    cfg.snat_mode() != Some(SnatMode::Off)
        && pod.flags & POD_F_SNAT_EXEMPT == 0
        && !strict_branch(cfg, pod)
        && !maps::no_snat(dst)
}
