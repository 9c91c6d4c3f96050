//! IP address management in local mode: the pools are the `pod_ips` of the
//! node file's ENIs. One IP per pod; a released IP is re-used only after a
//! cooldown (so that a late packet for the old pod never reaches a new one).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

/// Seconds since the Unix epoch (the checkpoint stores cooldowns with it, so
/// they survive restarts).
pub type UnixSecs = u64;

pub fn now_secs() -> UnixSecs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Clone, Debug)]
struct Pool {
    eni: String,
    ips: Vec<Ipv4Addr>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("no free pod IP on this node ({used} in use, {cooling} in cooldown)")]
    Exhausted { used: usize, cooling: usize },
    #[error("{0} is not in any ENI's pod_ips")]
    Unknown(Ipv4Addr),
}

/// The pools, what is assigned, and what is cooling down.
#[derive(Debug)]
pub struct Ipam {
    pools: Vec<Pool>,
    assigned: HashMap<Ipv4Addr, String>,
    cooling: BTreeMap<Ipv4Addr, UnixSecs>,
    cooldown: Duration,
}

/// IPAM shared by the pods (AddPod allocates) and the EC2 warm pool (it
/// publishes and withdraws pool IPs): a leaf lock, taken for one call at a
/// time, never while waiting for anything.
#[derive(Clone, Debug)]
pub struct SharedIpam(Arc<Mutex<Ipam>>);

impl SharedIpam {
    pub fn new(ipam: Ipam) -> Self {
        Self(Arc::new(Mutex::new(ipam)))
    }

    /// Every IPAM operation leaves it consistent, so a panic elsewhere
    /// while holding the lock does not make it unusable.
    pub fn lock(&self) -> MutexGuard<'_, Ipam> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Free IPs now.
    pub fn free_count(&self) -> usize {
        self.lock().free_count(now_secs())
    }

    /// Free/used/cooling per ENI now.
    pub fn usage(&self) -> Vec<PoolUsage> {
        self.lock().usage(now_secs())
    }
}

/// Free/used counts of one ENI (metrics, introspection).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PoolUsage {
    pub eni: String,
    pub total: usize,
    pub used: usize,
    pub cooling: usize,
    pub free: usize,
}

impl Ipam {
    /// `pools`: (ENI interface, its pod IPs), in preference order.
    pub fn new(pools: Vec<(String, Vec<Ipv4Addr>)>, cooldown: Duration) -> Self {
        Self {
            pools: pools
                .into_iter()
                .map(|(eni, ips)| Pool { eni, ips })
                .collect(),
            assigned: HashMap::new(),
            cooling: BTreeMap::new(),
            cooldown,
        }
    }

    fn expire(&mut self, now: UnixSecs) {
        let cd = self.cooldown.as_secs();
        self.cooling.retain(|_, at| now < at.saturating_add(cd));
    }

    /// The ENI whose pool holds `ip`.
    pub fn eni_of(&self, ip: Ipv4Addr) -> Option<&str> {
        self.pools
            .iter()
            .find(|p| p.ips.contains(&ip))
            .map(|p| p.eni.as_str())
    }

    /// Takes a free IP for `owner`; returns it and its ENI.
    pub fn allocate(
        &mut self,
        owner: &str,
        now: UnixSecs,
    ) -> Result<(Ipv4Addr, String), IpamError> {
        self.expire(now);
        for pool in &self.pools {
            for ip in &pool.ips {
                if !self.assigned.contains_key(ip) && !self.cooling.contains_key(ip) {
                    self.assigned.insert(*ip, owner.to_string());
                    return Ok((*ip, pool.eni.clone()));
                }
            }
        }
        Err(IpamError::Exhausted {
            used: self.assigned.len(),
            cooling: self.cooling.len(),
        })
    }

    /// Marks `ip` as `owner`'s (restoring from the checkpoint).
    pub fn claim(&mut self, ip: Ipv4Addr, owner: &str) -> Result<(), IpamError> {
        if self.eni_of(ip).is_none() {
            return Err(IpamError::Unknown(ip));
        }
        self.cooling.remove(&ip);
        self.assigned.insert(ip, owner.to_string());
        Ok(())
    }

