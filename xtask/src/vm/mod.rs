//! `cargo xtask vm-test`: the project's own test binaries on the kernels EKS
//! nodes run (Debian's 6.1 and 6.12 LTS builds, and 5.10 to prove the
//! refusal below the floor), booted under QEMU, and on the host kernel; one
//! result table, kernel × suite.

mod kernels;
mod qemu;
mod suites;

use std::{collections::BTreeMap, path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

pub use suites::{ProgramCost, Suite};

use crate::{ebpf, packages, paths, run};

/// A kernel of the matrix as `--kernel` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Host,
    Line(&'static kernels::KernelLine),
}

impl Target {
    pub fn parse_list(s: &str) -> Result<Vec<Target>> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "all" => {
                    out.push(Target::Host);
                    out.extend(kernels::LINES.iter().map(Target::Line));
                }
                "host" => out.push(Target::Host),
                other => match kernels::line(other) {
                    Some(l) => out.push(Target::Line(l)),
                    None => bail!(
                        "unknown kernel {other:?}: one of host, {}, all",
                        kernels::LINES
                            .iter()
                            .map(|l| l.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
            }
        }
        out.dedup();
        Ok(out)
    }
}

/// One cell of the result table.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub kernel: String,
    pub package: Option<String>,
    pub suite: Suite,
    /// passed / failed / n/a
    pub result: String,
    pub ok: bool,
    pub detail: String,
    pub seconds: f64,
    pub binaries: Vec<suites::Binary>,
    pub programs: Vec<ProgramCost>,
}

