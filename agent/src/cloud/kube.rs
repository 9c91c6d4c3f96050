//! Security groups for pods from the Kubernetes API: the agent's side of
//! `trunkline-kube`. When the agent can reach an apiserver (a kubeconfig,
//! or the in-cluster service account) and knows its node name, AddPod asks
//! the pod watch's branch book whether the pod has a branch ENI, waiting
//! (bounded) for the `vpc.amazonaws.com/pod-eni` annotation of a pod that
//! requests one; and a reconciler removes the `PODS`/`VLANS` entries of
//! branch pods whose annotation disappeared or changed, or that were
//! deleted. Without Kubernetes (local mode) none of this runs and the node
//! file's `[[branch]]` entries apply as before.
//!
//! | variable / flag | default | meaning |
//! |---|---|---|
//! | `KUBECONFIG` / `--kubeconfig` | unset | kubeconfig file of the apiserver to watch; unset: the in-cluster service account when `KUBERNETES_SERVICE_HOST` is set |
//! | `MY_NODE_NAME` (else `NODE_NAME`) / `--node-name` | unset | this node's name; Kubernetes mode needs it (aws-node's DaemonSet sets `MY_NODE_NAME` from `spec.nodeName`) |
//! | `TRUNKLINE_POD_ENI_WAIT` / `--pod-eni-wait` | `8` | seconds AddPod waits for the annotation of a pod that requests `vpc.amazonaws.com/pod-eni`; kept below trunkline-cni's 10 s RPC timeout, the runtime retries after a failure |

use std::{sync::Arc, time::Duration};

use tonic::Status;
use trunkline_kube::{
    ApiAccess, BranchBook, BranchEni, BranchState, DecideError, Options, PodEniSource,
};

use crate::{
    agent::Shared, config::KubeSettings, pods::checkpoint::PodRecord, pods::Branch,
    serve::metrics::Metrics,
};

/// Default of `TRUNKLINE_POD_ENI_WAIT` (seconds).
pub const DEFAULT_POD_ENI_WAIT_SECS: u64 = 8;
/// How long AddPod waits for the watch to deliver a pod it has not seen
/// before it GETs the pod.
const UNKNOWN_WAIT: Duration = Duration::from_secs(2);
const GET_TIMEOUT: Duration = Duration::from_secs(3);

impl KubeSettings {
    /// Where the apiserver is, or `None` (local mode, no cluster).
    pub fn access(&self) -> Option<ApiAccess> {
        match (&self.kubeconfig, self.in_cluster) {
            (Some(p), _) => Some(ApiAccess::Kubeconfig(p.clone())),
            (None, true) => Some(ApiAccess::InCluster),
            (None, false) => None,
        }
    }

    /// The watch's options, or `None` (with the reason) in local mode.
    pub fn options(&self) -> Result<Options, &'static str> {
        let access = match (&self.kubeconfig, self.in_cluster) {
            (Some(p), _) => ApiAccess::Kubeconfig(p.clone()),
            (None, true) => ApiAccess::InCluster,
            (None, false) => return Err("no kubeconfig and not in a cluster"),
        };
        let node_name = match &self.node_name {
            Some(n) if !n.is_empty() => n.clone(),
            _ => return Err("no node name (MY_NODE_NAME / NODE_NAME / --node-name)"),
        };
        Ok(Options {
            access,
            node_name,
            annotation_wait: self.pod_eni_wait,
            unknown_wait: UNKNOWN_WAIT.min(self.pod_eni_wait),
            get_timeout: GET_TIMEOUT,
        })
    }
}

/// The node name from the environment aws-node users already set.
pub fn node_name_from_env(get: impl Fn(&str) -> Option<String>) -> Option<String> {
    get("MY_NODE_NAME")
        .filter(|s| !s.is_empty())
        .or_else(|| get("NODE_NAME").filter(|s| !s.is_empty()))
}

pub struct BranchSource {
    src: PodEniSource,
    metrics: Arc<Metrics>,
}

fn branch_of(b: &BranchEni) -> Branch {
    Branch {
        ip: b.ip,
        vlan: b.vlan,
        mac: b.mac,
    }
}

/// Whether record `r` is still what the book's branch `b` says.
fn matches(r: &PodRecord, b: &BranchEni) -> bool {
    r.ip == b.ip && r.vlan == b.vlan && r.branch_mac.as_deref() == Some(&b.mac.to_string())
}

