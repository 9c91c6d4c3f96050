//! Kubernetes Events on pods (core/v1 `create`, as `deploy/clusterrole.yaml`
//! grants). Posting happens on its own task behind a bounded queue: the pod
//! watch and AddPod never wait for the apiserver to take an Event, and a
//! flood of bad annotations costs at most the queue.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    chrono::Utc,
};
use kube::{api::PostParams, Api, Client};
use tokio::sync::mpsc;

use crate::branches::InvalidNotice;

/// The Event reason for an unusable pod-eni annotation.
pub const REASON_INVALID: &str = "InvalidPodEniAnnotation";
pub const COMPONENT: &str = "trunkline-agent";
const QUEUE: usize = 64;

/// Counters (for tests and logs).
#[derive(Debug, Default)]
pub struct EventStats {
    pub posted: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(Clone)]
pub struct EventPoster {
    tx: mpsc::Sender<InvalidNotice>,
    stats: Arc<EventStats>,
}

impl EventPoster {
    /// Starts the posting task on the current runtime.
    pub fn spawn(client: Client, node: String) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(EventStats::default());
        tokio::spawn(post_loop(client, node, rx, stats.clone()));
        Self { tx, stats }
    }

    /// A poster whose Events go nowhere but the counters (unit tests).
    pub fn disconnected() -> Self {
        let (tx, _rx) = mpsc::channel(1);
        Self {
            tx,
            stats: Arc::new(EventStats::default()),
        }
    }

    pub fn stats(&self) -> &EventStats {
        &self.stats
    }

    /// Queues a Warning Event on the pod; never blocks.
    pub fn invalid_annotation(&self, n: InvalidNotice) {
        if self.tx.try_send(n).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "event queue full or closed; an invalid-annotation Event was not posted"
            );
        }
    }
}

/// The Event object for one notice.
pub fn event_for(n: &InvalidNotice, node: &str) -> Event {
    let now = Time(Utc::now());
    Event {
        metadata: ObjectMeta {
            // The apiserver appends a random suffix: no name collisions.
            generate_name: Some(format!("{}.", n.name)),
            namespace: Some(n.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(n.namespace.clone()),
            name: Some(n.name.clone()),
            uid: (!n.uid.is_empty()).then(|| n.uid.clone()),
            ..ObjectReference::default()
        },
        reason: Some(REASON_INVALID.into()),
        message: Some(format!(
            "vpc.amazonaws.com/pod-eni annotation cannot be used, the pod gets no network: {}",
            n.reason
        )),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: Some(node.into()),
        }),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(node.into()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Event::default()
    }
}

async fn post_loop(
    client: Client,
    node: String,
    mut rx: mpsc::Receiver<InvalidNotice>,
    stats: Arc<EventStats>,
) {
    while let Some(n) = rx.recv().await {
        let api: Api<Event> = Api::namespaced(client.clone(), &n.namespace);
        match api
            .create(&PostParams::default(), &event_for(&n, &node))
            .await
        {
            Ok(_) => {
                stats.posted.fetch_add(1, Ordering::Relaxed);
                tracing::info!(pod = %format!("{}/{}", n.namespace, n.name), reason = REASON_INVALID, "event posted");
            }
            Err(e) => {
                // An Event is a courtesy: the failure is logged, the CNI
                // error already tells the runtime.
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pod = %format!("{}/{}", n.namespace, n.name), error = %e, "posting the event failed");
            }
        }
    }
}
