//! The one RPC per command to trunkline-agent, with a bound on how long the
//! plugin waits, and gRPC status → CNI error code.

use std::{future::Future, time::Duration};

use tonic::{transport::Channel, Code, Status};
use trunkline_rpc::v1::agent_client::AgentClient;

use crate::error::{code, CniError, Result};

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub type Client = AgentClient<Channel>;

/// Connects to the agent; code 11 (try again later) when it is not there.
pub async fn connect(socket: &str) -> Result<Client> {
    match tokio::time::timeout(TIMEOUT, trunkline_rpc::connect(socket)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!("trunkline-agent is not reachable at {socket} (is it running? is agentSocket right?)"),
        )
        .details(e)),
        Err(_) => Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!("trunkline-agent at {socket} did not answer within {TIMEOUT:?}"),
        )),
    }
}

/// Whether a failed call means "the agent is gone" (not "it said no").
pub fn is_unavailable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

fn to_cni(what: &str, s: Status) -> CniError {
    let c = match s.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::ResourceExhausted
        | Code::Unknown => code::TRY_AGAIN_LATER,
        _ => code::AGENT_REFUSED,
    };
    CniError::new(c, format!("trunkline-agent {what}: {}", s.message()))
        .details(format!("{:?}", s.code()))
}

/// Runs one call with the timeout, mapping failures to CNI errors.
pub async fn call<T, F>(what: &str, f: F) -> Result<T, (CniError, bool)>
where
    F: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
{
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => {
            let gone = is_unavailable(&s);
            Err((to_cni(what, s), gone))
        }
        Err(_) => Err((
            CniError::new(
                code::TRY_AGAIN_LATER,
                format!("trunkline-agent {what}: no answer within {TIMEOUT:?}"),
            ),
            true,
        )),
    }
}
