//! Fault injection for the restart tests: when `TRUNKLINE_CRASH_AT` names a
//! point the agent reaches, it kills itself with SIGKILL right there, the
//! way an OOM kill or a node hiccup would. Unset (always, outside tests),
//! this does nothing.

pub const ENV: &str = "TRUNKLINE_CRASH_AT";

/// Points on the AddPod/DelPod paths where a crash is most harmful.
pub const POINTS: &[&str] = &[
    "add-allocated",
    "add-checkpointed",
    "add-attached",
    "add-mapped",
    "del-unmapped",
    "del-detached",
];

pub fn point(name: &'static str) {
    if std::env::var(ENV).is_ok_and(|v| v == name) {
        tracing::warn!(point = name, "{ENV}: killing the agent with SIGKILL");
        use nix::{sys::signal, unistd::getpid};
        let _ = signal::kill(getpid(), signal::Signal::SIGKILL);
    }
}
