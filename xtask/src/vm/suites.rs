//! What runs on each kernel: the verifier check (every program through the
//! agent's own loader, plus the verifier's cost from its statistics), the
//! golden-packet suites, and the agent's end-to-end suites. The same test
//! binaries `cargo xtask test` runs, unchanged.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::paths;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Suite {
    Verifier,
    Golden,
    Agent,
}

impl Suite {
    pub const ALL: [Suite; 3] = [Suite::Verifier, Suite::Golden, Suite::Agent];

    pub fn name(self) -> &'static str {
        match self {
            Suite::Verifier => "verifier",
            Suite::Golden => "golden",
            Suite::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }

    /// The test targets (`tests/tests/<name>.rs`) of a suite.
    pub fn tests(self) -> &'static [&'static str] {
        match self {
            Suite::Verifier => &[],
            Suite::Golden => &[
                "golden_parser",
                "golden_snat",
                "golden_fragments",
                "golden_steer",
                "golden_paths",
                "golden_ct_states",
                "golden_port_search",
                "golden_snat_protocols",
                "golden_spoof",
                "golden_ct_full",
                "golden_decided",
                // GC through the batched map calls (BPF_MAP_*_BATCH) on
                // each kernel's hash maps.
                "conntrack_gc",
            ],
            // The agent, SNAT through the agent, steering (and its
            // differential against aws-node's plumbing), restart and
            // upgrade (with a running UDP stream), and the mini node.
            Suite::Agent => &[
                "e2e_mini_node",
                "e2e_agent",
                "e2e_agent_snat",
                // SNAT, conntrack timeouts, MTU and fragments against
                // aws-node's SNAT chain (netfilter of the kernel under test).
                "e2e_snat",
                "e2e_steer",
                "e2e_steer_differential",
                // A rolling migration across a three-node cluster, against
                // the same cluster on aws-node's plumbing.
                "e2e_cluster_differential",
                "e2e_restart",
                "e2e_restart_traffic",
            ],
        }
    }

    /// How long one boot of this suite may take under emulation.
    pub fn limit(self) -> Duration {
        match self {
            Suite::Verifier => Duration::from_secs(600),
            Suite::Golden => Duration::from_secs(1200),
            Suite::Agent => Duration::from_secs(3000),
        }
    }
}

/// The test executables Cargo built for `tests` (one per target).
pub fn build_test_binaries(tests: &[&str]) -> Result<BTreeMap<String, PathBuf>> {
    if tests.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(paths::workspace_root())
        // --workspace, as `cargo xtask test` builds: the same feature
        // resolution, so nothing (the AWS SDK above all) is built twice.
        .args(["test", "--quiet", "--workspace", "--no-run"])
        .args(["--message-format", "json"]);
    for t in tests {
        cmd.args(["--test", t]);
    }
    let out = cmd.output().context("cargo test --no-run")?;
    if !out.status.success() {
        bail!(
            "building the test binaries failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(exe) = v.get("executable").and_then(|e| e.as_str()) else {
            continue;
        };
        let name = v
            .pointer("/target/name")
            .and_then(|n| n.as_str())
            .unwrap_or_default();
        if tests.contains(&name) {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    for t in tests {
        if !found.contains_key(*t) {
            bail!("cargo built no test binary for {t}");
        }
    }
    Ok(found)
}

/// What the suite's script needs to know.
pub struct Inputs<'a> {
    pub object: &'a Path,
    pub agent: &'a Path,
    pub cni: &'a Path,
    pub binaries: &'a BTreeMap<String, PathBuf>,
    pub filter: &'a [String],
    /// Where results go (the guest's share, or a host directory).
    pub out: &'a str,
    /// Also run the verifier with its full log for peak states (slow under
    /// emulation: minutes per kernel; the bench asks for it).
    pub verifier_stats: bool,
    /// How much slower than the host the kernel under test runs (the test
    /// bed stretches its bounded waits by it).
    pub time_scale: u32,
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The shell script that runs `suite` and leaves its results in `out`.
pub fn script(suite: Suite, i: &Inputs) -> String {
    let obj = sh_quote(&i.object.display().to_string());
    let agent = sh_quote(&i.agent.display().to_string());
    let out = i.out;
    let mut s = String::from(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH\n\
         export RUST_BACKTRACE=1 CARGO_TERM_COLOR=never\n\
         ip link set lo up 2>/dev/null\n",
    );
    match suite {
        Suite::Verifier => {
            // The agent's loader decides (probe, then every program); the
            // verifier's own statistics (states, time) come from its log.
            s += &format!(
                "RUST_BACKTRACE=0 {agent} check-kernel --load --json --ebpf-object {obj} > {out}/check.json 2> {out}/check.err\n\
                 rc=$?\n\
                 if [ $rc = 0 ] && [ {stats} = 1 ]; then\n\
                 d=/sys/fs/bpf/tl-verify-$$\n\
                 mkdir -p $d\n\
                 bpftool -d prog loadall {obj} $d type classifier 2>&1 | \
                 grep -E \"^libbpf: prog '[a-z_]+': -- BEGIN PROG LOAD LOG|^processed [0-9]+ insns|^verification time\" > {out}/stats.txt\n\
                 rm -rf $d\n\
                 fi\n\
                 exit $rc\n",
                stats = u8::from(i.verifier_stats)
            );
        }
        Suite::Golden | Suite::Agent => {
            let home = format!("{out}/home");
            s += &format!(
                "mkdir -p {home}\nexport HOME={home}\n\
                 export TRUNKLINE_EBPF_OBJECT={obj} TRUNKLINE_AGENT_BIN={agent} TRUNKLINE_CNI_BIN={}\n\
                 export TRUNKLINE_TEST_TIME_SCALE={}\n\
                 cd {}\n\
                 status=0\n",
                sh_quote(&i.cni.display().to_string()),
                i.time_scale,
                sh_quote(&paths::workspace_root().join("tests").display().to_string()),
            );
            let filter: Vec<String> = i.filter.iter().map(|f| sh_quote(f)).collect();
            for (name, exe) in i.binaries {
                s += &format!(
                    "{} {} > {out}/{name}.log 2>&1; r=$?; echo $r > {out}/{name}.rc; [ $r = 0 ] || status=1\n",
                    sh_quote(&exe.display().to_string()),
                    filter.join(" ")
                );
            }
            s += "exit $status\n";
        }
    }
    s
}

/// One test binary's outcome, from its output.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Binary {
    pub name: String,
    pub passed: u32,
    pub failed: Vec<String>,
    pub ran: bool,
    pub exit: Option<i32>,
}

/// Reads `<out>/<name>.log` and `.rc` as libtest writes them.
pub fn read_binary(out: &Path, name: &str) -> (Binary, String) {
    let log = std::fs::read_to_string(out.join(format!("{name}.log"))).unwrap_or_default();
    let exit = std::fs::read_to_string(out.join(format!("{name}.rc")))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let mut b = Binary {
        name: name.to_string(),
        exit,
        ..Default::default()
    };
    let mut in_failures = false;
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("test result: ") {
            b.ran = true;
            // "ok. 12 passed; 0 failed; ..." / "FAILED. 3 passed; 1 failed; ..."
            for part in rest.split(';') {
                let words: Vec<&str> = part.split_whitespace().collect();
                if let Some(pos) = words.iter().position(|w| *w == "passed") {
                    if pos > 0 {
                        b.passed = words[pos - 1].parse().unwrap_or(0);
                    }
                }
            }
        }
        if line == "failures:" {
            in_failures = true;
            continue;
        }
        if in_failures {
            if let Some(name) = line.strip_prefix("    ") {
                if !b.failed.iter().any(|f| f == name) {
                    b.failed.push(name.trim().to_string());
                }
            } else if !line.is_empty() {
                in_failures = false;
            }
        }
    }
    if exit != Some(0) && b.failed.is_empty() {
        b.failed
            .push(format!("{name} (exit {exit:?}, no test result)"));
    }
    (b, log)
}

