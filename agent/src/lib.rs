//! trunkline-agent: the node daemon. It loads and pins the data path, owns
//! every map, runs IPAM from the node file (local mode), serves the CNI
//! RPC, checkpoints its state, and exposes metrics and introspection.

pub mod aws_env;
pub mod aws_env_unsupported;
pub mod aws_mode;
pub mod aws_pool;
pub mod branch_source;
pub mod checkpoint;
pub mod conntrack_gc;
pub mod crash;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod http;
pub mod inspect;
pub mod inspect_ct;
pub mod inspect_maps;
pub mod install_cni;
pub mod ipam;
pub mod metrics;
pub mod migrate;
pub mod netif;
pub mod node_file;
pub mod node_state;
pub mod object;
pub mod pods;
pub mod rbac;
pub mod run;
pub mod service;
