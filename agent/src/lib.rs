//! trunkline-agent: the node daemon. It loads and pins the data path, owns
//! every map, and (in later modules) runs IPAM, the CNI RPC server, EC2 and
//! Kubernetes reconcilers.

pub mod aws_env;
pub mod conntrack_gc;
pub mod dataplane;
pub mod inspect;
pub mod inspect_ct;
