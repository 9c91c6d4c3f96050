//! The two small HTTP endpoints, routed by axum (which tonic already pulls
//! in): Prometheus metrics (`/metrics`) and the JSON introspection API
//! (`/v1/pods`, `/v1/enis`, `/v1/config`). Both read the agent's published
//! [`Snapshot`] and the pinned maps' read-only views, never the agent's lock.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::{
    agent::{Shared, Snapshot},
    dataplane::{ConfigMap, PodsMap},
    pods::ipam::PoolUsage,
    serve::metrics::Metrics,
};

/// `/v1/pods`: every pod record with its `PODS` entry.
pub fn pods_json(
    snapshot: &Snapshot,
    entries: &[(std::net::Ipv4Addr, dataplane_common::PodEntry)],
) -> Value {
    let pods: Vec<_> = snapshot
        .pods
        .iter()
        .map(|r| {
            let entry = entries.iter().find(|(ip, _)| *ip == r.ip).map(|(_, e)| {
                json!({"host_ifindex": e.host_ifindex, "eni_ifindex": e.eni_ifindex, "vlan_id": e.vlan_id, "flags": e.flags})
            });
            json!({
                "namespace": r.namespace, "name": r.name, "uid": r.uid,
                "container_id": r.container_id, "ifname": r.ifname, "netns": r.netns,
                "ip": r.ip.to_string(), "eni": r.eni, "vlan": r.vlan, "branch_mac": r.branch_mac,
                "host_veth": r.host_veth, "host_ifindex": r.host_ifindex, "pod_mac": r.pod_mac,
                "map_entry": entry,
            })
        })
        .collect();
    json!(pods)
}

/// `/v1/enis`: every ENI with its IP counts.
fn enis_json(snapshot: &Snapshot, usage: &[PoolUsage]) -> Value {
    let enis: Vec<_> = snapshot
        .enis
        .values()
        .map(|e| {
            let u = usage.iter().find(|u| u.eni == e.interface);
            json!({"eni": e, "ips": u})
        })
        .collect();
    json!(enis)
}

async fn pods(State(agent): State<Shared>) -> Json<Value> {
    let entries = PodsMap::open(&agent.config().bpf_root)
        .and_then(|m| m.entries())
        .unwrap_or_default();
    Json(pods_json(&agent.snapshot(), &entries))
}

async fn enis(State(agent): State<Shared>) -> Json<Value> {
    Json(enis_json(&agent.snapshot(), &agent.ipam().usage()))
}

async fn config(State(agent): State<Shared>) -> Json<Value> {
    let map = ConfigMap::open(&agent.config().bpf_root).and_then(|m| m.get());
    Json(json!({"run": agent.config(), "maps": {"CONFIG": format!("{:?}", map.ok())}}))
}

async fn metrics(State((agent, metrics)): State<(Shared, Arc<Metrics>)>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        metrics.render(&agent),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> (StatusCode, String) {
    (
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}\n", uri.path()),
    )
}

/// `/metrics` on `listener` until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, agent: Shared, metrics: Arc<Metrics>) {
    let app = Router::new()
        .route("/metrics", get(self::metrics))
        .fallback(not_found)
        .with_state((agent, metrics));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, endpoint = "metrics", "HTTP server stopped");
    }
}

/// The introspection API on `listener` until the task is dropped.
pub async fn serve_introspection(listener: TcpListener, agent: Shared) {
    let app = Router::new()
        .route("/v1/pods", get(pods))
        .route("/v1/enis", get(enis))
        .route("/v1/config", get(config))
        .fallback(not_found)
        .with_state(agent);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, endpoint = "introspection", "HTTP server stopped");
    }
}
