//! The reconciler against the in-memory EC2 ([`trunkline_aws::fake`]): what
//! moto does not model (prefix delegation, slot and attach limits, throttling)
//! and the races with IPAM.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use trunkline_aws::{
    ec2::{Attachment, Eni, EniStatus, TAG_INSTANCE_ID, TAG_NO_MANAGE},
    fake::FakeEc2,
    NodeConfig, PoolEni, PoolEnv, PoolSink, Reconciler, TrunkEni,
};

const INSTANCE: &str = "i-0fake";
const LIMITS: trunkline_aws::Limits = trunkline_aws::Limits {
    max_enis: 3,
    ipv4_per_eni: 10,
};

/// A minimal IPAM: pool IPs, busy ones (pods and cooling).
#[derive(Default)]
struct MemSink {
    pools: Mutex<HashMap<Ipv4Addr, String>>,
    busy: Mutex<HashSet<Ipv4Addr>>,
    /// What the last pass said of the trunk (outer `None`: never told).
    trunk: Mutex<Option<Option<TrunkEni>>>,
}

impl MemSink {
    fn take(&self) -> Option<Ipv4Addr> {
        let pools = self.pools.lock().unwrap();
        let mut busy = self.busy.lock().unwrap();
        let mut free: Vec<&Ipv4Addr> = pools.keys().filter(|ip| !busy.contains(ip)).collect();
        free.sort();
        let ip = **free.first()?;
        busy.insert(ip);
        Some(ip)
    }
    fn release(&self, ip: Ipv4Addr) {
        self.busy.lock().unwrap().remove(&ip);
    }
    fn free(&self) -> usize {
        let busy = self.busy.lock().unwrap();
        self.pools
            .lock()
            .unwrap()
            .keys()
            .filter(|ip| !busy.contains(ip))
            .count()
    }
}

impl PoolSink for MemSink {
    fn busy(&self) -> HashSet<Ipv4Addr> {
        self.busy.lock().unwrap().clone()
    }
    fn set_pools(&self, pools: &[PoolEni]) {
        let busy = self.busy.lock().unwrap();
        let mut p = self.pools.lock().unwrap();
        // Keep busy IPs, as the agent's Ipam does.
        p.retain(|ip, _| busy.contains(ip));
        for e in pools {
            for ip in &e.ips {
                p.insert(*ip, e.eni_id.clone());
            }
        }
    }
    fn withdraw(&self, ips: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
        let busy = self.busy.lock().unwrap();
        let mut p = self.pools.lock().unwrap();
        ips.iter()
            .filter(|ip| !busy.contains(ip) && p.remove(ip).is_some())
            .copied()
            .collect()
    }
    fn set_trunk(&self, trunk: Option<&TrunkEni>) {
        *self.trunk.lock().unwrap() = Some(trunk.cloned());
    }
}

fn node() -> NodeConfig {
    NodeConfig {
        instance_id: INSTANCE.into(),
        instance_type: "m5.fake".into(),
        subnet_id: "subnet-fake".into(),
        security_groups: vec!["sg-1".into()],
    }
}

fn setup(env: PoolEnv) -> (FakeEc2, Arc<MemSink>, Reconciler) {
    let ec2 = FakeEc2::new(INSTANCE, LIMITS, "10.1.0.0/20".parse().unwrap());
    let sink = Arc::new(MemSink::default());
    let r = Reconciler::new(Arc::new(ec2.clone()), sink.clone(), node(), env);
    (ec2, sink, r)
}

/// Pool IPs on EC2's side (secondary + prefix addresses), managed ENIs only.
fn ec2_pool(ec2: &FakeEc2) -> (usize, usize) {
    let s = ec2.lock();
    let attached: Vec<&Eni> = s
        .enis
        .values()
        .filter(|e| e.attachment.is_some() && !e.no_manage())
        .collect();
    let ips = attached
        .iter()
        .map(|e| e.secondary_ips.len() + e.prefixes.len() * 16)
        .sum();
    (attached.len(), ips)
}

async fn settle(r: &mut Reconciler) -> usize {
    for i in 0..10 {
        let rep = r.pass().await.expect("pass");
        if rep.actions == 0 {
            return i;
        }
    }
    panic!("no convergence in 10 passes");
}

fn warm_ip(n: u32) -> PoolEnv {
    PoolEnv {
        warm_ip_target: Some(n),
        ..PoolEnv::default()
    }
}

