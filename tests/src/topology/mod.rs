//! Network namespaces and the nodes built from them: veths, routes, the
//! simulated VPC and its trunk, each a guard that removes itself on drop.

pub mod cluster;
pub mod legacy_node;
pub mod mini_node;
pub mod netns;
pub mod ns_forward;
pub mod sim_node;
pub mod snat_node;
pub mod vpc_fabric;
pub mod vpc_trunk;
