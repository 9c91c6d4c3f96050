//! Booting a kernel of the matrix under QEMU with this machine's root
//! shared read-only (9p), running one script in it, and collecting what it
//! wrote to a shared scratch directory. Nothing on the host's network
//! changes: the guest has no network device at all.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::kernels::Kernel;
use crate::run::checked;

const GUEST_INIT: &str = include_str!("guest_init.sh");
/// Where the guest sees the writable share.
pub const GUEST_OUT: &str = "/tmp/vmout";

/// The modules the guest needs before it can mount the host's root, in
/// load order (built-in ones are skipped by `modprobe --show-depends`).
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

fn init_hash() -> u64 {
    // FNV-1a: the initramfs is rebuilt when the init script changes.
    GUEST_INIT.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// The initramfs of `kernel` (busybox, the 9p modules, our init), built
/// once per kernel and init script.
fn initramfs(kernel: &Kernel) -> Result<PathBuf> {
    let path = kernel
        .dir
        .join(format!("initramfs-{:016x}.cpio.gz", init_hash()));
    if path.exists() {
        return Ok(path);
    }
    let root = kernel.dir.join("initramfs.tmp");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "modules"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("copying /bin/busybox (Debian's busybox-static)")?;
    std::fs::write(root.join("init"), GUEST_INIT)?;
    checked(Command::new("chmod").arg("755").arg(root.join("init")))?;
    let mut order: Vec<String> = Vec::new();
    for module in BOOT_MODULES {
        let out = Command::new("modprobe")
            .arg("-d")
            .arg(&kernel.dir)
            .args(["-S", &kernel.release, "--show-depends", module])
            .output()
            .context("modprobe --show-depends")?;
        if !out.status.success() {
            bail!(
                "{}: modprobe --show-depends {module}: {}",
                kernel.package,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // `insmod /path/x.ko [params]`, or `builtin x`.
            let Some(file) = line
                .strip_prefix("insmod ")
                .and_then(|r| r.split_whitespace().next())
            else {
                continue;
            };
            let name = Path::new(file)
                .file_name()
                .and_then(|n| n.to_str())
                .context("module file name")?
                .to_string();
            if !order.contains(&name) {
                std::fs::copy(file, root.join("modules").join(&name))
                    .with_context(|| format!("copying {file}"))?;
                order.push(name);
            }
        }
    }
    std::fs::write(root.join("modules/order"), order.join("\n") + "\n")?;
    let tmp = path.with_extension("tmp");
    checked(Command::new("sh").current_dir(&root).arg("-c").arg(format!(
        "find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        tmp.display()
    )))?;
    std::fs::rename(&tmp, &path)?;
    let _ = std::fs::remove_dir_all(&root);
    Ok(path)
}

/// The host directory the guest writes into, removed with its contents
/// when dropped (also when the run fails or is interrupted).
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tl-vm-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running QEMU, killed when dropped.
struct Guest(Child);

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How one boot ended.
pub struct Boot {
    /// The script's exit code, if it got to write one.
    pub rc: Option<i32>,
    pub timed_out: bool,
    pub elapsed: Duration,
    /// The guest's serial console (kernel messages, init's lines).
    pub console: String,
}

/// Whether this machine can use KVM (hardware virtualisation present and
/// /dev/kvm usable); else QEMU emulates (TCG).
fn kvm_usable() -> bool {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpu.contains(" vmx") || cpu.contains(" svm");
    flags
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// How much slower than the host a guest runs: emulation (TCG) is several
/// times slower; KVM about as fast.
pub fn time_scale() -> u32 {
    if kvm_usable() {
        1
    } else {
        4
    }
}

/// Boots `kernel`, runs `script` (sh, chrooted into the host's root, with
/// the scratch directory at [`GUEST_OUT`]) and waits at most `limit`.
pub fn run(kernel: &Kernel, scratch: &Scratch, script: &str, limit: Duration) -> Result<Boot> {
    let initrd = initramfs(kernel)?;
    let out = &scratch.dir;
    // Modules load on demand from the kernel package (read-only via 9p).
    std::fs::write(out.join("modules-dir"), kernel.dir.display().to_string())?;
    std::fs::write(out.join("suite.sh"), script)?;
    // TRUNKLINE_VM_MODULES tells the tests they run in the VM (where the
    // kernels' modules, e.g. IP_VS, must load) and where its modules are
    // (`modprobe -d`: the host root has no /lib/modules for this kernel).
    std::fs::write(
        out.join("run.sh"),
        format!(
            "export TRUNKLINE_VM_MODULES='{}'\nsh {GUEST_OUT}/suite.sh\necho $? > {GUEST_OUT}/rc\n",
            kernel.dir.display()
        ),
    )?;
    let console = out.join("console.log");
    let accel = if kvm_usable() { "kvm" } else { "tcg" };
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", accel, "-m", "4096", "-smp", "2", "-nic", "none"])
        .args(["-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=vmout,security_model=none,multidevs=remap",
            out.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut guest = Guest(cmd.spawn().context("starting qemu-system-x86_64")?);
    let mut timed_out = false;
    loop {
        if guest.0.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > limit {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(guest);
    let rc = std::fs::read_to_string(out.join("rc"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    Ok(Boot {
        rc,
        timed_out,
        elapsed: started.elapsed(),
        console: std::fs::read_to_string(&console).unwrap_or_default(),
    })
}
