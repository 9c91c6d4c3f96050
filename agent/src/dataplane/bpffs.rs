//! The bpf filesystem the maps are pinned on.

use std::path::Path;

use super::{DataplaneError, Result};

/// Whether `path` lives on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
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