#[tokio::test]
async fn reaches_warm_ip_target_and_follows_pods() {
    let (ec2, sink, mut r) = setup(warm_ip(5));
    settle(&mut r).await;
    assert_eq!(
        ec2_pool(&ec2),
        (1, 5),
        "exactly WARM_IP_TARGET on the primary"
    );
    assert_eq!(sink.free(), 5, "IPAM got them");
    // 20 pods: the pool spills to more ENIs but never over the slot limit
    // (the fake refuses that like EC2).
    let mut taken = vec![];
    for _ in 0..20 {
        let ip = match sink.take() {
            Some(ip) => ip,
            None => {
                r.pass().await.expect("pass");
                sink.take().expect("an IP after a pass")
            }
        };
        taken.push(ip);
    }
    settle(&mut r).await;
    assert_eq!(ec2_pool(&ec2), (3, 25));
    for ip in taken.drain(..) {
        sink.release(ip);
    }
    settle(&mut r).await;
    // Back to 5 free: the two secondary ENIs (9 IPs each) go whole first.
    assert_eq!(ec2_pool(&ec2).1, 5);
    let leaked = ec2
        .lock()
        .enis
        .values()
        .filter(|e| e.attachment.is_none())
        .count();
    assert_eq!(leaked, 0, "deleted, not just detached");
}

#[tokio::test]
async fn capped_by_instance_limit_and_max_eni() {
    let (ec2, _sink, mut r) = setup(PoolEnv {
        max_eni: Some(2),
        ..warm_ip(100)
    });
    settle(&mut r).await;
    assert_eq!(ec2_pool(&ec2), (2, 18));
    let rep = r.pass().await.unwrap();
    assert!(rep.capped);
}

#[tokio::test]
async fn prefix_delegation_keeps_one_free_prefix() {
    let (ec2, sink, mut r) = setup(PoolEnv {
        prefix_delegation: true,
        ..PoolEnv::default()
    });
    settle(&mut r).await;
    assert_eq!(ec2_pool(&ec2), (1, 16));
    assert_eq!(sink.free(), 16, "every address of the /28 is a pod IP");
    let ip = sink.take().unwrap();
    settle(&mut r).await;
    assert_eq!(ec2_pool(&ec2), (1, 32), "a partly used prefix is not free");
    sink.release(ip);
    settle(&mut r).await;
    assert_eq!(ec2_pool(&ec2), (1, 16));
}

/// IPAM whose `busy` answer is stale (a pod allocated right after it was
/// read); only `withdraw` sees the truth.
struct StaleSink(Arc<MemSink>);

impl PoolSink for StaleSink {
    fn busy(&self) -> HashSet<Ipv4Addr> {
        HashSet::new()
    }
    fn set_pools(&self, pools: &[PoolEni]) {
        self.0.set_pools(pools)
    }
    fn withdraw(&self, ips: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
        self.0.withdraw(ips)
    }
}

#[tokio::test]
async fn an_ip_taken_between_plan_and_unassign_is_kept() {
    let (ec2, sink, mut r) = setup(warm_ip(4));
    settle(&mut r).await;
    let a = sink.take().unwrap();
    let b = sink.take().unwrap();
    let mut stale = Reconciler::new(
        Arc::new(ec2.clone()),
        Arc::new(StaleSink(sink.clone())),
        node(),
        PoolEnv {
            minimum_ip_target: Some(1),
            ..PoolEnv::default()
        },
    );
    // The plan (seeing nothing busy) gives back the first 3 of 4, the
    // pods' two among them; withdraw refuses those, so one free IP goes.
    stale.pass().await.unwrap();
    let s = ec2.lock();
    let primary = s
        .enis
        .values()
        .find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == 0))
        .unwrap();
    assert_eq!(primary.secondary_ips.len(), 3, "{primary:?}");
    assert!(primary.secondary_ips.contains(&a) && primary.secondary_ips.contains(&b));
}

#[tokio::test]
async fn ec2_down_loses_nothing_and_recovers() {
    let (ec2, sink, mut r) = setup(warm_ip(3));
    settle(&mut r).await;
    let before: HashSet<Ipv4Addr> = sink.pools.lock().unwrap().keys().copied().collect();
    ec2.lock().down = true;
    let a = sink.take().unwrap();
    assert!(r.pass().await.is_err());
    let after: HashSet<Ipv4Addr> = sink.pools.lock().unwrap().keys().copied().collect();
    assert_eq!(before, after, "a failed pass leaves IPAM as it was");
    ec2.lock().down = false;
    // Throttled twice: the pass fails, the next one gets through.
    ec2.lock().fail_next = 1;
    assert!(r.pass().await.is_err());
    settle(&mut r).await;
    assert_eq!(ec2_pool(&ec2), (1, 4), "3 warm + the busy one");
    assert!(sink.busy().contains(&a));
}

