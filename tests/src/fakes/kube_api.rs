//! A fixture Kubernetes API server for the pod watch (no real apiserver can
//! be installed here): the pods of a few nodes in memory with a global
//! resourceVersion, served the way kube-apiserver serves them:
//!
//! - `GET /api/v1/pods?fieldSelector=spec.nodeName=N` → a PodList carrying
//!   the current resourceVersion;
//! - `...&watch=true&resourceVersion=RV` → a chunked stream of
//!   `{"type":"ADDED|MODIFIED|DELETED","object":...}` lines: first every
//!   change after RV from the history, then live changes, and a BOOKMARK
//!   every 200 ms; an RV older than the compacted history (or any watch
//!   while [`FakeApi::answer_gone`] is armed) gets the apiserver's in-stream
//!   `ERROR` with a `410` Status (Expired);
//! - `GET /api/v1/namespaces/NS/pods/NAME` → the pod or a 404 Status;
//! - `POST /api/v1/namespaces/NS/events` → recorded, 201;
//! - `GET /apis/networking.k8s.io/v1/servicecidrs` → a ServiceCIDRList once
//!   [`FakeApi::set_service_cidrs`] says the API is served, else a 404 as
//!   from a cluster before 1.33;
//! - `GET /apis/networking.k8s.aws/v1alpha1/policyendpoints` → a list once
//!   [`FakeApi::set_policy_endpoints`] installs the CRD, else a 404.
//!
//! The listener is bound on 127.0.0.1 inside a test network namespace (the
//! agent runs there). [`FakeApi::stop`] closes the listener and every
//! connection (the runtime that served them is dropped);
//! [`FakeApi::restart`] binds the same port again with the state kept, as
//! an apiserver restarting in front of the same etcd.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::{body::Frame, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, oneshot};

use crate::topology::netns::Netns;

type Body = BoxBody<Bytes, Infallible>;

/// One change, kept for watches that resume from an older RV.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: &'static str,
    pod: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    pods: BTreeMap<(String, String), Value>,
    history: Vec<Change>,
    /// Watches from an RV below this get 410 Gone.
    compacted_below: u64,
    /// The next this-many watch requests get 410 Gone whatever their RV.
    gone_next: u32,
    events: Vec<Value>,
    lists: u32,
    watches: u32,
    gets: u32,
    /// The resourceVersion each watch request started from.
    watch_from: Vec<u64>,
    /// `spec.cidrs` of each ServiceCIDR object by name; `None`: the API is
    /// not served (a cluster before 1.33), so its path is a 404.
    service_cidrs: Option<BTreeMap<String, Vec<String>>>,
    /// PolicyEndpoint objects (`networking.k8s.aws/v1alpha1`); `None`: the
    /// CRD is not installed, so its path is a 404.
    policy_endpoints: Option<Vec<Value>>,
}

