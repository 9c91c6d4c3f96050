//! The EC2 warm pool against moto (a local EC2 API): the reconciler of
//! `trunkline-aws` on aws-sdk-ec2 feeding the agent's real `Ipam`. Every
//! check reads EC2's view (DescribeNetworkInterfaces), not our own state.
//!
//! moto does not enforce the per-ENI IP limit, so "never over-allocates"
//! is checked here against DescribeInstanceTypes; prefix delegation and
//! trunk ENIs are not modelled by moto and are tested at the `Ec2` trait
//! boundary (cloud-aws/tests/reconciler_fake.rs).

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aws_sdk_ec2::{config::Credentials, types::Filter};
use testbed::fakes::moto::Moto;
use trunkline_agent::{
    cloud::aws_pool::{by_eni_id, IpamSink},
    pods::ipam::{now_secs, Ipam, IpamError},
};
use trunkline_aws::{
    ec2::{Ec2, SdkEc2, TAG_INSTANCE_ID},
    Kick, Limits, NodeConfig, PoolEnv, Reconciler,
};

const INSTANCE_TYPE: &str = "m5.xlarge";

fn client(endpoint: &str, attempt_timeout: Duration) -> aws_sdk_ec2::Client {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .retry_config(SdkEc2::retry_config())
        .timeout_config(
            aws_sdk_ec2::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_attempt_timeout(attempt_timeout)
                .operation_timeout(attempt_timeout * 3)
                .build(),
        )
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

/// A VPC, a /20 subnet and one instance in moto.
struct Instance {
    id: String,
    subnet: String,
}

async fn launch(c: &aws_sdk_ec2::Client) -> Result<Instance> {
    let (id, subnet) =
        testbed::fakes::moto::launch_instance(c, "10.0.0.0/16", "10.0.0.0/20", INSTANCE_TYPE)
            .await?;
    Ok(Instance { id, subnet })
}

/// EC2's view: attached ENIs → secondary IPs.
async fn ec2_view(
    c: &aws_sdk_ec2::Client,
    instance: &str,
) -> Result<HashMap<String, Vec<Ipv4Addr>>> {
    let r = c
        .describe_network_interfaces()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(instance)
                .build(),
        )
        .send()
        .await?;
    let mut out = HashMap::new();
    for ni in r.network_interfaces() {
        let ips = ni
            .private_ip_addresses()
            .iter()
            .filter(|a| a.primary() != Some(true))
            .filter_map(|a| a.private_ip_address()?.parse().ok())
            .collect();
        out.insert(
            ni.network_interface_id().unwrap_or_default().to_string(),
            ips,
        );
    }
    Ok(out)
}

/// Distinct secondary IPs: moto (unlike EC2) can hand one address to two
/// ENIs, which would count twice in a plain sum.
fn total(view: &HashMap<String, Vec<Ipv4Addr>>) -> usize {
    view.values().flatten().collect::<HashSet<_>>().len()
}

fn check_limits(view: &HashMap<String, Vec<Ipv4Addr>>, limits: Limits) -> Result<()> {
    if view.len() as u32 > limits.max_enis {
        bail!("{} ENIs attached, limit {}", view.len(), limits.max_enis);
    }
    for (eni, ips) in view {
        if ips.len() as u32 > limits.slots_per_eni() {
            bail!(
                "{eni} has {} secondary IPs, limit {}",
                ips.len(),
                limits.slots_per_eni()
            );
        }
    }
    Ok(())
}

