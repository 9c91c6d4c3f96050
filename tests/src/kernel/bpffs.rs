//! A private bpf filesystem mount per test, so pins of parallel tests (and
//! of a real agent on the machine) never meet. Unmounted on drop, which
//! also removes every pin in it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

pub struct BpffsMount {
    dir: PathBuf,
}

impl BpffsMount {
    /// Mounts a fresh bpffs at `<tmp>/tl-bpffs-<pid>-<n>`.
    pub fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("tl-bpffs-{}", crate::unique("m")));
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        if let Err(e) = mount(
            Some("bpf"),
            &dir,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        ) {
            let _ = std::fs::remove_dir(&dir);
            return Err(e).with_context(|| format!("mount -t bpf bpf {}", dir.display()));
        }
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.dir, MntFlags::MNT_DETACH) {
            eprintln!("cleanup: umount {}: {e}", self.dir.display());
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("cleanup: rmdir {}: {e}", self.dir.display());
        }
    }
}