fn foreign(id: &str, dev: Option<u32>, tags: &[(&str, &str)]) -> Eni {
    Eni {
        id: id.into(),
        mac: "02:ff:00:00:00:01".into(),
        status: if dev.is_some() {
            EniStatus::InUse
        } else {
            EniStatus::Available
        },
        attachment: dev.map(|d| Attachment {
            id: format!("attach-{id}"),
            instance_id: Some(INSTANCE.into()),
            device_index: d,
        }),
        subnet_id: "subnet-fake".into(),
        description: String::new(),
        interface_type: "interface".into(),
        primary_ip: Some("10.1.15.1".parse().unwrap()),
        secondary_ips: vec!["10.1.15.2".parse().unwrap()],
        prefixes: vec![],
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

#[tokio::test]
async fn no_manage_and_foreign_enis_are_left_alone_leaked_ones_swept() {
    let (ec2, sink, mut r) = setup(warm_ip(1));
    let nm = foreign("eni-nomanage", Some(1), &[(TAG_NO_MANAGE, "true")]);
    ec2.insert(nm.clone());
    ec2.insert(foreign("eni-leaked", None, &[(TAG_INSTANCE_ID, INSTANCE)]));
    ec2.insert(foreign(
        "eni-other-node",
        None,
        &[(TAG_INSTANCE_ID, "i-other")],
    ));
    ec2.insert(foreign(
        "eni-leaked-nm",
        None,
        &[(TAG_INSTANCE_ID, INSTANCE), (TAG_NO_MANAGE, "true")],
    ));
    settle(&mut r).await;
    assert_eq!(r.sweep_leaked().await.unwrap(), 1);
    let s = ec2.lock();
    assert_eq!(s.enis.get("eni-nomanage"), Some(&nm), "untouched");
    assert!(!s.enis.contains_key("eni-leaked"));
    assert!(s.enis.contains_key("eni-other-node"));
    assert!(s.enis.contains_key("eni-leaked-nm"));
    drop(s);
    assert!(
        !sink
            .pools
            .lock()
            .unwrap()
            .contains_key(&"10.1.15.2".parse().unwrap()),
        "a no_manage ENI's IPs are not pod IPs"
    );
}

#[tokio::test]
async fn whole_eni_mode_fills_enis_and_sets_tags() {
    let (ec2, _sink, mut r) = setup(PoolEnv::default());
    settle(&mut r).await;
    // WARM_ENI_TARGET=1: primary filled (9); nothing busy so no 2nd ENI.
    assert_eq!(ec2_pool(&ec2), (1, 9));
    let (ec2, sink, mut r) = setup(PoolEnv::default());
    settle(&mut r).await;
    let _a = sink.take().unwrap();
    settle(&mut r).await;
    assert_eq!(ec2_pool(&ec2), (2, 18), "one whole warm ENI");
    let s = ec2.lock();
    let created = s
        .enis
        .values()
        .find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == 1))
        .unwrap();
    assert_eq!(created.description, format!("aws-K8S-{INSTANCE}"));
    assert_eq!(
        created.tags.get(TAG_INSTANCE_ID).map(String::as_str),
        Some(INSTANCE)
    );
    assert!(created
        .tags
        .contains_key(trunkline_aws::ec2::TAG_CREATED_AT));
}

/// The VPC resource controller's trunk ENI (security groups for pods) is
/// reported to the agent on every pass, by MAC, and never used as a pool:
/// its IPs are not pod IPs and it gets no assign/unassign.
#[tokio::test]
async fn the_trunk_eni_is_reported_and_never_pooled() {
    let (ec2, sink, mut r) = setup(warm_ip(2));
    settle(&mut r).await;
    assert_eq!(
        *sink.trunk.lock().unwrap(),
        Some(None),
        "no trunk attached: the pass says so"
    );
    let mut trunk = foreign("eni-trunk", Some(2), &[]);
    trunk.interface_type = "trunk".into();
    trunk.mac = "02:FF:00:00:00:02".into();
    ec2.insert(trunk.clone());
    settle(&mut r).await;
    assert_eq!(
        *sink.trunk.lock().unwrap(),
        Some(Some(TrunkEni {
            eni_id: "eni-trunk".into(),
            mac: "02:ff:00:00:00:02".into(),
        })),
        "the trunk, its MAC in lower case as interfaces are matched"
    );
    assert_eq!(ec2.lock().enis.get("eni-trunk"), Some(&trunk), "untouched");
    assert!(
        !sink
            .pools
            .lock()
            .unwrap()
            .contains_key(&"10.1.15.2".parse().unwrap()),
        "a trunk's IPs are not pod IPs"
    );
}
