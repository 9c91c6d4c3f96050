//! The one item of trunkline-rpc that `cni-shim/src/config.rs` uses.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/trunkline/agent.sock";
