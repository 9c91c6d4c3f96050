//! Network namespaces and veths for end-to-end tests. Every namespace is
//! uniquely named (`tl-<tag>-<pid>-<n>`) and deleted when its guard drops,
//! also during a panic; veths live only inside such namespaces, so they go
//! with them. Nothing here touches the machine's own interfaces.

use std::{
    ffi::OsStr,
    fs::File,
    process::{Command, Output},
};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// A network namespace that is deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `tl-<tag>-<pid>-<n>` with loopback up and IPv6 off (so no
    /// router solicitations or MLD reports show up in counters and captures).
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("tl-{}", crate::unique(tag));
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run_in(|| std::fs::write(&path, value))
            .with_context(|| format!("{}: sysctl {key}={value}", self.name))
    }

    /// Runs a program inside the namespace (`ip netns exec`), bounded by the
    /// program's own options (callers pass counts and timeouts).
    pub fn exec<S: AsRef<OsStr> + std::fmt::Debug>(
        &self,
        program: &str,
        args: &[S],
    ) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .with_context(|| format!("{}: {program} {args:?}", self.name))
    }

    /// Like [`Self::exec`], failing unless the program succeeds.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self.exec(program, args)?;
        if !out.status.success() {
            bail!(
                "{}: {program} {args:?} failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn open(&self) -> Result<File> {
        let path = format!("/run/netns/{}", self.name);
        File::open(&path).with_context(|| format!("opening {path}"))
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets and
    /// links created there stay in the namespace after `f` returns.
    pub fn run_in<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let fd = self.open().expect("namespace file");
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Like [`Self::run_in`] but returns at once with the thread's handle.
    pub fn spawn_in<F, R>(&self, f: F) -> std::thread::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let fd = self.open().expect("namespace file");
        std::thread::spawn(move || {
            setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// The ifindex of `iface` inside this namespace.
    pub fn ifindex(&self, iface: &str) -> Result<u32> {
        let iface = iface.to_string();
        self.run_in(move || {
            let c = std::ffi::CString::new(iface.clone())?;
            // SAFETY: valid NUL-terminated name.
            let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if idx == 0 {
                bail!("no interface {iface}");
            }
            Ok(idx)
        })
    }

    /// The MAC of `iface` inside this namespace.
    pub fn mac(&self, iface: &str) -> Result<[u8; 6]> {
        let out = self.exec_ok("cat", &[&format!("/sys/class/net/{iface}/address")])?;
        parse_mac(out.trim()).with_context(|| format!("{}: MAC of {iface}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// A veth pair from `a:a_name` to `b:b_name`, created from inside `a` so
/// that no link ever appears in the caller's namespace. It is destroyed
/// with either namespace.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_name,
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_name, "up"])?;
    b.ip(&["link", "set", b_name, "up"])?;
    Ok(())
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mac: dataplane_common::MacAddr = s
        .parse()
        .map_err(|e| anyhow::anyhow!("not a MAC: {s:?} ({e})"))?;
    Ok(mac.0)
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
