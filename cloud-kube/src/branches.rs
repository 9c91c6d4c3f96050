//! The branch book: for every pod of this node that the watcher has seen,
//! what its branch ENI is (or why there is none). The pod watcher writes
//! it; AddPod reads it (waiting, bounded, for an annotation that is still
//! coming); the agent's reconciler is woken on every change to remove the
//! data-path entries of pods whose branch went away.
//!
//! It knows nothing of the Kubernetes types: the watcher turns a Pod into a
//! [`PodView`], which keeps this module unit-testable with plain values.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::sync::watch;

use crate::annotation::{self, BranchEni};

/// `namespace/name`.
pub type PodKey = (String, String);

/// What the watcher extracts from a Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// A container requests or limits `vpc.amazonaws.com/pod-eni`.
    pub requests_branch: bool,
    /// The `vpc.amazonaws.com/pod-eni` annotation's text, if present.
    pub annotation: Option<String>,
}

/// What the book says about one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BranchState {
    /// Not a security-group pod: regular IPAM.
    Regular,
    /// Requests a branch ENI; the controller has not annotated it yet.
    Requested,
    /// Annotated with a valid branch ENI.
    Ready(BranchEni),
    /// Annotated, but the annotation is unusable (the reason).
    Invalid(String),
}

impl BranchState {
    fn of(view: &PodView) -> Self {
        match &view.annotation {
            Some(text) => match annotation::parse(text) {
                Ok(b) => Self::Ready(b),
                Err(e) => Self::Invalid(e.to_string()),
            },
            None if view.requests_branch => Self::Requested,
            None => Self::Regular,
        }
    }
}

/// A pod whose annotation was found invalid for the first time (the caller
/// posts an Event on it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidNotice {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub reason: String,
}

#[derive(Clone, Debug)]
struct Entry {
    uid: String,
    annotation: Option<String>,
    state: BranchState,
}

#[derive(Default)]
struct Inner {
    pods: HashMap<PodKey, Entry>,
    /// A complete list of the node's pods has been applied at least once:
    /// only then does absence mean "no such pod".
    synced: bool,
}

/// Why AddPod cannot be given a branch decision.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("pod {0}/{1}: invalid vpc.amazonaws.com/pod-eni annotation: {2}")]
    Invalid(String, String, String),
    #[error("pod {0}/{1} requests vpc.amazonaws.com/pod-eni but has no pod-eni annotation after {2:?} (the VPC resource controller creates the branch ENI; the runtime retries)")]
    NotAnnotated(String, String, Duration),
    #[error("pod {0}/{1} is not (yet) known from the Kubernetes API after {2:?}")]
    Unknown(String, String, Duration),
}

pub struct BranchBook {
    inner: Mutex<Inner>,
    /// Bumped on every change; waiters and the reconciler watch it.
    generation: watch::Sender<u64>,
}

impl Default for BranchBook {
    fn default() -> Self {
        Self::new()
    }
}

impl BranchBook {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            generation: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update below leaves the map consistent; a panic elsewhere
        // while holding the lock does not make it unusable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// A pod was added or changed. Returns a notice when its annotation is
    /// newly invalid (a different text than last time, or a new pod UID).
    pub fn apply(&self, view: PodView) -> Option<InvalidNotice> {
        let notice = {
            let mut inner = self.lock();
            Self::apply_locked(&mut inner, view)
        };
        self.bump();
        notice
    }

    fn apply_locked(inner: &mut Inner, view: PodView) -> Option<InvalidNotice> {
        let key = (view.namespace.clone(), view.name.clone());
        let unchanged = inner
            .pods
            .get(&key)
            .is_some_and(|e| e.uid == view.uid && e.annotation == view.annotation);
        let state = match inner.pods.get(&key) {
            // Same text: same verdict, no second parse or Event.
            Some(e)
                if unchanged
                    && !matches!(e.state, BranchState::Requested | BranchState::Regular) =>
            {
                e.state.clone()
            }
            _ => BranchState::of(&view),
        };
        let notice = match &state {
            BranchState::Invalid(reason) if !unchanged => Some(InvalidNotice {
                namespace: view.namespace.clone(),
                name: view.name.clone(),
                uid: view.uid.clone(),
                reason: reason.clone(),
            }),
            _ => None,
        };
        inner.pods.insert(
            key,
            Entry {
                uid: view.uid,
                annotation: view.annotation,
                state,
            },
        );
        notice
    }

    /// A pod was deleted (or left this node).
    pub fn remove(&self, namespace: &str, name: &str) {
        let removed = self
            .lock()
            .pods
            .remove(&(namespace.to_string(), name.to_string()))
            .is_some();
        if removed {
            self.bump();
        }
    }

    /// A complete list of the node's pods (after a (re)list): pods not in
    /// it are gone. Returns the notices of newly invalid annotations.
    pub fn replace_all(&self, views: Vec<PodView>) -> Vec<InvalidNotice> {
        let notices = {
            let mut inner = self.lock();
            let keep: std::collections::HashSet<PodKey> = views
                .iter()
                .map(|v| (v.namespace.clone(), v.name.clone()))
                .collect();
            inner.pods.retain(|k, _| keep.contains(k));
            let notices = views
                .into_iter()
                .filter_map(|v| Self::apply_locked(&mut inner, v))
                .collect();
            inner.synced = true;
            notices
        };
        self.bump();
        notices
    }

    pub fn synced(&self) -> bool {
        self.lock().synced
    }

    /// The state of a pod, `None` when the book has not seen it.
    pub fn state(&self, namespace: &str, name: &str) -> Option<BranchState> {
        self.lock()
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .map(|e| e.state.clone())
    }

