//! A fake instance metadata service (IMDSv2) on 127.0.0.1: token flow (PUT
//! `/latest/api/token` needs the TTL header; GETs without a valid token get
//! 401), directory listings like the real one, content a test can change
//! while it runs (attach an ENI), and injected failures (the first N
//! requests answer 500). Stopped on drop.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const META: &str = "/latest/meta-data/";

#[derive(Default)]
struct State {
    /// Leaf path under `/latest/meta-data/` → value.
    leaves: BTreeMap<String, String>,
    tokens: BTreeSet<String>,
    next_token: u64,
    fail_next: u32,
    requests: u64,
    unauthorized: u64,
    token_puts: u64,
}

/// One ENI as the fixture publishes it.
#[derive(Clone, Debug)]
pub struct FixtureEni {
    pub mac: String,
    pub device_number: u32,
    pub interface_id: String,
    pub subnet_id: String,
    pub subnet_cidr: String,
    /// Primary first.
    pub local_ipv4s: Vec<Ipv4Addr>,
    pub prefixes: Vec<String>,
    pub security_groups: Vec<String>,
    pub vpc_cidrs: Vec<String>,
}

pub struct ImdsFixture {
    state: Arc<Mutex<State>>,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn answer(state: &Mutex<State>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Ok(mut s) = state.lock() else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "poisoned");
    };
    s.requests += 1;
    if s.fail_next > 0 {
        s.fail_next -= 1;
        return text(StatusCode::INTERNAL_SERVER_ERROR, "injected failure");
    }
    let path = req.uri().path().to_string();
    if path == "/latest/api/token" {
        if req.method() != Method::PUT {
            return text(StatusCode::METHOD_NOT_ALLOWED, "");
        }
        let ttl_ok = req
            .headers()
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|t| (1..=21600).contains(&t));
        if !ttl_ok {
            return text(StatusCode::BAD_REQUEST, "missing or invalid TTL header");
        }
        s.next_token += 1;
        s.token_puts += 1;
        let token = format!("tl-token-{}", s.next_token);
        s.tokens.insert(token.clone());
        let mut r = text(StatusCode::OK, token);
        r.headers_mut()
            .insert(TTL_HEADER, hyper::header::HeaderValue::from_static("21600"));
        return r;
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    let token_ok = req
        .headers()
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| s.tokens.contains(t));
    if !token_ok {
        s.unauthorized += 1;
        return text(StatusCode::UNAUTHORIZED, "");
    }
    let Some(rel) = path.strip_prefix(META) else {
        return text(StatusCode::NOT_FOUND, "");
    };
    if let Some(v) = s.leaves.get(rel) {
        return text(StatusCode::OK, v.clone());
    }
    // A directory: list its children, sub-directories with a trailing '/'.
    let dir = format!("{}/", rel.trim_end_matches('/'));
    let mut children = BTreeSet::new();
    for k in s.leaves.keys() {
        if let Some(rest) = k.strip_prefix(&dir) {
            match rest.split_once('/') {
                Some((d, _)) => children.insert(format!("{d}/")),
                None => children.insert(rest.to_string()),
            };
        }
    }
    if children.is_empty() {
        return text(StatusCode::NOT_FOUND, "");
    }
    text(
        StatusCode::OK,
        children.into_iter().collect::<Vec<_>>().join("\n"),
    )
}

impl ImdsFixture {
    /// Starts the server (own thread and runtime) on a free port.
    pub fn start() -> Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding the IMDS fixture")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("imds-fixture".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                        return;
                    };
                    loop {
                        let conn = tokio::select! {
                            _ = &mut stop_rx => return,
                            c = listener.accept() => c,
                        };
                        let Ok((stream, _)) = conn else { continue };
                        let st = st.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req: Request<Incoming>| {
                                let r = answer(&st, &req);
                                async move { Ok::<_, Infallible>(r) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                });
            })
            .context("starting the IMDS fixture thread")?;
        Ok(Self {
            state,
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// Sets a leaf under `/latest/meta-data/`.
    pub fn set(&self, path: &str, value: &str) {
        self.with(|s| s.leaves.insert(path.to_string(), value.to_string()));
    }

    /// Removes every leaf under `dir`.
    pub fn remove_dir(&self, dir: &str) {
        let d = format!("{}/", dir.trim_end_matches('/'));
        self.with(|s| s.leaves.retain(|k, _| !k.starts_with(&d)));
    }

    /// The next `n` requests (token PUTs included) answer 500.
    pub fn fail_next(&self, n: u32) {
        self.with(|s| s.fail_next = n);
    }

    /// Forgets every token (as after their TTL): the next GET gets 401.
    pub fn expire_tokens(&self) {
        self.with(|s| s.tokens.clear());
    }

    /// (requests, 401 answers, token PUTs) so far.
    pub fn counters(&self) -> (u64, u64, u64) {
        self.with(|s| (s.requests, s.unauthorized, s.token_puts))
    }

    /// Instance identity and placement.
    pub fn set_instance(&self, id: &str, instance_type: &str, az: &str, primary_mac: &str) {
        self.set("instance-id", id);
        self.set("instance-type", instance_type);
        self.set("placement/availability-zone", az);
        self.set(
            "placement/region",
            az.trim_end_matches(|c: char| c.is_ascii_alphabetic()),
        );
        self.set("mac", primary_mac);
    }

    /// Publishes (or replaces) one ENI under `network/interfaces/macs/<mac>/`.
    pub fn set_eni(&self, e: &FixtureEni) {
        let dir = format!("network/interfaces/macs/{}", e.mac);
        self.remove_dir(&dir);
        let p = |k: &str| format!("{dir}/{k}");
        self.set(&p("device-number"), &e.device_number.to_string());
        self.set(&p("interface-id"), &e.interface_id);
        self.set(&p("mac"), &e.mac);
        self.set(&p("subnet-id"), &e.subnet_id);
        self.set(&p("subnet-ipv4-cidr-block"), &e.subnet_cidr);
        let ips: Vec<String> = e.local_ipv4s.iter().map(|i| i.to_string()).collect();
        self.set(&p("local-ipv4s"), &ips.join("\n"));
        if !e.prefixes.is_empty() {
            self.set(&p("ipv4-prefix"), &e.prefixes.join("\n"));
        }
        self.set(&p("security-group-ids"), &e.security_groups.join("\n"));
        self.set(&p("vpc-ipv4-cidr-blocks"), &e.vpc_cidrs.join("\n"));
        if let Some(first) = e.vpc_cidrs.first() {
            self.set(&p("vpc-ipv4-cidr-block"), first);
        }
    }
}

impl Drop for ImdsFixture {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
