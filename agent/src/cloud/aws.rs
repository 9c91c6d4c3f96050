//! AWS mode: `trunkline-agent run` without `--node-file`.
//!
//! There is one desired state for the node, [`NodeSpec`]: in AWS mode the
//! agent builds it from IMDS (instance, ENIs by MAC, subnets, VPC CIDRs;
//! the ENIs' current secondary IPs as the initial pod pools), checked as a
//! node file is, and hands it to the agent directly (a copy goes to
//! `<state-dir>/aws-node.toml` for operators; nothing reads it back). At
//! run time:
//! - the EC2 warm pool (`trunkline_aws::Reconciler`) feeds IPAM through
//!   [`IpamSink`]; a pod add only reads IPAM and never waits for EC2;
//! - an IMDS watcher rebuilds the spec every [`WATCH_PERIOD`] and applies
//!   it when it differs (typed, pools aside): an ENI whose interface
//!   (matched by MAC) has appeared gets its ENIS entry and programs, and
//!   VPC CIDRs flow into NO_SNAT (`Agent::apply_node`, which leaves
//!   established flows alone);
//! - a free-count watcher kicks the pool as soon as pods take IPs (on the
//!   agent's published changes);
//! - the trunk ENI (security groups for pods) enters the spec once EC2
//!   names it and its gateway answers ARP (`aws_trunk`).

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use ipnet::Ipv4Net;
use trunkline_aws::{
    imds::{Imds, NodeInfo},
    Kick, NodeConfig, PoolEni, PoolEnv, Reconciler, SdkEc2,
};

use crate::{
    agent::Shared,
    cloud::{
        aws_pool::IpamSink,
        aws_trunk::{NodeSink, ReadyTrunk, Resolver, TrunkSlot},
    },
    config::RunConfig,
    node::file::{EniSection, MacAddr, NodeSection, NodeSpec, Role},
};

/// The node file AWS mode renders, under the state directory.
pub const NODE_FILE: &str = "aws-node.toml";
/// Comma-separated service CIDRs handed to the host stack (kube-proxy).
pub const SERVICE_CIDRS_ENV: &str = "TRUNKLINE_SERVICE_CIDRS";
/// How often IMDS is re-read for new ENIs and VPC CIDRs.
pub const WATCH_PERIOD: Duration = Duration::from_secs(5);
/// Periodic warm-pool pass (kicks come on top).
pub const POOL_PERIOD: Duration = Duration::from_secs(5);

/// Interfaces of the agent's namespace by lower-case MAC (sysfs; `ip netns
/// exec` and a pod's own mount show the namespace's view).
pub fn interfaces_by_mac() -> HashMap<String, String> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(mac) = crate::node::netif::mac(&name) {
            if !mac.is_zero() {
                out.entry(mac.to_string()).or_insert(name);
            }
        }
    }
    out
}

/// How long the start waits for the apiserver's ServiceCIDR list.
const SERVICE_CIDR_API_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster's service CIDRs, which AWS mode requires: without them,
/// every pod's ClusterIP traffic (DNS first) would be taken for traffic
/// leaving the VPC and SNATed. From the Kubernetes ServiceCIDR API where
/// the cluster serves it (1.33+), else from `TRUNKLINE_SERVICE_CIDRS`
/// (`configured`), else the start is refused, saying what to set. There
/// is no guessing.
pub fn cluster_service_cidrs(
    rt: &tokio::runtime::Runtime,
    access: Option<trunkline_kube::ApiAccess>,
    configured: Option<&str>,
) -> Result<Vec<Ipv4Net>> {
    use trunkline_kube::ServiceCidrs;
    let from_api = match access {
        None => Err("no apiserver to ask (no kubeconfig, not in a cluster)".to_string()),
        Some(access) => {
            match rt.block_on(trunkline_kube::service_cidrs(
                &access,
                SERVICE_CIDR_API_TIMEOUT,
            )) {
                Ok(ServiceCidrs::Served(c)) if !c.is_empty() => Ok(c),
                Ok(ServiceCidrs::Served(_)) => {
                    Err("the apiserver lists no IPv4 ServiceCIDR".to_string())
                }
                Ok(ServiceCidrs::NotServed) => Err(
                    "the cluster does not serve the ServiceCIDR API (Kubernetes before 1.33)"
                        .to_string(),
                ),
                Err(e) => Err(format!("{e}")),
            }
        }
    };
    match from_api {
        Ok(cidrs) => {
            let set = configured.filter(|v| !v.trim().is_empty());
            match set.map(|v| service_cidrs(Some(v))) {
                Some(Ok(c)) if c != cidrs => tracing::warn!(
                    api = ?cidrs, configured = ?c,
                    "{SERVICE_CIDRS_ENV} differs from the cluster's ServiceCIDRs; the cluster's are used"
                ),
                Some(Err(e)) => tracing::warn!(
                    error = format!("{e:#}"),
                    "ignored: the cluster's ServiceCIDRs are used"
                ),
                _ => {}
            }
            tracing::info!(service_cidrs = ?cidrs, "service CIDRs from the cluster's ServiceCIDR API");
            Ok(cidrs)
        }
        Err(why) => {
            let cidrs = service_cidrs(configured)
                .with_context(|| format!("no service CIDRs from the cluster: {why}"))?;
            tracing::info!(service_cidrs = ?cidrs, reason = %why, "service CIDRs from {SERVICE_CIDRS_ENV}");
            Ok(cidrs)
        }
    }
}

