//! The pods of one node that aws-network-policy-agent's PolicyEndpoints
//! select (`networking.k8s.aws/v1alpha1`, written by the network policy
//! controller: one object per NetworkPolicy, each listing the pods it
//! selects with their node's IP in `spec.podSelectorEndpoints[].hostIP`).
//! trunkline does not enforce NetworkPolicy yet: a node whose pods some
//! policy selects must not be migrated, even when the node agent has not
//! pinned its programs yet (it is starting, or lags the controller).
//!
//! Read through a `DynamicObject` (no generated types for this CRD): only
//! the four fields above are used, and an object that lacks them selects
//! nothing rather than failing the list.

use std::{net::Ipv4Addr, time::Duration};

use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
    Api, Client,
};
use serde_json::Value;

use crate::{client, ApiAccess, KubeError};

/// A pod a PolicyEndpoint selects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SelectedPod {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// `namespace/name` of the PolicyEndpoint (named after its policy).
    pub policy_endpoint: String,
}

/// What the apiserver says of PolicyEndpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyEndpoints {
    /// The CRD is served: the pods on the node it was asked about that any
    /// PolicyEndpoint selects, sorted.
    Served(Vec<SelectedPod>),
    /// No such resource: the cluster runs no network policy controller.
    NotServed,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyEndpointError {
    #[error(transparent)]
    Client(#[from] KubeError),
    #[error("listing PolicyEndpoints: {0}")]
    List(#[source] kube::Error),
    #[error("listing PolicyEndpoints: no answer within {0:?}")]
    Timeout(Duration),
}

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.k8s.aws", "v1alpha1", "PolicyEndpoint"),
        "policyendpoints",
    )
}

/// The pods on the node with IP `host_ip` that PolicyEndpoints select,
/// through `access`, bounded by `timeout`.
pub async fn selecting_node(
    access: &ApiAccess,
    host_ip: Ipv4Addr,
    timeout: Duration,
) -> Result<PolicyEndpoints, PolicyEndpointError> {
    let client = client(access).await?;
    match tokio::time::timeout(timeout, list(client, host_ip)).await {
        Ok(r) => r,
        Err(_) => Err(PolicyEndpointError::Timeout(timeout)),
    }
}

async fn list(client: Client, host_ip: Ipv4Addr) -> Result<PolicyEndpoints, PolicyEndpointError> {
    let api: Api<DynamicObject> = Api::all_with(client, &resource());
    match api.list(&ListParams::default()).await {
        Ok(list) => {
            let objects = list.items.iter().map(|o| {
                let name = format!(
                    "{}/{}",
                    o.metadata.namespace.as_deref().unwrap_or(""),
                    o.metadata.name.as_deref().unwrap_or("")
                );
                (name, o.data.get("spec"))
            });
            Ok(PolicyEndpoints::Served(selected_on(objects, host_ip)))
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(PolicyEndpoints::NotServed),
        Err(e) => Err(PolicyEndpointError::List(e)),
    }
}

/// The pods on `host_ip` that `(object name, spec)` pairs select, sorted,
/// each pod and object pair once.
fn selected_on<'a>(
    objects: impl Iterator<Item = (String, Option<&'a Value>)>,
    host_ip: Ipv4Addr,
) -> Vec<SelectedPod> {
    let host = host_ip.to_string();
    let mut out = Vec::new();
    for (name, spec) in objects {
        let endpoints = spec
            .and_then(|s| s.get("podSelectorEndpoints"))
            .and_then(Value::as_array);
        for e in endpoints.into_iter().flatten() {
            let field = |k: &str| e.get(k).and_then(Value::as_str);
            if field("hostIP") != Some(host.as_str()) {
                continue;
            }
            let pod = match (field("namespace"), field("name")) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                // Not named: the pod's IP still says which pod it is.
                _ => field("podIP").unwrap_or("?").to_string(),
            };
            out.push(SelectedPod {
                pod,
                policy_endpoint: name.clone(),
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_pods_on_the_node_are_selected_each_once() {
        let web = json!({"podSelectorEndpoints": [
            {"hostIP": "192.168.31.166", "podIP": "192.168.31.170", "name": "web-1", "namespace": "shop"},
            {"hostIP": "192.168.40.7", "podIP": "192.168.40.9", "name": "web-2", "namespace": "shop"},
            {"hostIP": "192.168.31.166", "podIP": "192.168.31.170", "name": "web-1", "namespace": "shop"},
        ]});
        let db = json!({"podSelectorEndpoints": [
            {"hostIP": "192.168.31.166", "podIP": "192.168.30.20"},
        ]});
        let empty = json!({"podSelector": {}});
        let objects = vec![
            ("shop/web-policy-abcde".to_string(), Some(&web)),
            ("shop/db-policy-fghij".to_string(), Some(&db)),
            ("shop/none-klmno".to_string(), Some(&empty)),
            ("shop/nospec".to_string(), None),
        ];
        let got = selected_on(objects.into_iter(), Ipv4Addr::new(192, 168, 31, 166));
        assert_eq!(
            got,
            vec![
                SelectedPod {
                    pod: "192.168.30.20".into(),
                    policy_endpoint: "shop/db-policy-fghij".into()
                },
                SelectedPod {
                    pod: "shop/web-1".into(),
                    policy_endpoint: "shop/web-policy-abcde".into()
                },
            ]
        );
    }
}