impl BranchSource {
    /// Starts the watch and the reconciler, or returns `None` in local mode.
    pub async fn start(
        settings: &KubeSettings,
        agent: Shared,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let options = match settings.options() {
            Ok(o) => o,
            Err(why) => {
                if settings.kubeconfig.is_some()
                    || settings.in_cluster
                    || settings.node_name.is_some()
                {
                    tracing::warn!(
                        reason = why,
                        "Kubernetes half-configured: pod-eni annotations are not watched"
                    );
                } else {
                    tracing::info!(reason = why, "local mode: branch ENIs from the node file");
                }
                return Ok(None);
            }
        };
        if settings.pod_eni_wait >= Duration::from_secs(10) {
            // trunkline-cni gives up on the RPC after 10 s: a longer wait
            // only makes the runtime retry an ADD the agent still works on.
            tracing::warn!(wait = ?settings.pod_eni_wait, "TRUNKLINE_POD_ENI_WAIT is not below trunkline-cni's 10 s RPC timeout");
        }
        let src = PodEniSource::connect(options).await?;
        tokio::spawn(reconcile(agent, src.book().clone(), metrics.clone()));
        Ok(Some(Arc::new(Self { src, metrics })))
    }

    /// The branch decision for AddPod (awaited before the agent lock).
    pub async fn decide(&self, namespace: &str, name: &str) -> Result<Option<Branch>, Status> {
        let start = std::time::Instant::now();
        let decided = self.src.decide(namespace, name).await;
        let outcome = match &decided {
            Ok(Some(_)) => "branch",
            Ok(None) => "regular",
            Err(DecideError::Invalid(_)) => "invalid",
            Err(DecideError::NotYet(_)) => "not_annotated",
            Err(DecideError::Unreachable(..)) => "unreachable",
            Err(DecideError::NotOnThisNode(..)) => "not_on_this_node",
        };
        self.metrics.observe_pod_eni(outcome, start.elapsed());
        match decided {
            Ok(b) => Ok(b.as_ref().map(branch_of)),
            // The pod must not start with this annotation: a permanent error.
            Err(e @ DecideError::Invalid(_)) => Err(Status::invalid_argument(e.to_string())),
            Err(e @ DecideError::NotOnThisNode(..)) => {
                Err(Status::failed_precondition(e.to_string()))
            }
            // Retryable: the runtime calls ADD again.
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    /// Whether `branch` is still the pod's decision (checked under the
    /// agent lock, so the reconciler cannot miss a record added after it
    /// ran).
    pub fn still(&self, namespace: &str, name: &str, branch: &Option<Branch>) -> bool {
        match (self.src.book().state(namespace, name), branch) {
            (Some(BranchState::Ready(b)), Some(want)) => branch_of(&b) == *want,
            (Some(BranchState::Regular), None) => true,
            // Deleted meanwhile (the runtime tears the sandbox down).
            _ => false,
        }
    }
}

/// Removes branch pods whose branch went away, on every change of the book
/// (once it holds a complete list: before that, absence means nothing).
async fn reconcile(agent: Shared, book: Arc<BranchBook>, metrics: Arc<Metrics>) {
    let mut rx = book.subscribe();
    while rx.changed().await.is_ok() {
        if !book.synced() {
            continue;
        }
        let ready = book.ready();
        let keep = |r: &PodRecord| {
            ready
                .get(&(r.namespace.clone(), r.name.clone()))
                .is_some_and(|b| matches(r, b))
        };
        let revoked = agent.lock().revoke_branches(keep);
        match revoked {
            Ok(removed) if !removed.is_empty() => {
                metrics.observe_branches_revoked(removed.len());
                tracing::info!(count = removed.len(), "branch pods revoked")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "revoking branch pods failed; retried on the next change")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_mode_needs_both_an_apiserver_and_a_node_name() {
        let mut s = KubeSettings {
            pod_eni_wait: Duration::from_secs(8),
            ..KubeSettings::default()
        };
        assert!(s.options().is_err(), "local mode by default");
        s.node_name = Some("ip-192-168-31-166".into());
        assert!(s.options().is_err(), "a node name alone is not enough");
        s.in_cluster = true;
        assert!(matches!(
            s.options().map(|o| o.access),
            Ok(ApiAccess::InCluster)
        ));
        s.kubeconfig = Some("/etc/kubeconfig".into());
        let o = s.options().expect("kubeconfig wins");
        assert!(matches!(o.access, ApiAccess::Kubeconfig(_)));
        assert_eq!(o.unknown_wait, UNKNOWN_WAIT);
        s.node_name = Some(String::new());
        assert!(s.options().is_err(), "an empty node name is none");
    }

    #[test]
    fn the_node_name_comes_from_my_node_name_then_node_name() {
        use trunkline_aws::env::vars as env;
        assert_eq!(
            node_name_from_env(env(&[("MY_NODE_NAME", "a"), ("NODE_NAME", "b")])).as_deref(),
            Some("a")
        );
        assert_eq!(
            node_name_from_env(env(&[("MY_NODE_NAME", ""), ("NODE_NAME", "b")])).as_deref(),
            Some("b")
        );
        assert_eq!(node_name_from_env(env(&[])), None);
    }
}
