//! Interfaces of the agent's own network namespace, by name.

use dataplane_common::MacAddr;

/// The ifindex of `name` in the calling thread's namespace, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok().filter(|i| *i != 0)
}

/// Whether the interface `name` exists and is still the one with `index`
/// (a re-created interface gets a new ifindex).
pub fn is_live(name: &str, index: u32) -> bool {
    ifindex(name) == Some(index)
}

/// The MAC address of `name` in the agent's namespace (from sysfs, which
/// the agent sees for its own network namespace).
pub fn mac(name: &str) -> Option<MacAddr> {
    if name.contains('/') || name.is_empty() {
        return None;
    }
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
    text.trim().parse().ok()
}
