//! Runs the warm pool: reads EC2's view of the instance's ENIs, feeds the
//! pod IPs to IPAM (through [`PoolSink`]), asks [`warm_pool::plan`] what to
//! change and applies it through the [`Ec2`] trait.
//!
//! It runs on its own task: periodically, and at once when kicked (IPAM's
//! free count dropped). A pod add only reads IPAM, so it never waits for
//! EC2 while a free IP exists.
//!
//! Safety against the pod side: IPs leave IPAM ([`PoolSink::withdraw`],
//! which refuses busy ones) before they are unassigned or their ENI deleted,
//! so an IP handed to a pod is never given back to EC2. EC2's answers are
//! eventually consistent, so IPs we assigned or released in the last
//! [`SETTLE`] are overlaid on what DescribeNetworkInterfaces says: a lagging
//! describe neither re-offers a released IP nor makes the plan assign twice.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::{
    ec2::{CreateEniRequest, Ec2, Ec2Error, Eni},
    env::PoolEnv,
    warm_pool::{self, Action, EniView, Limits},
};

/// How long our own assign/unassign results override DescribeNetworkInterfaces.
pub const SETTLE: Duration = Duration::from_secs(60);

/// One managed ENI's pod IPs, as IPAM should see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolEni {
    pub eni_id: String,
    /// Lower-case MAC: how the agent finds the ENI's interface.
    pub mac: String,
    pub device_index: u32,
    pub subnet_id: String,
    pub primary_ip: Option<Ipv4Addr>,
    /// Secondary IPs and every address of its delegated prefixes.
    pub ips: Vec<Ipv4Addr>,
}

/// The instance's trunk ENI (`InterfaceType` `trunk`), which the VPC
/// resource controller attaches for security groups for pods: branch ENIs
/// ride on it as VLANs. Not a pool ENI; the agent steers branch pods
/// through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkEni {
    pub eni_id: String,
    /// Lower-case MAC: how the agent finds the trunk's interface.
    pub mac: String,
}

/// IPAM as the reconciler sees it (the agent implements it on its `Ipam`).
pub trait PoolSink: Send + Sync {
    /// Pool IPs assigned to pods or cooling down.
    fn busy(&self) -> HashSet<Ipv4Addr>;
    /// Replaces the pools; assignments and cooldowns are kept.
    fn set_pools(&self, pools: &[PoolEni]);
    /// Takes the free ones of `ips` out of the pools and returns them; busy
    /// ones stay (the caller must then not give them back to EC2).
    fn withdraw(&self, ips: &[Ipv4Addr]) -> Vec<Ipv4Addr>;
    /// The trunk ENI among the instance's ENIs, or `None`, on every pass
    /// (a sink that has no use for it keeps the default).
    fn set_trunk(&self, _trunk: Option<&TrunkEni>) {}
}

/// The instance's trunk ENI among `enis` (EC2 attaches at most one).
pub fn trunk_of(enis: &[Eni]) -> Option<TrunkEni> {
    enis.iter()
        .find(|e| e.interface_type == "trunk")
        .map(|e| TrunkEni {
            eni_id: e.id.clone(),
            mac: e.mac.to_ascii_lowercase(),
        })
}

/// The node facts the reconciler needs (from IMDS).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub instance_id: String,
    pub instance_type: String,
    /// New ENIs go into the primary ENI's subnet with its security groups.
    pub subnet_id: String,
    pub security_groups: Vec<String>,
}

/// What one pass saw and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub actions: usize,
    pub total_ips: u32,
    pub busy_ips: u32,
    pub want_ips: u32,
    pub capped: bool,
    pub enis: usize,
    pub leaked_deleted: usize,
}

/// Wakes the reconciler (cheap, never blocks).
#[derive(Clone, Debug, Default)]
pub struct Kick(Arc<Notify>);

impl Kick {
    pub fn kick(&self) {
        self.0.notify_one();
    }
}

pub struct Reconciler {
    ec2: Arc<dyn Ec2>,
    sink: Arc<dyn PoolSink>,
    node: NodeConfig,
    env: PoolEnv,
    limits: Option<Limits>,
    kick: Kick,
    recent_assigned: HashMap<Ipv4Addr, (String, Instant)>,
    recent_released: HashMap<Ipv4Addr, Instant>,
    last: Arc<Mutex<Option<Result<PassReport, String>>>>,
}

