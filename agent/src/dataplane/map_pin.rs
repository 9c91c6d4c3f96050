//! Opening a pinned map and the error conventions every typed map shares.

use std::path::Path;

use aya::maps::{Map, MapData, MapError};

use super::{DataplaneError, Result};

/// The map pinned as `<bpf_root>/<name>`.
pub(super) fn open(bpf_root: &Path, name: &'static str) -> Result<Map> {
    let data = MapData::from_pin(bpf_root.join(name)).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

pub(super) fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// Whether a map operation failed only because the key was absent.
fn is_not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound | MapError::ElementNotFound)
        || matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32))
}

/// A lookup: absent is `None`, any other failure an error.
pub(super) fn found<T>(
    name: &'static str,
    r: std::result::Result<T, MapError>,
) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// A removal: absent is fine.
pub(super) fn removed(name: &'static str, r: std::result::Result<(), MapError>) -> Result<()> {
    found(name, r).map(|_| ())
}

/// Every entry of an iteration, or the first error.
pub(super) fn all<T>(
    name: &'static str,
    it: impl Iterator<Item = std::result::Result<T, MapError>>,
) -> Result<Vec<T>> {
    it.collect::<std::result::Result<_, _>>()
        .map_err(map_err(name))
}
