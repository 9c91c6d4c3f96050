//! trunkline's Kubernetes side: the `vpc.amazonaws.com/pod-eni` annotations
//! of the node's pods (security groups for pods), kept in a [`BranchBook`]
//! by a pod watch, and Events on pods whose annotation is unusable.
//!
//! The agent uses [`PodEniSource`]: [`PodEniSource::connect`] starts the
//! watch, [`PodEniSource::decide`] answers AddPod's question "branch ENI or
//! regular pod?", and [`BranchBook::subscribe`] wakes the agent's
//! reconciler when a branch goes away.

pub mod annotation;
pub mod branches;
pub mod events;
pub mod pod_watch;
pub mod policy_endpoints;
pub mod service_cidrs;

use std::{path::PathBuf, sync::Arc, time::Duration};

pub use annotation::{AnnotationError, BranchEni, MacAddr};
pub use branches::{BranchBook, BranchState, PodView, WaitError};
pub use service_cidrs::{service_cidrs, ServiceCidrError, ServiceCidrs};

use events::EventPoster;
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    Client, Config,
};
use pod_watch::{Fetched, WatchStats};

/// Where the apiserver is.
#[derive(Clone, Debug)]
pub enum ApiAccess {
    /// A kubeconfig file (`--kubeconfig` / `KUBECONFIG`).
    Kubeconfig(PathBuf),
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`/`_PORT` and the
    /// mounted token), as in the DaemonSet.
    InCluster,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub access: ApiAccess,
    /// This node's name (`spec.nodeName` of its pods).
    pub node_name: String,
    /// How long AddPod waits for the annotation of a pod that requests a
    /// branch ENI.
    pub annotation_wait: Duration,
    /// How long AddPod waits for the watch to deliver a pod it has not seen
    /// before asking the apiserver for it directly.
    pub unknown_wait: Duration,
    /// Bound of that direct GET.
    pub get_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster Kubernetes configuration: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("the node name is empty")]
    NoNodeName,
    #[error("kubeconfig {0:?} names no file")]
    NoKubeconfig(PathBuf),
}

/// Why AddPod gets no branch decision.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// The annotation is unusable: the pod must not start (an Event says why).
    #[error(transparent)]
    Invalid(WaitError),
    /// Not decided in time: the runtime should retry.
    #[error(transparent)]
    NotYet(WaitError),
    #[error("pod {0}/{1} is not known from the pod watch and the apiserver did not answer: {2}")]
    Unreachable(String, String, String),
    #[error("pod {0}/{1} is not a pod of this node: {2}")]
    NotOnThisNode(String, String, String),
}

/// Reads a kubeconfig; a `KUBECONFIG`-style list (`a:b`) is merged in
/// order, as kubectl does (the first file that sets a value wins).
pub fn read_kubeconfig(path: &std::path::Path) -> Result<Kubeconfig, KubeError> {
    let text = path.to_string_lossy();
    let mut merged: Option<Kubeconfig> = None;
    for part in text.split(':').filter(|p| !p.is_empty()) {
        let p = PathBuf::from(part);
        let err = |source| KubeError::Kubeconfig {
            path: p.clone(),
            source,
        };
        let kc = Kubeconfig::read_from(&p).map_err(err)?;
        merged = Some(match merged {
            None => kc,
            Some(m) => m.merge(kc).map_err(err)?,
        });
    }
    merged.ok_or_else(|| KubeError::NoKubeconfig(path.to_path_buf()))
}

/// A client of the apiserver `access` names.
pub async fn client(access: &ApiAccess) -> Result<Client, KubeError> {
    let config = match access {
        ApiAccess::Kubeconfig(path) => {
            let kc = read_kubeconfig(path)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        ApiAccess::InCluster => Config::incluster()?,
    };
    Client::try_from(config).map_err(KubeError::Client)
}

pub struct PodEniSource {
    client: Client,
    options: Options,
    book: Arc<BranchBook>,
    events: EventPoster,
    stats: Arc<WatchStats>,
}

impl PodEniSource {
    /// Builds the client and starts the pod watch and the Event poster on
    /// the current tokio runtime. Does not wait for the apiserver: the
    /// watch retries until it answers.
    pub async fn connect(options: Options) -> Result<Self, KubeError> {
        if options.node_name.is_empty() {
            return Err(KubeError::NoNodeName);
        }
        let client = client(&options.access).await?;
        let book = Arc::new(BranchBook::new());
        let events = EventPoster::spawn(client.clone(), options.node_name.clone());
        let stats = Arc::new(WatchStats::default());
        tokio::spawn(pod_watch::run(
            client.clone(),
            options.node_name.clone(),
            book.clone(),
            events.clone(),
            stats.clone(),
        ));
        tracing::info!(node = %options.node_name, access = ?options.access, "watching this node's pods for pod-eni annotations");
        Ok(Self {
            client,
            options,
            book,
            events,
            stats,
        })
    }

    pub fn book(&self) -> &Arc<BranchBook> {
        &self.book
    }

    pub fn watch_stats(&self) -> &WatchStats {
        &self.stats
    }

    pub fn node_name(&self) -> &str {
        &self.options.node_name
    }

    /// AddPod's question: the pod's branch ENI (`Some`), or a regular pod
    /// (`None`). Waits, bounded, for what is not known yet; holds no lock.
    pub async fn decide(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BranchEni>, DecideError> {
        let o = &self.options;
        let classify = |e: WaitError| match e {
            WaitError::Invalid(..) => DecideError::Invalid(e),
            _ => DecideError::NotYet(e),
        };
        match self
            .book
            .decide(namespace, name, o.annotation_wait, o.unknown_wait)
            .await
        {
            Err(WaitError::Unknown(..)) => {}
            other => return other.map_err(classify),
        }
        // The watch has not delivered the pod (lagging, or the apiserver
        // is away): ask for it once.
        let fetched = tokio::time::timeout(
            o.get_timeout,
            pod_watch::fetch_into_book(
                self.client.clone(),
                &o.node_name,
                namespace,
                name,
                &self.book,
                &self.events,
            ),
        )
        .await;
        match fetched {
            Ok(Ok(Fetched::Applied)) => {
                let left = o.annotation_wait.saturating_sub(o.unknown_wait);
                self.book
                    .decide(namespace, name, left, Duration::ZERO)
                    .await
                    .map_err(classify)
            }
            // Without the pod object nobody can say whether it needs a
            // branch ENI; giving it a regular IP could bypass its security
            // groups. Refuse: a deleted pod's sandbox is not retried, and a
            // misconfigured node name shows up here at once.
            Ok(Ok(Fetched::NotFound)) => Err(DecideError::NotOnThisNode(
                namespace.into(),
                name.into(),
                "the apiserver has no such pod".into(),
            )),
            Ok(Ok(Fetched::OtherNode(other))) => Err(DecideError::NotOnThisNode(
                namespace.into(),
                name.into(),
                format!(
                    "the apiserver binds it to node {:?}, this node is {:?} (MY_NODE_NAME / --node-name)",
                    other.unwrap_or_default(),
                    o.node_name
                ),
            )),
            Ok(Err(e)) => Err(DecideError::Unreachable(
                namespace.into(),
                name.into(),
                e.to_string(),
            )),
            Err(_) => Err(DecideError::Unreachable(
                namespace.into(),
                name.into(),
                format!("no answer within {:?}", o.get_timeout),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_kubeconfig_list_is_merged_and_a_missing_file_is_named() {
        let dir = std::env::temp_dir().join(format!("tl-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let a = dir.join("a");
        let b = dir.join("b");
        std::fs::write(&a, "apiVersion: v1\nkind: Config\ncurrent-context: one\nclusters:\n- name: one\n  cluster:\n    server: http://127.0.0.1:1\n").expect("write");
        std::fs::write(&b, "apiVersion: v1\nkind: Config\ncurrent-context: two\nclusters:\n- name: two\n  cluster:\n    server: http://127.0.0.1:2\n").expect("write");
        let list = PathBuf::from(format!("{}:{}", a.display(), b.display()));
        let kc = read_kubeconfig(&list).expect("merged");
        assert_eq!(
            kc.current_context.as_deref(),
            Some("one"),
            "the first file wins"
        );
        assert_eq!(kc.clusters.len(), 2);
        let missing = dir.join("missing");
        let e = read_kubeconfig(&missing).expect_err("missing file");
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(matches!(
            read_kubeconfig(Path::new(":")),
            Err(KubeError::NoKubeconfig(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
