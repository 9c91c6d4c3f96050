//! `trunkline-agent run`: start the agent and serve until SIGTERM/SIGINT.
//! Exiting detaches nothing: maps and links stay pinned and keep forwarding.
//!
//! What is served: [`grpc`] (trunkline-cni's RPC on the unix socket),
//! [`http`] (`/metrics` from [`metrics`], the JSON introspection API), and
//! [`health`], the probe the DaemonSet runs against the socket.

pub mod grpc;
pub mod health;
pub mod http;
pub mod metrics;

use std::{
    os::unix::fs::PermissionsExt as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use dataplane_common::fragments::FRAG_TIMEOUT_NS;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use trunkline_rpc::v1::agent_server::AgentServer;

use crate::{
    agent::{Agent, Shared},
    config::RunConfig,
    conntrack_gc::{self, Collector, Timeouts},
    dataplane::{CtMaps, FragMaps, MapOwner},
    node::file::NodeSpec,
};

use self::{grpc::AgentService, metrics::Metrics};

/// Binds the unix socket with mode 0600 from the start (no window where
/// another user could connect), replacing a stale one.
fn bind_socket(path: &std::path::Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()))
        }
    }
    use nix::sys::stat::{umask, Mode};
    // The process-wide umask, for the bind only: restored at once.
    let old = umask(Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    umask(old);
    let listener = listener.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// SIGHUP: re-read the node file (e.g. a VPC CIDR was added).
async fn reload_on_sighup(agent: Shared) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; restart to reload the node file");
        return;
    };
    while hup.recv().await.is_some() {
        let reloaded = agent.lock().reload_node_file();
        if let Err(e) = reloaded {
            tracing::warn!(
                error = format!("{e:#}"),
                "node file reload failed; keeping the running configuration"
            );
        }
    }
}

/// Installs the SIGTERM/SIGINT handlers now (a signal that arrives before
/// the returned future is first polled is not lost: the socket a
/// supervisor waits for exists before the server polls it) and resolves on
/// the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::warn!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    }
}

pub fn run(config: RunConfig, node: NodeSpec) -> Result<()> {
    run_with(config, node, Box::new(|_| {}))
}

/// Called on the runtime once the agent is up (AWS mode starts its tasks).
pub type OnStart = Box<dyn FnOnce(Shared) + Send>;

pub fn run_with(config: RunConfig, node: NodeSpec, on_start: OnStart) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(config, node, on_start))
}

async fn serve(config: RunConfig, node: NodeSpec, on_start: OnStart) -> Result<()> {
    let shutdown = shutdown_signal();
    let (agent, report) = Agent::start(config.clone(), node)?;
    // CT and SNAT_REV's one userspace writer (pinned by the start above):
    // migration's, then GC's.
    let mut ct = CtMaps::open(&config.bpf_root).context("opening CT and SNAT_REV")?;
    tracing::info!(
        kept = report.kept,
        removed_records = report.removed_records,
        removed_entries = report.removed_entries,
        removed_vlans = report.removed_vlans,
        removed_links = report.removed_links,
        bpf_root = %config.bpf_root.display(),
        "agent started"
    );
    let mut agent = agent;
    if let Some(checkpoint) = config.migrate_from_aws_node.as_deref() {
        if checkpoint.exists() {
            // A blocked or failed migration leaves the legacy pods on the
            // legacy plumbing; the agent still serves new pods.
            let policy_api =
                crate::migrate::network_policy::check_api(config.kube.access(), agent.node_ip())
                    .await;
            if let Err(e) = crate::migrate::migrate(
                &mut agent,
                &mut ct,
                checkpoint,
                std::path::Path::new(crate::migrate::network_policy::DEFAULT_PINS),
                &policy_api,
            ) {
                tracing::error!(error = format!("{e:#}"), "migration from aws-node failed");
            }
        } else {
            tracing::info!(checkpoint = %checkpoint.display(), "no aws-node checkpoint: nothing to migrate");
        }
    }
    let node_ip = agent.node_ip().octets();
    let agent = Shared::new(agent);
    let metrics = Arc::new(Metrics::new());
    let stop = Arc::new(AtomicBool::new(false));
    let frags = FragMaps::open(&config.bpf_root).context("opening FRAG_PORTS and FRAG_HELD")?;
    let gc = spawn_conntrack_gc(ct, frags, node_ip, metrics.clone(), stop.clone())?;

    let metrics_l = TcpListener::bind(&config.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", config.metrics_addr))?;
    let intro_l = TcpListener::bind(&config.introspection_addr)
        .await
        .with_context(|| format!("binding --introspection-addr {}", config.introspection_addr))?;
    tokio::spawn(http::serve_metrics(
        metrics_l,
        agent.clone(),
        metrics.clone(),
    ));
    tokio::spawn(http::serve_introspection(intro_l, agent.clone()));

    tokio::spawn(reload_on_sighup(agent.clone()));
    // Before any pod is served: a pod's first packet to a node address
    // must already go to the stack.
    crate::node::local_addrs::start(agent.clone())
        .await
        .context("reading the node's local addresses")?;
    on_start(agent.clone());

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<AgentServer<AgentService>>().await;
    let branches =
        crate::cloud::kube::BranchSource::start(&config.kube, agent.clone(), metrics.clone())
            .await
            .context("starting the Kubernetes pod watch")?;
    let listener = bind_socket(&config.socket)?;
    tracing::info!(socket = %config.socket.display(), metrics = %config.metrics_addr, introspection = %config.introspection_addr, "serving");
    let result = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(AgentServer::new(
            AgentService::new(agent.clone(), metrics).with_branches(branches),
        ))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(&config.socket);
    stop.store(true, Ordering::Relaxed);
    let _ = gc.join();
    result.context("serving gRPC")?;
    tracing::info!("stopped; maps and links stay pinned");
    Ok(())
}

/// Conntrack GC on its own thread (a pass over a full table takes long
/// enough that it must not stall the RPC server), at an interval that
/// adapts to churn, until `stop`; each pass also expires what lost
/// fragments left in the fragment maps.
fn spawn_conntrack_gc(
    mut maps: CtMaps,
    frags: FragMaps,
    node_ip: dataplane_common::Ipv4,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
    let handle = std::thread::Builder::new()
        .name("conntrack-gc".into())
        .spawn(move || {
            let mut collector = Collector::new(Timeouts::default());
            let mut interval = Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let sockets = conntrack_gc::host_sockets();
                match collector.collect(&mut maps, conntrack_gc::now_coarse_ns(), node_ip, &sockets)
                {
                    Ok(report) => {
                        let took = started.elapsed();
                        interval = conntrack_gc::next_interval(interval, &report, min, max);
                        metrics.observe_gc(&report, took, interval);
                        tracing::debug!(?report, ?took, next = ?interval, "conntrack GC");
                    }
                    Err(e) => tracing::warn!(error = %e, "conntrack GC pass failed"),
                }
                match frags.expire(
                    conntrack_gc::now_coarse_ns(),
                    Duration::from_nanos(FRAG_TIMEOUT_NS),
                ) {
                    Ok(expiry) => metrics.observe_frag_gc(&expiry),
                    Err(e) => tracing::warn!(error = %e, "fragment GC failed"),
                }
                let until = Instant::now() + interval;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        })
        .context("starting the conntrack GC thread")?;
    Ok(handle)
}
