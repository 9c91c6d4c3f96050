//! Invoking `trunkline-cni` (and the reference plugins) exactly as a
//! container runtime does: CNI_* in the environment, the network config on
//! stdin, the result or error JSON on stdout; run inside the node namespace.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// The reference plugins of Debian's containernetworking-plugins.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// What a plugin run returned.
#[derive(Debug)]
pub struct CniOut {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl CniOut {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or(Value::Null)
    }
    /// The CNI error code, if the run failed with error JSON.
    pub fn code(&self) -> Option<u64> {
        if self.success {
            return None;
        }
        self.json().get("code").and_then(Value::as_u64)
    }
}

/// One CNI call.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub pod: (&'a str, &'a str),
}

impl Call<'_> {
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), self.command.into()),
            ("CNI_CONTAINERID".into(), self.container_id.into()),
            ("CNI_NETNS".into(), self.netns.into()),
            ("CNI_IFNAME".into(), self.ifname.into()),
            (
                "CNI_ARGS".into(),
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    self.pod.0, self.pod.1, self.container_id
                ),
            ),
            ("CNI_PATH".into(), REFERENCE_PLUGINS.into()),
        ]
    }
}

/// Runs `plugin` in `netns` with exactly `env` (plus PATH) and `stdin`.
pub fn run_plugin(
    netns: &str,
    plugin: &Path,
    env: &[(String, String)],
    stdin: &[u8],
) -> Result<CniOut> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .arg(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = std::time::Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", plugin.display()))?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(stdin).context("writing stdin")?;
    }
    let out = child.wait_with_output().context("waiting for the plugin")?;
    Ok(CniOut {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    })
}

/// The plugin entry of our conflist, with the runtime-injected fields.
pub fn trunkline_conf(version: &str, socket: &Path, prev: Option<&Value>) -> Value {
    let mut c = json!({
        "cniVersion": version,
        "name": "aws-cni",
        "type": "trunkline-cni",
        "mtu": 9001,
        "agentSocket": socket.to_string_lossy(),
        "vethPrefix": "eni",
    });
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

/// trunkline-cni with `conf` on stdin.
pub fn trunkline(netns: &str, call: &Call<'_>, conf: &Value) -> Result<CniOut> {
    run_plugin(
        netns,
        &crate::drivers::binaries::cni(),
        &call.env(),
        conf.to_string().as_bytes(),
    )
}

/// Any plugin by path with `conf`.
pub fn plugin(netns: &str, path: &Path, call: &Call<'_>, conf: &Value) -> Result<CniOut> {
    run_plugin(netns, path, &call.env(), conf.to_string().as_bytes())
}
