//! What `trunkline-agent run` was told: flags and their `TRUNKLINE_*`
//! twins, resolved by `main`.

use std::{path::PathBuf, time::Duration};

/// What `trunkline-agent run` was told.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunConfig {
    pub node_file: PathBuf,
    pub bpf_root: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub metrics_addr: String,
    pub introspection_addr: String,
    /// `None`: the object embedded at build time.
    pub ebpf_object: Option<PathBuf>,
    pub mtu: u32,
    pub ip_cooldown: Duration,
    /// Entries of `CT` and `SNAT_REV` (each) when they are created; `None`:
    /// sized from the node's CPUs (`dataplane::conntrack_entries_for`).
    pub conntrack_max: Option<u32>,
    /// aws-node's checkpoint to migrate from at start, if it exists.
    pub migrate_from_aws_node: Option<PathBuf>,
    /// Security groups for pods from the Kubernetes API (unset: local mode).
    pub kube: KubeSettings,
}

/// What `run` was told about Kubernetes.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct KubeSettings {
    pub kubeconfig: Option<PathBuf>,
    pub node_name: Option<String>,
    pub pod_eni_wait: Duration,
    /// `KUBERNETES_SERVICE_HOST` is set (running in a pod).
    pub in_cluster: bool,
}
