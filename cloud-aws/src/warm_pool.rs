//! The warm-pool decision, with no I/O: from the instance's limits, its ENIs
//! as EC2 reports them and which pool IPs are busy (assigned to a pod or
//! cooling down), compute the EC2 changes that bring the pool to its target.
//!
//! Semantics follow aws-node's knobs (see [`crate::env`]):
//! - `WARM_IP_TARGET` / `MINIMUM_IP_TARGET` set: the pool holds
//!   `max(busy + WARM_IP_TARGET, MINIMUM_IP_TARGET)` IPs; they win over
//!   `WARM_ENI_TARGET` (and over `WARM_PREFIX_TARGET` in prefix mode).
//! - else, secondary-IP mode: ENIs are filled whole and the pool keeps
//!   `WARM_ENI_TARGET` ENIs' worth of free IPs; it shrinks by whole ENIs only.
//! - else, prefix mode: keep `WARM_PREFIX_TARGET` /28 prefixes with no busy IP.
//!
//! Invariants (tested below): no ENI gets more slots than the instance type
//! allows, no more ENIs than the instance type and `MAX_ENI` allow, a busy IP
//! (or a prefix holding one) is never unassigned, an ENI holding a busy IP is
//! never deleted, the primary ENI is never deleted, and ENIs we do not manage
//! (`no_manage`, other tooling's) are never named in a plan.

use std::{collections::HashSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

use crate::env::PoolEnv;

/// IPs in one delegated prefix (a /28).
pub const PREFIX_IPS: u32 = 16;

/// What the instance type allows (DescribeInstanceTypes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_enis: u32,
    /// IPv4 addresses per ENI, its primary address included.
    pub ipv4_per_eni: u32,
}

impl Limits {
    /// Slots (secondary IPs or prefixes) one ENI can carry.
    pub fn slots_per_eni(&self) -> u32 {
        self.ipv4_per_eni.saturating_sub(1)
    }
}

/// One ENI attached to the instance, as EC2 reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniView {
    pub id: String,
    pub device_index: u32,
    /// The instance's primary ENI (device index 0): never deleted.
    pub primary: bool,
    /// False for ENIs tagged `no_manage` or created by someone else: they
    /// take an attachment slot but are never touched.
    pub managed: bool,
    /// Secondary private IPs (the ENI's primary address excluded).
    pub secondary_ips: Vec<Ipv4Addr>,
    pub prefixes: Vec<Ipv4Net>,
}

impl EniView {
    fn slots_used(&self) -> u32 {
        (self.secondary_ips.len() + self.prefixes.len()) as u32
    }

    fn ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.secondary_ips
            .iter()
            .copied()
            .chain(self.prefixes.iter().flat_map(|p| p.hosts_all()))
    }

    fn total_ips(&self) -> u32 {
        self.secondary_ips.len() as u32 + self.prefixes.len() as u32 * PREFIX_IPS
    }
}

trait AllHosts {
    fn hosts_all(&self) -> Box<dyn Iterator<Item = Ipv4Addr>>;
}

impl AllHosts for Ipv4Net {
    /// Every address of the prefix: a delegated /28 gives pods all 16, the
    /// network and broadcast addresses included (they are ordinary VPC IPs).
    fn hosts_all(&self) -> Box<dyn Iterator<Item = Ipv4Addr>> {
        let start = u32::from(self.network());
        let n = 1u64 << (32 - u32::from(self.prefix_len()));
        Box::new((0..n).map(move |i| Ipv4Addr::from(start.wrapping_add(i as u32))))
    }
}

/// Every pod IP the given ENIs provide (secondary IPs and prefix addresses).
pub fn pool_ips(eni: &EniView) -> Vec<Ipv4Addr> {
    eni.ips().collect()
}

/// One EC2 change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    AssignIps {
        eni: String,
        count: u32,
    },
    AssignPrefixes {
        eni: String,
        count: u32,
    },
    /// Create an ENI, attach it at `device_index` and give it `slots`
    /// secondary IPs (or prefixes in prefix mode).
    CreateEni {
        device_index: u32,
        slots: u32,
    },
    UnassignIps {
        eni: String,
        ips: Vec<Ipv4Addr>,
    },
    UnassignPrefixes {
        eni: String,
        prefixes: Vec<Ipv4Net>,
    },
    /// Detach and delete an ENI none of whose IPs is busy.
    DeleteEni {
        eni: String,
    },
}