fn host_release() -> String {
    Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

struct Built {
    object: PathBuf,
    agent: PathBuf,
    cni: PathBuf,
    binaries: BTreeMap<String, PathBuf>,
    object_insns: BTreeMap<String, u64>,
}

fn build(suites: &[Suite]) -> Result<Built> {
    packages::ensure()?;
    packages::ensure_vm()?;
    let object = ebpf::build(true)?;
    let (agent, cni) = run::build_binaries(&object)?;
    let tests: Vec<&str> = suites
        .iter()
        .flat_map(|s| s.tests().iter().copied())
        .collect();
    let binaries = suites::build_test_binaries(&tests)?;
    let object_insns = suites::object_insns(&object)?;
    Ok(Built {
        object,
        agent,
        cni,
        binaries,
        object_insns,
    })
}

/// Runs `suite` on `target` and judges it.
fn run_cell(
    target: Target,
    suite: Suite,
    built: &Built,
    filter: &[String],
    verifier_stats: bool,
) -> Result<Cell> {
    let binaries: BTreeMap<String, PathBuf> = built
        .binaries
        .iter()
        .filter(|(n, _)| suite.tests().contains(&n.as_str()))
        .map(|(n, p)| (n.clone(), p.clone()))
        .collect();
    let (kernel_name, package, refusal) = match target {
        Target::Host => (format!("host {}", host_release()), None, None),
        Target::Line(l) => {
            let k = kernels::ensure(l)?;
            (k.release.clone(), Some(k.package.clone()), l.refusal)
        }
    };
    let mut cell = Cell {
        kernel: kernel_name,
        package,
        suite,
        result: String::new(),
        ok: false,
        detail: String::new(),
        seconds: 0.0,
        binaries: Vec::new(),
        programs: Vec::new(),
    };
    if refusal.is_some() && suite != Suite::Verifier {
        cell.result = "n/a".into();
        cell.ok = true;
        cell.detail = "below the floor: the agent refuses to start".into();
        return Ok(cell);
    }
    let scratch = qemu::Scratch::new(suite.name())?;
    let started = Instant::now();
    let (rc, console) = match target {
        Target::Host => {
            let out = scratch.dir.display().to_string();
            let script = suites::script(
                suite,
                &inputs(built, &binaries, filter, &out, verifier_stats, 1),
            );
            let status = Command::new("sh")
                .arg("-c")
                .arg(&script)
                .status()
                .context("running the suite on the host")?;
            (status.code(), String::new())
        }
        Target::Line(l) => {
            let k = kernels::ensure(l)?;
            let script = suites::script(
                suite,
                &inputs(
                    built,
                    &binaries,
                    filter,
                    qemu::GUEST_OUT,
                    verifier_stats,
                    qemu::time_scale(),
                ),
            );
            eprintln!(
                "xtask: {} on {} (QEMU; at most {} s)",
                suite.name(),
                k.release,
                suite.limit().as_secs()
            );
            let boot = qemu::run(&k, &scratch, &script, suite.limit())?;
            if boot.timed_out {
                cell.result = "failed".into();
                cell.detail = format!(
                    "timed out after {} s; console tail:\n{}",
                    boot.elapsed.as_secs(),
                    tail(&boot.console, 30)
                );
                cell.seconds = boot.elapsed.as_secs_f64();
                return Ok(cell);
            }
            (boot.rc, boot.console)
        }
    };
    cell.seconds = started.elapsed().as_secs_f64();
    keep_logs(&scratch.dir, &cell.kernel, suite);
    match suite {
        Suite::Verifier => {
            let err = std::fs::read_to_string(scratch.dir.join("check.err")).unwrap_or_default();
            let line = err
                .lines()
                .find(|l| l.contains("kernel") || l.starts_with("Error"))
                .unwrap_or("")
                .trim();
            cell.programs = suites::read_costs(&scratch.dir, &built.object_insns);
            match (refusal, rc) {
                (Some(expected), Some(code)) if code != 0 && err.contains(expected) => {
                    cell.ok = true;
                    cell.result = "refused".into();
                    cell.detail = line.to_string();
                }
                (Some(expected), _) => {
                    cell.result = "failed".into();
                    cell.detail = format!(
                        "expected a refusal containing {expected:?}, got exit {rc:?}: {line}"
                    );
                }
                (None, Some(0)) => {
                    cell.ok = true;
                    cell.result = "passed".into();
                    cell.detail = format!("{} programs loaded", cell.programs.len());
                }
                (None, _) => {
                    cell.result = "failed".into();
                    cell.detail = format!("exit {rc:?}: {}\n{}", line, tail(&err, 40));
                    if rc.is_none() {
                        cell.detail += &format!("\nconsole tail:\n{}", tail(&console, 30));
                    }
                }
            }
        }
        Suite::Golden | Suite::Agent => {
            let mut details = Vec::new();
            let mut passed = 0;
            let mut failed = 0;
            for name in binaries.keys() {
                let (b, log) = suites::read_binary(&scratch.dir, name);
                passed += b.passed;
                failed += b.failed.len();
                if !b.failed.is_empty() {
                    details.push(format!(
                        "{name}: failed {}\n{}",
                        b.failed.join(", "),
                        tail(&log, 60)
                    ));
                }
                cell.binaries.push(b);
            }
            cell.ok = rc == Some(0) && failed == 0 && passed > 0;
            cell.result = if cell.ok {
                format!("passed ({passed})")
            } else {
                format!("failed ({failed} of {})", passed as usize + failed)
            };
            if rc.is_none() {
                details.push(format!(
                    "the guest ended early; console tail:\n{}",
                    tail(&console, 30)
                ));
            }
            cell.detail = details.join("\n");
        }
    }
    Ok(cell)
}

fn inputs<'a>(
    built: &'a Built,
    binaries: &'a BTreeMap<String, PathBuf>,
    filter: &'a [String],
    out: &'a str,
    verifier_stats: bool,
    time_scale: u32,
) -> suites::Inputs<'a> {
    suites::Inputs {
        object: &built.object,
        agent: &built.agent,
        cni: &built.cni,
        binaries,
        filter,
        out,
        verifier_stats,
        time_scale,
    }
}

