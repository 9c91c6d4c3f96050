//! `trunkline-agent run` as a child process inside a namespace
//! (`ip netns exec <ns> trunkline-agent run ...`), killed on drop.

use std::{
    ffi::OsString,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// How long an agent may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct AgentProc {
    child: Option<Child>,
    log: PathBuf,
}

impl AgentProc {
    /// Starts `trunkline-agent run` in `netns` with `args` and extra env,
    /// and waits until the socket `args` names accepts connections.
    pub fn start(netns: &str, args: &AgentArgs, env: &[(&str, &str)], log: &Path) -> Result<Self> {
        let socket = args
            .socket
            .as_deref()
            .context("AgentProc::start waits for the agent's socket: set AgentArgs::socket")?;
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(crate::drivers::binaries::agent())
            .arg("run")
            .args(args.build())
            .env("RUST_LOG", "info")
            // Only what the test passes: not the object path xtask exports
            // for the tests themselves, nor a stray fault injection.
            .env_remove("TRUNKLINE_EBPF_OBJECT")
            .env_remove("TRUNKLINE_CRASH_AT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawning trunkline-agent")?;
        let mut me = Self {
            child: Some(child),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + crate::scaled(START_TIMEOUT);
        loop {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Ok(me);
            }
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "trunkline-agent exited during start ({status}):\n{}",
                    me.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "trunkline-agent did not open {} within {START_TIMEOUT:?}:\n{}",
                    socket.display(),
                    me.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has exited (e.g. killed itself at a crash point).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_some(),
            None => true,
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("agent not running");
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("SIGTERM")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = c.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("agent ignored SIGTERM for 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The command line of `trunkline-agent run` (and of `migrate`, which
/// takes the same flags): what a test sets, everything else the agent's
/// default. `build` gives the arguments after the subcommand.
#[derive(Clone, Debug, Default)]
pub struct AgentArgs {
    node_file: Option<PathBuf>,
    bpf_root: Option<PathBuf>,
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    metrics_addr: Option<String>,
    introspection_addr: Option<String>,
    ebpf_object: Option<PathBuf>,
    ip_cooldown_secs: Option<u64>,
}

impl AgentArgs {
    /// Local mode: the node's ENIs and IPs from `node_file`.
    pub fn local(node_file: impl Into<PathBuf>) -> Self {
        Self {
            node_file: Some(node_file.into()),
            ..Self::default()
        }
    }

    /// AWS mode: no node file (the node from IMDS, pod IPs from EC2).
    pub fn aws() -> Self {
        Self::default()
    }

    pub fn bpf_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bpf_root = Some(dir.into());
        self
    }

    /// The CNI's unix socket; [`AgentProc::start`] waits for it.
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    pub fn metrics_addr(mut self, addr: &str) -> Self {
        self.metrics_addr = Some(addr.to_string());
        self
    }

    pub fn introspection_addr(mut self, addr: &str) -> Self {
        self.introspection_addr = Some(addr.to_string());
        self
    }

    /// Unset: the object embedded in the agent at build time.
    pub fn ebpf_object(mut self, path: impl Into<PathBuf>) -> Self {
        self.ebpf_object = Some(path.into());
        self
    }

    pub fn ip_cooldown(mut self, secs: u64) -> Self {
        self.ip_cooldown_secs = Some(secs);
        self
    }

    /// The flags, for after `run` or `migrate`.
    pub fn build(&self) -> Vec<OsString> {
        let paths = [
            ("--node-file", &self.node_file),
            ("--bpf-root", &self.bpf_root),
            ("--socket", &self.socket),
            ("--state-dir", &self.state_dir),
        ];
        let addrs = [
            ("--metrics-addr", &self.metrics_addr),
            ("--introspection-addr", &self.introspection_addr),
        ];
        let mut out: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, value: OsString| out.extend([name.into(), value]);
        for (name, value) in paths {
            if let Some(v) = value {
                flag(name, v.into());
            }
        }
        for (name, value) in addrs {
            if let Some(v) = value {
                flag(name, v.into());
            }
        }
        if let Some(p) = &self.ebpf_object {
            flag("--ebpf-object", p.into());
        }
        if let Some(s) = self.ip_cooldown_secs {
            flag("--ip-cooldown", s.to_string().into());
        }
        out
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

impl AgentProc {
    /// Sends SIGHUP (reload the node file).
    pub fn hangup(&self) -> Result<()> {
        let pid = self.pid().context("agent not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .context("SIGHUP")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_args_name_only_what_was_set() {
        let local = AgentArgs::local("/n.toml")
            .bpf_root("/bpf")
            .socket("/s.sock")
            .state_dir("/state")
            .ip_cooldown(0)
            .build();
        let want = [
            "--node-file",
            "/n.toml",
            "--bpf-root",
            "/bpf",
            "--socket",
            "/s.sock",
            "--state-dir",
            "/state",
            "--ip-cooldown",
            "0",
        ];
        assert_eq!(local, want.map(OsString::from));
        let aws = AgentArgs::aws().metrics_addr("127.0.0.1:0").build();
        assert_eq!(aws, ["--metrics-addr", "127.0.0.1:0"].map(OsString::from));
    }
}