/// Parses `TRUNKLINE_SERVICE_CIDRS`, the service CIDRs for a cluster that
/// does not serve the ServiceCIDR API. EKS picks 10.100.0.0/16 or
/// 172.20.0.0/16, or what the cluster was created with: an empty value is
/// an error that says where to read it.
pub fn service_cidrs(value: Option<&str>) -> Result<Vec<Ipv4Net>> {
    let cidrs = value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<Ipv4Net>()
                .map(|n| n.trunc())
                .with_context(|| format!("{SERVICE_CIDRS_ENV}: {s:?} is not an IPv4 CIDR"))
        })
        .collect::<Result<Vec<_>>>()?;
    if cidrs.is_empty() {
        anyhow::bail!(
            "{SERVICE_CIDRS_ENV} is not set: AWS mode needs the cluster's service CIDR, or every \
             pod's ClusterIP traffic would be SNATed to the VPC. Set it in the trunkline-config \
             ConfigMap to what `aws eks describe-cluster --name <cluster> --query \
             cluster.kubernetesNetworkConfig.serviceIpv4Cidr` prints"
        );
    }
    Ok(cidrs)
}

fn pod_ips(e: &trunkline_aws::imds::ImdsEni) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = e.local_ipv4s.iter().skip(1).copied().collect();
    for p in &e.prefixes {
        ips.extend(trunkline_aws::reconciler::prefix_ips(*p));
    }
    ips
}

/// What is known of the trunk ENI when the spec is built (see
/// `aws_trunk`): EC2's trunk, and whether its gateway is resolved.
#[derive(Clone, Copy, Debug)]
pub struct TrunkView<'a> {
    /// The trunk EC2 reports (`None`: none, or EC2 has not said yet).
    pub eni: Option<&'a trunkline_aws::TrunkEni>,
    pub ready: Option<&'a ReadyTrunk>,
}

impl TrunkView<'_> {
    pub const NONE: TrunkView<'static> = TrunkView {
        eni: None,
        ready: None,
    };
}