struct Pool {
    ipam: Arc<Mutex<Ipam>>,
    kick: Kick,
    last: Arc<Mutex<Option<Result<trunkline_aws::PassReport, String>>>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start_pool(c: &aws_sdk_ec2::Client, inst: &Instance, env: PoolEnv) -> Pool {
    let ipam = Arc::new(Mutex::new(Ipam::new(vec![], env.ip_cooldown)));
    let sink = Arc::new(IpamSink::new(ipam.clone(), by_eni_id()));
    let r = Reconciler::new(
        Arc::new(SdkEc2::new(c.clone())),
        sink,
        NodeConfig {
            instance_id: inst.id.clone(),
            instance_type: INSTANCE_TYPE.into(),
            subnet_id: inst.subnet.clone(),
            security_groups: vec![],
        },
        env,
    );
    let kick = r.kick_handle();
    let last = r.last_report();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(r.run(Duration::from_millis(500), rx));
    Pool {
        ipam,
        kick,
        last,
        stop,
        task,
    }
}

fn lock(i: &Arc<Mutex<Ipam>>) -> std::sync::MutexGuard<'_, Ipam> {
    i.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pod add as the agent does it: take a free IP or fail at once; the
/// caller (kubelet) retries. Kicks the pool when the free count is low.
fn add_pod(p: &Pool, name: &str, warm: usize) -> Result<Ipv4Addr, IpamError> {
    let mut ipam = lock(&p.ipam);
    let r = ipam.allocate(name, now_secs());
    if ipam.free_count(now_secs()) < warm {
        p.kick.kick();
    }
    r.map(|(ip, _)| ip)
}

/// Polls `f` every 100 ms until it returns Some, at most `limit`.
async fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn warm_target_burst_and_shrink_against_moto() -> Result<()> {
    let moto = Moto::start()?;
    runtime().block_on(async {
        let c = client(&moto.endpoint(), Duration::from_secs(5));
        let inst = launch(&c).await?;
        let limits = SdkEc2::new(c.clone()).instance_limits(INSTANCE_TYPE).await?;
        const WARM: usize = 5;
        let env = PoolEnv {
            warm_ip_target: Some(WARM as u32),
            ip_cooldown: Duration::from_secs(3),
            ..PoolEnv::default()
        };
        let started = Instant::now();
        let pool = start_pool(&c, &inst, env);

        // 1. From an empty instance to the warm target, never above it.
        let mut max_seen = 0;
        wait_for(Duration::from_secs(20), "the warm target on EC2", async || {
            let v = ec2_view(&c, &inst.id).await.ok()?;
            max_seen = max_seen.max(total(&v));
            (total(&v) == WARM).then_some(())
        })
        .await?;
        let to_target = started.elapsed();
        // A few more passes must not add anything.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let v = ec2_view(&c, &inst.id).await?;
        max_seen = max_seen.max(total(&v));
        assert_eq!(total(&v), WARM, "{v:?}");
        assert_eq!(max_seen, WARM, "over-allocated on the way");
        assert_eq!(v.len(), 1, "all on the primary ENI");
        println!("e2e_aws: warm target {WARM} reached in {to_target:?}");

        // 2. 30 pods in a burst: all get IPs (retrying like kubelet).
        let burst = Instant::now();
        let mut tasks = Vec::new();
        let pool = Arc::new(pool);
        for n in 0..30 {
            let p = pool.clone();
            tasks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let mut tries = 0;
                loop {
                    tries += 1;
                    match add_pod(&p, &format!("pod-{n}"), WARM) {
                        Ok(ip) => return Ok((ip, t0.elapsed(), tries)),
                        Err(_) if t0.elapsed() < Duration::from_secs(60) => {
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        Err(e) => return Err(e),
                    }
                }
            }));
        }
        let mut ips = HashSet::new();
        let mut slowest = Duration::ZERO;
        let mut first_try = 0;
        for t in tasks {
            let (ip, took, tries) = t.await?.context("a pod got no IP within 60 s")?;
            assert!(ips.insert(ip), "{ip} handed out twice");
            slowest = slowest.max(took);
            first_try += usize::from(tries == 1);
        }
        let burst_took = burst.elapsed();
        println!(
            "e2e_aws: 30-pod burst done in {burst_took:?} (slowest pod {slowest:?}, {first_try} got an IP at the first try)"
        );
        // Settled: 30 busy + 5 warm, within the instance's limits.
        let mut last_total = 0;
        // Generous: on a loaded 2-core machine moto answers slowly.
        let v = wait_for(Duration::from_secs(60), "busy + warm on EC2", async || {
            let v = ec2_view(&c, &inst.id).await.ok()?;
            last_total = total(&v);
            (total(&v) == 30 + WARM).then_some(v)
        })
        .await
        .with_context(|| format!("EC2 has {last_total}; last pass {:?}", pool.last.lock().map(|l| l.clone()).ok()))?;
        check_limits(&v, limits)?;
        let on_ec2: HashSet<Ipv4Addr> = v.values().flatten().copied().collect();
        assert!(ips.is_subset(&on_ec2), "every pod IP is assigned on EC2");

        // 3. Released: kept while cooling, then back to the target.
        for ip in &ips {
            lock(&pool.ipam).release(*ip, now_secs());
        }
        pool.kick.kick();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let v = ec2_view(&c, &inst.id).await?;
        assert_eq!(total(&v), 30 + WARM, "cooling IPs stay assigned");
        let released = Instant::now();
        let v = wait_for(Duration::from_secs(30), "the pool back at its target", async || {
            let v = ec2_view(&c, &inst.id).await.ok()?;
            (total(&v) == WARM).then_some(v)
        })
        .await?;
        println!("e2e_aws: shrank back to {WARM} {:?} after the release check (cooldown 3 s)", released.elapsed());
        assert_eq!(v.len(), 1, "idle secondary ENIs deleted: {v:?}");
        // Deleted, not left detached.
        let leaked = c
            .describe_network_interfaces()
            .filters(Filter::builder().name(format!("tag:{TAG_INSTANCE_ID}")).values(&inst.id).build())
            .send()
            .await?;
        assert_eq!(leaked.network_interfaces().len(), 0, "ENIs left behind");
        let last = pool.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert!(matches!(last, Some(Ok(_))), "{last:?}");
        pool.stop.send(true)?;
        Ok(())
    })
}

