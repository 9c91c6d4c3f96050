//! Pod veths get their programs as cls_bpf filters on a clsact qdisc at
//! trunkline's own priority and handle (never prio 1 / handle 1), not as
//! TCX links: a TCX attach to a fresh device waits for RCU grace periods
//! under the RTNL lock — about 12 ms per hook on a 2-vCPU VM, most of a
//! pod's ADD latency — while a cls_bpf filter is in place in well under a
//! millisecond. A filter belongs to the interface, not to a file
//! descriptor, so it keeps forwarding while the agent is down and goes
//! away with the veth. (ENIs, attached once at start, keep pinned TCX
//! links where the kernel has TCX, 6.6+, and get these filters below it;
//! TCX programs run before cls_bpf ones, so a policy agent's TCX program on
//! a pod veth still runs first.)

use aya::programs::{
    links::Link as _,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError},
    ProgramError, SchedClassifier,
};
use dataplane_common::Hook;

use super::{
    attach::{attach_type, TC_HANDLE, TC_PRIORITY},
    Dataplane, DataplaneError, Result,
};

fn errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::TcError(TcError::NetlinkError(n)) => n.raw_os_error(),
        ProgramError::TcError(TcError::IoError(io)) => io.raw_os_error(),
        _ => None,
    }
}

/// Adds the clsact qdisc to `iface`; one that is already there is fine
/// (aya reports EEXIST as a netlink or an I/O error, by kernel).
pub(super) fn add_clsact(iface: &str) -> Result<()> {
    match tc::qdisc_add_clsact(iface) {
        Ok(()) => Ok(()),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(TcError::IoError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(TcError::AlreadyAttached) => Ok(()),
        Err(e) => Err(DataplaneError::Attach {
            program: "*",
            iface: iface.to_string(),
            reason: format!("adding the clsact qdisc: {e}"),
        }),
    }
}

fn options() -> TcAttachOptions {
    TcAttachOptions::Netlink(NlOptions {
        priority: TC_PRIORITY,
        handle: TC_HANDLE,
        classid: None,
    })
}

/// Switches trunkline's existing filter of `hook` on `iface` to `prog`
/// (a netlink replace at the same priority and handle: never a gap).
fn replace_one(prog: &mut SchedClassifier, iface: &str, hook: Hook) -> Result<()> {
    let err = |reason: String| DataplaneError::Attach {
        program: hook.program_name(),
        iface: iface.to_string(),
        reason,
    };
    let link =
        SchedClassifierLink::attached(iface, attach_type(hook), TC_PRIORITY, TC_HANDLE, None)
            .map_err(|e| err(format!("finding the filter: {e}")))?;
    let id = prog
        .attach_to_link(link)
        .map_err(|e| err(format!("replacing the filter's program: {e}")))?;
    let link = prog
        .take_link(id)
        .map_err(|e| err(format!("taking the link: {e}")))?;
    // As in attach_one: the filter must outlive this process.
    std::mem::forget(link);
    Ok(())
}

fn attach_one(prog: &mut SchedClassifier, iface: &str, hook: Hook) -> Result<bool> {
    match prog.attach_with_options(iface, attach_type(hook), options()) {
        Ok(id) => {
            let link = prog.take_link(id).map_err(|e| DataplaneError::Attach {
                program: hook.program_name(),
                iface: iface.to_string(),
                reason: format!("taking the link: {e}"),
            })?;
            // Dropping the link would remove the filter; it must outlive
            // this process. The link holds no heap data.
            std::mem::forget(link);
            Ok(true)
        }
        // Our filter is already there (attached before an agent restart).
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(DataplaneError::Attach {
            program: hook.program_name(),
            iface: iface.to_string(),
            reason: format!("cls_bpf: {e}"),
        }),
    }
}

impl Dataplane {
    /// Attaches `hooks` to the pod veth `iface` (in this process's network
    /// namespace) as persistent cls_bpf filters. A hook that already has
    /// trunkline's filter is left untouched. Returns how many were added.
    pub fn attach_pod(&mut self, iface: &str, hooks: &[Hook]) -> Result<usize> {
        self.attach_filters(iface, hooks)
    }

    /// Persistent cls_bpf filters of `hooks` on `iface`: pod veths always,
    /// ENIs on kernels without TCX. An existing filter of ours is kept, or
    /// switched to this object's program by a netlink replace on upgrade.
    pub(super) fn attach_filters(&mut self, iface: &str, hooks: &[Hook]) -> Result<usize> {
        add_clsact(iface)?;
        let mut made = 0;
        let replace = self.replace_existing;
        for hook in hooks {
            let prog = self.program_mut(*hook)?;
            if attach_one(prog, iface, *hook)? {
                made += 1;
            } else if replace {
                replace_one(prog, iface, *hook)?;
            }
        }
        Ok(made)
    }
}

/// Removes trunkline's filters of `hooks` from `iface`; absent is fine. The
/// caller checks that `iface` is still the pod's veth.
pub fn detach_pod(iface: &str, hooks: &[Hook]) -> Result<()> {
    for hook in hooks {
        let link = match SchedClassifierLink::attached(
            iface,
            attach_type(*hook),
            TC_PRIORITY,
            TC_HANDLE,
            None,
        ) {
            Ok(l) => l,
            // The interface is gone: so are its filters.
            Err(_) => return Ok(()),
        };
        match link.detach() {
            Ok(()) => {}
            Err(e)
                if matches!(
                    errno(&e),
                    Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::EINVAL)
                ) => {}
            Err(e) => {
                return Err(DataplaneError::Attach {
                    program: hook.program_name(),
                    iface: iface.to_string(),
                    reason: format!("removing the cls_bpf filter: {e}"),
                })
            }
        }
    }
    Ok(())
}
