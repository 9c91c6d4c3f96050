//! IPAM fed by the EC2 warm pool: the reconciler of `trunkline-aws` calls
//! this [`PoolSink`] to publish EC2's view of the pool, to ask what is busy,
//! and to take free IPs out before it gives them back to EC2. Every call is
//! a short critical section on IPAM; none waits for EC2.

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use trunkline_aws::{PoolEni, PoolSink};

use crate::pods::ipam::{now_secs, Ipam, SharedIpam};

/// Gives the sink access to IPAM wherever it lives (the agent's
/// [`SharedIpam`], which the pods share; tests hold one directly).
pub trait IpamHolder: Send + Sync + 'static {
    fn with_ipam<R>(&self, f: impl FnOnce(&mut Ipam) -> R) -> R;
}

impl IpamHolder for SharedIpam {
    fn with_ipam<R>(&self, f: impl FnOnce(&mut Ipam) -> R) -> R {
        f(&mut self.lock())
    }
}

impl IpamHolder for Arc<Mutex<Ipam>> {
    fn with_ipam<R>(&self, f: impl FnOnce(&mut Ipam) -> R) -> R {
        f(&mut self.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// How a pool is named in IPAM (the agent: the ENI's interface, found by
/// MAC; `None` while the interface has not appeared, so its IPs are not
/// offered to pods yet).
pub type PoolName = Box<dyn Fn(&PoolEni) -> Option<String> + Send + Sync>;

pub struct IpamSink<H: IpamHolder> {
    holder: H,
    name: PoolName,
}

impl<H: IpamHolder> IpamSink<H> {
    pub fn new(holder: H, name: PoolName) -> Self {
        Self { holder, name }
    }
}

/// Pools named by ENI id (tests, and anything that needs no interface).
pub fn by_eni_id() -> PoolName {
    Box::new(|e: &PoolEni| Some(e.eni_id.clone()))
}

impl<H: IpamHolder> PoolSink for IpamSink<H> {
    fn busy(&self) -> HashSet<Ipv4Addr> {
        self.holder.with_ipam(|i| i.busy(now_secs()))
    }

    fn set_pools(&self, pools: &[PoolEni]) {
        // Device order: IPAM hands out the primary ENI's IPs first.
        let mut sorted: Vec<&PoolEni> = pools.iter().collect();
        sorted.sort_by_key(|e| e.device_index);
        let named: Vec<(String, Vec<Ipv4Addr>)> = sorted
            .into_iter()
            .filter_map(|e| Some(((self.name)(e)?, e.ips.clone())))
            .collect();
        self.holder.with_ipam(|i| i.set_pools(named, now_secs()));
    }

    fn withdraw(&self, ips: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
        self.holder.with_ipam(|i| i.withdraw(ips, now_secs()))
    }
}
