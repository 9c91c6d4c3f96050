//! The pods of the node: AddPod / DelPod / CheckPod / GC, and the restart
//! reconciler. One [`Pods`] owns IPAM, the checkpoint, the `PODS` map and
//! the pod veth links.

use std::{collections::BTreeMap, net::Ipv4Addr};

use dataplane_common::{node::POD_F_STRICT, Hook, PodEntry};

mod adopt;
pub mod checkpoint;
pub mod ipam;
mod restore;

pub use adopt::Adoptee;
pub use restore::RestoreReport;

use self::ipam::{now_secs, Ipam, IpamError, SharedIpam};
use crate::{
    crash,
    dataplane::{detach_pod, Dataplane, DataplaneError, PodMaps},
    node::file::{MacAddr, NodeSpec},
    node::netif,
    node::reconcile::Eni,
    pods::checkpoint::{Checkpoint, CheckpointError, CheckpointFile, PodRecord},
};

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("host veth {0:?} does not exist in the agent's network namespace (is the agent in the node's namespace?)")]
    NoVeth(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("turning rp_filter off on host veth {veth:?}: {source}")]
    RpFilter {
        veth: String,
        source: std::io::Error,
    },
}

/// What AddPod asks for.
#[derive(Clone, Debug)]
pub struct AddPod {
    pub container_id: String,
    pub ifname: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub netns: String,
    pub host_veth: String,
    pub host_ifindex: u32,
    pub pod_mac: String,
    /// Where the pod's branch ENI (security groups for pods) comes from.
    pub branch: BranchChoice,
}

/// A security-group pod's branch ENI, from whichever source decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Branch {
    pub ip: Ipv4Addr,
    pub vlan: u16,
    pub mac: MacAddr,
}

/// Which source says whether a pod has a branch ENI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BranchChoice {
    /// The node spec's branches (local mode: the node file's `[[branch]]` entries).
    #[default]
    NodeSpec,
    /// Decided from the Kubernetes API before AddPod took the lock
    /// (`crate::cloud::kube`): `None` is a regular pod.
    Decided(Option<Branch>),
}

type Key = (String, String);

/// The programs on a pod's host veth.
const POD_HOOKS: [Hook; 2] = [Hook::FromPod, Hook::ToPod];

fn key(container_id: &str, ifname: &str) -> Key {
    (container_id.to_string(), ifname.to_string())
}

/// The pods of the node and everything that is theirs: the records (and
/// their checkpoint), the IPs (IPAM, shared with the EC2 warm pool), the
/// `PODS`/`VLANS` maps and the programs on their veths.
pub struct Pods {
    node: NodeSpec,
    enis: BTreeMap<String, Eni>,
    ipam: SharedIpam,
    records: BTreeMap<Key, PodRecord>,
    checkpoint: CheckpointFile,
    maps: PodMaps,
}

/// The IP pools of the node file's ENIs: (ENI interface, its pod IPs).
pub fn pools_of(node: &NodeSpec) -> Vec<(String, Vec<Ipv4Addr>)> {
    node.eni
        .iter()
        .map(|e| {
            (
                e.interface.get_ref().clone(),
                e.pod_ips.iter().map(|s| *s.get_ref()).collect(),
            )
        })
        .collect()
}

impl Pods {
    pub fn new(
        node: NodeSpec,
        enis: BTreeMap<String, Eni>,
        ipam: SharedIpam,
        maps: PodMaps,
        checkpoint: CheckpointFile,
    ) -> Self {
        Self {
            node,
            enis,
            ipam,
            records: BTreeMap::new(),
            checkpoint,
            maps,
        }
    }

    /// The node spec the pods are wired by.
    pub fn node(&self) -> &NodeSpec {
        &self.node
    }

    /// The node's primary IP (from the node file).
    pub fn node_ip(&self) -> std::net::Ipv4Addr {
        self.node.node.primary_ip
    }

    pub fn records(&self) -> impl Iterator<Item = &PodRecord> {
        self.records.values()
    }

