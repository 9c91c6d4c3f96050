//! `trunkline-agent run` as a child process inside a namespace
//! (`ip netns exec <ns> trunkline-agent run ...`), killed on drop.

use std::{
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
    /// Starts the agent in `netns` with `args` (after `run`) and extra env,
    /// and waits until `socket` accepts connections.
    pub fn start(
        netns: &str,
        args: &[String],
        env: &[(&str, &str)],
        socket: &Path,
        log: &Path,
    ) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(crate::binaries::agent())
            .arg("run")
            .args(args)
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