/// What the pool looks like and what it should do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub total_ips: u32,
    pub busy_ips: u32,
    /// The number of pool IPs the targets ask for (before the limits).
    pub want_ips: u32,
    /// True when the limits stop the pool short of `want_ips`.
    pub capped: bool,
}

/// Computes the plan. `busy`: pool IPs assigned to pods or cooling down.
pub fn plan(limits: Limits, enis: &[EniView], busy: &HashSet<Ipv4Addr>, env: &PoolEnv) -> Plan {
    let prefix_mode = env.prefix_delegation;
    let unit = if prefix_mode { PREFIX_IPS } else { 1 };
    let slots = limits.slots_per_eni();
    let managed: Vec<&EniView> = enis.iter().filter(|e| e.managed).collect();
    let total: u32 = managed.iter().map(|e| e.total_ips()).sum();
    let busy_n: u32 = managed
        .iter()
        .flat_map(|e| e.ips())
        .filter(|ip| busy.contains(ip))
        .count() as u32;
    let prefix_free = |p: &Ipv4Net| !p.hosts_all().any(|ip| busy.contains(&ip));
    let ip_targets = env.warm_ip_target.is_some() || env.minimum_ip_target.is_some();
    // Whole-ENI mode: aws-node's WARM_ENI_TARGET, secondary IPs only.
    let whole_enis = !ip_targets && !prefix_mode;
    let want = if ip_targets {
        (busy_n + env.warm_ip_target.unwrap_or(0)).max(env.minimum_ip_target.unwrap_or(0))
    } else if prefix_mode {
        let free_prefixes = managed
            .iter()
            .flat_map(|e| e.prefixes.iter())
            .filter(|p| prefix_free(p))
            .count() as u32;
        total - free_prefixes * PREFIX_IPS + env.warm_prefix_target * PREFIX_IPS
    } else {
        busy_n + env.warm_eni_target * slots
    };

    let max_enis = env
        .max_eni
        .map_or(limits.max_enis, |m| m.min(limits.max_enis));
    let mut actions = Vec::new();
    let mut capped = false;

    if want > total {
        let mut short_units = (want - total).div_ceil(unit);
        let assign = |eni: &str, count: u32| {
            if prefix_mode {
                Action::AssignPrefixes {
                    eni: eni.to_string(),
                    count,
                }
            } else {
                Action::AssignIps {
                    eni: eni.to_string(),
                    count,
                }
            }
        };
        let mut order = managed.clone();
        order.sort_by_key(|e| e.device_index);
        for eni in order {
            if short_units == 0 {
                break;
            }
            let room = slots.saturating_sub(eni.slots_used());
            if room == 0 {
                continue;
            }
            let n = if whole_enis {
                room
            } else {
                room.min(short_units)
            };
            short_units = short_units.saturating_sub(n);
            actions.push(assign(&eni.id, n));
        }
        let used: HashSet<u32> = enis.iter().map(|e| e.device_index).collect();
        let mut attached = enis.len() as u32;
        let mut next_index = 1u32;
        while short_units > 0 && slots > 0 {
            if attached >= max_enis {
                capped = true;
                break;
            }
            while used.contains(&next_index) {
                next_index += 1;
            }
            let n = if whole_enis {
                slots
            } else {
                slots.min(short_units)
            };
            actions.push(Action::CreateEni {
                device_index: next_index,
                slots: n,
            });
            next_index += 1;
            attached += 1;
            short_units = short_units.saturating_sub(n);
        }
        if slots == 0 && short_units > 0 {
            capped = true;
        }
    } else {
        let mut excess = total - want;
        // Candidates: non-primary ENIs with no busy IP, fewest IPs first
        // (an empty one costs an attachment slot for nothing).
        let mut idle: Vec<&&EniView> = managed
            .iter()
            .filter(|e| !e.primary && !e.ips().any(|ip| busy.contains(&ip)))
            .collect();
        idle.sort_by_key(|e| (e.total_ips(), std::cmp::Reverse(e.device_index)));
        let mut deleted = HashSet::new();
        for eni in idle {
            let n = eni.total_ips();
            if n <= excess {
                excess -= n;
                deleted.insert(eni.id.clone());
                actions.push(Action::DeleteEni {
                    eni: eni.id.clone(),
                });
            }
        }
        if !whole_enis && excess >= unit {
            // Give back single free units, from the ENIs with the fewest
            // busy IPs first so that they empty out and can go later.
            let mut rest: Vec<&&EniView> = managed
                .iter()
                .filter(|e| !deleted.contains(&e.id))
                .collect();
            rest.sort_by_key(|e| {
                (
                    e.ips().filter(|ip| busy.contains(ip)).count(),
                    std::cmp::Reverse(e.device_index),
                )
            });
            for eni in rest {
                if excess < unit {
                    break;
                }
                if prefix_mode {
                    let mut give = Vec::new();
                    for p in eni.prefixes.iter().filter(|p| prefix_free(p)) {
                        if excess < PREFIX_IPS {
                            break;
                        }
                        excess -= PREFIX_IPS;
                        give.push(*p);
                    }
                    if !give.is_empty() {
                        actions.push(Action::UnassignPrefixes {
                            eni: eni.id.clone(),
                            prefixes: give,
                        });
                    }
                } else {
                    let mut give = Vec::new();
                    for ip in eni.secondary_ips.iter().filter(|ip| !busy.contains(ip)) {
                        if excess == 0 {
                            break;
                        }
                        excess -= 1;
                        give.push(*ip);
                    }
                    if !give.is_empty() {
                        actions.push(Action::UnassignIps {
                            eni: eni.id.clone(),
                            ips: give,
                        });
                    }
                }
            }
        }
    }
    Plan {
        actions,
        total_ips: total,
        busy_ips: busy_n,
        want_ips: want,
        capped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_enis: 3,
        ipv4_per_eni: 6, // 5 slots per ENI
    };

    fn ip(i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i)
    }

    fn eni(id: &str, dev: u32, ips: &[u32]) -> EniView {
        EniView {
            id: id.into(),
            device_index: dev,
            primary: dev == 0,
            managed: true,
            secondary_ips: ips.iter().map(|i| ip(*i)).collect(),
            prefixes: vec![],
        }
    }

    fn busy(ids: &[u32]) -> HashSet<Ipv4Addr> {
        ids.iter().map(|i| ip(*i)).collect()
    }

    fn env() -> PoolEnv {
        PoolEnv::default()
    }

    fn warm_ip(w: u32) -> PoolEnv {
        PoolEnv {
            warm_ip_target: Some(w),
            ..env()
        }
    }

    /// Applies a plan to a model of EC2 (new IPs numbered from `next`), so
    /// tests can check where repeated passes converge.
    fn apply(enis: &mut Vec<EniView>, plan: &Plan, next: &mut u32) {
        for a in &plan.actions {
            match a {
                Action::AssignIps { eni, count } => {
                    let e = enis.iter_mut().find(|e| &e.id == eni).unwrap();
                    for _ in 0..*count {
                        e.secondary_ips.push(ip(*next));
                        *next += 1;
                    }
                }
                Action::AssignPrefixes { eni, count } => {
                    let e = enis.iter_mut().find(|e| &e.id == eni).unwrap();
                    for _ in 0..*count {
                        *next = next.div_ceil(16) * 16;
                        e.prefixes.push(Ipv4Net::new(ip(*next), 28).unwrap());
                        *next += 16;
                    }
                }
                Action::CreateEni {
                    device_index,
                    slots,
                } => {
                    let mut e = eni(&format!("eni-{device_index}"), *device_index, &[]);
                    for _ in 0..*slots {
                        e.secondary_ips.push(ip(*next));
                        *next += 1;
                    }
                    enis.push(e);
                }
                Action::UnassignIps { eni, ips } => {
                    let e = enis.iter_mut().find(|e| &e.id == eni).unwrap();
                    e.secondary_ips.retain(|i| !ips.contains(i));
                }
                Action::UnassignPrefixes { eni, prefixes } => {
                    let e = enis.iter_mut().find(|e| &e.id == eni).unwrap();
                    e.prefixes.retain(|p| !prefixes.contains(p));
                }
                Action::DeleteEni { eni } => enis.retain(|e| &e.id != eni),
            }
        }
    }

    /// The invariants every plan must keep.
    fn check(limits: Limits, enis: &[EniView], busy: &HashSet<Ipv4Addr>, env: &PoolEnv, p: &Plan) {
        let mut model = enis.to_vec();
        let mut next = 1000;
        for a in &p.actions {
            match a {
                Action::UnassignIps { eni, ips } => {
                    assert!(
                        ips.iter().all(|i| !busy.contains(i)),
                        "busy IP unassigned: {a:?}"
                    );
                    let e = enis.iter().find(|e| &e.id == eni).unwrap();
                    assert!(e.managed, "unmanaged ENI touched: {a:?}");
                }
                Action::UnassignPrefixes { eni, prefixes } => {
                    for pf in prefixes {
                        assert!(
                            pf.hosts_all().all(|i| !busy.contains(&i)),
                            "busy prefix: {a:?}"
                        );
                    }
                    assert!(enis.iter().find(|e| &e.id == eni).unwrap().managed);
                }
                Action::DeleteEni { eni } => {
                    let e = enis.iter().find(|e| &e.id == eni).unwrap();
                    assert!(e.managed && !e.primary, "{a:?}");
                    assert!(
                        e.ips().all(|i| !busy.contains(&i)),
                        "ENI with busy IP deleted"
                    );
                }
                Action::AssignIps { eni, .. } | Action::AssignPrefixes { eni, .. } => {
                    assert!(enis.iter().find(|e| &e.id == eni).unwrap().managed);
                }
                Action::CreateEni { .. } => {}
            }
        }
        apply(&mut model, p, &mut next);
        let max = env
            .max_eni
            .map_or(limits.max_enis, |m| m.min(limits.max_enis));
        assert!(model.len() as u32 <= max, "too many ENIs: {}", model.len());
        for e in &model {
            assert!(
                e.slots_used() <= limits.slots_per_eni(),
                "over-allocated {e:?}"
            );
        }
    }

    /// Runs passes until the plan is empty (bounded), checking each.
    fn converge(
        limits: Limits,
        mut enis: Vec<EniView>,
        busy: &HashSet<Ipv4Addr>,
        env: &PoolEnv,
    ) -> Vec<EniView> {
        // New IPs above every existing one (repeated converges must not
        // hand out an address twice).
        let base = u32::from(ip(0));
        let mut next = enis
            .iter()
            .flat_map(|e| e.ips())
            .map(|a| u32::from(a) - base + 1)
            .max()
            .unwrap_or(0)
            .max(100);
        for _ in 0..10 {
            let p = plan(limits, &enis, busy, env);
            check(limits, &enis, busy, env, &p);
            if p.actions.is_empty() {
                return enis;
            }
            apply(&mut enis, &p, &mut next);
        }
        panic!("no convergence: {enis:?}");
    }

    fn totals(enis: &[EniView]) -> (usize, u32) {
        (enis.len(), enis.iter().map(|e| e.total_ips()).sum())
    }

    #[test]
    fn table_of_targets() {
        struct Case {
            name: &'static str,
            env: PoolEnv,
            enis: Vec<EniView>,
            busy: Vec<u32>,
            /// (ENIs, pool IPs) once converged
            want: (usize, u32),
        }
        let cases = vec![
            Case {
                name:
                    "default WARM_ENI_TARGET=1 from an empty instance: primary filled, one warm ENI",
                env: env(),
                enis: vec![eni("p", 0, &[])],
                busy: vec![],
                // busy 0 + 1 ENI of 5 → fill the primary (5 IPs), done.
                want: (1, 5),
            },
            Case {
                name: "WARM_ENI_TARGET=1 with 3 busy: a second whole ENI",
                env: env(),
                enis: vec![eni("p", 0, &[1, 2, 3, 4, 5])],
                busy: vec![1, 2, 3],
                want: (2, 10),
            },
            Case {
                name: "WARM_IP_TARGET=5 overrides WARM_ENI_TARGET",
                env: PoolEnv {
                    warm_eni_target: 2,
                    ..warm_ip(5)
                },
                enis: vec![eni("p", 0, &[])],
                busy: vec![],
                want: (1, 5),
            },
            Case {
                name: "WARM_IP_TARGET=2 with 4 busy spills to a second ENI, exactly 6",
                env: warm_ip(2),
                enis: vec![eni("p", 0, &[1, 2, 3, 4])],
                busy: vec![1, 2, 3, 4],
                want: (2, 6),
            },
            Case {
                name: "MINIMUM_IP_TARGET is a floor above WARM_IP_TARGET",
                env: PoolEnv {
                    minimum_ip_target: Some(8),
                    ..warm_ip(1)
                },
                enis: vec![eni("p", 0, &[])],
                busy: vec![],
                want: (2, 8),
            },
            Case {
                name: "MINIMUM_IP_TARGET alone: floor only, no warm IPs above busy",
                env: PoolEnv {
                    minimum_ip_target: Some(3),
                    ..env()
                },
                enis: vec![eni("p", 0, &[1, 2, 3, 4, 5])],
                busy: vec![1],
                want: (1, 3),
            },
            Case {
                name: "WARM_IP_TARGET shrink deletes an idle secondary ENI first",
                env: warm_ip(2),
                enis: vec![eni("p", 0, &[1, 2, 3]), eni("s", 1, &[10, 11])],
                busy: vec![1],
                want: (1, 3),
            },
            Case {
                name: "cooling IPs count as busy: not given back",
                env: warm_ip(1),
                enis: vec![eni("p", 0, &[1, 2, 3, 4, 5])],
                busy: vec![1, 2, 3],
                want: (1, 4),
            },
            Case {
                name: "instance limit caps growth (3 ENIs x 5)",
                env: warm_ip(100),
                enis: vec![eni("p", 0, &[])],
                busy: vec![],
                want: (3, 15),
            },
            Case {
                name: "MAX_ENI=2 caps below the instance limit",
                env: PoolEnv {
                    max_eni: Some(2),
                    ..warm_ip(100)
                },
                enis: vec![eni("p", 0, &[])],
                busy: vec![],
                want: (2, 10),
            },
            Case {
                name: "WARM_ENI_TARGET shrink only by whole idle ENIs",
                env: env(),
                enis: vec![
                    eni("p", 0, &[1, 2, 3, 4, 5]),
                    eni("s", 1, &[6, 7, 8, 9, 10]),
                    eni("t", 2, &[11, 12, 13, 14, 15]),
                ],
                busy: vec![1],
                // busy 1 + 5 warm = 6 wanted; t idle (5 <= 9 excess) goes, then s (5 > 4) stays.
                want: (2, 10),
            },
        ];
        for c in cases {
            let b = busy(&c.busy);
            let end = converge(LIMITS, c.enis, &b, &c.env);
            assert_eq!(totals(&end), c.want, "{}: {end:?}", c.name);
        }
    }

    #[test]
    fn no_manage_enis_take_a_slot_but_are_never_touched() {
        let mut foreign = eni("foreign", 1, &[20, 21, 22, 23, 24]);
        foreign.managed = false;
        let enis = vec![eni("p", 0, &[1, 2, 3, 4, 5]), foreign.clone()];
        // Wants far more: only one more ENI fits (3 - primary - foreign).
        let end = converge(LIMITS, enis, &busy(&[1, 2, 3, 4, 5]), &warm_ip(50));
        assert_eq!(end.len(), 3);
        assert!(end.contains(&foreign), "foreign ENI unchanged");
        // Over target with everything free: the foreign ENI is not deleted
        // nor its IPs unassigned.
        let p = plan(LIMITS, &end, &busy(&[]), &warm_ip(1));
        for a in &p.actions {
            assert!(!format!("{a:?}").contains("foreign"), "{a:?}");
        }
        let end = converge(LIMITS, end, &busy(&[]), &warm_ip(1));
        assert!(end.contains(&foreign));
        assert_eq!(end.len(), 2);
    }

    #[test]
    fn busy_ips_survive_any_shrink() {
        // Busy IPs scattered over all ENIs; target 0 warm.
        let enis = vec![
            eni("p", 0, &[1, 2, 3, 4, 5]),
            eni("s", 1, &[6, 7, 8, 9, 10]),
            eni("t", 2, &[11, 12]),
        ];
        let b = busy(&[2, 9, 12]);
        let end = converge(
            LIMITS,
            enis,
            &b,
            &PoolEnv {
                minimum_ip_target: Some(1),
                ..env()
            },
        );
        let left: HashSet<Ipv4Addr> = end.iter().flat_map(|e| e.ips()).collect();
        assert!(b.is_subset(&left), "{end:?}");
        assert_eq!(left.len(), 3);
    }

    #[test]
    fn prefix_mode_keeps_warm_prefixes() {
        let penv = PoolEnv {
            prefix_delegation: true,
            ..env()
        };
        let mut p0 = eni("p", 0, &[]);
        p0.prefixes = vec![];
        let end = converge(LIMITS, vec![p0], &busy(&[]), &penv);
        assert_eq!(
            end[0].prefixes.len(),
            1,
            "WARM_PREFIX_TARGET=1: one free /28"
        );
        // One IP of it busy → a second prefix is wanted.
        let first = end[0].prefixes[0].network();
        let b: HashSet<Ipv4Addr> = [first].into();
        let end = converge(LIMITS, end, &b, &penv);
        assert_eq!(end[0].prefixes.len(), 2);
        // Released → back to one free prefix, the busy-free one given back.
        let end = converge(LIMITS, end, &busy(&[]), &penv);
        assert_eq!(end[0].prefixes.len(), 1);
    }

    #[test]
    fn prefix_mode_with_ip_targets_rounds_up_to_prefixes() {
        let penv = PoolEnv {
            prefix_delegation: true,
            warm_prefix_target: 5,
            ..warm_ip(20)
        };
        let end = converge(LIMITS, vec![eni("p", 0, &[])], &busy(&[]), &penv);
        // 20 IPs → 2 prefixes (32 IPs); WARM_PREFIX_TARGET ignored.
        assert_eq!(totals(&end), (1, 32));
        // A busy IP in a prefix pins it: with target 0 + min 1 the other goes.
        let pinned = end[0].prefixes[1].network();
        let end = converge(
            LIMITS,
            end,
            &[pinned].into(),
            &PoolEnv {
                prefix_delegation: true,
                minimum_ip_target: Some(1),
                ..env()
            },
        );
        assert_eq!(end[0].prefixes.len(), 1);
        assert!(end[0].prefixes[0].contains(&pinned));
    }

    #[test]
    fn prefix_mode_respects_slots_and_enis() {
        let penv = PoolEnv {
            prefix_delegation: true,
            ..warm_ip(16 * 100)
        };
        let p = plan(LIMITS, &[eni("p", 0, &[])], &busy(&[]), &penv);
        assert!(p.capped);
        check(LIMITS, &[eni("p", 0, &[])], &busy(&[]), &penv, &p);
        let end = converge(LIMITS, vec![eni("p", 0, &[])], &busy(&[]), &penv);
        // CreateEni in the model gives secondary IPs, so count slots.
        assert_eq!(end.len(), 3);
        assert!(end.iter().all(|e| e.slots_used() == 5));
    }

    #[test]
    fn new_enis_take_the_lowest_free_device_index() {
        let enis = vec![
            eni("p", 0, &[1, 2, 3, 4, 5]),
            eni("x", 2, &[6, 7, 8, 9, 10]),
        ];
        let p = plan(
            LIMITS,
            &enis,
            &busy(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
            &warm_ip(1),
        );
        assert_eq!(
            p.actions,
            vec![Action::CreateEni {
                device_index: 1,
                slots: 1
            }]
        );
    }

    #[test]
    fn at_target_there_is_nothing_to_do() {
        let enis = vec![eni("p", 0, &[1, 2, 3, 4, 5])];
        let p = plan(LIMITS, &enis, &busy(&[1, 2]), &warm_ip(3));
        assert!(p.actions.is_empty(), "{p:?}");
        assert_eq!((p.total_ips, p.busy_ips, p.want_ips), (5, 2, 5));
    }
}