fn pool_ips(e: &Eni) -> impl Iterator<Item = Ipv4Addr> + '_ {
    e.secondary_ips
        .iter()
        .copied()
        .chain(e.prefixes.iter().flat_map(|p| prefix_addrs(*p)))
}

fn prefix_addrs(p: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let start = u32::from(p.network());
    let n = 1u64 << (32 - u32::from(p.prefix_len()));
    (0..n).map(move |i| Ipv4Addr::from(start.wrapping_add(i as u32)))
}

/// ENIs the pool may use: not `no_manage`, and plain interfaces (trunk,
/// EFA and branch ENIs belong to other features).
fn managed(e: &Eni) -> bool {
    !e.no_manage() && matches!(e.interface_type.as_str(), "" | "interface")
}

impl Reconciler {
    pub fn new(ec2: Arc<dyn Ec2>, sink: Arc<dyn PoolSink>, node: NodeConfig, env: PoolEnv) -> Self {
        Self {
            ec2,
            sink,
            node,
            env,
            limits: None,
            kick: Kick::default(),
            recent_assigned: HashMap::new(),
            recent_released: HashMap::new(),
            last: Arc::new(Mutex::new(None)),
        }
    }

    pub fn kick_handle(&self) -> Kick {
        self.kick.clone()
    }

    /// The last pass's report (or its error), for introspection and tests.
    pub fn last_report(&self) -> Arc<Mutex<Option<Result<PassReport, String>>>> {
        self.last.clone()
    }

    async fn limits(&mut self) -> Result<Limits, Ec2Error> {
        if let Some(l) = self.limits {
            return Ok(l);
        }
        let l = self.ec2.instance_limits(&self.node.instance_type).await?;
        info!(instance_type = %self.node.instance_type, max_enis = l.max_enis, ipv4_per_eni = l.ipv4_per_eni, "instance limits");
        self.limits = Some(l);
        Ok(l)
    }

    /// EC2's ENIs with our recent changes overlaid.
    async fn enis(&mut self) -> Result<Vec<Eni>, Ec2Error> {
        let now = Instant::now();
        self.recent_assigned
            .retain(|_, (_, at)| now.duration_since(*at) < SETTLE);
        self.recent_released
            .retain(|_, at| now.duration_since(*at) < SETTLE);
        let mut enis: Vec<Eni> = self
            .ec2
            .instance_enis(&self.node.instance_id)
            .await?
            .into_iter()
            .filter(|e| {
                e.attachment.as_ref().and_then(|a| a.instance_id.as_deref())
                    == Some(self.node.instance_id.as_str())
            })
            .collect();
        let primaries: HashSet<Ipv4Addr> = enis.iter().filter_map(|e| e.primary_ip).collect();
        for e in &mut enis {
            e.secondary_ips
                .retain(|ip| !self.recent_released.contains_key(ip));
            for (ip, (eni, _)) in &self.recent_assigned {
                if *eni == e.id && !e.secondary_ips.contains(ip) && !primaries.contains(ip) {
                    e.secondary_ips.push(*ip);
                }
            }
        }
        enis.sort_by_key(|e| e.attachment.as_ref().map_or(0, |a| a.device_index));
        Ok(enis)
    }

    fn publish(&self, enis: &[Eni]) {
        let pools: Vec<PoolEni> = enis
            .iter()
            .filter(|e| managed(e))
            .map(|e| PoolEni {
                eni_id: e.id.clone(),
                mac: e.mac.clone(),
                device_index: e.attachment.as_ref().map_or(0, |a| a.device_index),
                subnet_id: e.subnet_id.clone(),
                primary_ip: e.primary_ip,
                ips: pool_ips(e).collect(),
            })
            .collect();
        self.sink.set_pools(&pools);
        self.sink.set_trunk(trunk_of(enis).as_ref());
    }

