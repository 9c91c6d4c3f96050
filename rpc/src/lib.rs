//! The agent's RPC surface shared by `trunkline-agent` and `trunkline-cni`:
//! the `trunkline.v1.Agent` gRPC service (AddPod / DelPod / CheckPod /
//! Status / Gc) spoken over a unix socket, plus the defaults both sides
//! agree on.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("trunkline.v1");
}

/// Where the agent listens and the CNI plugin connects by default.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/trunkline/agent.sock";

/// The link-local gateway every pod routes through.
pub const POD_GATEWAY: &str = "169.254.1.1";

/// Errors reaching the agent.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to the agent at {path}: {source}")]
    Transport {
        path: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// A channel to the agent over the unix socket at `path` (for the Agent
/// service and the standard gRPC health service). The connection is made
/// eagerly, so a missing or dead socket fails here.
pub async fn channel(path: &str) -> Result<tonic::transport::Channel, ConnectError> {
    let socket = path.to_string();
    // The URI is required by the API but unused: the connector dials the socket.
    tonic::transport::Endpoint::from_static("http://trunkline-agent")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|source| ConnectError::Transport {
            path: path.to_string(),
            source,
        })
}

/// A client of the agent over the unix socket at `path`.
pub async fn connect(
    path: &str,
) -> Result<v1::agent_client::AgentClient<tonic::transport::Channel>, ConnectError> {
    Ok(v1::agent_client::AgentClient::new(channel(path).await?))
}