    pub fn enis(&self) -> &BTreeMap<String, Eni> {
        &self.enis
    }

    /// A newly applied node spec: its ENIs and branch entries apply to pods
    /// added from now on. IPAM's pools are not touched.
    pub fn set_node(&mut self, node: NodeSpec, enis: BTreeMap<String, Eni>) {
        self.node = node;
        self.enis = enis;
    }

    fn ipam(&self) -> std::sync::MutexGuard<'_, Ipam> {
        self.ipam.lock()
    }

    fn save(&mut self) -> Result<(), CheckpointError> {
        let now = now_secs();
        self.checkpoint.save(&Checkpoint {
            version: 0,
            pods: self.records.values().cloned().collect(),
            cooling: self.ipam().cooling(now),
        })
    }

    fn entry_for(&self, r: &PodRecord) -> Result<PodEntry, PodError> {
        let eni = self
            .enis
            .get(&r.eni)
            .ok_or_else(|| PodError::Conflict(format!("ENI {} of pod {} is gone", r.eni, r.ip)))?;
        let mac: MacAddr = r
            .pod_mac
            .parse()
            .map_err(|e| PodError::Invalid(format!("pod MAC: {e}")))?;
        let branch_mac = match &r.branch_mac {
            Some(m) => {
                m.parse::<MacAddr>()
                    .map_err(|e| PodError::Invalid(format!("branch MAC {m:?}: {e}")))?
                    .0
            }
            None => [0; 6],
        };
        // Replies enter the pod from its host veth's MAC.
        let host_mac =
            netif::mac(&r.host_veth).ok_or_else(|| PodError::NoVeth(r.host_veth.clone()))?;
        Ok(PodEntry {
            host_ifindex: r.host_ifindex,
            eni_ifindex: eni.ifindex,
            mac: mac.0,
            host_mac: host_mac.0,
            branch_mac,
            vlan_id: r.vlan,
            flags: if r.is_branch() { POD_F_STRICT } else { 0 },
            _pad: [0; 2],
        })
    }

    /// Links and `PODS` entry of `r` (idempotent).
    fn wire(&mut self, r: &PodRecord, dp: &mut Dataplane) -> Result<(), PodError> {
        let entry = self.entry_for(r)?;
        if !netif::is_live(&r.host_veth, r.host_ifindex) {
            return Err(PodError::NoVeth(r.host_veth.clone()));
        }
        netif::disable_rp_filter(&r.host_veth).map_err(|source| PodError::RpFilter {
            veth: r.host_veth.clone(),
            source,
        })?;
        dp.attach_pod(&r.host_veth, &POD_HOOKS)?;
        crash::point("add-attached");
        if self.maps.pod(r.ip)? != Some(entry) {
            self.maps.put_pod(r.ip, &entry)?;
        }
        if r.is_branch() && self.maps.vlan(entry.eni_ifindex, r.vlan)? != Some(r.ip) {
            self.maps.put_vlan(entry.eni_ifindex, r.vlan, r.ip)?;
        }
        crash::point("add-mapped");
        Ok(())
    }

    /// Removes the `PODS` entry (if it is still this pod's) and the links of `r`.
    fn unwire(&mut self, r: &PodRecord) -> Result<(), PodError> {
        if let Some(e) = self.maps.pod(r.ip)? {
            if e.host_ifindex == r.host_ifindex {
                if r.is_branch() && self.maps.vlan(e.eni_ifindex, r.vlan)? == Some(r.ip) {
                    self.maps.remove_vlan(e.eni_ifindex, r.vlan)?;
                }
                self.maps.remove_pod(r.ip)?;
            }
        }
        crash::point("del-unmapped");
        if netif::is_live(&r.host_veth, r.host_ifindex) {
            detach_pod(&r.host_veth, &POD_HOOKS)?;
        }
        crash::point("del-detached");
        Ok(())
    }

    pub fn add(&mut self, req: AddPod, dp: &mut Dataplane) -> Result<PodRecord, PodError> {
        if req.container_id.is_empty() || req.ifname.is_empty() || req.host_veth.is_empty() {
            return Err(PodError::Invalid(
                "container_id, ifname and host_veth_name are required".into(),
            ));
        }
        req.pod_mac
            .parse::<MacAddr>()
            .map_err(|e| PodError::Invalid(format!("pod_mac: {e}")))?;
        let host_ifindex = match netif::ifindex(&req.host_veth) {
            Some(i) if req.host_ifindex == 0 || i == req.host_ifindex => i,
            Some(i) => {
                return Err(PodError::Invalid(format!(
                    "host veth {} has ifindex {i} here, the request says {}",
                    req.host_veth, req.host_ifindex
                )))
            }
            None => return Err(PodError::NoVeth(req.host_veth.clone())),
        };
        let k = key(&req.container_id, &req.ifname);

        // A repeated ADD: same answer, re-wired onto the current veth.
        if let Some(old) = self.records.get(&k).cloned() {
            let mut r = old.clone();
            r.host_veth = req.host_veth.clone();
            r.host_ifindex = host_ifindex;
            r.pod_mac = req.pod_mac.clone();
            r.netns = req.netns.clone();
            if r != old {
                self.unwire(&old)?;
                self.records.insert(k.clone(), r.clone());
                self.save()?;
            }
            self.wire(&r, dp)?;
            return Ok(r);
        }

        // Records of earlier sandboxes whose veth (same name: same pod) the
        // plugin has replaced: their pod is gone, release them now.
        let replaced: Vec<Key> = self
            .records
            .iter()
            .filter(|(rk, r)| {
                **rk != k
                    && r.host_veth == req.host_veth
                    && !netif::is_live(&r.host_veth, r.host_ifindex)
            })
            .map(|(rk, _)| rk.clone())
            .collect();
        for (c, i) in replaced {
            tracing::info!(container = %c, veth = %req.host_veth, "releasing the pod's earlier sandbox");
            self.del(&c, &i)?;
        }

        let owner = format!("{}/{}", req.container_id, req.ifname);
        let branch = match &req.branch {
            BranchChoice::NodeSpec => {
                self.node
                    .branch_for(&req.namespace, &req.name)
                    .map(|b| Branch {
                        ip: *b.ip.get_ref(),
                        vlan: *b.vlan.get_ref(),
                        mac: b.mac,
                    })
            }
            BranchChoice::Decided(b) => b.clone(),
        };
        let (ip, eni, vlan, branch_mac) = match branch {
            Some(b) => {
                let ip = b.ip;
                if let Some(other) = self.records.values().find(|r| r.ip == ip) {
                    return Err(PodError::Conflict(format!(
                        "branch IP {ip} of {}/{} is in use by container {}",
                        req.namespace, req.name, other.container_id
                    )));
                }
                let trunk = self
                    .node
                    .trunk_eni()
                    .map(|t| t.interface.get_ref().clone())
                    .ok_or_else(|| {
                        PodError::Conflict(format!(
                            "{}/{} has a branch ENI but the node has no trunk ENI (a node file needs an [[eni]] with role = \"trunk\"; in AWS mode the trunk enters once EC2 lists it and its gateway answers ARP)",
                            req.namespace, req.name
                        ))
                    })?;
                (ip, trunk, b.vlan, Some(b.mac.to_string()))
            }
            None => {
                let (ip, eni) = self.ipam().allocate(&owner, now_secs())?;
                (ip, eni, 0, None)
            }
        };
        crash::point("add-allocated");
        let record = PodRecord {
            container_id: req.container_id,
            ifname: req.ifname,
            namespace: req.namespace,
            name: req.name,
            uid: req.uid,
            netns: req.netns,
            ip,
            eni,
            vlan,
            branch_mac,
            host_veth: req.host_veth,
            host_ifindex,
            pod_mac: req.pod_mac,
        };
        let t0 = std::time::Instant::now();
        self.records.insert(k.clone(), record.clone());
        let saved = self.save();
        let t_save = t0.elapsed();
        if let Err(e) = saved {
            self.records.remove(&k);
            self.ipam().release(ip, now_secs());
            return Err(e.into());
        }
        crash::point("add-checkpointed");
        if let Err(e) = self.wire(&record, dp) {
            tracing::warn!(ip = %ip, error = %e, "wiring the pod failed; undoing");
            let _ = self.unwire(&record);
            self.records.remove(&k);
            self.ipam().release(ip, now_secs());
            let _ = self.save();
            return Err(e);
        }
        tracing::debug!(
            checkpoint_us = t_save.as_micros() as u64,
            wire_us = (t0.elapsed() - t_save).as_micros() as u64,
            "AddPod timings"
        );
        tracing::info!(pod = %format!("{}/{}", record.namespace, record.name), container = %record.container_id, ip = %ip, eni = %record.eni, vlan, veth = %record.host_veth, "pod added");
        Ok(record)
    }

    /// Releases what AddPod gave `(container_id, ifname)`; `None` when unknown.
    pub fn del(&mut self, container_id: &str, ifname: &str) -> Result<Option<PodRecord>, PodError> {
        let k = key(container_id, ifname);
        let Some(r) = self.records.get(&k).cloned() else {
            return Ok(None);
        };
        self.unwire(&r)?;
        self.records.remove(&k);
        if !r.is_branch() {
            self.ipam().release(r.ip, now_secs());
        }
        self.save()?;
        tracing::info!(container = %container_id, ip = %r.ip, "pod deleted");
        Ok(Some(r))
    }

    /// Removes the data-path entries and records of branch pods for which
    /// `keep` is false (their annotation went away or changed, or the pod
    /// was deleted). Regular pods are never touched. Returns what was
    /// removed.
    pub fn revoke_branches(
        &mut self,
        keep: impl Fn(&PodRecord) -> bool,
    ) -> Result<Vec<PodRecord>, PodError> {
        let gone: Vec<Key> = self
            .records
            .iter()
            .filter(|(_, r)| r.is_branch() && !keep(r))
            .map(|(k, _)| k.clone())
            .collect();
        let mut removed = Vec::new();
        for (c, i) in gone {
            if let Some(r) = self.del(&c, &i)? {
                tracing::info!(pod = %format!("{}/{}", r.namespace, r.name), ip = %r.ip, vlan = r.vlan, "branch revoked: its pod-eni annotation is gone or changed");
                removed.push(r);
            }
        }
        Ok(removed)
    }

    /// Why the agent's state for the pod differs from what is expected.
    pub fn check(
        &self,
        container_id: &str,
        ifname: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<(), String> {
        let r = self
            .records
            .get(&key(container_id, ifname))
            .ok_or_else(|| {
                format!("the agent has no pod for container {container_id} interface {ifname}")
            })?;
        if let Some(ip) = ip {
            if ip != r.ip {
                return Err(format!("the pod has {ip}, the agent assigned {}", r.ip));
            }
        }
        if !netif::is_live(&r.host_veth, r.host_ifindex) {
            return Err(format!(
                "host veth {} (ifindex {}) is gone",
                r.host_veth, r.host_ifindex
            ));
        }
        let want = self.entry_for(r).map_err(|e| e.to_string())?;
        match self.maps.pod(r.ip) {
            Ok(Some(e)) if e == want => Ok(()),
            Ok(Some(e)) => Err(format!("PODS[{}] is {e:?}, want {want:?}", r.ip)),
            Ok(None) => Err(format!("PODS has no entry for {}", r.ip)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// CNI GC: releases every attachment not in `valid`.
    pub fn gc(&mut self, valid: &[(String, String)]) -> Result<usize, PodError> {
        let stale: Vec<Key> = self
            .records
            .keys()
            .filter(|k| !valid.contains(k))
            .cloned()
            .collect();
        for (c, i) in &stale {
            self.del(c, i)?;
        }
        Ok(stale.len())
    }
}
