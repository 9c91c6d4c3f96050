//! The node's desired state in local mode: ENIs from the node file and the
//! `CONFIG`/`ENIS`/`NO_SNAT`/`SERVICE_CIDRS` contents derived from it, and
//! the reconciler that writes them.

use std::collections::{BTreeMap, BTreeSet};

use dataplane_common::{
    config::{CFG_F_ADOPTING, CFG_F_SG_STANDARD},
    maps as names, Config, EniEntry, EniRole, Hook,
};
use ipnet::Ipv4Net;

use crate::{
    aws_node_env::{SgMode, SnatEnv},
    dataplane::{Dataplane, NodeMaps},
    node::file::{gateway_of, NodeSpec, Role},
    node::netif,
};

#[derive(Debug, thiserror::Error)]
pub enum NodeStateError {
    #[error(
        "ENI interface {0:?} of the node file does not exist in the agent's network namespace"
    )]
    MissingEni(String),
    #[error(transparent)]
    Dataplane(#[from] crate::dataplane::DataplaneError),
}

/// An ENI resolved in the agent's namespace.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Eni {
    pub interface: String,
    pub ifindex: u32,
    pub role: Role,
    pub mac: String,
    pub primary_ip: std::net::Ipv4Addr,
    pub subnet: Ipv4Net,
    pub gateway: std::net::Ipv4Addr,
}

pub fn role_of(r: Role) -> EniRole {
    match r {
        Role::Primary => EniRole::Primary,
        Role::Secondary => EniRole::Secondary,
        Role::Trunk => EniRole::Trunk,
    }
}

/// Resolves every ENI of the node file to its ifindex.
pub fn resolve_enis(node: &NodeSpec) -> Result<BTreeMap<String, Eni>, NodeStateError> {
    let mut out = BTreeMap::new();
    for e in &node.eni {
        let name = e.interface.get_ref().clone();
        let ifindex =
            netif::ifindex(&name).ok_or_else(|| NodeStateError::MissingEni(name.clone()))?;
        out.insert(
            name.clone(),
            Eni {
                interface: name,
                ifindex,
                role: e.role,
                mac: e.mac.to_string(),
                primary_ip: e.primary_ip,
                subnet: *e.subnet.get_ref(),
                gateway: gateway_of(e.subnet.get_ref()),
            },
        );
    }
    Ok(out)
}

/// `NO_SNAT`: the VPC CIDRs and `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`.
pub fn no_snat(node: &NodeSpec, snat: &SnatEnv) -> Vec<(Ipv4Net, u32)> {
    let vpc = node
        .node
        .vpc_cidrs
        .iter()
        .map(|n| (n.trunc(), names::NO_SNAT_VPC_CIDR));
    let excluded = snat.excluded.iter().map(|n| (*n, names::NO_SNAT_EXCLUDED));
    vpc.chain(excluded).collect()
}

/// `SERVICE_CIDRS`: the service CIDRs (kube-proxy), the ENIs' primary IPs
/// (local even on an ENI without an address) and the node's local
/// prefixes (`local`, from [`super::local_addrs`]), all handed to the host
/// stack by `from_pod`. A prefix that is both keeps the service reason.
pub fn pass_to_stack(
    node: &NodeSpec,
    enis: &BTreeMap<String, Eni>,
    local: &BTreeSet<Ipv4Net>,
) -> Vec<(Ipv4Net, u32)> {
    let mut out = BTreeMap::new();
    let eni_ips = enis
        .values()
        .filter_map(|e| Ipv4Net::new(e.primary_ip, 32).ok());
    for n in eni_ips.chain(local.iter().copied()) {
        out.insert(n.trunc(), names::PASS_NODE_LOCAL);
    }
    for n in &node.node.service_cidrs {
        out.insert(n.trunc(), names::PASS_SERVICE_CIDR);
    }
    out.into_iter().collect()
}

/// `CONFIG` from the node file and the aws-node environment; `adopting`
/// while a migration adopts pods (`CFG_F_ADOPTING`).
pub fn config(node: &NodeSpec, primary_ifindex: u32, snat: &SnatEnv, adopting: bool) -> Config {
    let sg = if snat.sg_mode == SgMode::Standard {
        CFG_F_SG_STANDARD
    } else {
        0
    };
    let adopting = if adopting { CFG_F_ADOPTING } else { 0 };
    Config {
        node_ip: node.node.primary_ip.octets(),
        primary_eni_ifindex: primary_ifindex,
        port_min: snat.port_range.0,
        port_max: snat.port_range.1,
        snat_mode: snat.mode as u8,
        flags: sg | adopting,
        ..Config::default()
    }
}

