//! The running agent: the node, the pods and the data path, each the one
//! owner of its state, behind narrow methods. Changes go through one lock
//! ([`Shared::lock`]); readers (metrics, introspection) take the
//! [`Snapshot`] the agent publishes after each change instead.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::watch;

use crate::{
    aws_node_env,
    config::RunConfig,
    dataplane::{list_link_pins, remove_link_pin, Dataplane, MapOwner, NodeMaps, PodMaps},
    node::file::NodeSpec,
    node::netif,
    node::reconcile::{resolve_enis, Eni, NodeReconciler},
    pods::checkpoint::CheckpointFile,
    pods::{
        checkpoint::PodRecord,
        ipam::{Ipam, SharedIpam},
        pools_of, AddPod, Adoptee, PodError, Pods, RestoreReport,
    },
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

/// What the agent's readers (metrics, introspection, the warm pool's
/// interface lookup) see of it: a copy published after every change, read
/// without the agent's lock.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub pods: Vec<PodRecord>,
    pub enis: BTreeMap<String, Eni>,
}

/// The running agent. Each piece of state has one owner: the pods
/// ([`Pods`]: records, checkpoint, `PODS`/`VLANS`, pod programs), the node
/// ([`NodeReconciler`]: `ENIS`, `CONFIG`, `NO_SNAT`, `SERVICE_CIDRS`, ENI
/// links), and the data path's programs ([`Dataplane`], which both attach
/// through). The fields are private: callers use the narrow methods below.
pub struct Agent {
    config: RunConfig,
    dp: Dataplane,
    node: NodeReconciler,
    pods: Pods,
    ipam: SharedIpam,
    published: watch::Sender<Arc<Snapshot>>,
}

/// The agent as the tasks of the process share it: [`Shared::lock`] for
/// changes (one at a time), [`Shared::snapshot`] and [`Shared::ipam`] for
/// reading without that lock.
#[derive(Clone)]
pub struct Shared {
    agent: Arc<Mutex<Agent>>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    ipam: SharedIpam,
    config: Arc<RunConfig>,
}

impl Shared {
    pub fn new(agent: Agent) -> Self {
        Self {
            snapshot: agent.published.subscribe(),
            ipam: agent.ipam.clone(),
            config: Arc::new(agent.config.clone()),
            agent: Arc::new(Mutex::new(agent)),
        }
    }

    /// Locks the agent; a panic elsewhere while holding the lock does not
    /// make the state unusable (every operation leaves it consistent or
    /// undone).
    pub fn lock(&self) -> MutexGuard<'_, Agent> {
        self.agent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest published state.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Notified on every published change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    /// IPAM, shared with the pods (its own short lock).
    pub fn ipam(&self) -> &SharedIpam {
        &self.ipam
    }

    pub fn config(&self) -> &RunConfig {
        &self.config
    }
}

impl Agent {
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The node IP (the SNAT source).
    pub fn node_ip(&self) -> Ipv4Addr {
        self.pods.node_ip()
    }

    fn publish(&mut self) {
        let snapshot = Snapshot {
            pods: self.pods.records().cloned().collect(),
            enis: self.pods.enis().clone(),
        };
        self.published.send_replace(Arc::new(snapshot));
    }

    /// Publishes the state after `op` (whether it succeeded or not: a
    /// failed operation may have undone part of its work).
    fn changing<T>(&mut self, op: impl FnOnce(&mut Self) -> T) -> T {
        let out = op(self);
        self.publish();
        out
    }

    /// The node's desired state as last applied.
    pub fn node_spec(&self) -> &NodeSpec {
        self.pods.node()
    }

