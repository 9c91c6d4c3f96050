//! The node: its desired state (the node file in local mode), the
//! reconciler that programs it into the node maps and the ENIs, and the
//! interfaces of the agent's network namespace.

pub mod file;
pub mod netif;
pub mod reconcile;
