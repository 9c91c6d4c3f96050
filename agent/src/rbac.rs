//! The Kubernetes API access the agent needs, in one list: the ClusterRole
//! in `deploy/clusterrole.yaml` must grant exactly this (a test checks),
//! and the Kubernetes reconciler (pod-eni annotations, Events) uses only
//! this.

/// (API group, resource, verbs). "" is the core group.
pub const API_ACCESS: &[(&str, &str, &[&str])] = &[
    // Pods of this node (field selector), for the pod-eni annotation.
    ("", "pods", &["get", "list", "watch"]),
    // Events on pods whose annotation is invalid.
    ("", "events", &["create", "patch"]),
    // The node object: labels such as has-trunk-attached.
    ("", "nodes", &["get", "patch"]),
];
