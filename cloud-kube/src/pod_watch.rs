//! Watches the pods of this node (field selector `spec.nodeName=<node>`)
//! and keeps the [`BranchBook`] current.
//!
//! `kube_runtime::watcher` does the protocol: list, then watch from the
//! list's resourceVersion with bookmarks; a `410 Gone` (expired
//! resourceVersion) starts over with a fresh list, which arrives here as
//! `Init .. InitApply* .. InitDone` and replaces the book's content whole;
//! a dropped connection re-watches from the last resourceVersion. The
//! backoff between failed attempts is the watcher's default (0.8 s doubling
//! to 30 s, with jitter), so a lost apiserver is retried for ever without
//! hammering it. While it is away the book keeps what it knew: pods that
//! run keep their branch.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    runtime::{watcher, WatchStreamExt as _},
    Api, Client,
};

use crate::{
    annotation::POD_ENI,
    branches::{BranchBook, InvalidNotice, PodView},
    events::EventPoster,
};

/// Counters of the watch, for logs and tests.
#[derive(Debug, Default)]
pub struct WatchStats {
    pub relists: AtomicU64,
    pub applied: AtomicU64,
    pub deleted: AtomicU64,
    pub errors: AtomicU64,
    pub foreign: AtomicU64,
}

/// Whether any container (or init container) requests or limits the
/// pod-eni resource.
pub fn requests_branch(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.resources.as_ref())
        .any(|r| {
            r.requests.as_ref().is_some_and(|m| m.contains_key(POD_ENI))
                || r.limits.as_ref().is_some_and(|m| m.contains_key(POD_ENI))
        })
}

/// The pod as the book sees it; `None` when it lacks a namespace or name
/// (an apiserver never sends that; a broken one is not trusted).
pub fn view(pod: &Pod) -> Option<PodView> {
    let meta = &pod.metadata;
    Some(PodView {
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
        uid: meta.uid.clone().unwrap_or_default(),
        requests_branch: requests_branch(pod),
        annotation: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(POD_ENI))
            .cloned(),
    })
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// The watch loop; runs until the task is dropped.
pub async fn run(
    client: Client,
    node: String,
    book: Arc<BranchBook>,
    events: EventPoster,
    stats: Arc<WatchStats>,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut listing: Vec<PodView> = Vec::new();
    let on_node = |pod: &Pod| node_of(pod) == Some(node.as_str());
    while let Some(item) = stream.next().await {
        let notices: Vec<InvalidNotice> = match item {
            Ok(watcher::Event::Init) => {
                listing.clear();
                Vec::new()
            }
            Ok(watcher::Event::InitApply(pod)) => {
                // The field selector is the apiserver's promise; a pod of
                // another node is never ours, whatever it says.
                if on_node(&pod) {
                    listing.extend(view(&pod));
                } else {
                    stats.foreign.fetch_add(1, Ordering::Relaxed);
                }
                Vec::new()
            }
            Ok(watcher::Event::InitDone) => {
                stats.relists.fetch_add(1, Ordering::Relaxed);
                let n = listing.len();
                let notices = book.replace_all(std::mem::take(&mut listing));
                tracing::info!(node = %node, pods = n, "pod list applied");
                notices
            }
            Ok(watcher::Event::Apply(pod)) => {
                stats.applied.fetch_add(1, Ordering::Relaxed);
                match view(&pod) {
                    Some(v) if on_node(&pod) => book.apply(v).into_iter().collect(),
                    Some(v) => {
                        // Moved off this node (cannot happen for a bound
                        // pod, but then it is not ours any more).
                        stats.foreign.fetch_add(1, Ordering::Relaxed);
                        book.remove(&v.namespace, &v.name);
                        Vec::new()
                    }
                    None => Vec::new(),
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                stats.deleted.fetch_add(1, Ordering::Relaxed);
                if let Some(v) = view(&pod) {
                    if on_node(&pod) {
                        book.remove(&v.namespace, &v.name);
                    }
                }
                Vec::new()
            }
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %node, error = %e, "pod watch failed; retrying with backoff");
                Vec::new()
            }
        };
        for n in notices {
            tracing::warn!(pod = %format!("{}/{}", n.namespace, n.name), reason = %n.reason, "invalid pod-eni annotation");
            events.invalid_annotation(n);
        }
    }
    tracing::error!(node = %node, "pod watch stream ended");
}

/// What a direct GET of a pod found.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// On this node; applied to the book.
    Applied,
    /// The apiserver has no such pod.
    NotFound,
    /// Bound to another node (or to none): not this agent's pod.
    OtherNode(Option<String>),
}

/// One GET of a pod that the watch has not delivered (yet): a pod of this
/// node is applied to the book.
pub async fn fetch_into_book(
    client: Client,
    node: &str,
    namespace: &str,
    name: &str,
    book: &BranchBook,
    events: &EventPoster,
) -> Result<Fetched, kube::Error> {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let Some(pod) = api.get_opt(name).await? else {
        return Ok(Fetched::NotFound);
    };
    if node_of(&pod) != Some(node) {
        return Ok(Fetched::OtherNode(node_of(&pod).map(str::to_string)));
    }
    let Some(v) = view(&pod) else {
        return Ok(Fetched::NotFound);
    };
    if let Some(n) = book.apply(v) {
        events.invalid_annotation(n);
    }
    Ok(Fetched::Applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    #[test]
    fn the_resource_request_is_found_in_requests_limits_and_init_containers() {
        let with = |res: serde_json::Value, init: bool| {
            let c = serde_json::json!([{"name": "c", "resources": res}]);
            let spec = if init {
                serde_json::json!({"containers": [{"name": "x"}], "initContainers": c})
            } else {
                serde_json::json!({"containers": c})
            };
            pod(serde_json::json!({"metadata": {"name": "p", "namespace": "n"}, "spec": spec}))
        };
        assert!(requests_branch(&with(
            serde_json::json!({"requests": {POD_ENI: "1"}}),
            false
        )));
        assert!(requests_branch(&with(
            serde_json::json!({"limits": {POD_ENI: "1"}}),
            false
        )));
        assert!(requests_branch(&with(
            serde_json::json!({"limits": {POD_ENI: "1"}}),
            true
        )));
        assert!(!requests_branch(&with(
            serde_json::json!({"limits": {"cpu": "1"}}),
            false
        )));
        assert!(!requests_branch(&pod(
            serde_json::json!({"metadata": {"name": "p"}})
        )));
    }

    #[test]
    fn the_view_carries_the_annotation_and_needs_a_name() {
        let p = pod(
            serde_json::json!({"metadata": {"name": "p", "namespace": "n", "uid": "u",
            "annotations": {POD_ENI: "[]", "other": "x"}}}),
        );
        let v = view(&p).expect("view");
        assert_eq!(v.annotation.as_deref(), Some("[]"));
        assert_eq!(
            (v.namespace.as_str(), v.name.as_str(), v.uid.as_str()),
            ("n", "p", "u")
        );
        assert_eq!(
            view(&pod(serde_json::json!({"metadata": {"name": "p"}}))),
            None
        );
    }
}