struct Server {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct FakeApi {
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    /// Dropping connections: watch streams end when this is bumped.
    cut: Arc<tokio::sync::watch::Sender<u64>>,
    netns: String,
    addr: SocketAddr,
    server: Option<Server>,
}

/// A pod object as the apiserver returns it.
pub fn pod_json(
    namespace: &str,
    name: &str,
    node: &str,
    requests_branch: bool,
    annotation: Option<&str>,
) -> Value {
    let mut resources = json!({});
    if requests_branch {
        resources = json!({"requests": {"vpc.amazonaws.com/pod-eni": "1"}, "limits": {"vpc.amazonaws.com/pod-eni": "1"}});
    }
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": namespace,
            "name": name,
            "uid": format!("uid-{namespace}-{name}"),
            "annotations": {},
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "app:1", "resources": resources}],
        },
    });
    if let Some(a) = annotation {
        p["metadata"]["annotations"]["vpc.amazonaws.com/pod-eni"] = a.into();
    }
    p
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeApi {
    /// Serves on 127.0.0.1:<free port> inside `ns`.
    pub fn start_in(ns: &Netns) -> Result<Self> {
        let (changes, _) = broadcast::channel(1024);
        let mut me = Self {
            state: Arc::new(Mutex::new(State::default())),
            changes,
            cut: Arc::new(tokio::sync::watch::channel(0).0),
            netns: ns.name().to_string(),
            addr: "127.0.0.1:0".parse()?,
            server: None,
        };
        me.serve()?;
        Ok(me)
    }

    fn serve(&mut self) -> Result<()> {
        let addr = self.addr;
        let listener = bind_in(&self.netns, addr).with_context(|| {
            format!("binding the fixture apiserver on {addr} in {}", self.netns)
        })?;
        listener.set_nonblocking(true)?;
        self.addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let state = self.state.clone();
        let changes = self.changes.clone();
        let cut = self.cut.clone();
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        eprintln!("fake apiserver: runtime: {e}");
                        return;
                    }
                };
                rt.block_on(accept_loop(listener, state, changes, cut, stop_rx));
                // Dropping the runtime cancels every connection task: the
                // clients see their connections close.
            })?;
        self.server = Some(Server {
            stop: Some(stop_tx),
            thread: Some(thread),
        });
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server (no credentials: the fixture checks none).
    pub fn write_kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\ncurrent-context: fake\nusers:\n- name: agent\n  user: {{}}\n",
                self.url()
            ),
        )?;
        Ok(path)
    }

    /// Closes the listener and every open connection.
    pub fn stop(&mut self) {
        self.server = None;
    }

    /// Serves again on the same port, with the same pods and history.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.serve()
    }

    fn change(&self, kind: &'static str, mut pod: Value) {
        let mut s = lock(&self.state);
        s.rv += 1;
        let rv = s.rv;
        pod["metadata"]["resourceVersion"] = rv.to_string().into();
        let key = (
            pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            pod["metadata"]["name"].as_str().unwrap_or("").to_string(),
        );
        if kind == "DELETED" {
            s.pods.remove(&key);
        } else {
            s.pods.insert(key, pod.clone());
        }
        let c = Change { rv, kind, pod };
        s.history.push(c.clone());
        drop(s);
        let _ = self.changes.send(c);
    }

    /// Creates or replaces a pod.
    pub fn put_pod(&self, pod: Value) {
        let exists = {
            let s = lock(&self.state);
            s.pods.contains_key(&(
                pod["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                pod["metadata"]["name"].as_str().unwrap_or("").to_string(),
            ))
        };
        self.change(if exists { "MODIFIED" } else { "ADDED" }, pod);
    }

    /// Sets (`Some`) or removes (`None`) the pod-eni annotation of a pod.
    pub fn set_annotation(&self, namespace: &str, name: &str, value: Option<&str>) -> Result<()> {
        let mut pod = lock(&self.state)
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
            .with_context(|| format!("no pod {namespace}/{name}"))?;
        let ann = &mut pod["metadata"]["annotations"];
        match value {
            Some(v) => ann["vpc.amazonaws.com/pod-eni"] = v.into(),
            None => {
                if let Some(m) = ann.as_object_mut() {
                    m.remove("vpc.amazonaws.com/pod-eni");
                }
            }
        }
        self.change("MODIFIED", pod);
        Ok(())
    }

    /// Serves the ServiceCIDR API with these objects (name, `spec.cidrs`),
    /// as a 1.33+ apiserver does; `None` stops serving it.
    pub fn set_service_cidrs(&self, objects: Option<&[(&str, &[&str])]>) {
        lock(&self.state).service_cidrs = objects.map(|o| {
            o.iter()
                .map(|(n, c)| (n.to_string(), c.iter().map(|s| s.to_string()).collect()))
                .collect()
        });
    }

    /// Serves PolicyEndpoints, as a cluster with aws-network-policy-agent's
    /// controller does: each `(namespace, name, spec)`; `None` stops
    /// serving the resource.
    pub fn set_policy_endpoints(&self, objects: Option<&[(&str, &str, Value)]>) {
        lock(&self.state).policy_endpoints = objects.map(|o| {
            o.iter()
                .map(|(ns, name, spec)| {
                    json!({"apiVersion": "networking.k8s.aws/v1alpha1", "kind": "PolicyEndpoint",
                           "metadata": {"namespace": ns, "name": name}, "spec": spec})
                })
                .collect()
        });
    }

    pub fn delete_pod(&self, namespace: &str, name: &str) -> Result<()> {
        let pod = lock(&self.state)
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
            .with_context(|| format!("no pod {namespace}/{name}"))?;
        self.change("DELETED", pod);
        Ok(())
    }

    /// Forgets the history up to now: watches resuming from an older RV
    /// get 410 Gone; and the next `n` watch requests get it whatever RV.
    pub fn answer_gone(&self, n: u32) {
        let mut s = lock(&self.state);
        s.compacted_below = s.rv + 1;
        s.gone_next = n;
    }

    /// Ends every open watch stream (the clients re-watch).
    pub fn drop_watches(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    /// The Events POSTed so far.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.state).events.clone()
    }

    /// The resourceVersion of the last change.
    pub fn current_rv(&self) -> u64 {
        lock(&self.state).rv
    }

    /// The resourceVersions the watch requests so far started from.
    pub fn watch_starts(&self) -> Vec<u64> {
        lock(&self.state).watch_from.clone()
    }

    /// (lists, watches, gets) served so far.
    pub fn requests(&self) -> (u32, u32, u32) {
        let s = lock(&self.state);
        (s.lists, s.watches, s.gets)
    }
}

