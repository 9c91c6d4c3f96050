//! Attachments that outlive the agent: TCX links pinned under
//! `<bpf-root>/links/`, so the data path keeps forwarding while the agent
//! is down or restarting. A pin is named after the hook, the interface's
//! ifindex and its name (`from_eni-2-eth0`; bpffs forbids dots in names),
//! so a re-created interface of the same name is never mistaken for the one
//! a stale pin belongs to.

use std::path::{Path, PathBuf};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    LinkOrder, SchedClassifier,
};
use dataplane_common::Hook;

use super::{attach::attach_type, kernel, AttachMode, Dataplane, DataplaneError, Result};

pub const LINKS_DIR: &str = "links";

/// A pinned link as found under `<bpf-root>/links/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPin {
    pub iface: String,
    pub ifindex: u32,
    pub hook: Hook,
    pub path: PathBuf,
}

impl LinkPin {
    pub fn file_name(iface: &str, ifindex: u32, hook: Hook) -> String {
        format!("{}-{ifindex}-{iface}", hook.program_name())
    }

    fn parse(path: PathBuf) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_string();
        let (prog, rest) = name.split_once('-')?;
        let (idx, iface) = rest.split_once('-')?;
        let hook = Hook::ALL.into_iter().find(|h| h.program_name() == prog)?;
        Some(Self {
            iface: iface.to_string(),
            ifindex: idx.parse().ok()?,
            hook,
            path,
        })
    }
}

pub fn links_dir(bpf_root: &Path) -> PathBuf {
    bpf_root.join(LINKS_DIR)
}

/// Every link pin under `bpf_root` (unparseable names are skipped).
pub fn list_link_pins(bpf_root: &Path) -> Result<Vec<LinkPin>> {
    let dir = links_dir(bpf_root);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(DataplaneError::Io { path: dir, source }),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| DataplaneError::Io {
            path: dir.clone(),
            source,
        })?;
        if let Some(pin) = LinkPin::parse(entry.path()) {
            out.push(pin);
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Removes a link pin: the link (and its attachment, if the interface still
/// exists) goes away with its last reference.
pub fn remove_link_pin(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Attaches `prog` to `iface` with TCX and pins the link at `pin`.
fn attach_and_pin(prog: &mut SchedClassifier, iface: &str, hook: Hook, pin: &Path) -> Result<()> {
    let program = hook.program_name();
    let err = |reason: String| DataplaneError::Attach {
        program,
        iface: iface.to_string(),
        reason,
    };
    let id = prog
        .attach_with_options(
            iface,
            attach_type(hook),
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| err(format!("tcx (pinned links need TCX, kernel 6.6+): {e}")))?;
    let link = prog
        .take_link(id)
        .map_err(|e| err(format!("taking the link: {e}")))?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e| err(format!("not a TCX link: {e}")))?;
    let pinned: PinnedLink = fd
        .pin(pin)
        .map_err(|e| err(format!("pinning at {}: {e}", pin.display())))?;
    // Dropping the PinnedLink closes our fd; the pin keeps the link.
    drop(pinned);
    tracing::debug!(iface, program, pin = %pin.display(), "attached and pinned");
    Ok(())
}

/// Switches the pinned link at `pin` to `prog` in one step
/// (`bpf_link_update`): the interface is never without a program.
fn replace_pinned(prog: &mut SchedClassifier, iface: &str, hook: Hook, pin: &Path) -> Result<()> {
    let program = hook.program_name();
    let err = |reason: String| DataplaneError::Attach {
        program,
        iface: iface.to_string(),
        reason,
    };
    let old =
        PinnedLink::from_pin(pin).map_err(|e| err(format!("opening {}: {e}", pin.display())))?;
    let link: SchedClassifierLink = FdLink::from(old)
        .try_into()
        .map_err(|e| err(format!("not a TCX link: {e}")))?;
    let id = prog
        .attach_to_link(link)
        .map_err(|e| err(format!("updating the link's program: {e}")))?;
    // Our fd goes; the pin keeps the link, now running `prog`.
    let link = prog
        .take_link(id)
        .map_err(|e| err(format!("taking the link: {e}")))?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e| err(format!("not a TCX link: {e}")))?;
    drop(fd);
    tracing::info!(iface, program, "pinned link switched to the new program");
    Ok(())
}

impl Dataplane {
    /// Attaches each of `hooks` to `iface` (ifindex `ifindex`, in this
    /// process's namespace) with TCX and pins the links under
    /// `<bpf-root>/links/`. A hook whose pin already exists is already
    /// serving the interface (e.g. attached before an agent restart) and is
    /// left alone. Returns how many links were made.
    ///
    /// Each TCX attach to a fresh device waits for RCU grace periods under
    /// the RTNL lock (~15 ms on a 2-vCPU VM), so attaching in parallel
    /// gains nothing; this is most of AddPod's latency.
    ///
    /// Without TCX (before 6.6) the hooks become persistent cls_bpf filters
    /// at trunkline's priority and handle instead, as on pod veths: they
    /// outlive the agent with no pin, and an upgrade replaces them in one
    /// netlink request.
    pub fn attach_pinned(&mut self, iface: &str, ifindex: u32, hooks: &[Hook]) -> Result<usize> {
        if kernel::attach_mode() == AttachMode::Clsact {
            return self.attach_filters(iface, hooks);
        }
        let root = self
            .bpf_root()
            .ok_or(DataplaneError::Attach {
                program: "*",
                iface: iface.to_string(),
                reason: "pinned links need a pinned data path (--bpf-root)".into(),
            })?
            .to_path_buf();
        let dir = links_dir(&root);
        std::fs::create_dir_all(&dir).map_err(|source| DataplaneError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut made = 0;
        for hook in hooks {
            let pin = dir.join(LinkPin::file_name(iface, ifindex, *hook));
            if pin.exists() {
                if self.replace_existing {
                    let prog = self.program_mut(*hook)?;
                    replace_pinned(prog, iface, *hook, &pin)?;
                }
                continue;
            }
            let prog = self.program_mut(*hook)?;
            attach_and_pin(prog, iface, *hook, &pin)?;
            made += 1;
        }
        Ok(made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip_even_with_dashes_in_the_interface() {
        let name = LinkPin::file_name("eni-a_b", 42, Hook::ToPod);
        assert_eq!(name, "to_pod-42-eni-a_b");
        assert!(!name.contains('.'));
        let p = LinkPin::parse(PathBuf::from("/x/links").join(&name)).expect("parses");
        assert_eq!(
            (p.iface.as_str(), p.ifindex, p.hook),
            ("eni-a_b", 42, Hook::ToPod)
        );
        assert!(LinkPin::parse(PathBuf::from("junk")).is_none());
    }
}
