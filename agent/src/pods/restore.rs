//! The restart reconciler: rebuild the pods from the checkpoint, the pinned
//! maps and links and the live veths, touching nothing a live pod uses.

use dataplane_common::Hook;

use super::{key, PodError, Pods};
use crate::{
    dataplane::{list_link_pins, remove_link_pin, Dataplane},
    node::netif,
    pods::checkpoint::Checkpoint,
    pods::ipam::now_secs,
};

/// What a restart found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub kept: usize,
    pub removed_records: usize,
    pub removed_entries: usize,
    pub removed_links: usize,
    /// `VLANS` entries no branch pod explains.
    pub removed_vlans: usize,
}

impl Pods {
    /// On start: rebuild from the checkpoint, the pinned maps and links and
    /// the live veths. Live pods keep their map entry and links untouched;
    /// whatever belongs to a veth that is gone is removed.
    pub fn restore(
        &mut self,
        cp: Checkpoint,
        dp: &mut Dataplane,
    ) -> Result<RestoreReport, PodError> {
        let mut report = RestoreReport::default();
        for r in cp.pods {
            let k = key(&r.container_id, &r.ifname);
            let claimed = if r.is_branch() {
                Ok(())
            } else {
                self.ipam()
                    .claim(r.ip, &format!("{}/{}", r.container_id, r.ifname))
            };
            if netif::is_live(&r.host_veth, r.host_ifindex) && claimed.is_ok() {
                self.wire(&r, dp)?;
                self.records.insert(k, r);
                report.kept += 1;
            } else {
                tracing::info!(container = %r.container_id, ip = %r.ip, veth = %r.host_veth, "pod's veth is gone: releasing");
                self.unwire(&r)?;
                if claimed.is_ok() && !r.is_branch() {
                    self.ipam().release(r.ip, now_secs());
                }
                report.removed_records += 1;
            }
        }
        for (ip, at) in cp.cooling {
            self.ipam().restore_cooling(ip, at);
        }
        // PODS entries no record explains (e.g. written before a crash whose
        // checkpoint never made it).
        for (ip, e) in self.maps.pods()? {
            let known = self
                .records
                .values()
                .any(|r| r.ip == ip && r.host_ifindex == e.host_ifindex);
            if !known {
                self.maps.remove_pod(ip)?;
                report.removed_entries += 1;
            }
        }
        // VLANS entries no branch pod explains (its pod is gone, or its
        // entry was left by a crash between the two map writes).
        for (trunk, vlan, ip) in self.maps.vlans()? {
            let known = self.records.values().any(|r| {
                r.is_branch()
                    && r.vlan == vlan
                    && r.ip == ip
                    && self.enis.get(&r.eni).map(|e| e.ifindex) == Some(trunk)
            });
            if !known {
                self.maps.remove_vlan(trunk, vlan)?;
                report.removed_vlans += 1;
            }
        }
        // Pod programs are cls_bpf filters, never pinned links: a pod-hook
        // pin under links/ is stale (never made by this agent) and goes.
        if let Some(root) = dp.bpf_root().map(|p| p.to_path_buf()) {
            for pin in list_link_pins(&root)? {
                if matches!(pin.hook, Hook::FromPod | Hook::ToPod) {
                    remove_link_pin(&pin.path)?;
                    report.removed_links += 1;
                }
            }
        }
        self.save()?;
        Ok(report)
    }
}
