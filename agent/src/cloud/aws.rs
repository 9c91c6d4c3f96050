//! AWS mode: `trunkline-agent run` without `--node-file`.
//!
//! There is one desired state for the node, the node file: in AWS mode the
//! agent renders it from IMDS (instance, ENIs by MAC, subnets, VPC CIDRs;
//! the ENIs' current secondary IPs as the initial pod pools) into
//! `<state-dir>/aws-node.toml`, and the unchanged local-mode machinery
//! loads it. At run time:
//! - the EC2 warm pool (`trunkline_aws::Reconciler`) feeds IPAM through
//!   [`IpamSink`]; a pod add only reads IPAM and never waits for EC2;
//! - an IMDS watcher re-renders the file every [`WATCH_PERIOD`]: an ENI whose
//!   interface (matched by MAC) has appeared gets its ENIS entry and
//!   programs, and VPC CIDRs flow into NO_SNAT (`reload_node_file`, which
//!   leaves established flows alone);
//! - a free-count watcher kicks the pool as soon as pods take IPs (on the
//!   agent's published changes).

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
    cloud::aws_pool::IpamSink,
    config::RunConfig,
    node::file::{EniSection, MacAddr, NodeFile, NodeSection, Role},
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

/// Parses `TRUNKLINE_SERVICE_CIDRS`.
pub fn service_cidrs(value: Option<&str>) -> Result<Vec<Ipv4Net>> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<Ipv4Net>()
                .map(|n| n.trunc())
                .with_context(|| format!("{SERVICE_CIDRS_ENV}: {s:?} is not an IPv4 CIDR"))
        })
        .collect()
}

fn pod_ips(e: &trunkline_aws::imds::ImdsEni) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = e.local_ipv4s.iter().skip(1).copied().collect();
    for p in &e.prefixes {
        ips.extend(trunkline_aws::reconciler::prefix_ips(*p));
    }
    ips
}

/// Renders the node file from IMDS. ENIs whose interface is not (yet) in
/// the namespace are left out; the primary's must be there. `pools`:
/// include the ENIs' secondary IPs as pod IPs (start) or not (reloads,
/// where IPAM's pools come from the warm pool).
pub fn render_node_file(
    info: &NodeInfo,
    ifaces: &HashMap<String, String>,
    services: &[Ipv4Net],
    pools: bool,
) -> Result<String> {
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
        let ips = if pools { pod_ips(e) } else { vec![] };
        enis.push(EniSection {
            interface: unspanned(iface.clone()),
            role: if e.mac == info.primary_mac {
                Role::Primary
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
            gateway_mac: None,
        });
    }
    let node = NodeFile {
        node: NodeSection {
            primary_ip: *primary_ip,
            vpc_cidrs: info.vpc_cidrs.clone(),
            service_cidrs: services.to_vec(),
        },
        eni: enis,
        branch: vec![],
    };
    let out = format!(
        "# Rendered by trunkline-agent from IMDS ({}); do not edit.\n{}",
        info.instance_id,
        toml::to_string(&node).context("rendering the node file")?
    );
    // The same validation as a hand-written node file.
    crate::node::file::NodeFile::parse(Path::new("<rendered from IMDS>"), &out)
        .context("the node file rendered from IMDS is invalid")?;
    Ok(out)
}

/// What discovery found, for the run-time tasks.
#[derive(Clone, Debug)]
pub struct Discovered {
    pub info: NodeInfo,
    pub services: Vec<Ipv4Net>,
    pub pool_env: PoolEnv,
    pub node_file: PathBuf,
}

/// Discovers the node from IMDS and writes the node file; returns the run
/// configuration pointing at it.
pub fn prepare(mut config: RunConfig) -> Result<(RunConfig, Discovered)> {
    let pool_env =
        trunkline_aws::env::from_process().context("reading the warm-pool environment")?;
    let services = service_cidrs(std::env::var(SERVICE_CIDRS_ENV).ok().as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for IMDS")?;
    let info = rt
        .block_on(Imds::from_env().discover())
        .context("discovering the node from IMDS")?;
    tracing::info!(instance = %info.instance_id, instance_type = %info.instance_type, region = %info.region, enis = info.enis.len(), vpc_cidrs = ?info.vpc_cidrs, "discovered the node from IMDS");
    let text = render_node_file(&info, &interfaces_by_mac(), &services, true)?;
    let node_file = config.state_dir.join(NODE_FILE);
    crate::atomic_file::write(&node_file, text.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", node_file.display()))?;
    config.node_file = node_file.clone();
    // The aws-node variable wins over the flag's default.
    config.ip_cooldown = pool_env.ip_cooldown;
    Ok((
        config,
        Discovered {
            info,
            services,
            pool_env,
            node_file,
        },
    ))
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
    let sink = Arc::new(IpamSink::new(
        agent.ipam().clone(),
        pool_name(agent.clone()),
    ));
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
            watch_imds(agent, d, kick)
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

/// Re-reads IMDS: new ENIs whose interface appeared, VPC CIDR changes.
async fn watch_imds(agent: Shared, d: Discovered, kick: Kick) {
    let imds = Imds::from_env();
    let mut current = std::fs::read_to_string(&d.node_file).unwrap_or_default();
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
        let text = match render_node_file(&info, &ifaces, &d.services, false) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "re-rendering the node file failed"
                );
                continue;
            }
        };
        // Compare without the pod pools (the start file carries them).
        if strip_pools(&text) == strip_pools(&current) {
            continue;
        }
        if let Err(e) = crate::atomic_file::write(&d.node_file, text.as_bytes(), 0o644) {
            tracing::warn!(error = format!("{e:#}"), "writing the node file failed");
            continue;
        }
        let reloaded = agent.lock().reload_node_file();
        match reloaded {
            Ok(()) => {
                current = text;
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

fn strip_pools(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with("pod_ips"))
        .collect::<Vec<_>>()
        .join("\n")
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
        let text =
            render_node_file(&info(), &ifaces, &["172.20.0.0/16".parse().unwrap()], true).unwrap();
        let nf = crate::node::file::NodeFile::parse(Path::new("t"), &text).unwrap();
        assert_eq!(nf.node.primary_ip, "10.0.0.5".parse::<Ipv4Addr>().unwrap());
        assert_eq!(nf.eni.len(), 1, "eth1 not there yet");
        assert_eq!(nf.eni[0].pod_ips.len(), 1 + 16, "secondary IP + the /28");
        assert_eq!(nf.node.service_cidrs.len(), 1);
        let ifaces: HashMap<String, String> = [
            ("02:00:00:00:00:01".to_string(), "eth0".to_string()),
            ("02:00:00:00:00:02".to_string(), "eth1".to_string()),
        ]
        .into();
        let text = render_node_file(&info(), &ifaces, &[], false).unwrap();
        let nf = crate::node::file::NodeFile::parse(Path::new("t"), &text).unwrap();
        assert_eq!(nf.eni.len(), 2);
        assert!(nf.eni.iter().all(|e| e.pod_ips.is_empty()));
        // Without the primary's interface: an error, not a half node.
        assert!(render_node_file(&info(), &HashMap::new(), &[], true).is_err());
    }

    #[test]
    fn service_cidrs_are_validated() {
        assert_eq!(service_cidrs(None).unwrap(), vec![]);
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