    /// Re-programs what `spec` describes of the node (VPC and service
    /// CIDRs, ENIs): a changed VPC CIDR reaches `NO_SNAT` at once, while
    /// established flows keep their translation. Pod pools are taken at
    /// start only (AWS mode feeds them from the warm pool).
    pub fn apply_node(&mut self, spec: NodeSpec) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let enis = resolve_enis(&spec)?;
        self.node
            .apply(&spec, &enis, &mut self.dp)
            .context("re-programming the node's maps")?;
        // New ENIs (AWS mode attaches them at run time) become pod owners.
        self.changing(|a| a.pods.set_node(spec, enis));
        Ok(())
    }

    /// The node's local prefixes (from [`crate::node::local_addrs`]): handed
    /// to the host stack from now on. `false` when nothing changed.
    pub fn set_node_local(
        &mut self,
        local: std::collections::BTreeSet<ipnet::Ipv4Net>,
    ) -> anyhow::Result<bool> {
        Ok(self
            .node
            .set_local(local, self.pods.node(), self.pods.enis())?)
    }

    /// A migration from aws-node starts (`true`) or has adopted every pod
    /// (`false`); see `CFG_F_ADOPTING`.
    pub fn set_adopting(&mut self, adopting: bool) -> anyhow::Result<()> {
        Ok(self.node.set_adopting(adopting)?)
    }

    /// SIGHUP in local mode: re-reads the node file and applies it.
    pub fn reload_node_file(&mut self) -> anyhow::Result<()> {
        if self.config.node_file.as_os_str().is_empty() {
            anyhow::bail!("AWS mode: the node comes from IMDS (re-read every few seconds), not from a node file");
        }
        let spec = NodeSpec::load(&self.config.node_file)?;
        let vpc_cidrs = spec.node.vpc_cidrs.clone();
        self.apply_node(spec)?;
        tracing::info!(?vpc_cidrs, "node file reloaded");
        Ok(())
    }

    /// AddPod: an IP (or the pod's branch ENI), the checkpoint, the programs
    /// on its veth, its `PODS` entry.
    pub fn add_pod(&mut self, req: AddPod) -> Result<PodRecord, PodError> {
        self.changing(|a| a.pods.add(req, &mut a.dp))
    }

    /// DelPod; `None` when the attachment is unknown.
    pub fn del_pod(
        &mut self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<PodRecord>, PodError> {
        self.changing(|a| a.pods.del(container_id, ifname))
    }

    /// CheckPod: why the agent's state for the pod differs from what is expected.
    pub fn check_pod(
        &self,
        container_id: &str,
        ifname: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<(), String> {
        self.pods.check(container_id, ifname, ip)
    }

    /// CNI GC: releases every attachment not in `valid`.
    pub fn gc_pods(&mut self, valid: &[(String, String)]) -> Result<usize, PodError> {
        self.changing(|a| a.pods.gc(valid))
    }

    /// Removes the branch pods for which `keep` is false.
    pub fn revoke_branches(
        &mut self,
        keep: impl Fn(&PodRecord) -> bool,
    ) -> Result<Vec<PodRecord>, PodError> {
        self.changing(|a| a.pods.revoke_branches(keep))
    }

    /// Takes over a pod another CNI wired (migration).
    pub fn adopt_pod(&mut self, a: Adoptee) -> Result<PodRecord, PodError> {
        self.changing(|agent| agent.pods.adopt(a, &mut agent.dp))
    }

    /// The ENI whose pool holds `ip`, if any.
    pub fn eni_of(&self, ip: Ipv4Addr) -> Option<String> {
        self.pods.eni_of(ip)
    }

    /// Loads the data path (re-using pinned maps and links), programs the
    /// node maps and ENIs that `node` describes, and restores the pods.
    pub fn start(config: RunConfig, node: NodeSpec) -> anyhow::Result<(Self, RestoreReport)> {
        use anyhow::Context as _;
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
        let ct_size = config.conntrack_max.unwrap_or_else(|| {
            crate::dataplane::conntrack_entries_for(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )
        });
        let sizes = [
            (dataplane_common::maps::CT, ct_size),
            (dataplane_common::maps::SNAT_REV, ct_size),
        ];
        let mut dp =
            Dataplane::load_pinned_sized(&object, &config.bpf_root, &sizes).with_context(|| {
                format!(
                    "loading the data path pinned under {}",
                    config.bpf_root.display()
                )
            })?;
        for (map, wanted) in sizes {
            match crate::dataplane::pinned_capacity(&config.bpf_root, map) {
                Some(size) if size != wanted => tracing::warn!(
                    map,
                    size,
                    wanted,
                    "the pinned map keeps the size it was created with; \
                     the new size applies when the maps are next created (after a reboot)"
                ),
                Some(size) => tracing::info!(map, size, "conntrack table size"),
                None => {}
            }
            if crate::dataplane::pinned_is_lru(&config.bpf_root, map) {
                tracing::warn!(
                    map,
                    "pinned by an earlier version as an LRU table: when full it evicts \
                     the oldest flow instead of refusing new ones, until the maps are \
                     next created (after a reboot)"
                );
            }
        }
        // A different object than last time is an upgrade: existing
        // attachments switch to its programs; the same object leaves them be.
        let object_id = object_identity(&object);
        let id_file = config.state_dir.join(OBJECT_ID_FILE);
        let previous = std::fs::read_to_string(&id_file).ok();
        let upgrade = previous.as_deref().map(str::trim) != Some(object_id.as_str());
        dp.set_replace_existing(upgrade);
        let node_maps = NodeMaps::open(&config.bpf_root).context("opening the node maps")?;
        let pod_maps = PodMaps::open(&config.bpf_root).context("opening the pod maps")?;
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
        if let Some(all) = netif::rp_filter_all().filter(|v| *v != 0) {
            // The kernel applies max(all, interface): host veths without an
            // address or a route to their pod then drop what pods send into
            // the host stack, whatever the agent sets on them.
            tracing::warn!(
                rp_filter_all = all,
                "net.ipv4.conf.all.rp_filter is not 0: pods' traffic to Services, node-local \
                 addresses and NodePort answers will be dropped by the host; set it to 0 \
                 (per-interface values, eth0's included, stay as they are)"
            );
        }
        let mut reconciler = NodeReconciler::new(node_maps, snat);
        reconciler
            .apply(&node, &enis, &mut dp)
            .context("programming the node's ENIs and maps")?;
        let checkpoint = CheckpointFile::new(&config.state_dir);
        let saved = checkpoint.load()?;
        let ipam = SharedIpam::new(Ipam::new(pools_of(&node), config.ip_cooldown));
        let mut pods = Pods::new(node, enis, ipam.clone(), pod_maps, checkpoint);
        let report = pods
            .restore(saved, &mut dp)
            .context("restoring pods from the checkpoint")?;
        dp.set_replace_existing(false);
        if upgrade {
            if previous.is_some() {
                tracing::info!(object = %object_id, "new eBPF object: existing attachments switched to its programs");
            }
            crate::atomic_file::write(&id_file, object_id.as_bytes(), 0o644).with_context(
                || format!("recording the object identity in {}", id_file.display()),
            )?;
        }
        let (published, _) = watch::channel(Arc::new(Snapshot::default()));
        let mut agent = Self {
            config,
            dp,
            node: reconciler,
            pods,
            ipam,
            published,
        };
        agent.publish();
        Ok((agent, report))
    }
}
