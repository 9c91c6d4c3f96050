//! IP address management in local mode: the pools are the `pod_ips` of the
//! node file's ENIs. One IP per pod; a released IP is re-used only after a
//! cooldown (so that a late packet for the old pod never reaches a new one).

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
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
