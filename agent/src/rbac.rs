//! The Kubernetes API access the agent needs, in one list: the ClusterRole
//! in `deploy/clusterrole.yaml` must grant exactly this (a test checks),
//! and the Kubernetes reconciler (pod-eni annotations, Events) uses only
//! this.

/// (API group, resource, verbs). "" is the core group.
pub const API_ACCESS: &[(&str, &str, &[&str])] = &[
    // Pods of this node (list + watch with a field selector), and one GET
    // of a pod AddPod asks about before the watch delivered it
    // (trunkline-kube's pod_watch).
    ("", "pods", &["get", "list", "watch"]),
    // Events on pods whose pod-eni annotation is invalid (trunkline-kube's
    // events: create only, one per distinct bad annotation).
    ("", "events", &["create"]),
    // The cluster's service CIDRs at start in AWS mode (Kubernetes 1.33+).
    ("networking.k8s.io", "servicecidrs", &["list"]),
    // Migration from aws-node: the PolicyEndpoints that select this node's
    // pods (trunkline does not enforce NetworkPolicy yet, so any blocks).
    ("networking.k8s.aws", "policyendpoints", &["list"]),
];
