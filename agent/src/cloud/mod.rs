//! The agent's cloud peers: AWS (IMDS discovery, the EC2 warm pool feeding
//! IPAM, the trunk ENI for branch pods) and Kubernetes (branch ENIs from
//! the pod-eni annotation).

pub mod aws;
pub mod aws_pool;
pub mod aws_trunk;
pub mod kube;
