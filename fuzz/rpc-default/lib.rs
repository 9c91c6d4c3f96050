//! The one item of trunkline-rpc that `cni/src/config.rs` uses.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/trunkline/agent.sock";
