//! The agent's checkpoint: every pod it has wired and every IP cooling
//! down, as JSON under the state dir. Written atomically (temp file, fsync,
//! rename, fsync of the directory) before an AddPod/DelPod replies, so a
//! crash at any point leaves either the old or the new file.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "checkpoint.json";
const VERSION: u32 = 1;

/// One pod attachment (one (container id, ifname)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub container_id: String,
    pub ifname: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Interface name of the ENI that owns the IP (the trunk for branch pods).
    pub eni: String,
    /// 0 = not a branch pod.
    pub vlan: u16,
    /// Branch ENI MAC for branch pods.
    pub branch_mac: Option<String>,
    pub host_veth: String,
    pub host_ifindex: u32,
    pub pod_mac: String,
}

impl PodRecord {
    pub fn is_branch(&self) -> bool {
        self.vlan != 0
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub pods: Vec<PodRecord>,
    /// (IP, released at, Unix seconds).
    pub cooling: Vec<(Ipv4Addr, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a trunkline checkpoint: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: checkpoint version {found}, this agent reads {VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// The checkpoint file under a state dir.
#[derive(Clone, Debug)]
pub struct CheckpointFile {
    dir: PathBuf,
}

impl CheckpointFile {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The saved checkpoint, or an empty one when there is none yet.
    pub fn load(&self) -> Result<Checkpoint, CheckpointError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Checkpoint {
                    version: VERSION,
                    ..Default::default()
                })
            }
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        let cp: Checkpoint =
            serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Decode {
                path: path.clone(),
                source,
            })?;
        if cp.version != VERSION {
            return Err(CheckpointError::Version {
                path,
                found: cp.version,
            });
        }
        Ok(cp)
    }

    /// Replaces the checkpoint atomically and durably.
    pub fn save(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CheckpointError::Io { path, source }
        };
        let path = self.path();
        let mut data = serde_json::to_vec_pretty(&Checkpoint {
            version: VERSION,
            ..cp.clone()
        })
        .map_err(|e| CheckpointError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        data.push(b'\n');
        crate::atomic_file::write(&path, &data, 0o644).map_err(io(&path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("tl-cp-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let f = CheckpointFile::new(&dir);
        assert_eq!(f.load().expect("empty").pods.len(), 0);
        let cp = Checkpoint {
            version: VERSION,
            pods: vec![PodRecord {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                namespace: "default".into(),
                name: "p".into(),
                uid: "u".into(),
                netns: "/run/netns/x".into(),
                ip: Ipv4Addr::new(10, 0, 0, 1),
                eni: "eth0".into(),
                vlan: 0,
                branch_mac: None,
                host_veth: "eni0123".into(),
                host_ifindex: 7,
                pod_mac: "02:00:00:00:00:01".into(),
            }],
            cooling: vec![(Ipv4Addr::new(10, 0, 0, 2), 5)],
        };
        f.save(&cp).expect("save");
        assert_eq!(f.load().expect("load"), cp);
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);
        fs::write(f.path(), b"{not json").expect("write");
        assert!(matches!(f.load(), Err(CheckpointError::Decode { .. })));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
