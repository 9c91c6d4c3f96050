//! Debian packages the tests and the demo run (the machine is Debian and we are root).

use std::process::Command;

use anyhow::{bail, Result};

use crate::run::checked;

/// (command, or absolute file path, that must exist; Debian package that provides it)
const NEEDED: &[(&str, &str)] = &[
    // The reference CNI plugins (tuning, bandwidth) the chaining tests run.
    ("/usr/lib/cni/tuning", "containernetworking-plugins"),
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    ("tcpdump", "tcpdump"),
    ("iperf3", "iperf3"),
    // The bench's fixed-rate packet source (CPU per packet).
    ("trafgen", "netsniff-ng"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    // kube-proxy's IPVS mode in the cluster differential (where the kernel
    // has IP_VS: the VM's kernels).
    ("ipvsadm", "ipvsadm"),
    ("ipset", "ipset"),
    ("ping", "iputils-ping"),
    ("curl", "curl"),
];

/// What `cargo xtask vm-test` adds: QEMU, the guest's busybox, kmod for
/// the kernels' module lists, cpio and xz for the initramfs and modules.
const VM_NEEDED: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("/bin/busybox", "busybox-static"),
    ("depmod", "kmod"),
    ("cpio", "cpio"),
    ("xz", "xz-utils"),
    ("dpkg-deb", "dpkg"),
];

fn has(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return std::path::Path::new(cmd).exists();
    }
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Installs whichever of [`NEEDED`] is missing.
pub fn ensure() -> Result<()> {
    install_missing(NEEDED)
}

/// Installs whichever of [`VM_NEEDED`] is missing.
pub fn ensure_vm() -> Result<()> {
    install_missing(VM_NEEDED)
}

fn install_missing(needed: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(c, _)| !has(c))
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("missing Debian packages {missing:?} and not root: install them with apt-get");
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    checked(Command::new("apt-get").args(["update", "-qq"]))?;
    checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
