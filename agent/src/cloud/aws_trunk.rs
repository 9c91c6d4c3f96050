//! The trunk ENI in AWS mode (security groups for pods). The VPC resource
//! controller attaches it (EC2 `InterfaceType` `trunk`) and writes each
//! branch pod's VLAN, MAC and IP into the pod's annotation; what the node
//! must know itself is which of its interfaces is the trunk and the subnet
//! gateway's MAC on it (the destination of every tagged frame).
//!
//! - Which ENI: EC2 says it (IMDS does not). The start asks EC2 once
//!   ([`at_start`]); after that the warm pool's reconciler reports it with
//!   every DescribeNetworkInterfaces it already makes ([`NodeSink`] into a
//!   [`TrunkSlot`]), so finding a trunk attached later costs no extra call.
//! - The gateway MAC: asked of the VPC by ARP on the trunk once its link is
//!   up with its address ([`Resolver`]), and kept for that ENI.
//!
//! Until both are known the trunk is left out of the node's spec (not
//! taken for a secondary ENI): a branch pod's add fails with "no trunk ENI"
//! and the runtime retries it.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use trunkline_aws::{imds::NodeInfo, Ec2 as _, PoolEni, PoolSink, SdkEc2, TrunkEni};

use crate::node::file::{gateway_of, MacAddr};

/// How long the start waits for EC2's answer on the trunk.
pub const EC2_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one ARP resolution of the trunk's gateway may take.
pub const ARP_TIMEOUT: Duration = Duration::from_secs(2);

/// The trunk as EC2 last described it (`None`: none attached, or not
/// known yet).
#[derive(Clone, Debug, Default)]
pub struct TrunkSlot(Arc<Mutex<Option<TrunkEni>>>);

impl TrunkSlot {
    pub fn new(initial: Option<TrunkEni>) -> Self {
        Self(Arc::new(Mutex::new(initial)))
    }
    pub fn set(&self, trunk: Option<&TrunkEni>) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref() != trunk {
            tracing::info!(trunk = ?trunk.map(|t| &t.eni_id), "EC2 reports the instance's trunk ENI");
        }
        *slot = trunk.cloned();
    }
    pub fn get(&self) -> Option<TrunkEni> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The pool's sink with the trunk beside it: pool calls go to `pool`
/// (IPAM), the trunk into the slot the IMDS watcher reads.
pub struct NodeSink<S> {
    pub pool: S,
    pub trunk: TrunkSlot,
}

impl<S: PoolSink> PoolSink for NodeSink<S> {
    fn busy(&self) -> HashSet<Ipv4Addr> {
        self.pool.busy()
    }
    fn set_pools(&self, pools: &[PoolEni]) {
        self.pool.set_pools(pools)
    }
    fn withdraw(&self, ips: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
        self.pool.withdraw(ips)
    }
    fn set_trunk(&self, trunk: Option<&TrunkEni>) {
        self.trunk.set(trunk)
    }
}

/// The trunk at start, from one DescribeNetworkInterfaces (read only, so
/// a dry run may call it too). EC2 not answering is not fatal: the warm
/// pool's passes report the trunk later.
pub async fn at_start(info: &NodeInfo) -> Option<TrunkEni> {
    let ec2 = SdkEc2::from_env(&info.region).await;
    match tokio::time::timeout(EC2_TIMEOUT, ec2.instance_enis(&info.instance_id)).await {
        Ok(Ok(enis)) => trunkline_aws::trunk_of(&enis),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "EC2 did not say which ENI is the trunk; branch pods wait for the warm pool's next pass");
            None
        }
        Err(_) => {
            tracing::warn!(timeout = ?EC2_TIMEOUT, "EC2 did not answer in time on the trunk ENI; branch pods wait for the warm pool's next pass");
            None
        }
    }
}

/// A trunk ready for the spec: EC2 named it, ARP found its gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyTrunk {
    pub eni_id: String,
    pub mac: String,
    pub gateway_mac: MacAddr,
}

/// Finds the trunk's gateway MAC, once per trunk ENI.
#[derive(Debug, Default)]
pub struct Resolver {
    ready: Option<ReadyTrunk>,
}

impl Resolver {
    /// Starts from a trunk the start already resolved.
    pub fn new(ready: Option<ReadyTrunk>) -> Self {
        Self { ready }
    }

    /// The ready trunk for `trunk` as IMDS (`info`) and the namespace
    /// (`ifaces`, by MAC) show it: from the cache, else by ARP on its link
    /// (which must be up with its primary IP, see `node::eni_link`). A
    /// failure is logged and gives `None`; the next call tries again.
    pub async fn ready(
        &mut self,
        trunk: Option<&TrunkEni>,
        info: &NodeInfo,
        ifaces: &HashMap<String, String>,
    ) -> Option<ReadyTrunk> {
        let trunk = trunk?;
        if let Some(r) = self.ready.as_ref().filter(|r| r.eni_id == trunk.eni_id) {
            return Some(r.clone());
        }
        let Some(link) = ifaces.get(&trunk.mac) else {
            tracing::info!(trunk = %trunk.eni_id, mac = %trunk.mac, "the trunk ENI has no interface in the namespace yet");
            return None;
        };
        let Some(eni) = info.enis.iter().find(|e| e.mac == trunk.mac) else {
            tracing::info!(trunk = %trunk.eni_id, "IMDS does not list the trunk ENI yet");
            return None;
        };
        let Some(ip) = eni.local_ipv4s.first().copied() else {
            tracing::warn!(trunk = %trunk.eni_id, "IMDS gives the trunk ENI no address");
            return None;
        };
        let gateway = gateway_of(&eni.subnet_cidr);
        let arp_link = link.clone();
        let found = tokio::task::spawn_blocking(move || {
            crate::node::gateway_arp::resolve(&arp_link, ip, gateway, ARP_TIMEOUT)
        })
        .await;
        match found {
            Ok(Ok(gateway_mac)) => {
                tracing::info!(trunk = %trunk.eni_id, link = %link, %gateway, %gateway_mac, "trunk ENI ready for branch pods");
                let r = ReadyTrunk {
                    eni_id: trunk.eni_id.clone(),
                    mac: trunk.mac.clone(),
                    gateway_mac,
                };
                self.ready = Some(r.clone());
                Some(r)
            }
            Ok(Err(e)) => {
                tracing::warn!(trunk = %trunk.eni_id, error = %e, "could not resolve the trunk's gateway; retrying with the next IMDS pass");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "the ARP task failed");
                None
            }
        }
    }
}