/// The node's desired state from IMDS, checked as a node file is. ENIs
/// whose interface is not (yet) in the namespace are left out; the
/// primary's must be there. The trunk ENI (`trunk`) has role `trunk` and
/// its gateway MAC once resolved, and is left out until then rather than
/// taken for a secondary ENI. `pools`: include the ENIs' secondary IPs as pod
/// IPs (start) or not (re-reads, where IPAM's pools come from the warm
/// pool).
pub fn node_spec(
    info: &NodeInfo,
    ifaces: &HashMap<String, String>,
    services: &[Ipv4Net],
    pools: bool,
    trunk: TrunkView<'_>,
) -> Result<NodeSpec> {
    let primary = info.primary_eni().with_context(|| {
        format!(
            "IMDS lists no ENI with the primary MAC {}",
            info.primary_mac
        )
    })?;
    let Some(primary_ip) = primary.local_ipv4s.first() else {
        bail!(
            "IMDS lists no IPv4 address on the primary ENI {}",
            primary.interface_id
        );
    };
    if !ifaces.contains_key(&primary.mac) {
        bail!(
            "no interface with the primary ENI's MAC {} in the agent's network namespace",
            primary.mac
        );
    }
    let unspanned = |v| toml::Spanned::new(0..0, v);
    let mut enis = Vec::new();
    for e in &info.enis {
        let Some(iface) = ifaces.get(&e.mac) else {
            tracing::info!(eni = %e.interface_id, mac = %e.mac, "ENI has no interface in the namespace yet");
            continue;
        };
        let Some(eni_ip) = e.local_ipv4s.first() else {
            continue;
        };
        let mac: MacAddr = e.mac.parse().map_err(|err| {
            anyhow::anyhow!(
                "IMDS gives ENI {} the MAC {:?}: {err}",
                e.interface_id,
                e.mac
            )
        })?;
        let is_trunk = trunk.eni.is_some_and(|t| t.mac == e.mac) && e.mac != info.primary_mac;
        let gateway_mac = match trunk.ready.filter(|r| r.mac == e.mac) {
            Some(r) if is_trunk => Some(r.gateway_mac),
            _ if is_trunk => {
                tracing::info!(eni = %e.interface_id, "trunk ENI left out until its gateway MAC is resolved");
                continue;
            }
            _ => None,
        };
        let ips = if pools && !is_trunk {
            pod_ips(e)
        } else {
            vec![]
        };
        enis.push(EniSection {
            interface: unspanned(iface.clone()),
            role: if e.mac == info.primary_mac {
                Role::Primary
            } else if is_trunk {
                Role::Trunk
            } else {
                Role::Secondary
            },
            mac,
            primary_ip: *eni_ip,
            subnet: toml::Spanned::new(0..0, e.subnet_cidr),
            pod_ips: ips
                .into_iter()
                .map(|ip| toml::Spanned::new(0..0, ip))
                .collect(),
            gateway_mac,
        });
    }
    let node = NodeSpec {
        node: NodeSection {
            primary_ip: *primary_ip,
            vpc_cidrs: info.vpc_cidrs.clone(),
            service_cidrs: services.to_vec(),
        },
        eni: enis,
        branch: vec![],
    };
    // The same checks as a hand-written node file.
    node.check()
        .map_err(|reason| anyhow::anyhow!("the node IMDS describes is invalid: {reason}"))?;
    Ok(node)
}

/// `spec` as a node file, for operators (`<state-dir>/aws-node.toml`: what
/// the agent runs with); the agent never reads it back.
pub fn render_node_file(spec: &NodeSpec, instance_id: &str) -> Result<String> {
    Ok(format!(
        "# What trunkline-agent discovered from IMDS ({instance_id}); informational, not read back.\n{}",
        toml::to_string(spec).context("rendering the node file")?
    ))
}

/// Writes the informational node file; a failure is only logged.
fn write_node_file(path: &Path, spec: &NodeSpec, instance_id: &str) {
    let written = render_node_file(spec, instance_id)
        .and_then(|text| Ok(crate::atomic_file::write(path, text.as_bytes(), 0o644)?));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = format!("{e:#}"), "writing the node file failed");
    }
}

/// What discovery found, for the run-time tasks.
#[derive(Clone, Debug)]
pub struct Discovered {
    pub info: NodeInfo,
    pub services: Vec<Ipv4Net>,
    pub pool_env: PoolEnv,
    /// The desired node at start (with the ENIs' current IPs as pools).
    pub spec: NodeSpec,
    /// Where the informational copy of the spec is written.
    pub node_file: PathBuf,
    /// The MTU secondary ENIs are brought up with (`TRUNKLINE_MTU`, as
    /// aws-node's `AWS_VPC_ENI_MTU` sets both ENIs and pods).
    pub eni_mtu: u32,
    /// The trunk ENI EC2 reported at start, if any.
    pub trunk: Option<trunkline_aws::TrunkEni>,
    /// Its gateway, once [`bring_up`] resolved it.
    pub ready_trunk: Option<ReadyTrunk>,
}

