//! Entering a network namespace on the current thread just long enough to
//! open a netlink socket there (a socket stays bound to the namespace it
//! was created in).

use std::{fs::File, os::fd::AsFd};

use nix::sched::{setns, CloneFlags};

use crate::error::{code, CniError, Result};

/// The calling thread's namespace, restored when dropped.
pub struct NsGuard {
    home: File,
}

impl NsGuard {
    /// Enters `target`; the guard returns to the current namespace.
    pub fn enter(target: &File) -> Result<Self> {
        let home = File::open("/proc/thread-self/ns/net").map_err(|e| {
            CniError::new(code::IO, format!("opening our own network namespace: {e}"))
        })?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
            CniError::new(
                code::IO,
                format!("entering the pod's network namespace: {e}"),
            )
        })?;
        Ok(Self { home })
    }
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.home.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Continuing in the wrong namespace would touch the pod's links
            // as if they were the host's: stop here.
            eprintln!("trunkline-cni: cannot return to the host network namespace: {e}");
            std::process::abort();
        }
    }
}

/// Opens the namespace file the runtime passed in CNI_NETNS.
pub fn open(path: &str) -> Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS={path}: {e}"),
        )),
    }
}
