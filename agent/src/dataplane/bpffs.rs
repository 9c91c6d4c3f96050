//! The bpf filesystem the maps are pinned on.

use std::path::Path;

use super::{DataplaneError, Result};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` lives on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    nix_statfs_magic(path) == Some(BPF_FS_MAGIC)
}

fn nix_statfs_magic(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path, `buf` is a writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it filled `buf`. (f_type is i64 on
    // x86_64 but narrower elsewhere, hence the cast.)
    #[allow(clippy::unnecessary_cast)]
    Some(unsafe { buf.assume_init() }.f_type as i64)
}

/// Creates `dir` (and parents) and checks it is on a bpf filesystem.
pub fn ensure_bpffs_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !is_bpffs(dir) {
        return Err(DataplaneError::NotBpffs {
            path: dir.to_path_buf(),
        });
    }
    Ok(())
}