    /// Gives `ip` back; it is free again once the cooldown has passed.
    pub fn release(&mut self, ip: Ipv4Addr, now: UnixSecs) {
        if self.assigned.remove(&ip).is_some() && !self.cooldown.is_zero() {
            self.cooling.insert(ip, now);
        }
    }

    /// Restores a cooldown from the checkpoint.
    pub fn restore_cooling(&mut self, ip: Ipv4Addr, released_at: UnixSecs) {
        if self.eni_of(ip).is_some() && !self.assigned.contains_key(&ip) {
            self.cooling.insert(ip, released_at);
        }
    }

    /// (IP, released at) of every IP still cooling down.
    pub fn cooling(&mut self, now: UnixSecs) -> Vec<(Ipv4Addr, UnixSecs)> {
        self.expire(now);
        self.cooling.iter().map(|(ip, at)| (*ip, *at)).collect()
    }

    pub fn usage(&mut self, now: UnixSecs) -> Vec<PoolUsage> {
        self.expire(now);
        self.pools
            .iter()
            .map(|p| {
                let used = p
                    .ips
                    .iter()
                    .filter(|ip| self.assigned.contains_key(ip))
                    .count();
                let cooling = p
                    .ips
                    .iter()
                    .filter(|ip| self.cooling.contains_key(ip))
                    .count();
                PoolUsage {
                    eni: p.eni.clone(),
                    total: p.ips.len(),
                    used,
                    cooling,
                    free: p.ips.len() - used - cooling,
                }
            })
            .collect()
    }

    pub fn free_count(&mut self, now: UnixSecs) -> usize {
        self.usage(now).iter().map(|u| u.free).sum()
    }

    /// Replaces the pools (AWS mode: what EC2 has now). Assigned and cooling
    /// IPs missing from `pools` are kept in their old ENI's pool, so that a
    /// refresh never takes an IP from a pod nor re-issues one early; IPs
    /// leave the pools for EC2 only through [`Ipam::withdraw`].
    pub fn set_pools(&mut self, pools: Vec<(String, Vec<Ipv4Addr>)>, now: UnixSecs) {
        self.expire(now);
        let mut new: Vec<Pool> = pools
            .into_iter()
            .map(|(eni, ips)| Pool { eni, ips })
            .collect();
        let present: HashSet<Ipv4Addr> = new.iter().flat_map(|p| p.ips.iter().copied()).collect();
        for old in &self.pools {
            for ip in &old.ips {
                let busy = self.assigned.contains_key(ip) || self.cooling.contains_key(ip);
                if !busy || present.contains(ip) {
                    continue;
                }
                match new.iter_mut().find(|p| p.eni == old.eni) {
                    Some(p) => p.ips.push(*ip),
                    None => new.push(Pool {
                        eni: old.eni.clone(),
                        ips: vec![*ip],
                    }),
                }
            }
        }
        self.pools = new;
    }

    /// Takes the free ones of `ips` out of the pools (to give them back to
    /// EC2) and returns them; assigned and cooling IPs stay.
    pub fn withdraw(&mut self, ips: &[Ipv4Addr], now: UnixSecs) -> Vec<Ipv4Addr> {
        self.expire(now);
        let mut out = Vec::new();
        for ip in ips {
            if self.assigned.contains_key(ip) || self.cooling.contains_key(ip) {
                continue;
            }
            for pool in &mut self.pools {
                if let Some(pos) = pool.ips.iter().position(|p| p == ip) {
                    pool.ips.remove(pos);
                    out.push(*ip);
                    break;
                }
            }
        }
        out
    }

