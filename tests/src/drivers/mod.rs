//! What acts on a topology: the real agent and CNI binaries, traffic,
//! aws-node's plumbing as the reference, and the benchmarks' measurements.

pub mod agent_proc;
pub mod bench_conntrack;
pub mod bench_control;
pub mod binaries;
pub mod charts;
pub mod cni;
pub mod cpu_cost;
pub mod legacy;
pub mod traffic;
