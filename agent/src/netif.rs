//! Interfaces of the agent's own network namespace, by name.

use std::ffi::CString;

/// The ifindex of `name` in the calling thread's namespace, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Whether the interface `name` exists and is still the one with `index`
/// (a re-created interface gets a new ifindex).
pub fn is_live(name: &str, index: u32) -> bool {
    ifindex(name) == Some(index)
}
