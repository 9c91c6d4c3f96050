//! Facts about the running kernel that tests branch on, read from the
//! release string rather than from the agent's own probe (so a wrong probe
//! fails a test instead of steering it).

/// `(major, minor)` of the running kernel.
pub fn release() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    (nums.next().unwrap_or(0), nums.next().unwrap_or(0))
}

/// TCX (BPF links on the TC hooks) exists from Linux 6.6.
pub fn has_tcx() -> bool {
    release() >= (6, 6)
}
