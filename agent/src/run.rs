//! `trunkline-agent run`: start the agent and serve until SIGTERM/SIGINT.
//! Exiting detaches nothing: maps and links stay pinned and keep forwarding.

use std::{
    os::unix::fs::PermissionsExt as _,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use trunkline_rpc::v1::agent_server::AgentServer;

use crate::{
    daemon::{Agent, RunConfig},
    http::{self, Endpoint},
    metrics::Metrics,
    service::AgentService,
};

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
    // SAFETY: umask has no memory-safety preconditions; we restore it at once.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

pub fn run(config: RunConfig) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(config))
}

async fn serve(config: RunConfig) -> Result<()> {
    let (agent, report) = Agent::start(config.clone())?;
    tracing::info!(
        kept = report.kept,
        removed_records = report.removed_records,
        removed_entries = report.removed_entries,
        removed_links = report.removed_links,
        bpf_root = %config.bpf_root.display(),
        "agent started"
    );
    let agent = Arc::new(Mutex::new(agent));
    let metrics = Arc::new(Metrics::new());

    let metrics_l = TcpListener::bind(&config.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", config.metrics_addr))?;
    let intro_l = TcpListener::bind(&config.introspection_addr)
        .await
        .with_context(|| format!("binding --introspection-addr {}", config.introspection_addr))?;
    tokio::spawn(http::serve(
        metrics_l,
        Endpoint::Metrics,
        agent.clone(),
        metrics.clone(),
    ));
    tokio::spawn(http::serve(
        intro_l,
        Endpoint::Introspection,
        agent.clone(),
        metrics.clone(),
    ));

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<AgentServer<AgentService>>().await;
    let listener = bind_socket(&config.socket)?;
    tracing::info!(socket = %config.socket.display(), metrics = %config.metrics_addr, introspection = %config.introspection_addr, "serving");
    let result = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(AgentServer::new(AgentService::new(agent.clone(), metrics)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown_signal())
        .await;
    let _ = std::fs::remove_file(&config.socket);
    result.context("serving gRPC")?;
    tracing::info!("stopped; maps and links stay pinned");
    Ok(())
}