/// The verifier's cost for one program on one kernel.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProgramCost {
    pub program: String,
    /// Instructions in the object (before the verifier).
    pub object_insns: u64,
    /// Instructions the verifier processed.
    pub processed_insns: Option<u64>,
    pub peak_states: Option<u64>,
    pub total_states: Option<u64>,
    pub verification_us: Option<u64>,
    /// Wall time of the agent's load of the program (verifier + JIT).
    pub load_us: Option<u64>,
    pub xlated_bytes: Option<u64>,
    pub jited_bytes: Option<u64>,
}

fn number_after(line: &str, key: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// Merges `check.json` (the agent's load) and `stats.txt` (the verifier's
/// statistics lines) into per-program costs.
pub fn read_costs(out: &Path, object_insns: &BTreeMap<String, u64>) -> Vec<ProgramCost> {
    let mut costs: BTreeMap<String, ProgramCost> = BTreeMap::new();
    for (p, n) in object_insns {
        costs.insert(
            p.clone(),
            ProgramCost {
                program: p.clone(),
                object_insns: *n,
                ..Default::default()
            },
        );
    }
    let check = std::fs::read_to_string(out.join("check.json")).unwrap_or_default();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(check.trim()) {
        for p in v
            .get("programs")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
        {
            let Some(name) = p.get("program").and_then(|n| n.as_str()) else {
                continue;
            };
            let c = costs.entry(name.to_string()).or_default();
            c.program = name.to_string();
            c.xlated_bytes = p.get("xlated_bytes").and_then(|v| v.as_u64());
            c.jited_bytes = p.get("jited_bytes").and_then(|v| v.as_u64());
            c.processed_insns = p.get("verified_insns").and_then(|v| v.as_u64());
            c.load_us = p.get("load_us").and_then(|v| v.as_u64());
        }
    }
    let stats = std::fs::read_to_string(out.join("stats.txt")).unwrap_or_default();
    let mut current: Option<String> = None;
    for line in stats.lines() {
        if let Some(rest) = line.strip_prefix("libbpf: prog '") {
            current = rest.split('\'').next().map(str::to_string);
            continue;
        }
        let Some(name) = current.clone() else {
            continue;
        };
        let c = costs.entry(name.clone()).or_default();
        c.program = name;
        if line.starts_with("processed ") {
            c.processed_insns = number_after(line, "processed").or(c.processed_insns);
            c.peak_states = number_after(line, "peak_states");
            c.total_states = number_after(line, "total_states");
        } else if line.starts_with("verification time") {
            c.verification_us = number_after(line, "time");
        }
    }
    costs.into_values().collect()
}

/// Instructions per program in the object (symbol size / 8).
pub fn object_insns(object: &Path) -> Result<BTreeMap<String, u64>> {
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(object)?;
    let file = object::File::parse(&*data)?;
    let mut out = BTreeMap::new();
    for sym in file.symbols() {
        if let Ok(name) = sym.name() {
            if ["from_pod", "to_eni", "from_eni", "to_pod"].contains(&name) {
                out.insert(name.to_string(), sym.size() / 8);
            }
        }
    }
    Ok(out)
}