/// Binds a TCP listener inside the named namespace (from a thread that
/// entered it; the socket stays in that namespace).
fn bind_in(netns: &str, addr: SocketAddr) -> Result<std::net::TcpListener> {
    let path = format!("/run/netns/{netns}");
    let fd = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<std::net::TcpListener> {
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            Ok(std::net::TcpListener::bind(addr)?)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

async fn accept_loop(
    listener: std::net::TcpListener,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    cut: Arc<tokio::sync::watch::Sender<u64>>,
    mut stop: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let conn = tokio::select! {
            _ = &mut stop => return,
            c = listener.accept() => c,
        };
        let Ok((stream, _)) = conn else {
            continue;
        };
        let state = state.clone();
        let changes = changes.clone();
        let cut = cut.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let changes = changes.clone();
                let cut = cut.clone();
                async move { Ok::<_, Infallible>(handle(req, state, changes, cut).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn full(status: StatusCode, v: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    r
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn query(req: &Request<hyper::body::Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&String::from_utf8_lossy(&b[i + 1..i + 3]), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `spec.nodeName=X` → X (the only selector the agent uses).
fn node_selector(q: &BTreeMap<String, String>) -> Option<String> {
    q.get("fieldSelector")
        .and_then(|f| f.strip_prefix("spec.nodeName="))
        .map(str::to_string)
}

fn on_node(pod: &Value, node: &Option<String>) -> bool {
    match node {
        None => true,
        Some(n) => pod["spec"]["nodeName"].as_str() == Some(n.as_str()),
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    cut: Arc<tokio::sync::watch::Sender<u64>>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let q = query(&req);
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method().as_str(), parts.as_slice()) {
        ("GET", ["api", "v1", "pods"])
            if q.get("watch").map(String::as_str) == Some("true")
                || q.get("watch").map(String::as_str) == Some("1") =>
        {
            watch(q, state, changes, cut)
        }
        ("GET", ["api", "v1", "pods"]) => {
            let node = node_selector(&q);
            let mut s = lock(&state);
            s.lists += 1;
            let items: Vec<Value> = s
                .pods
                .values()
                .filter(|p| on_node(p, &node))
                .cloned()
                .collect();
            full(
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "PodList",
                       "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
            )
        }
        ("GET", ["api", "v1", "namespaces", ns, "pods", name]) => {
            let mut s = lock(&state);
            s.gets += 1;
            match s.pods.get(&(ns.to_string(), name.to_string())) {
                Some(p) => full(StatusCode::OK, p.clone()),
                None => full(
                    StatusCode::NOT_FOUND,
                    status(404, "NotFound", &format!("pods \"{name}\" not found")),
                ),
            }
        }
        ("GET", ["apis", "networking.k8s.io", "v1", "servicecidrs"])
            if lock(&state).service_cidrs.is_some() =>
        {
            let s = lock(&state);
            let items: Vec<Value> = s
                .service_cidrs
                .iter()
                .flatten()
                .map(|(name, cidrs)| {
                    json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
                           "metadata": {"name": name}, "spec": {"cidrs": cidrs}})
                })
                .collect();
            full(
                StatusCode::OK,
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDRList",
                       "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
            )
        }
        ("GET", ["apis", "networking.k8s.aws", "v1alpha1", "policyendpoints"])
            if lock(&state).policy_endpoints.is_some() =>
        {
            let s = lock(&state);
            let items: Vec<Value> = s.policy_endpoints.iter().flatten().cloned().collect();
            full(
                StatusCode::OK,
                json!({"apiVersion": "networking.k8s.aws/v1alpha1", "kind": "PolicyEndpointList",
                       "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
            )
        }
        ("POST", ["api", "v1", "namespaces", ns, "events"]) => {
            let ns = ns.to_string();
            let bytes = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let mut v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if v.is_object() {
                v["metadata"]["namespace"] = ns.into();
            }
            lock(&state).events.push(v.clone());
            full(StatusCode::CREATED, v)
        }
        _ => full(
            StatusCode::NOT_FOUND,
            status(404, "NotFound", &format!("no route {path}")),
        ),
    }
}

fn watch(
    q: BTreeMap<String, String>,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<Change>,
    cut: Arc<tokio::sync::watch::Sender<u64>>,
) -> Response<Body> {
    let node = node_selector(&q);
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
    let line = |v: Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
    // Subscribe before reading the history so no change falls in between.
    let mut live = changes.subscribe();
    let mut cut_rx = cut.subscribe();
    let (backlog, gone, mut rv) = {
        let mut s = lock(&state);
        s.watches += 1;
        s.watch_from.push(from);
        let gone = s.gone_next > 0 || (from != 0 && from + 1 < s.compacted_below);
        if s.gone_next > 0 {
            s.gone_next -= 1;
        }
        let backlog: Vec<Change> = s.history.iter().filter(|c| c.rv > from).cloned().collect();
        (backlog, gone, from)
    };
    tokio::spawn(async move {
        if gone {
            let _ = tx
                .send(line(json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")})))
                .await;
            return;
        }
        for c in backlog {
            rv = c.rv;
            if on_node(&c.pod, &node)
                && tx
                    .send(line(json!({"type": c.kind, "object": c.pod})))
                    .await
                    .is_err()
            {
                return;
            }
        }
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                c = live.recv() => match c {
                    Ok(c) if c.rv <= rv => {}
                    Ok(c) => {
                        rv = c.rv;
                        if on_node(&c.pod, &node) && tx.send(line(json!({"type": c.kind, "object": c.pod}))).await.is_err() {
                            return;
                        }
                    }
                    // Fell behind or the server is going away: end the
                    // stream; the client re-watches from its last RV.
                    Err(_) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                        "metadata": {"resourceVersion": rv.to_string()}}});
                    if tx.send(line(bm)).await.is_err() {
                        return;
                    }
                }
                _ = cut_rx.changed() => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    r
}