/// Brings up every secondary ENI IMDS lists whose interface is in the
/// namespace (see `node::eni_link`). A failure is logged and leaves that
/// ENI as it was; the next IMDS pass tries again.
pub async fn bring_up_secondary_enis(info: &NodeInfo, ifaces: &HashMap<String, String>, mtu: u32) {
    for e in info.enis.iter().filter(|e| e.mac != info.primary_mac) {
        let (Some(link), Some(ip)) = (ifaces.get(&e.mac), e.local_ipv4s.first()) else {
            continue;
        };
        match crate::node::eni_link::configure(link, mtu, *ip).await {
            Ok(c) if c.any() => tracing::info!(
                eni = %e.interface_id,
                link = %link,
                mtu,
                address = %ip,
                set_up = c.up,
                mtu_was = c.mtu.map(|m| m.0),
                address_added = c.address,
                "secondary ENI configured"
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!(
                eni = %e.interface_id,
                error = %err,
                "could not configure the secondary ENI; retrying with the next IMDS pass"
            ),
        }
    }
}

/// Discovers the node from IMDS: the run configuration (with aws-node's
/// cooldown) and what was found, the node's spec included.
pub fn prepare(mut config: RunConfig) -> Result<(RunConfig, Discovered)> {
    let pool_env =
        trunkline_aws::env::from_process().context("reading the warm-pool environment")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for IMDS")?;
    let services = cluster_service_cidrs(
        &rt,
        config.kube.access(),
        std::env::var(SERVICE_CIDRS_ENV).ok().as_deref(),
    )?;
    let info = rt
        .block_on(Imds::from_env().discover())
        .context("discovering the node from IMDS")?;
    tracing::info!(instance = %info.instance_id, instance_type = %info.instance_type, region = %info.region, enis = info.enis.len(), vpc_cidrs = ?info.vpc_cidrs, "discovered the node from IMDS");
    let trunk = rt.block_on(crate::cloud::aws_trunk::at_start(&info));
    let spec = node_spec(
        &info,
        &interfaces_by_mac(),
        &services,
        true,
        TrunkView {
            eni: trunk.as_ref(),
            ready: None,
        },
    )?;
    let node_file = config.state_dir.join(NODE_FILE);
    write_node_file(&node_file, &spec, &info.instance_id);
    // The aws-node variable wins over the flag's default.
    config.ip_cooldown = pool_env.ip_cooldown;
    let eni_mtu = config.mtu;
    Ok((
        config,
        Discovered {
            info,
            services,
            pool_env,
            spec,
            node_file,
            eni_mtu,
            trunk,
            ready_trunk: None,
        },
    ))
}

/// Brings up the secondary ENIs `d` found (see [`bring_up_secondary_enis`])
/// and the trunk with them, then resolves the trunk's gateway, which puts
/// the trunk into the start's spec: for `run` and a real `migrate`, not for
/// a dry run, which changes nothing.
pub fn bring_up(d: &mut Discovered) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for netlink")?;
    let ifaces = interfaces_by_mac();
    rt.block_on(bring_up_secondary_enis(&d.info, &ifaces, d.eni_mtu));
    if d.trunk.is_some() {
        let mut resolver = Resolver::default();
        d.ready_trunk = rt.block_on(resolver.ready(d.trunk.as_ref(), &d.info, &ifaces));
        if d.ready_trunk.is_some() {
            d.spec = node_spec(
                &d.info,
                &ifaces,
                &d.services,
                true,
                TrunkView {
                    eni: d.trunk.as_ref(),
                    ready: d.ready_trunk.as_ref(),
                },
            )?;
            write_node_file(&d.node_file, &d.spec, &d.info.instance_id);
        }
    }
    Ok(())
}

/// The interface name of a pool's ENI, if the agent knows it as an ENI
/// (from its published snapshot: no lock of the agent's).
fn pool_name(agent: Shared) -> crate::cloud::aws_pool::PoolName {
    Box::new(move |e: &PoolEni| {
        agent
            .snapshot()
            .enis
            .values()
            .find(|x| x.mac.eq_ignore_ascii_case(&e.mac))
            .map(|x| x.interface.clone())
    })
}

