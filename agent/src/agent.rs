//! The running agent: the data path, the maps it owns and the pods, behind
//! one lock that the gRPC service, the metrics and the introspection API
//! share.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::{
    aws_node_env::{self, SnatEnv},
    config::RunConfig,
    dataplane::{list_link_pins, remove_link_pin, Dataplane, NodeMaps},
    node::file::NodeFile,
    node::netif,
    node::reconcile::{reconcile_node, resolve_enis},
    pods::checkpoint::CheckpointFile,
    pods::{Pods, RestoreReport},
};

/// Where the agent records which object its attachments run, to tell an
/// upgrade from a plain restart.
const OBJECT_ID_FILE: &str = "ebpf-object.id";

/// FNV-1a over the object's bytes: an identity, not a security measure, so
/// a few lines here rather than a hashing dependency.
fn object_identity(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}-{}", bytes.len())
}

/// Temp file, fsync, rename: never a half-written file.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub struct Agent {
    pub config: RunConfig,
    /// SNAT and security-group settings from the aws-node environment.
    pub snat: SnatEnv,
    pub dp: Dataplane,
    pub maps: NodeMaps,
    pub pods: Pods,
}

pub type Shared = Arc<Mutex<Agent>>;

/// Locks the agent; a panic elsewhere while holding the lock does not make
/// the state unusable (every operation leaves it consistent or undone).
pub fn lock(a: &Shared) -> MutexGuard<'_, Agent> {
    a.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    /// Re-reads the node file and re-programs what it describes of the node
    /// (VPC and service CIDRs, ENIs): a changed VPC CIDR reaches `NO_SNAT`
    /// at once, while established flows keep their translation. Pod pools
    /// are read at start only (AWS mode feeds them from the warm pool).
    pub fn reload_node_file(&mut self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let node = NodeFile::load(&self.config.node_file)?;
        let enis = resolve_enis(&node)?;
        reconcile_node(&node, &self.snat, &enis, &mut self.dp, &mut self.maps)
            .context("re-programming the node's maps")?;
        tracing::info!(vpc_cidrs = ?node.node.vpc_cidrs, "node file reloaded");
        // New ENIs (AWS mode attaches them at run time) become pod owners.
        self.pods.set_node(node, enis);
        Ok(())
    }

    /// The node IP (the SNAT source).
    pub fn pods_node_ip(&self) -> dataplane_common::Ipv4 {
        self.pods.node_ip().octets()
    }

    /// Loads the node file and the data path (re-using pinned maps and
    /// links), programs the node maps and ENIs, and restores the pods.
    pub fn start(config: RunConfig) -> anyhow::Result<(Self, RestoreReport)> {
        use anyhow::Context as _;
        let node = NodeFile::load(&config.node_file)?;
        let (refused, ignored) = crate::aws_node_env::unsupported::check(|k| std::env::var(k).ok());
        for w in &ignored {
            tracing::warn!("{w}");
        }
        if !refused.is_empty() {
            anyhow::bail!("unsupported aws-node settings:\n{}", refused.join("\n"));
        }
        let snat = aws_node_env::parse(
            |k| std::env::var(k).ok(),
            aws_node_env::host_ephemeral_range(),
        )
        .context("reading the aws-node environment")?;
        for skipped in &snat.skipped {
            tracing::warn!(variable = aws_node_env::EXCLUDE_SNAT_CIDRS, entry = %skipped, "skipped");
        }
        let object = crate::object::load(config.ebpf_object.as_deref())?;
        let mut dp = Dataplane::load_pinned(&object, &config.bpf_root).with_context(|| {
            format!(
                "loading the data path pinned under {}",
                config.bpf_root.display()
            )
        })?;
        // A different object than last time is an upgrade: existing
        // attachments switch to its programs; the same object leaves them be.
        let object_id = object_identity(&object);
        let id_file = config.state_dir.join(OBJECT_ID_FILE);
        let previous = std::fs::read_to_string(&id_file).ok();
        let upgrade = previous.as_deref().map(str::trim) != Some(object_id.as_str());
        dp.set_replace_existing(upgrade);
        let mut maps = NodeMaps::open(&config.bpf_root).context("opening the pinned maps")?;
        let enis = resolve_enis(&node)?;
        // ENI links pinned for an interface instance that is gone.
        for pin in list_link_pins(&config.bpf_root)? {
            let is_eni_hook = matches!(
                pin.hook,
                dataplane_common::Hook::FromEni | dataplane_common::Hook::ToEni
            );
            if is_eni_hook && !netif::is_live(&pin.iface, pin.ifindex) {
                remove_link_pin(&pin.path)?;
            }
        }
        reconcile_node(&node, &snat, &enis, &mut dp, &mut maps)
            .context("programming the node's ENIs and maps")?;
        let checkpoint = CheckpointFile::new(&config.state_dir);
        let saved = checkpoint.load()?;
        let mut pods = Pods::new(node, enis, checkpoint, config.ip_cooldown);
        let report = pods
            .restore(saved, &mut dp, &mut maps)
            .context("restoring pods from the checkpoint")?;
        dp.set_replace_existing(false);
        if upgrade {
            if previous.is_some() {
                tracing::info!(object = %object_id, "new eBPF object: existing attachments switched to its programs");
            }
            write_atomically(&id_file, object_id.as_bytes()).with_context(|| {
                format!("recording the object identity in {}", id_file.display())
            })?;
        }
        Ok((
            Self {
                config,
                snat,
                dp,
                maps,
                pods,
            },
            report,
        ))
    }
}