    /// The branch each pod currently has (for the reconciler).
    pub fn ready(&self) -> HashMap<PodKey, BranchEni> {
        self.lock()
            .pods
            .iter()
            .filter_map(|(k, e)| match &e.state {
                BranchState::Ready(b) => Some((k.clone(), b.clone())),
                _ => None,
            })
            .collect()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The branch decision for AddPod: `Ok(Some)` a branch ENI, `Ok(None)`
    /// a regular pod. Waits up to `wait` for a pod that requests a branch
    /// but is not annotated yet, and up to `unknown_wait` for a pod the
    /// watcher has not delivered yet. Never holds a lock while waiting.
    pub async fn decide(
        &self,
        namespace: &str,
        name: &str,
        wait: Duration,
        unknown_wait: Duration,
    ) -> Result<Option<BranchEni>, WaitError> {
        // tokio's clock: the unit tests run it paused.
        let start = tokio::time::Instant::now();
        let mut rx = self.subscribe();
        loop {
            // Marks the current generation seen before reading, so a change
            // between the read and the wait below is not missed.
            rx.borrow_and_update();
            let state = self.state(namespace, name);
            let limit = match &state {
                Some(BranchState::Regular) => return Ok(None),
                Some(BranchState::Ready(b)) => return Ok(Some(b.clone())),
                Some(BranchState::Invalid(r)) => {
                    return Err(WaitError::Invalid(namespace.into(), name.into(), r.clone()))
                }
                Some(BranchState::Requested) => wait,
                None => unknown_wait.min(wait),
            };
            let elapsed = start.elapsed();
            if elapsed >= limit {
                return Err(match state {
                    Some(_) => WaitError::NotAnnotated(namespace.into(), name.into(), elapsed),
                    None => WaitError::Unknown(namespace.into(), name.into(), elapsed),
                });
            }
            // Either a change or the deadline; a closed channel cannot
            // happen while `self` lives, but is treated as the deadline.
            if tokio::time::timeout(limit - elapsed, rx.changed())
                .await
                .is_err()
            {
                continue;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const GOOD: &str = r#"[{"eniId":"eni-0a","ifAddress":"02:b0:01:6c:b5:79","privateIp":"192.168.26.162","vlanId":7}]"#;

    fn view(name: &str, requests: bool, annotation: Option<&str>) -> PodView {
        PodView {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            requests_branch: requests,
            annotation: annotation.map(str::to_string),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_regular_pod_is_decided_at_once() {
        let book = BranchBook::new();
        book.apply(view("web", false, None));
        let d = book
            .decide(
                "default",
                "web",
                Duration::from_secs(5),
                Duration::from_secs(1),
            )
            .await;
        assert_eq!(d, Ok(None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_requesting_pod_waits_for_its_annotation() {
        let book = Arc::new(BranchBook::new());
        book.apply(view("sg", true, None));
        let b2 = book.clone();
        let waiter = tokio::spawn(async move {
            b2.decide(
                "default",
                "sg",
                Duration::from_secs(5),
                Duration::from_secs(1),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiter.is_finished(),
            "must wait while the annotation is missing"
        );
        book.apply(view("sg", true, Some(GOOD)));
        let got = waiter.await.expect("join").expect("decided");
        assert_eq!(got.map(|b| b.vlan), Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_is_bounded() {
        let book = BranchBook::new();
        book.apply(view("sg", true, None));
        let t0 = tokio::time::Instant::now();
        let d = book
            .decide(
                "default",
                "sg",
                Duration::from_secs(3),
                Duration::from_secs(1),
            )
            .await;
        assert!(matches!(d, Err(WaitError::NotAnnotated(..))), "{d:?}");
        assert_eq!(t0.elapsed().as_secs(), 3);
        let d = book
            .decide(
                "default",
                "nobody",
                Duration::from_secs(3),
                Duration::from_secs(1),
            )
            .await;
        assert!(matches!(d, Err(WaitError::Unknown(..))), "{d:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalid_annotation_fails_and_is_noticed_once() {
        let book = BranchBook::new();
        let bad = r#"[{"eniId":"eni-0a","ifAddress":"02:b0:01:6c:b5:79","privateIp":"192.168.26.162","vlanId":0}]"#;
        let n = book.apply(view("sg", true, Some(bad)));
        assert!(n.is_some_and(|n| n.reason.contains("vlanId")));
        assert_eq!(
            book.apply(view("sg", true, Some(bad))),
            None,
            "same text: no second notice"
        );
        let d = book
            .decide(
                "default",
                "sg",
                Duration::from_secs(3),
                Duration::from_secs(1),
            )
            .await;
        assert!(
            matches!(&d, Err(WaitError::Invalid(_, _, r)) if r.contains("VLAN")),
            "{d:?}"
        );
    }

    #[test]
    fn a_relist_forgets_pods_that_are_gone_and_changes_are_signalled() {
        let book = BranchBook::new();
        let rx = book.subscribe();
        book.apply(view("a", true, Some(GOOD)));
        book.apply(view("b", false, None));
        assert!(!book.synced());
        book.replace_all(vec![view("b", false, None)]);
        assert!(book.synced());
        assert_eq!(book.state("default", "a"), None);
        assert!(book.ready().is_empty());
        assert!(rx.has_changed().unwrap_or(false));
        book.remove("default", "b");
        assert_eq!(book.state("default", "b"), None);
    }

    #[test]
    fn an_annotation_that_goes_away_leaves_the_pod_requested() {
        let book = BranchBook::new();
        book.apply(view("sg", true, Some(GOOD)));
        assert!(matches!(
            book.state("default", "sg"),
            Some(BranchState::Ready(_))
        ));
        book.apply(view("sg", true, None));
        assert_eq!(book.state("default", "sg"), Some(BranchState::Requested));
        assert!(book.ready().is_empty());
    }
}