/// The one writer of the node maps (`ENIS`, `CONFIG`, `NO_SNAT`,
/// `SERVICE_CIDRS`) and of the ENIs' links: it holds the [`NodeMaps`] and
/// the aws-node SNAT settings, and makes the maps say what a node file
/// describes.
pub struct NodeReconciler {
    maps: NodeMaps,
    snat: SnatEnv,
    /// The node's local prefixes as last read (see [`super::local_addrs`]).
    local: BTreeSet<Ipv4Net>,
    /// A migration is adopting pods (see `CFG_F_ADOPTING`).
    adopting: bool,
}

impl NodeReconciler {
    pub fn new(maps: NodeMaps, snat: SnatEnv) -> Self {
        Self {
            maps,
            snat,
            local: BTreeSet::new(),
            adopting: false,
        }
    }

    /// A migration starts (`true`) or has finished adopting (`false`):
    /// re-writes `CONFIG` with `CFG_F_ADOPTING` set or cleared.
    pub fn set_adopting(&mut self, adopting: bool) -> Result<(), NodeStateError> {
        self.adopting = adopting;
        // Before the first `apply` this writes the flag alone, which `apply`
        // keeps.
        let mut cfg = self.maps.config()?;
        cfg.flags = (cfg.flags & !CFG_F_ADOPTING) | if adopting { CFG_F_ADOPTING } else { 0 };
        self.maps.put_config(&cfg)?;
        Ok(())
    }

    /// The node's local prefixes changed (or were read for the first
    /// time): re-writes `SERVICE_CIDRS`. `false` when nothing changed.
    pub fn set_local(
        &mut self,
        local: BTreeSet<Ipv4Net>,
        node: &NodeSpec,
        enis: &BTreeMap<String, Eni>,
    ) -> Result<bool, NodeStateError> {
        if local == self.local {
            return Ok(false);
        }
        self.maps
            .sync_service_cidrs(&pass_to_stack(node, enis, &local))?;
        self.local = local;
        Ok(true)
    }

    /// Writes ENIS, CONFIG, NO_SNAT and SERVICE_CIDRS and attaches from_eni /
    /// to_eni to every ENI (pinned links; already-pinned ones are kept as they
    /// are, so a restart does not disturb forwarding).
    pub fn apply(
        &mut self,
        node: &NodeSpec,
        enis: &BTreeMap<String, Eni>,
        dp: &mut Dataplane,
    ) -> Result<(), NodeStateError> {
        let state = (&self.snat, &self.local, self.adopting);
        reconcile_node(node, state, enis, dp, &mut self.maps)
    }
}

/// Writes ENIS, CONFIG, NO_SNAT and SERVICE_CIDRS and attaches from_eni /
/// to_eni to every ENI (pinned links; already-pinned ones are kept as they
/// are, so a restart does not disturb forwarding).
fn reconcile_node(
    node: &NodeSpec,
    (snat, local, adopting): (&SnatEnv, &BTreeSet<Ipv4Net>, bool),
    enis: &BTreeMap<String, Eni>,
    dp: &mut Dataplane,
    maps: &mut NodeMaps,
) -> Result<(), NodeStateError> {
    let node_files = node.eni.iter().map(|e| (e.interface.get_ref(), e));
    for (name, file_eni) in node_files {
        let Some(eni) = enis.get(name) else {
            return Err(NodeStateError::MissingEni(name.clone()));
        };
        let entry = EniEntry {
            role: role_of(eni.role) as u32,
            primary_ip: eni.primary_ip.octets(),
            gateway_ip: eni.gateway.octets(),
            mac: file_eni.mac.0,
            gateway_mac: file_eni.gateway_mac.map(|m| m.0).unwrap_or_default(),
        };
        maps.put_eni(eni.ifindex, &entry)?;
        let made = dp.attach_pinned(&eni.interface, eni.ifindex, &[Hook::FromEni, Hook::ToEni])?;
        if made > 0 {
            tracing::info!(eni = %eni.interface, ifindex = eni.ifindex, links = made, "attached from_eni/to_eni");
        }
    }
    // ENIS entries of interfaces that are no longer ENIs.
    for (ifindex, _) in maps.enis()? {
        if !enis.values().any(|e| e.ifindex == ifindex) {
            tracing::info!(ifindex, "removing stale ENIS entry");
            maps.remove_eni(ifindex)?;
        }
    }
    let primary = enis
        .values()
        .find(|e| e.role == Role::Primary)
        .ok_or_else(|| NodeStateError::MissingEni("<primary>".into()))?;
    // Written only when it differs, so a restart with the same settings
    // leaves the data path untouched; a changed setting applies to new flows
    // (established ones keep their translation).
    let want = config(node, primary.ifindex, snat, adopting);
    if maps.config()? != want {
        maps.put_config(&want)?;
    }
    maps.sync_no_snat(&no_snat(node, snat))?;
    maps.sync_service_cidrs(&pass_to_stack(node, enis, local))?;
    Ok(())
}
