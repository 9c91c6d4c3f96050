//! The two small HTTP endpoints: Prometheus metrics (`/metrics`) and the
//! JSON introspection API (`/v1/pods`, `/v1/enis`, `/v1/config`). Plain
//! HTTP/1.1 GET on hyper, which tonic already pulls in.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::{
    agent::{lock, Agent, Shared},
    pods::ipam::now_secs,
    serve::metrics::Metrics,
};

#[derive(Clone, Copy, Debug)]
pub enum Endpoint {
    Metrics,
    Introspection,
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

pub fn pods_json(a: &Agent) -> serde_json::Value {
    let entries = a.maps.pods().unwrap_or_default();
    let pods: Vec<_> = a
        .pods
        .records()
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

fn enis_json(a: &mut Agent) -> serde_json::Value {
    let usage = a.pods.ipam_mut().usage(now_secs());
    let enis: Vec<_> = a
        .pods
        .enis()
        .values()
        .map(|e| {
            let u = usage.iter().find(|u| u.eni == e.interface);
            json!({"eni": e, "ips": u})
        })
        .collect();
    json!(enis)
}

fn route(
    endpoint: Endpoint,
    path: &str,
    agent: &Shared,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    let mut a = lock(agent);
    match (endpoint, path) {
        (Endpoint::Metrics, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(&mut a),
        ),
        (Endpoint::Introspection, "/v1/pods") => reply(
            StatusCode::OK,
            "application/json",
            pods_json(&a).to_string(),
        ),
        (Endpoint::Introspection, "/v1/enis") => reply(
            StatusCode::OK,
            "application/json",
            enis_json(&mut a).to_string(),
        ),
        (Endpoint::Introspection, "/v1/config") => {
            let body =
                json!({"run": a.config, "maps": {"CONFIG": format!("{:?}", a.maps.config().ok())}});
            reply(StatusCode::OK, "application/json", body.to_string())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no such endpoint: {path}\n"),
        ),
    }
}

/// Serves `endpoint` on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    endpoint: Endpoint,
    agent: Shared,
    metrics: Arc<Metrics>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, ?endpoint, "accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let agent = agent.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = if req.method() != Method::GET {
                    reply(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "text/plain",
                        "GET only\n".into(),
                    )
                } else {
                    route(endpoint, req.uri().path(), &agent, &metrics)
                };
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "http connection");
            }
        });
    }
}
