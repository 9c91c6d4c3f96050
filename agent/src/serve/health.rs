//! `trunkline-agent health`: the DaemonSet's liveness and readiness probe.
//! Kubernetes gRPC probes need a TCP port, and the agent serves gRPC only
//! on its unix socket, so the probe is this command (exec), asking the
//! standard gRPC health service there.

use std::time::Duration;

use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// Whether the agent on `socket` answers SERVING within `timeout`; the
/// error says why not.
pub fn check(socket: &str, timeout: Duration) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    rt.block_on(async {
        let ask = async {
            let channel = trunkline_rpc::channel(socket)
                .await
                .map_err(|e| format!("connecting to {socket}: {e}"))?;
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: "trunkline.v1.Agent".into(),
                })
                .await
                .map_err(|e| format!("health check: {e}"))?;
            match reply.into_inner().status() {
                ServingStatus::Serving => Ok(()),
                other => Err(format!("agent is {other:?}")),
            }
        };
        tokio::time::timeout(timeout, ask)
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_agent_is_a_clear_failure() {
        let err =
            super::check("/nonexistent/agent.sock", std::time::Duration::from_secs(2)).unwrap_err();
        assert!(err.contains("/nonexistent/agent.sock"), "{err}");
    }
}
