//! Where a map owner's maps come from, and the error conventions every
//! typed map shares.

use std::path::Path;

use aya::maps::{Map, MapData, MapError};

use super::{Dataplane, DataplaneError, Result};

/// The map pinned as `<bpf_root>/<name>`.
fn open(bpf_root: &Path, name: &'static str) -> Result<Map> {
    let data = MapData::from_pin(bpf_root.join(name)).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

/// Map `name` pinned under `bpf_root`, as the typed map `M`.
pub(super) fn open_typed<M>(bpf_root: &Path, name: &'static str) -> Result<M>
where
    M: TryFrom<Map, Error = MapError>,
{
    M::try_from(open(bpf_root, name)?).map_err(map_err(name))
}

/// Where an owner's maps come from: their pins (the agent, and anything
/// beside a running agent), or a loaded [`Dataplane`] they are moved out
/// of (a data path without an agent: golden-packet tests, benchmarks).
pub enum MapSource<'a> {
    Pins(&'a Path),
    Loaded(&'a mut Dataplane),
}

impl MapSource<'_> {
    /// Map `name` as the typed map `M`.
    pub(super) fn typed<M>(&mut self, name: &'static str) -> Result<M>
    where
        M: TryFrom<Map, Error = MapError>,
    {
        match self {
            MapSource::Pins(root) => open_typed(root, name),
            MapSource::Loaded(dp) => M::try_from(dp.take_map(name)?).map_err(map_err(name)),
        }
    }
}

/// A type that holds the one userspace writer of some maps
/// ([`super::PodMaps`], [`super::NodeMaps`], [`super::CtMaps`]).
pub trait MapOwner: Sized {
    fn from_source(src: &mut MapSource<'_>) -> Result<Self>;

    /// The maps from their pins under `bpf_root`.
    fn open(bpf_root: &Path) -> Result<Self> {
        Self::from_source(&mut MapSource::Pins(bpf_root))
    }

    /// The maps of `dp`, moved out of it, where they may not be pinned.
    /// `dp` keeps no handle and a second take fails, so there is still
    /// one writer.
    fn take_from(dp: &mut Dataplane) -> Result<Self> {
        Self::from_source(&mut MapSource::Loaded(dp))
    }
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
