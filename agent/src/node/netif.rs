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

/// Turns reverse-path filtering off on host veth `name`. The node has no
/// route to a pod through its veth (the data path steers pods without
/// routes) and the veth has no address, and for such an interface the
/// kernel drops every packet whose source is routed elsewhere under
/// either filtering mode, loose included (`__fib_validate_source`: no
/// address → "last resort" → rejected when rp_filter ≠ 0). A new veth
/// takes `net.ipv4.conf.default.rp_filter`, which systemd's defaults set
/// to 2, so without this everything a pod sends into the host stack
/// (Services, node-local addresses, NodePort answers) would be dropped.
/// The kernel applies the larger of `all` and the interface's value, so
/// this cannot undo `all` ≠ 0 (see [`rp_filter_all`]).
pub fn disable_rp_filter(name: &str) -> std::io::Result<()> {
    if name.contains('/') || name.is_empty() || name == "." || name == ".." {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not an interface name: {name:?}"),
        ));
    }
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"), "0")
}

/// `net.ipv4.conf.all.rp_filter` in the agent's namespace.
pub fn rp_filter_all() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter")
        .ok()?
        .trim()
        .parse()
        .ok()
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