    /// Pool IPs assigned to pods or cooling down.
    pub fn busy(&mut self, now: UnixSecs) -> HashSet<Ipv4Addr> {
        self.expire(now);
        self.assigned
            .keys()
            .chain(self.cooling.keys())
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    fn ipam(cooldown: u64) -> Ipam {
        Ipam::new(
            vec![
                ("eth0".into(), vec![ip("10.0.0.10"), ip("10.0.0.11")]),
                ("eth1".into(), vec![ip("10.0.1.10")]),
            ],
            Duration::from_secs(cooldown),
        )
    }

    #[test]
    fn one_ip_per_pod_until_exhausted() {
        let mut i = ipam(0);
        assert_eq!(i.allocate("a", 0), Ok((ip("10.0.0.10"), "eth0".into())));
        assert_eq!(i.allocate("b", 0), Ok((ip("10.0.0.11"), "eth0".into())));
        assert_eq!(i.allocate("c", 0), Ok((ip("10.0.1.10"), "eth1".into())));
        assert_eq!(
            i.allocate("d", 0),
            Err(IpamError::Exhausted {
                used: 3,
                cooling: 0
            })
        );
        assert_eq!(i.free_count(0), 0);
    }

    #[test]
    fn released_ip_waits_for_the_cooldown() {
        let mut i = ipam(30);
        let (a, _) = i.allocate("a", 100).expect("a");
        i.release(a, 100);
        // Not a again while cooling: the next one.
        assert_eq!(i.allocate("b", 110).map(|r| r.0), Ok(ip("10.0.0.11")));
        assert_eq!(i.allocate("c", 110).map(|r| r.0), Ok(ip("10.0.1.10")));
        assert_eq!(
            i.allocate("d", 129),
            Err(IpamError::Exhausted {
                used: 2,
                cooling: 1
            })
        );
        assert_eq!(i.allocate("d", 130).map(|r| r.0), Ok(a));
    }

    #[test]
    fn set_pools_keeps_assigned_and_cooling_ips() {
        let mut i = ipam(30);
        let (a, _) = i.allocate("a", 100).expect("a");
        let (b, _) = i.allocate("b", 100).expect("b");
        i.release(b, 100);
        // EC2's view lost both (and eth1): they stay, in eth0's pool.
        i.set_pools(vec![("eth0".into(), vec![ip("10.0.0.20")])], 110);
        assert_eq!(i.eni_of(a), Some("eth0"));
        assert_eq!(i.eni_of(b), Some("eth0"));
        assert_eq!(
            i.eni_of(ip("10.0.1.10")),
            None,
            "free IP of a gone ENI dropped"
        );
        assert_eq!(i.allocate("c", 110).map(|r| r.0), Ok(ip("10.0.0.20")));
        assert!(i.allocate("d", 110).is_err(), "b still cooling");
        assert_eq!(i.busy(110), [a, b, ip("10.0.0.20")].into());
        // After the cooldown b is free and no longer kept once EC2 drops it.
        i.set_pools(vec![("eth0".into(), vec![])], 131);
        assert_eq!(i.eni_of(b), None);
        assert_eq!(i.eni_of(a), Some("eth0"));
    }

    #[test]
    fn withdraw_refuses_busy_ips() {
        let mut i = ipam(30);
        let (a, _) = i.allocate("a", 0).expect("a");
        let (b, _) = i.allocate("b", 0).expect("b");
        i.release(b, 0);
        let free = ip("10.0.1.10");
        assert_eq!(i.withdraw(&[a, b, free], 10), vec![free]);
        assert_eq!(i.eni_of(free), None);
        assert_eq!(i.eni_of(a), Some("eth0"));
        assert!(
            i.allocate("c", 10).is_err(),
            "the withdrawn IP is not handed out"
        );
    }

    #[test]
    fn claim_restores_and_rejects_foreign_ips() {
        let mut i = ipam(30);
        i.claim(ip("10.0.0.11"), "x").expect("claim");
        assert_eq!(i.allocate("a", 0).map(|r| r.0), Ok(ip("10.0.0.10")));
        assert_eq!(i.allocate("b", 0).map(|r| r.0), Ok(ip("10.0.1.10")));
        assert_eq!(
            i.claim(ip("1.2.3.4"), "y"),
            Err(IpamError::Unknown(ip("1.2.3.4")))
        );
        i.restore_cooling(ip("10.0.0.10"), 5);
        assert_eq!(i.usage(0)[0].used, 2);
    }
}