/// Starts the AWS tasks on the current runtime (called by `run` once the
/// agent is up).
pub fn spawn(agent: Shared, d: Discovered) {
    let primary = d.info.primary_eni().cloned();
    let node = NodeConfig {
        instance_id: d.info.instance_id.clone(),
        instance_type: d.info.instance_type.clone(),
        subnet_id: primary
            .as_ref()
            .map(|p| p.subnet_id.clone())
            .unwrap_or_default(),
        security_groups: primary.map(|p| p.security_groups).unwrap_or_default(),
    };
    let trunk = TrunkSlot::new(d.trunk.clone());
    let sink = Arc::new(NodeSink {
        pool: IpamSink::new(agent.ipam().clone(), pool_name(agent.clone())),
        trunk: trunk.clone(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let region = d.info.region.clone();
    let env = d.pool_env.clone();
    let (kick_tx, kick_rx) = tokio::sync::oneshot::channel::<Kick>();
    tokio::spawn(async move {
        // The pool runs for the life of the process: the sender lives here.
        let _stop = stop_tx;
        let ec2 = SdkEc2::from_env(&region).await;
        let r = Reconciler::new(Arc::new(ec2), sink, node, env);
        let _ = kick_tx.send(r.kick_handle());
        r.run(POOL_PERIOD, stop_rx).await;
    });
    tokio::spawn(async move {
        let Ok(kick) = kick_rx.await else { return };
        tokio::join!(
            watch_free(agent.clone(), kick.clone()),
            watch_imds(agent, d, kick, trunk)
        );
    });
}

/// Kicks the pool at start and whenever pods took IPs: on every change
/// the agent publishes (an AddPod), not by polling.
async fn watch_free(agent: Shared, kick: Kick) {
    let mut changes = agent.subscribe();
    let mut last = usize::MAX;
    loop {
        let free = agent.ipam().free_count();
        if free < last {
            kick.kick();
        }
        last = free;
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Re-reads IMDS: new ENIs whose interface appeared, VPC CIDR changes,
/// and the trunk ENI once EC2 names it (`trunk`) and its gateway answers.
async fn watch_imds(agent: Shared, d: Discovered, kick: Kick, trunk: TrunkSlot) {
    let imds = Imds::from_env();
    let mut resolver = Resolver::new(d.ready_trunk.clone());
    let mut current = d.spec.clone();
    let mut known: HashSet<String> = HashSet::new();
    loop {
        tokio::time::sleep(WATCH_PERIOD).await;
        let info = match imds.discover().await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "IMDS re-read failed; keeping the node as it is");
                continue;
            }
        };
        let ifaces = interfaces_by_mac();
        bring_up_secondary_enis(&info, &ifaces, d.eni_mtu).await;
        let trunk_eni = trunk.get();
        let ready = resolver.ready(trunk_eni.as_ref(), &info, &ifaces).await;
        let view = TrunkView {
            eni: trunk_eni.as_ref(),
            ready: ready.as_ref(),
        };
        let spec = match node_spec(&info, &ifaces, &d.services, false, view) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "the node IMDS describes is not usable"
                );
                continue;
            }
        };
        // Pools come from the warm pool after the start: not a change.
        if spec.same_apart_from_pools(&current) {
            continue;
        }
        let applied = agent.lock().apply_node(spec.clone());
        match applied {
            Ok(()) => {
                tracing::info!(vpc_cidrs = ?spec.node.vpc_cidrs, "node from IMDS applied");
                write_node_file(&d.node_file, &spec, &info.instance_id);
                current = spec;
                for e in &info.enis {
                    if ifaces.contains_key(&e.mac) && known.insert(e.mac.clone()) {
                        tracing::info!(eni = %e.interface_id, mac = %e.mac, "ENI in service");
                    }
                }
                kick.kick();
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "node reload failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trunkline_aws::imds::ImdsEni;

    fn info() -> NodeInfo {
        NodeInfo {
            instance_id: "i-1".into(),
            instance_type: "m5.xlarge".into(),
            region: "us-east-1".into(),
            availability_zone: "us-east-1a".into(),
            primary_mac: "02:00:00:00:00:01".into(),
            enis: vec![
                ImdsEni {
                    mac: "02:00:00:00:00:01".into(),
                    device_number: 0,
                    interface_id: "eni-a".into(),
                    subnet_id: "subnet-1".into(),
                    subnet_cidr: "10.0.0.0/20".parse().unwrap(),
                    local_ipv4s: vec!["10.0.0.5".parse().unwrap(), "10.0.0.6".parse().unwrap()],
                    prefixes: vec!["10.0.1.0/28".parse().unwrap()],
                    security_groups: vec![],
                },
                ImdsEni {
                    mac: "02:00:00:00:00:02".into(),
                    device_number: 1,
                    interface_id: "eni-b".into(),
                    subnet_id: "subnet-1".into(),
                    subnet_cidr: "10.0.0.0/20".parse().unwrap(),
                    local_ipv4s: vec!["10.0.0.9".parse().unwrap()],
                    prefixes: vec![],
                    security_groups: vec![],
                },
            ],
            vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
        }
    }

    #[test]
    fn renders_a_valid_node_file_with_present_enis_only() {
        let ifaces: HashMap<String, String> =
            [("02:00:00:00:00:01".to_string(), "eth0".to_string())].into();
        let spec = node_spec(
            &info(),
            &ifaces,
            &["172.20.0.0/16".parse().unwrap()],
            true,
            TrunkView::NONE,
        )
        .unwrap();
        let text = render_node_file(&spec, "i-1").unwrap();
        let nf = NodeSpec::parse(Path::new("t"), &text).unwrap();
        assert_eq!(nf, spec, "the informational file reads back as the spec");
        assert_eq!(nf.node.primary_ip, "10.0.0.5".parse::<Ipv4Addr>().unwrap());
        assert_eq!(nf.eni.len(), 1, "eth1 not there yet");
        assert_eq!(nf.eni[0].pod_ips.len(), 1 + 16, "secondary IP + the /28");
        assert_eq!(nf.node.service_cidrs.len(), 1);
        let ifaces: HashMap<String, String> = [
            ("02:00:00:00:00:01".to_string(), "eth0".to_string()),
            ("02:00:00:00:00:02".to_string(), "eth1".to_string()),
        ]
        .into();
        let nf = node_spec(&info(), &ifaces, &[], false, TrunkView::NONE).unwrap();
        assert!(nf.same_apart_from_pools(
            &node_spec(&info(), &ifaces, &[], true, TrunkView::NONE).unwrap()
        ));
        assert_eq!(nf.eni.len(), 2);
        assert!(nf.eni.iter().all(|e| e.pod_ips.is_empty()));
        // Without the primary's interface: an error, not a half node.
        assert!(node_spec(&info(), &HashMap::new(), &[], true, TrunkView::NONE).is_err());
    }

    /// eni-b as EC2's trunk: out of the spec until its gateway is known
    /// (not a secondary ENI meanwhile), then the trunk with that gateway
    /// MAC and no pod IPs; the file reads back as the spec.
    #[test]
    fn the_trunk_eni_enters_the_spec_once_its_gateway_is_known() {
        let ifaces: HashMap<String, String> = [
            ("02:00:00:00:00:01".to_string(), "eth0".to_string()),
            ("02:00:00:00:00:02".to_string(), "eth2".to_string()),
        ]
        .into();
        let trunk = trunkline_aws::TrunkEni {
            eni_id: "eni-b".into(),
            mac: "02:00:00:00:00:02".into(),
        };
        let waiting = TrunkView {
            eni: Some(&trunk),
            ready: None,
        };
        let spec = node_spec(&info(), &ifaces, &[], true, waiting).unwrap();
        assert_eq!(spec.eni.len(), 1, "only the primary: {spec:?}");
        assert!(spec.trunk_eni().is_none());
        let ready = ReadyTrunk {
            eni_id: "eni-b".into(),
            mac: "02:00:00:00:00:02".into(),
            gateway_mac: "02:00:00:fe:fe:01".parse().unwrap(),
        };
        let view = TrunkView {
            eni: Some(&trunk),
            ready: Some(&ready),
        };
        let spec = node_spec(&info(), &ifaces, &[], true, view).unwrap();
        let t = spec.trunk_eni().expect("the trunk");
        assert_eq!(t.interface.get_ref(), "eth2");
        assert_eq!(t.gateway_mac, Some(ready.gateway_mac));
        assert!(t.pod_ips.is_empty());
        let text = render_node_file(&spec, "i-1").unwrap();
        assert_eq!(NodeSpec::parse(Path::new("t"), &text).unwrap(), spec);
        // A resolution left from another trunk ENI does not count.
        let other = ReadyTrunk {
            eni_id: "eni-old".into(),
            mac: "02:00:00:00:00:09".into(),
            ..ready
        };
        let stale = TrunkView {
            eni: Some(&trunk),
            ready: Some(&other),
        };
        assert!(node_spec(&info(), &ifaces, &[], true, stale)
            .unwrap()
            .trunk_eni()
            .is_none());
    }

    #[test]
    fn service_cidrs_are_validated() {
        for unset in [None, Some(""), Some(" , ")] {
            let e = service_cidrs(unset).unwrap_err().to_string();
            assert!(
                e.contains("is not set") && e.contains("describe-cluster"),
                "{e}"
            );
        }
        assert_eq!(
            service_cidrs(Some("10.100.0.1/16, ")).unwrap(),
            vec!["10.100.0.0/16".parse().unwrap()]
        );
        assert!(service_cidrs(Some("nope"))
            .unwrap_err()
            .to_string()
            .contains(SERVICE_CIDRS_ENV));
    }
}
