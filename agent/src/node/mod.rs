//! The node: its desired state (the node file in local mode), the
//! reconciler that programs it into the node maps and the ENIs, the
//! interfaces of the agent's network namespace, and the addresses local to
//! it as they come and go.

pub mod eni_link;
pub mod file;
pub mod gateway_arp;
pub mod local_addrs;
pub mod netif;
pub mod reconcile;
