//! The agent's RPC surface shared by `trunkline-agent` and `trunkline-cni`.
//! The `trunkline.v1` service (AddPod / DelPod / CheckPod over a unix
//! socket) lands with the agent/CNI issue; until then this crate holds the
//! defaults both sides agree on.

/// Where the agent listens and the CNI plugin connects by default.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/trunkline/agent.sock";
