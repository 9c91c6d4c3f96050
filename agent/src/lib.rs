//! trunkline-agent: the node daemon. It loads and pins the data path, owns
//! every map, runs IPAM, serves the CNI RPC, checkpoints its state, and
//! exposes metrics and introspection.
//!
//! The layout follows the design (see `docs/architecture.md`):
//! - [`config`]: what `trunkline-agent run` was told;
//! - [`agent`]: the running agent, which owns the pods, the node and the
//!   data path and hands out narrow access to them;
//! - [`serve`]: the gRPC service for trunkline-cni, the HTTP endpoints
//!   (metrics, introspection) and the health probe;
//! - [`node`]: the node's desired state (the node file), its reconciler
//!   (`ENIS`, `CONFIG`, `NO_SNAT`, `SERVICE_CIDRS`, ENI links) and the
//!   interfaces of the agent's namespace;
//! - [`pods`]: AddPod/DelPod/CheckPod/GC, IPAM, the checkpoint, restore on
//!   restart and adoption (`PODS`, `VLANS`, pod veth programs);
//! - [`dataplane`]: loading the kernel object, attaching, typed maps;
//! - [`conntrack_gc`]: expiry of `CT`/`SNAT_REV`;
//! - [`cloud`]: AWS mode (IMDS, the EC2 warm pool) and Kubernetes mode
//!   (branch ENIs from pod annotations);
//! - [`aws_node_env`]: the aws-node environment variables;
//! - [`migrate`]: taking over a node from aws-node;
//! - [`inspect`]: `trunkline-agent inspect ...`.

pub mod agent;
pub mod atomic_file;
pub mod aws_node_env;
pub mod cloud;
pub mod config;
pub mod conntrack_gc;
pub mod crash;
pub mod dataplane;
pub mod inspect;
pub mod install_cni;
pub mod migrate;
pub mod node;
pub mod object;
pub mod pods;
pub mod rbac;
pub mod serve;
