//! Batched reads and deletes of BPF hash maps: `BPF_MAP_LOOKUP_BATCH` and
//! `BPF_MAP_DELETE_BATCH` (Linux 5.6).
//!
//! aya 0.14 walks a map with one `get_next_key` and one lookup per
//! element, and restarts from the first key when the key it stands on is
//! deleted under it (a walk can then go on for as long as the data path
//! keeps deleting). The kernel's batch walk of a hash map copies whole
//! buckets under their lock and resumes from a bucket index, so it never
//! restarts and costs one syscall per chunk. No crate in our base offers
//! it (aya-rs/aya#1125 is open; libbpf-rs would bring libbpf's C build),
//! so this crate holds the one `unsafe` syscall and checks, before any
//! call, that the Rust types have the map's key and value sizes.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use aya::{
    maps::{MapData, MapType},
    Pod,
};

/// `enum bpf_cmd` (linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The batch member of `union bpf_attr` (linux/bpf.h), 56 bytes.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const _: () = assert!(size_of::<BatchAttr>() == 56);

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("map info: {0}")]
    Info(#[from] aya::maps::MapError),
    #[error("batch operations need a hash or LRU hash map, not {0:?}")]
    MapType(MapType),
    #[error("{what} size is {map} bytes in the map, {rust} in Rust")]
    Size {
        what: &'static str,
        map: u32,
        rust: usize,
    },
    #[error("{cmd}: {source}")]
    Syscall {
        cmd: &'static str,
        source: io::Error,
    },
    #[error("{cmd}: no end after {calls} calls, more than the map can hold")]
    NoEnd { cmd: &'static str, calls: usize },
}

/// `map`, checked to be a hash map whose key size is `K`'s and, when
/// `value` is given, whose value size is that; its `max_entries`.
fn checked<K: Pod>(map: &MapData, value: Option<usize>) -> Result<u32, BatchError> {
    let info = map.info()?;
    match info.map_type()? {
        MapType::Hash | MapType::LruHash => {}
        other => return Err(BatchError::MapType(other)),
    }
    let sizes = [
        Some(("key", info.key_size(), size_of::<K>())),
        value.map(|v| ("value", info.value_size(), v)),
    ];
    for (what, map_size, rust) in sizes.into_iter().flatten() {
        if map_size as usize != rust {
            return Err(BatchError::Size {
                what,
                map: map_size,
                rust,
            });
        }
    }
    Ok(info.max_entries())
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` batch member of the size passed;
    // the buffers it points to were sized by the caller for `attr.count`
    // keys and values of the map's sizes (checked by `checked`).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One chunk of a walk: keys and their values, as long as each other.
pub type Chunk<'a, K, V> = (&'a [K], &'a [V]);

/// Reads a hash map chunk by chunk, in the kernel's bucket order. Entries
/// inserted or deleted during the walk may or may not be seen; none is
/// seen twice and the walk always ends.
pub struct Reader<'m, K, V> {
    fd: BorrowedFd<'m>,
    /// Where the next call resumes (a bucket index for hash maps); none
    /// before the first call.
    cursor: Option<u64>,
    done: bool,
    /// Calls made, and at most how many: a hash map of `n` entries is
    /// walked in at most `n` non-empty calls, plus the retries that grow
    /// the buffers.
    calls: usize,
    max_calls: usize,
    keys: Vec<K>,
    values: Vec<V>,
}

impl<'m, K: Pod, V: Pod> Reader<'m, K, V> {
    /// A walk of `map` that reads up to `chunk` entries per syscall (the
    /// buffers grow when one bucket holds more).
    pub fn new(map: &'m MapData, chunk: usize) -> Result<Self, BatchError> {
        let max_entries = checked::<K>(map, Some(size_of::<V>()))?;
        let chunk = chunk.max(1);
        Ok(Self {
            fd: map.fd().as_fd(),
            cursor: None,
            done: false,
            calls: 0,
            max_calls: max_entries as usize + 64,
            keys: Vec::with_capacity(chunk),
            values: Vec::with_capacity(chunk),
        })
    }

    /// The next chunk of keys and values (as long as each other), or `None`
    /// once the whole map has been read.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk<'_, K, V>>, BatchError> {
        const CMD: &str = "BPF_MAP_LOOKUP_BATCH";
        while !self.done {
            if self.calls == self.max_calls {
                return Err(BatchError::NoEnd {
                    cmd: CMD,
                    calls: self.calls,
                });
            }
            self.calls += 1;
            self.keys.clear();
            self.values.clear();
            let cap = self.keys.capacity().min(self.values.capacity());
            let mut in_batch = self.cursor.unwrap_or(0);
            let mut out_batch = 0u64;
            let mut attr = BatchAttr {
                in_batch: match self.cursor {
                    Some(_) => &mut in_batch as *mut u64 as u64,
                    None => 0,
                },
                out_batch: &mut out_batch as *mut u64 as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: u32::try_from(cap).unwrap_or(u32::MAX),
                map_fd: self.fd.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
            let n = (attr.count as usize).min(cap);
            match result {
                Ok(()) => {}
                // The end of the map; the last entries came with it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.done = true,
                // One bucket holds more than the buffers: grow, same cursor.
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    self.keys.reserve(cap * 2);
                    self.values.reserve(cap * 2);
                    continue;
                }
                Err(source) => return Err(BatchError::Syscall { cmd: CMD, source }),
            }
            if !self.done {
                self.cursor = Some(out_batch);
            }
            // SAFETY: the kernel wrote `n <= capacity` keys and values of the
            // map's sizes, which are `K`'s and `V`'s (checked in `new`), and
            // any bytes are a valid `Pod`.
            unsafe {
                self.keys.set_len(n);
                self.values.set_len(n);
            }
            if n > 0 {
                return Ok(Some((&self.keys, &self.values)));
            }
        }
        Ok(None)
    }

    /// Every entry left in the walk.
    pub fn collect_all(mut self) -> Result<Vec<(K, V)>, BatchError> {
        let mut all = Vec::new();
        while let Some((k, v)) = self.next_chunk()? {
            all.extend(k.iter().copied().zip(v.iter().copied()));
        }
        Ok(all)
    }
}

/// Deletes `keys` from `map` in one syscall per run of present keys; a key
/// that is absent (deleted meanwhile) is skipped. How many were deleted.
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> Result<usize, BatchError> {
    const CMD: &str = "BPF_MAP_DELETE_BATCH";
    checked::<K>(map, None)?;
    let fd = map.fd().as_fd();
    let mut rest = keys;
    let mut deleted = 0;
    // Each round consumes at least one key: bounded by `keys.len()`.
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: u32::try_from(rest.len()).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        let done = (attr.count as usize).min(rest.len());
        deleted += done;
        match result {
            // Success covers every key given.
            Ok(()) => rest = &[],
            // The kernel stops at the first absent key: skip it, go on.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                rest = rest.get(done + 1..).unwrap_or(&[]);
            }
            Err(source) => return Err(BatchError::Syscall { cmd: CMD, source }),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use aya::maps::{Array, HashMap, IterableMap};

    use super::*;

    fn filled(n: u32) -> HashMap<MapData, u32, u64> {
        let mut m = HashMap::<MapData, u32, u64>::create(n, 0).expect("create a hash map");
        for k in 0..n {
            m.insert(k, u64::from(k) * 3, 0).expect("insert");
        }
        m
    }

    #[test]
    fn a_walk_reads_every_entry_once_with_its_value() {
        let m = filled(10_000);
        let all = Reader::<u32, u64>::new(m.map(), 64)
            .expect("reader")
            .collect_all()
            .expect("walk");
        assert_eq!(all.len(), 10_000);
        let keys: HashSet<u32> = all.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys.len(), 10_000, "no entry twice");
        assert!(all.iter().all(|(k, v)| *v == u64::from(*k) * 3));
    }

    #[test]
    fn an_empty_map_ends_at_once() {
        let m = HashMap::<MapData, u32, u64>::create(16, 0).expect("create");
        let mut r = Reader::<u32, u64>::new(m.map(), 8).expect("reader");
        assert!(r.next_chunk().expect("walk").is_none());
        assert!(r.next_chunk().expect("walk").is_none(), "and stays ended");
    }

    #[test]
    fn buffers_grow_when_a_bucket_holds_more_than_a_chunk() {
        // 512 keys in 512 buckets: some bucket holds two or more (the chance
        // that none does is below 10^-100), more than a chunk of one.
        let m = filled(512);
        let mut r = Reader::<u32, u64>::new(m.map(), 1).expect("reader");
        let mut seen = HashSet::new();
        while let Some((keys, _)) = r.next_chunk().expect("walk") {
            seen.extend(keys.iter().copied());
        }
        assert_eq!(seen.len(), 512);
        assert!(r.keys.capacity() > 1, "the buffers grew (ENOSPC)");
    }

    #[test]
    fn deleting_under_a_walk_neither_repeats_nor_hangs() {
        let m = filled(4_096);
        let mut r = Reader::<u32, u64>::new(m.map(), 128).expect("reader");
        let mut seen = HashSet::new();
        let mut deleted = HashSet::new();
        while let Some((keys, _)) = r.next_chunk().expect("walk") {
            let keys = keys.to_vec();
            for k in &keys {
                assert!(seen.insert(*k), "key {k} seen twice");
            }
            // Delete what was just read, and keys the walk may not have
            // reached yet, as the GC and the data path would.
            let ahead: Vec<u32> = keys.iter().map(|k| (k + 2_048) % 4_096).collect();
            delete(m.map(), &keys).expect("delete read keys");
            delete(m.map(), &ahead).expect("delete ahead");
            deleted.extend(ahead);
        }
        for k in 0..4_096u32 {
            assert!(
                seen.contains(&k) || deleted.contains(&k),
                "key {k} neither seen nor deleted"
            );
        }
        assert!(m.keys().next().is_none(), "everything was deleted");
    }

    #[test]
    fn delete_skips_absent_keys_and_counts_the_rest() {
        let m = filled(100);
        let keys: Vec<u32> = vec![1, 2, 1_000, 3, 1_001, 1_002, 4, 2];
        assert_eq!(delete(m.map(), &keys).expect("delete"), 4, "1, 2, 3, 4");
        assert_eq!(m.keys().count(), 96);
        assert_eq!(delete::<u32>(m.map(), &[]).expect("nothing"), 0);
    }

    #[test]
    fn types_of_the_wrong_size_or_map_are_refused() {
        let m = filled(4);
        assert!(matches!(
            Reader::<u64, u64>::new(m.map(), 8),
            Err(BatchError::Size { what: "key", .. })
        ));
        assert!(matches!(
            Reader::<u32, u32>::new(m.map(), 8),
            Err(BatchError::Size { what: "value", .. })
        ));
        assert!(matches!(
            delete::<u16>(m.map(), &[1]),
            Err(BatchError::Size { .. })
        ));
        let a = Array::<MapData, u64>::create(4, 0).expect("array");
        assert!(matches!(
            Reader::<u32, u64>::new(a.map(), 8),
            Err(BatchError::MapType(MapType::Array))
        ));
    }
}