    /// One pass: sync IPAM with EC2, plan, apply, sync again.
    pub async fn pass(&mut self) -> Result<PassReport, Ec2Error> {
        let limits = self.limits().await?;
        let enis = self.enis().await?;
        self.publish(&enis);
        let busy = self.sink.busy();
        let views: Vec<EniView> = enis
            .iter()
            .map(|e| {
                let device_index = e.attachment.as_ref().map_or(0, |a| a.device_index);
                EniView {
                    id: e.id.clone(),
                    device_index,
                    primary: device_index == 0,
                    managed: managed(e),
                    secondary_ips: e.secondary_ips.clone(),
                    prefixes: e.prefixes.clone(),
                }
            })
            .collect();
        let plan = warm_pool::plan(limits, &views, &busy, &self.env);
        let mut report = PassReport {
            actions: plan.actions.len(),
            total_ips: plan.total_ips,
            busy_ips: plan.busy_ips,
            want_ips: plan.want_ips,
            capped: plan.capped,
            enis: enis.len(),
            leaked_deleted: 0,
        };
        if !plan.actions.is_empty() {
            debug!(actions = ?plan.actions, total = plan.total_ips, busy = plan.busy_ips, want = plan.want_ips, "warm pool plan");
        }
        let mut first_err = None;
        for action in &plan.actions {
            if let Err(e) = self.apply(action, &enis).await {
                warn!(error = %e, ?action, "warm pool action failed");
                first_err = Some(e);
                break;
            }
        }
        if !plan.actions.is_empty() {
            // Hand the new IPs to IPAM now rather than on the next pass.
            match self.enis().await {
                Ok(enis) => {
                    report.enis = enis.len();
                    report.total_ips = enis
                        .iter()
                        .filter(|e| managed(e))
                        .map(|e| pool_ips(e).count() as u32)
                        .sum();
                    self.publish(&enis);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    async fn apply(&mut self, action: &Action, enis: &[Eni]) -> Result<(), Ec2Error> {
        let now = Instant::now();
        match action {
            Action::AssignIps { eni, count } => {
                let ips = self.ec2.assign_ips(eni, *count).await?;
                info!(eni = %eni, count = ips.len(), "assigned secondary IPs");
                // EC2 may hand back an address we released a moment ago:
                // it is ours again, so the released overlay must not hide it.
                for ip in &ips {
                    self.recent_released.remove(ip);
                }
                // EC2 lists the new IPs only; an answer with more (moto
                // lists all of the ENI's) is not trusted for the overlay:
                // DescribeNetworkInterfaces then has the last word.
                if ips.len() != *count as usize {
                    debug!(eni = %eni, asked = count, got = ips.len(), "assign answer not used for the overlay");
                    return Ok(());
                }
                for ip in ips {
                    self.recent_released.remove(&ip);
                    self.recent_assigned.insert(ip, (eni.clone(), now));
                }
            }
            Action::AssignPrefixes { eni, count } => {
                let p = self.ec2.assign_prefixes(eni, *count).await?;
                info!(eni = %eni, prefixes = ?p, "assigned prefixes");
            }
            Action::CreateEni {
                device_index,
                slots,
            } => self.create_eni(*device_index, *slots).await?,
            Action::UnassignIps { eni, ips } => {
                let taken = self.sink.withdraw(ips);
                if taken.is_empty() {
                    return Ok(());
                }
                // On failure they are still on EC2: the next publish offers
                // them again.
                self.ec2.unassign_ips(eni, &taken).await?;
                info!(eni = %eni, count = taken.len(), "unassigned free secondary IPs");
                for ip in taken {
                    self.recent_assigned.remove(&ip);
                    self.recent_released.insert(ip, now);
                }
            }
            Action::UnassignPrefixes { eni, prefixes } => {
                let mut give = Vec::new();
                for p in prefixes {
                    let addrs: Vec<Ipv4Addr> = prefix_addrs(*p).collect();
                    let taken = self.sink.withdraw(&addrs);
                    if taken.len() == addrs.len() {
                        give.push(*p);
                    }
                    // A partly taken prefix went busy meanwhile: its free
                    // addresses come back with the next publish.
                }
                if !give.is_empty() {
                    self.ec2.unassign_prefixes(eni, &give).await?;
                    info!(eni = %eni, prefixes = ?give, "unassigned free prefixes");
                }
            }
            Action::DeleteEni { eni } => {
                let Some(e) = enis.iter().find(|e| &e.id == eni) else {
                    return Ok(());
                };
                let ips: Vec<Ipv4Addr> = pool_ips(e).collect();
                let taken = self.sink.withdraw(&ips);
                if taken.len() != ips.len() {
                    debug!(eni = %eni, "ENI got a pod meanwhile: kept");
                    return Ok(());
                }
                if let Some(a) = &e.attachment {
                    self.ec2.detach_eni(&a.id).await?;
                }
                for ip in ips {
                    self.recent_released.insert(ip, now);
                }
                // Detaching takes a few seconds on EC2; when the delete is
                // refused now, the leaked-ENI sweep deletes it later (it
                // carries our instance tag and will be `available`).
                match self.ec2.delete_eni(eni).await {
                    Ok(()) => info!(eni = %eni, "detached and deleted idle ENI"),
                    Err(e) => {
                        debug!(eni = %eni, error = %e, "delete after detach deferred to the sweep")
                    }
                }
            }
        }
        Ok(())
    }

    async fn create_eni(&mut self, device_index: u32, slots: u32) -> Result<(), Ec2Error> {
        let created_at = aws_sdk_ec2::primitives::DateTime::from(std::time::SystemTime::now())
            .fmt(aws_sdk_ec2::primitives::DateTimeFormat::DateTime)
            .unwrap_or_default();
        let (secondary_ips, prefixes) = if self.env.prefix_delegation {
            (0, slots)
        } else {
            (slots, 0)
        };
        let req = CreateEniRequest {
            subnet_id: self.node.subnet_id.clone(),
            security_groups: self.node.security_groups.clone(),
            instance_id: self.node.instance_id.clone(),
            secondary_ips,
            prefixes,
            created_at,
        };
        let eni = self.ec2.create_eni(&req).await?;
        let attachment = match self
            .ec2
            .attach_eni(&eni.id, &self.node.instance_id, device_index)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                // Don't leave it behind; if this fails too, the sweep will.
                if let Err(d) = self.ec2.delete_eni(&eni.id).await {
                    warn!(eni = %eni.id, error = %d, "could not delete an ENI that failed to attach");
                }
                return Err(e);
            }
        };
        // Without DeleteOnTermination the ENI outlives the instance. The
        // ENI is attached and usable either way, so a failure here is only
        // logged (the sweep cannot see it while attached).
        if let Err(e) = self
            .ec2
            .set_delete_on_termination(&eni.id, &attachment)
            .await
        {
            warn!(eni = %eni.id, error = %e, "DeleteOnTermination not set");
        }
        info!(eni = %eni.id, device_index, slots, "created and attached ENI");
        let now = Instant::now();
        for ip in &eni.secondary_ips {
            self.recent_released.remove(ip);
            self.recent_assigned.insert(*ip, (eni.id.clone(), now));
        }
        Ok(())
    }

    /// Deletes detached ENIs tagged for this instance (leaked by a run that
    /// died between create and attach, or a deferred delete).
    pub async fn sweep_leaked(&mut self) -> Result<usize, Ec2Error> {
        let mut n = 0;
        for e in self.ec2.leaked_enis(&self.node.instance_id).await? {
            if e.no_manage() || !e.ours(&self.node.instance_id) {
                continue;
            }
            match self.ec2.delete_eni(&e.id).await {
                Ok(()) => {
                    info!(eni = %e.id, "deleted leaked ENI");
                    n += 1;
                }
                Err(err) => warn!(eni = %e.id, error = %err, "could not delete leaked ENI"),
            }
        }
        Ok(n)
    }

    /// Runs passes until `shutdown` turns true: every `period`, at once when
    /// kicked, and backing off (up to `period * 8`) while EC2 fails.
    pub async fn run(mut self, period: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        let mut pass_no: u64 = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let mut result = self.pass().await;
            // The sweep is cheap but not urgent: every 12th pass and the first.
            if pass_no.is_multiple_of(12) {
                match self.sweep_leaked().await {
                    Ok(n) => {
                        if let Ok(r) = &mut result {
                            r.leaked_deleted = n;
                        }
                    }
                    Err(e) => warn!(error = %e, "leaked-ENI sweep failed"),
                }
            }
            pass_no += 1;
            let wait = match &result {
                Ok(r) => {
                    failures = 0;
                    // Not there yet (an action was applied): go again soon.
                    if r.actions > 0 {
                        Duration::from_millis(200)
                    } else {
                        period
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    warn!(error = %e, failures, "warm pool pass failed");
                    period.saturating_mul(1 << failures.min(3))
                }
            };
            if let Ok(mut l) = self.last.lock() {
                *l = Some(result.map_err(|e| e.to_string()));
            }
            tokio::select! {
                _ = self.kick.0.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// Pool IPs in `prefixes` (re-exported for sinks that expand prefixes).
pub fn prefix_ips(p: Ipv4Net) -> Vec<Ipv4Addr> {
    prefix_addrs(p).collect()
}
