//! The test bed: everything end-to-end tests, golden-packet tests, the demo
//! and the benchmarks share, in four parts:
//!
//! - [`kernel`]: the kernel object and what runs it without a node: bpffs
//!   mounts, `BPF_PROG_TEST_RUN` ([`kernel::golden`]) on packets built by
//!   [`kernel::packets`], facts about the running kernel;
//! - [`topology`]: namespaces, veths and the nodes built from them, from
//!   the smallest ([`topology::mini_node`]) to the simulated EKS node
//!   running the real agent ([`topology::sim_node`]) in a simulated VPC;
//! - [`fakes`]: stand-ins for what a node talks to: IMDS, EC2 (moto), the
//!   Kubernetes apiserver;
//! - [`drivers`]: what acts on a topology: the agent and CNI binaries as a
//!   runtime runs them, traffic, aws-node's plumbing (the reference), the
//!   benchmarks' measurements and charts.
//!
//! Everything a test creates removes itself on drop, also when it panics.

pub mod drivers;
pub mod fakes;
pub mod kernel;
pub mod topology;

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

/// Calls `f` every 200 ms until it gives a value, for at most `limit`:
/// the value, or an error naming `what`.
pub fn wait<T>(
    limit: std::time::Duration,
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
