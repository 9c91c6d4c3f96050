//! Stand-ins for the services a node talks to: IMDS, EC2 (moto) and the
//! Kubernetes apiserver, served on the host's loopback.

pub mod imds_fixture;
pub mod kube_api;
pub mod moto;
