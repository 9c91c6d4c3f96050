//! Attaching programs to interfaces: TCX on kernels that have it (6.6+),
//! otherwise a clsact qdisc with a cls_bpf filter at trunkline's own
//! priority and handle, never prio 1 / handle 1 that other agents take.

use aya::programs::{
    tc::{NlOptions, TcAttachOptions, TcHandle},
    LinkOrder, SchedClassifier, TcAttachType,
};
use dataplane_common::Hook;

use super::{DataplaneError, Result};

/// cls_bpf priority and handle used on kernels without TCX.
pub const TC_PRIORITY: u16 = 20_000;
pub const TC_HANDLE: TcHandle = TcHandle::new(0x7431, 0x0001);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Tcx,
    Clsact,
}

/// One program attached to one interface.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub iface: String,
    pub hook: Hook,
    pub mode: AttachMode,
}

/// The TC direction a hook runs in.
pub const fn attach_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::FromPod | Hook::FromEni => TcAttachType::Ingress,
        Hook::ToEni | Hook::ToPod => TcAttachType::Egress,
    }
}

pub(super) fn attach(prog: &mut SchedClassifier, iface: &str, hook: Hook) -> Result<Attachment> {
    let program = hook.program_name();
    let err = |reason: String| DataplaneError::Attach {
        program,
        iface: iface.to_string(),
        reason,
    };
    let mode = if super::kernel::attach_mode() == AttachMode::Tcx {
        // Last in the chain: a policy agent's program that returns TCX_NEXT
        // runs before our redirects.
        prog.attach_with_options(
            iface,
            attach_type(hook),
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| err(format!("tcx: {e}")))?;
        AttachMode::Tcx
    } else {
        // Already there (another agent, or an earlier attach of ours) is fine.
        super::pod_attach::add_clsact(iface)?;
        prog.attach_with_options(
            iface,
            attach_type(hook),
            TcAttachOptions::Netlink(NlOptions {
                priority: TC_PRIORITY,
                handle: TC_HANDLE,
                classid: None,
            }),
        )
        .map_err(|e| err(format!("cls_bpf: {e}")))?;
        AttachMode::Clsact
    };
    tracing::debug!(iface, program, ?mode, "attached");
    Ok(Attachment {
        iface: iface.to_string(),
        hook,
        mode,
    })
}
