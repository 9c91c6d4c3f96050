//! Adoption: a pod that another CNI (aws-node) wired is taken over as it
//! is — same IP, same veth — without a CNI ADD.

use super::{key, PodError, Pods};
use crate::{dataplane::Dataplane, node::netif, pods::checkpoint::PodRecord};

/// A running pod to take over.
#[derive(Clone, Debug)]
pub struct Adoptee {
    pub container_id: String,
    pub ifname: String,
    pub namespace: String,
    pub name: String,
    pub ip: std::net::Ipv4Addr,
    pub host_veth: String,
    pub pod_mac: String,
}

impl Pods {
    /// The ENI whose pool holds `ip`, if any.
    pub fn eni_of(&self, ip: std::net::Ipv4Addr) -> Option<String> {
        self.ipam().eni_of(ip).map(str::to_string)
    }

    /// Claims the pod's IP, records it (checkpoint) and wires it: programs on
    /// its veth first, then its `PODS` entry, which is the moment the data
    /// path takes over its traffic. Idempotent: an adopted pod is re-wired.
    pub fn adopt(&mut self, a: Adoptee, dp: &mut Dataplane) -> Result<PodRecord, PodError> {
        let k = key(&a.container_id, &a.ifname);
        if let Some(r) = self.records.get(&k).cloned() {
            self.wire(&r, dp)?;
            return Ok(r);
        }
        let eni = self.eni_of(a.ip).ok_or_else(|| {
            PodError::Conflict(format!(
                "{} ({}/{}) is in no ENI's pool of this node",
                a.ip, a.namespace, a.name
            ))
        })?;
        let host_ifindex =
            netif::ifindex(&a.host_veth).ok_or_else(|| PodError::NoVeth(a.host_veth.clone()))?;
        let owner = format!("{}/{}", a.container_id, a.ifname);
        self.ipam().claim(a.ip, &owner)?;
        let record = PodRecord {
            container_id: a.container_id,
            ifname: a.ifname,
            namespace: a.namespace,
            name: a.name,
            uid: String::new(),
            netns: String::new(),
            ip: a.ip,
            eni,
            vlan: 0,
            branch_mac: None,
            host_veth: a.host_veth,
            host_ifindex,
            pod_mac: a.pod_mac,
        };
        self.records.insert(k.clone(), record.clone());
        let done = self
            .save()
            .map_err(PodError::from)
            .and_then(|()| self.wire(&record, dp));
        if let Err(e) = done {
            let _ = self.unwire(&record);
            self.records.remove(&k);
            self.ipam()
                .release(record.ip, crate::pods::ipam::now_secs());
            let _ = self.save();
            return Err(e);
        }
        tracing::info!(pod = %format!("{}/{}", record.namespace, record.name), ip = %record.ip, veth = %record.host_veth, eni = %record.eni, "pod adopted");
        Ok(record)
    }
}