/// Copies the suite's logs to `target/vm-test/<kernel>/<suite>/` (the
/// scratch directory goes when the cell ends).
fn keep_logs(scratch: &std::path::Path, kernel: &str, suite: Suite) {
    let dir = report_dir()
        .join(kernel.replace(' ', "-"))
        .join(suite.name());
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for entry in std::fs::read_dir(scratch).into_iter().flatten().flatten() {
        let p = entry.path();
        let keep = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "log" | "err" | "json" | "txt"));
        if keep {
            if let Some(name) = p.file_name() {
                let _ = std::fs::copy(&p, dir.join(name));
            }
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn print_table(cells: &[Cell]) {
    println!();
    println!(
        "{:<28} {:<9} {:<22} {:>7}",
        "kernel", "suite", "result", "time"
    );
    for c in cells {
        println!(
            "{:<28} {:<9} {:<22} {:>6.0}s",
            c.kernel,
            c.suite.name(),
            c.result,
            c.seconds
        );
    }
    let costs: Vec<&Cell> = cells
        .iter()
        .filter(|c| !c.programs.is_empty() && c.result == "passed")
        .collect();
    if !costs.is_empty() {
        println!();
        println!(
            "{:<28} {:<9} {:>9} {:>10} {:>7} {:>10} {:>8}",
            "kernel", "program", "obj insns", "processed", "peak st", "load ms", "jited B"
        );
        for c in costs {
            for p in &c.programs {
                let o = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
                println!(
                    "{:<28} {:<9} {:>9} {:>10} {:>7} {:>10} {:>8}",
                    c.kernel,
                    p.program,
                    p.object_insns,
                    o(p.processed_insns),
                    o(p.peak_states),
                    p.verification_us
                        .or(p.load_us)
                        .map_or("-".into(), |us| format!("{:.1}", us as f64 / 1e3)),
                    o(p.jited_bytes)
                );
            }
        }
    }
    for c in cells.iter().filter(|c| !c.ok) {
        println!(
            "\n--- {} / {}: {}\n{}",
            c.kernel,
            c.suite.name(),
            c.result,
            c.detail
        );
    }
}

fn report_dir() -> PathBuf {
    paths::target_dir().join("vm-test")
}

/// `cargo xtask vm-test`.
pub fn vm_test(kernels: &str, suites: &str, filter: &[String]) -> Result<()> {
    let targets = Target::parse_list(kernels)?;
    let suites: Vec<Suite> = if suites == "all" {
        Suite::ALL.to_vec()
    } else {
        suites
            .split(',')
            .map(|s| {
                Suite::parse(s.trim())
                    .with_context(|| format!("unknown suite {s:?}: verifier, golden, agent, all"))
            })
            .collect::<Result<_>>()?
    };
    let built = build(&suites)?;
    let started = Instant::now();
    let mut cells = Vec::new();
    for t in &targets {
        for s in &suites {
            let cell = run_cell(*t, *s, &built, filter, false)?;
            eprintln!(
                "xtask: {} / {}: {} ({:.0} s)",
                cell.kernel,
                s.name(),
                cell.result,
                cell.seconds
            );
            cells.push(cell);
        }
    }
    print_table(&cells);
    let dir = report_dir();
    std::fs::create_dir_all(&dir)?;
    let report = dir.join("report.json");
    std::fs::write(&report, serde_json::to_string_pretty(&cells)?)?;
    println!(
        "\nxtask: vm-test {} cell(s) in {:.0} s; report {}",
        cells.len(),
        started.elapsed().as_secs_f64(),
        report.display()
    );
    let failed = cells.iter().filter(|c| !c.ok).count();
    // The closing line CI reads: cells, not tests.
    println!(
        "vm-test: {} passed, {} failed",
        cells.len() - failed,
        failed
    );
    if failed > 0 {
        bail!("{failed} kernel/suite cell(s) failed");
    }
    Ok(())
}

/// The verifier's cost of every program on each of `targets`, for the bench.
pub fn verifier_costs(targets: &[Target]) -> Result<Vec<Cell>> {
    let built = build(&[Suite::Verifier])?;
    let mut cells = Vec::new();
    for t in targets {
        let cell = run_cell(*t, Suite::Verifier, &built, &[], true)?;
        if !cell.ok {
            bail!("verifier check on {}: {}", cell.kernel, cell.detail);
        }
        cells.push(cell);
    }
    Ok(cells)
}