#[test]
fn ec2_outage_mid_run_loses_nothing() -> Result<()> {
    let mut moto = Moto::start()?;
    let rt = runtime();
    let (pool, c, inst) = rt.block_on(async {
        // Set-up calls may be slow (moto loads its AMI catalogue); the pool
        // gets short timeouts so that a stopped moto does not hold a pass.
        let c = client(&moto.endpoint(), Duration::from_secs(10));
        let inst = launch(&c).await?;
        let pool = start_pool(
            &client(&moto.endpoint(), Duration::from_secs(1)),
            &inst,
            PoolEnv {
                warm_ip_target: Some(3),
                ip_cooldown: Duration::from_secs(2),
                ..PoolEnv::default()
            },
        );
        wait_for(Duration::from_secs(20), "the warm target", async || {
            (total(&ec2_view(&c, &inst.id).await.ok()?) == 3).then_some(())
        })
        .await?;
        anyhow::Ok((pool, c, inst))
    })?;
    let a = add_pod(&pool, "a", 3).map_err(anyhow::Error::msg)?;

    // SIGSTOP: EC2 hangs (calls time out).
    let pid = nix::unistd::Pid::from_raw(moto_pid(&moto)?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    // Pod adds keep working from the warm IPs without waiting for EC2,
    // until the pool is empty: then they fail at once (kubelet retries).
    let stopped = Instant::now();
    let mut pods = vec![a];
    let exhausted = loop {
        match add_pod(&pool, &format!("p{}", pods.len()), 3) {
            Ok(ip) => pods.push(ip),
            Err(e) => break e,
        }
        assert!(pods.len() < 10, "more IPs than the pool had");
    };
    assert!(
        matches!(exhausted, IpamError::Exhausted { .. }),
        "{exhausted}"
    );
    assert!(
        stopped.elapsed() < Duration::from_millis(100),
        "a pod add waited for EC2"
    );
    assert!(pods.len() >= 3, "the warm IPs were usable: {pods:?}");
    rt.block_on(async {
        // Let passes fail against the hung EC2.
        wait_for(Duration::from_secs(20), "a failed pass", async || {
            let l = pool.last.lock().ok()?.clone();
            matches!(l, Some(Err(_))).then_some(())
        })
        .await
    })?;
    assert!(!pool.task.is_finished(), "the reconciler survived");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
    let busy_n = pods.len();
    rt.block_on(async {
        // Back: busy + 3 warm, and every pod's IP assigned on EC2.
        let v = wait_for(
            Duration::from_secs(30),
            "recovery to busy + warm",
            async || {
                let v = ec2_view(&c, &inst.id).await.ok()?;
                (total(&v) == busy_n + 3).then_some(v)
            },
        )
        .await?;
        let on_ec2: HashSet<Ipv4Addr> = v.values().flatten().copied().collect();
        for ip in &pods {
            assert!(on_ec2.contains(ip), "{ip} lost on EC2: {v:?}");
        }
        // IPAM's pool == EC2's view (no IP IPAM would hand out that EC2
        // lacks); the publish follows the EC2 change within a pass.
        wait_for(
            Duration::from_secs(5),
            "IPAM in step with EC2",
            async || {
                let mut i = lock(&pool.ipam);
                let n = i.busy(now_secs()).len() + i.free_count(now_secs());
                (n == on_ec2.len()).then_some(())
            },
        )
        .await?;
        anyhow::Ok(())
    })?;

    // SIGKILL: moto and its state are gone. The reconciler keeps running and
    // IPAM keeps the pods' IPs; a fresh moto on the same port (which no
    // longer knows the instance) makes passes fail, not crash.
    let port = moto.port;
    moto.kill();
    let d = add_pod(&pool, "after-kill", 3).map_err(anyhow::Error::msg)?;
    let _moto2 = Moto::start_on(port)?;
    rt.block_on(async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !pool.task.is_finished(),
            "the reconciler survived a lost EC2"
        );
        let busy = lock(&pool.ipam).busy(now_secs());
        for ip in pods.iter().chain([&d]) {
            assert!(busy.contains(ip), "{ip} dropped from IPAM");
        }
        pool.stop.send(true)?;
        anyhow::Ok(())
    })?;
    Ok(())
}

fn moto_pid(m: &Moto) -> Result<i32> {
    m.pid().context("moto is not running")
}
