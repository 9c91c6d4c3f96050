//! The test bed: everything end-to-end tests, golden-packet tests, the demo
//! and the benchmarks share.
//!
//! - [`golden`]: run one program on one packet with `BPF_PROG_TEST_RUN` and
//!   get back the verdict, the output bytes and the redirect target;
//! - [`packets`]: build the packets those tests feed in (etherparse);
//! - [`netns`]: network namespaces, veths and bpffs mounts as guards that
//!   remove themselves on drop, also when a test panics;
//! - [`mini_node`]: the smallest real topology, pod ↔ node ↔ peer;
//! - [`sim_node`]: the simulated EKS node running the real agent, with
//!   [`cni`] to call the real CNI plugin as a runtime does.

pub mod agent_proc;
pub mod bench_control;
pub mod binaries;
pub mod bpffs;
pub mod charts;
pub mod cni;
pub mod golden;
pub mod imds_fixture;
pub mod kernel;
pub mod kube_api;
pub mod legacy;
pub mod legacy_node;
pub mod mini_node;
pub mod moto;
pub mod netns;
pub mod ns_forward;
pub mod object;
pub mod packets;
pub mod sim_node;
pub mod skbuff;
pub mod snat_node;
pub mod traffic;
pub mod vpc_fabric;
pub mod vpc_trunk;

/// A process-unique suffix for names of things a test creates.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}-{}-{n}", std::process::id())
}

/// `d` stretched by `TRUNKLINE_TEST_TIME_SCALE` (default 1): waits in the
/// test bed are bounded, and `cargo xtask vm-test` sets the scale when the
/// kernel under test runs emulated (TCG), several times slower than here.
pub fn scaled(d: std::time::Duration) -> std::time::Duration {
    let scale = std::env::var("TRUNKLINE_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|s| (1..=20).contains(s))
        .unwrap_or(1);
    d * scale
}
