//! Running cargo and the test/demo flows.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{ebpf, packages, paths, pyvenv, vm};

/// The env var through which tests, the demo and (later) the agent's build
/// find the kernel object.
pub const OBJECT_ENV: &str = "TRUNKLINE_EBPF_OBJECT";

/// Runs `cmd`, failing with its command line when it fails.
pub fn checked(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(paths::workspace_root());
    cmd
}

pub fn cargo_build_workspace(obj: &Path, release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--workspace", "--all-targets"])
        .env(OBJECT_ENV, obj);
    if release {
        cmd.arg("--release");
    }
    checked(&mut cmd)
}

/// The pid a test bed name carries (`tl-<tag>-<pid>-<n>`).
fn creator_pid(name: &str) -> Option<u32> {
    let mut parts = name.rsplit('-');
    parts.next()?;
    parts.next()?.parse().ok()
}

/// Whether the object was made by a process that is gone: only then is it
/// left behind (a live process, e.g. another test run, may still own it).
fn orphaned(name: &str) -> bool {
    creator_pid(name).is_none_or(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// What the tests may leave behind if a guard failed: our network
/// namespaces (`tl-*`) and our bpffs mounts (`tl-bpffs-*`) whose creating
/// process has exited.
fn leftovers() -> Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    let out = Command::new("ip")
        .args(["netns", "list"])
        .stderr(Stdio::null())
        .output()
        .context("ip netns list")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(name) = line.split_whitespace().next() {
            if name.starts_with("tl-") && orphaned(name) {
                found.insert(format!("netns {name}"));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        if let Some(dir) = line.split_whitespace().nth(1) {
            if dir.contains("/tl-bpffs-") && orphaned(dir) {
                found.insert(format!("bpffs mount {dir}"));
            }
        }
    }
    Ok(found)
}

/// The env vars through which end-to-end tests and the demo find the real
/// binaries (`tests/src/drivers/binaries.rs`).
pub const AGENT_BIN_ENV: &str = "TRUNKLINE_AGENT_BIN";
pub const CNI_BIN_ENV: &str = "TRUNKLINE_CNI_BIN";

/// Builds trunkline-agent and trunkline-cni (debug) and returns their paths.
pub fn build_binaries(obj: &Path) -> Result<(PathBuf, PathBuf)> {
    checked(
        cargo()
            .args([
                "build",
                "--quiet",
                "-p",
                "trunkline-agent",
                "-p",
                "trunkline-cni",
            ])
            .env(OBJECT_ENV, obj),
    )?;
    let dir = paths::target_dir().join("debug");
    Ok((dir.join("trunkline-agent"), dir.join("trunkline-cni")))
}

pub fn test(extra: &[String], host_only: bool) -> Result<()> {
    packages::ensure()?;
    let venv = pyvenv::ensure_moto()?;
    let obj = ebpf::build(true)?;
    let (agent, cni) = build_binaries(&obj)?;
    let before = leftovers()?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"])
        .args(extra)
        .env(pyvenv::VENV_ENV, &venv)
        .env(OBJECT_ENV, &obj)
        .env(AGENT_BIN_ENV, &agent)
        .env(CNI_BIN_ENV, &cni);
    let latency = paths::target_dir().join("trunkline-cni-add-latency.txt");
    let _ = std::fs::remove_file(&latency);
    cmd.env("TRUNKLINE_LATENCY_REPORT", &latency);
    let result = checked(&mut cmd);
    // Written by tests/tests/e2e_scale.rs (reported, not asserted).
    if let Ok(report) = std::fs::read_to_string(&latency) {
        println!("xtask: {report}");
    }
    // Every test cleans up after itself, also when it fails; check that.
    let after = leftovers()?;
    let leaked: Vec<&String> = after.difference(&before).collect();
    result?;
    if !leaked.is_empty() {
        bail!("tests left these behind: {leaked:?}");
    }
    println!("xtask: no network namespace or bpffs mount left behind");
    if !extra.is_empty() || host_only {
        println!("xtask: kernel matrix not run (a test filter or --host-only was given)");
        return Ok(());
    }
    // The kernels EKS nodes run: every program through the verifier on 6.1
    // and 6.12, the refusal on 5.10, and the golden-packet and agent suites
    // on 6.1, the oldest supported kernel and the one without TCX
    // (`cargo xtask vm-test --kernel all` runs the whole matrix).
    vm::vm_test(VM_KERNELS_VERIFIER, "verifier", &[])?;
    vm::vm_test(VM_KERNELS_SUITES, VM_SUITES, &[])
}

/// What `cargo xtask test` runs of the kernel matrix.
const VM_KERNELS_VERIFIER: &str = "6.1,6.12,5.10";
const VM_KERNELS_SUITES: &str = "6.1";
const VM_SUITES: &str = "golden,agent";

pub fn demo() -> Result<()> {
    packages::ensure()?;
    let obj = ebpf::build(true)?;
    let (agent, cni) = build_binaries(&obj)?;
    checked(cargo().args([
        "build",
        "--quiet",
        "-p",
        "trunkline-tests",
        "--bin",
        "trunkline-demo",
    ]))?;
    let bin = paths::target_dir().join("debug").join("trunkline-demo");
    checked(
        Command::new(&bin)
            .env(OBJECT_ENV, &obj)
            .env(AGENT_BIN_ENV, &agent)
            .env(CNI_BIN_ENV, &cni),
    )
}

pub fn bench(quick: bool, conntrack: bool, cpu: bool) -> Result<()> {
    packages::ensure()?;
    let obj = ebpf::build(true)?;
    // The debug profile: what is measured runs in the kernel (the programs,
    // the stack, iperf3's sockets); the drivers' own loops are syscall-bound,
    // and a release build would compile every dependency a second time.
    // The agent's code is measured too (conntrack GC walks 1M flows in
    // userspace), so it and map-batch are optimised as in the release
    // build it ships in.
    checked(cargo().args([
        "build",
        "--quiet",
        "--config",
        "profile.dev.package.trunkline-agent.opt-level=3",
        "--config",
        "profile.dev.package.map-batch.opt-level=3",
        "-p",
        "trunkline-tests",
        "--bin",
        "trunkline-pktcost",
        "--bin",
        "trunkline-bench",
    ]))?;
    if conntrack {
        return bench_conntrack(quick, &obj);
    }
    let bins = paths::target_dir().join("debug");
    if cpu {
        let mut bench = Command::new(bins.join("trunkline-bench"));
        bench.env(OBJECT_ENV, &obj).arg("--cpu");
        if quick {
            bench.arg("--quick");
        }
        return checked(&mut bench);
    }
    // The verifier's cost on the host and on the LTS kernels EKS runs.
    let cells = vm::verifier_costs(&[
        vm::Target::Host,
        vm::Target::parse_list("6.1")?[0],
        vm::Target::parse_list("6.12")?[0],
    ])?;
    let verifier = paths::target_dir().join("verifier-costs.json");
    std::fs::write(&verifier, serde_json::to_string_pretty(&cells)?)?;
    checked(Command::new(bins.join("trunkline-pktcost")).env(OBJECT_ENV, &obj))?;
    let mut bench = Command::new(bins.join("trunkline-bench"));
    bench
        .env(OBJECT_ENV, &obj)
        .env("TRUNKLINE_VERIFIER_COSTS", &verifier);
    if quick {
        bench.arg("--quick");
    }
    checked(&mut bench)
}

/// `cargo xtask bench --conntrack`: only the conntrack costs (GC at 1M
/// flows, port search attempts), as JSON on stdout.
fn bench_conntrack(quick: bool, obj: &std::path::Path) -> Result<()> {
    let bins = paths::target_dir().join("debug");
    let mut bench = Command::new(bins.join("trunkline-bench"));
    bench.env(OBJECT_ENV, obj).arg("--conntrack");
    if quick {
        bench.arg("--quick");
    }
    checked(&mut bench)
}
