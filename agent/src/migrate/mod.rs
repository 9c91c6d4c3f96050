//! `trunkline-agent migrate`: take over a node that ran aws-node without
//! dropping its pods' established connections.
//!
//! Order, and why:
//! 1. The data path is loaded and attached to the ENIs (`Agent::start`). With
//!    no `PODS` entries yet it hands every packet to the stack, so the legacy
//!    plumbing keeps carrying the pods.
//! 2. Pod by pod: netfilter's connections of the pod are copied into `CT` /
//!    `SNAT_REV` (a SNATed flow keeps its port; a NodePort/ClusterIP flow
//!    keeps returning through the stack), the programs are attached to its
//!    veth, then its `PODS` entry is written: that one map update switches
//!    both directions of the pod's traffic to the data path at once
//!    (`from_eni` translates a reply back only for a pod in `PODS`; before,
//!    it leaves it to netfilter untouched). Its connections are read again
//!    right after, for any opened meanwhile. While pods are being adopted
//!    `CONFIG` carries `CFG_F_ADOPTING`: `from_pod` hands a packet whose
//!    source is in no `PODS` entry to the stack (the legacy plumbing's)
//!    instead of dropping it as spoofed, which covers a pod between its
//!    attach and its entry. Another pod's address is dropped throughout.
//! 3. Only then is the legacy plumbing removed (it is on no pod's path any
//!    more): the SNAT and connmark chains, the ip rules, the per-ENI tables
//!    and pod routes, `vlan.eth.N` devices, aws-node's nft table.
//!
//! Anything that would leave a running pod unserved (a live pod whose IP is
//! in no pool, a strict branch pod) or unprotected (NetworkPolicy enforced
//! by aws-network-policy-agent, which trunkline does not do yet) is a
//! blocker: nothing is changed.

pub mod aws_node_checkpoint;
pub mod legacy_plumbing;
pub mod network_policy;
pub mod nf_conntrack;

use std::{collections::BTreeSet, fmt, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};

use crate::{
    agent::Agent,
    conntrack_gc::now_coarse_ns,
    dataplane::{CtMaps, MapOwner},
    node::file::{MacAddr, NodeSpec},
    node::netif,
    pods::Adoptee,
};
use aws_node_checkpoint::LegacyPod;
use legacy_plumbing::Step;
use nf_conntrack::Adopted;
use procfs::net::ARPFlags;

/// A pod of the aws-node checkpoint and what migration does with it.
#[derive(Clone, Debug)]
pub struct PodPlan {
    pub pod: LegacyPod,
    pub host_veth: String,
    /// The ENI whose pool holds the IP; `None` blocks migration if the pod runs.
    pub eni: Option<String>,
    pub live: bool,
    /// netfilter connections that will be copied (at plan time).
    pub flows: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub pods: Vec<PodPlan>,
    pub removals: Vec<Step>,
    pub blockers: Vec<String>,
    pub warnings: Vec<String>,
}

impl Plan {
    fn adoptable(&self) -> impl Iterator<Item = &PodPlan> {
        self.pods.iter().filter(|p| p.live && p.eni.is_some())
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "1. adopt pods (programs on the veth, then the PODS entry):"
        )?;
        for p in &self.pods {
            let what = match (&p.eni, p.live) {
                (_, false) => "skip: veth gone".to_string(),
                (None, true) => "BLOCKED: IP in no ENI pool".to_string(),
                (Some(e), true) => format!("adopt on {e}, {} connection(s) copied", p.flows),
            };
            writeln!(
                f,
                "   {}/{} {} veth {} container {}: {what}",
                p.pod.namespace, p.pod.name, p.pod.ip, p.host_veth, p.pod.container_id
            )?;
        }
        writeln!(f, "2. remove the legacy plumbing:")?;
        if self.removals.is_empty() {
            writeln!(f, "   (none found)")?;
        }
        for s in &self.removals {
            writeln!(f, "   - {s}")?;
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        for b in &self.blockers {
            writeln!(f, "BLOCKER: {b}")?;
        }
        Ok(())
    }
}

/// netfilter's connection table of the agent's namespace.
fn read_conntrack() -> Result<Vec<nf_conntrack::Conn>> {
    let text = match std::fs::read_to_string("/proc/net/nf_conntrack") {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Kernels without CONFIG_NF_CONNTRACK_PROCFS, or no conntrack
            // module loaded at all (then there is nothing to copy).
            match legacy_plumbing::run_tool("conntrack", &["-L", "-f", "ipv4"], None) {
                Ok(t) => t,
                Err(err) => {
                    tracing::warn!(error = %err, "no connection table to read; no connection is copied");
                    String::new()
                }
            }
        }
        Err(e) => return Err(e).context("reading /proc/net/nf_conntrack"),
    };
    Ok(nf_conntrack::parse(&text).0)
}

fn adoptions(conns: &[nf_conntrack::Conn], node_ip: Ipv4Addr, pods: &[Ipv4Addr]) -> Vec<Adopted> {
    let now = now_coarse_ns();
    conns
        .iter()
        .filter_map(|c| nf_conntrack::adopt(c, node_ip, |ip| pods.contains(&ip), now))
        .collect()
}

/// A strict branch pod's veth (`vlan` + 11 hex digits).
fn is_branch_veth(name: &str) -> bool {
    name.len() == 15 && name.starts_with("vlan") && name[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// What migration would do on this node (changes nothing).
/// `policy_pins`: where aws-network-policy-agent pins its programs
/// ([`network_policy::DEFAULT_PINS`]).
pub fn plan(
    node: &NodeSpec,
    eni_of: impl Fn(Ipv4Addr) -> Option<String>,
    checkpoint: &Path,
    policy_pins: &Path,
    policy_api: &network_policy::ApiCheck,
) -> Result<Plan> {
    let (legacy, warnings) = aws_node_checkpoint::load(checkpoint)?;
    let mut plan = Plan {
        warnings,
        ..Plan::default()
    };
    // One pass over the connection table for every pod: the count per pod
    // (the pod is the source of both kinds of key).
    let ips: Vec<Ipv4Addr> = legacy.iter().map(|p| p.ip).collect();
    let mut flows_of = std::collections::HashMap::<Ipv4Addr, usize>::new();
    for a in adoptions(&read_conntrack()?, node.node.primary_ip, &ips) {
        let (Adopted::Snat { key, .. } | Adopted::ViaStack { key, .. }) = a;
        *flows_of.entry(Ipv4Addr::from(key.src_ip)).or_default() += 1;
    }
    for pod in legacy {
        let host_veth = pod.host_veth("eni");
        let live = netif::ifindex(&host_veth).is_some();
        let eni = eni_of(pod.ip);
        if live && eni.is_none() {
            plan.blockers.push(format!(
                "pod {}/{} runs with {}, which is in no ENI pool of the node",
                pod.namespace, pod.name, pod.ip
            ));
        }
        let flows = flows_of.get(&pod.ip).copied().unwrap_or(0);
        plan.pods.push(PodPlan {
            pod,
            host_veth,
            eni,
            live,
            flows,
        });
    }
    let enforced = network_policy::enforced_pods(policy_pins)?;
    if !enforced.is_empty() {
        plan.blockers
            .push(network_policy::blocker(policy_pins, &enforced));
    }
    match network_policy::api_finding(policy_api) {
        Some(Err(blocker)) => plan.blockers.push(blocker),
        Some(Ok(warning)) => plan.warnings.push(warning),
        None => {}
    }
    for l in legacy_plumbing::links() {
        if is_branch_veth(&l) {
            plan.blockers.push(format!(
                "{l} is a strict security-group pod's veth: branch pods are not adopted; delete those pods first"
            ));
        }
    }
    let enis: BTreeSet<String> = node
        .eni
        .iter()
        .map(|e| e.interface.get_ref().clone())
        .collect();
    let pods: Vec<(Ipv4Addr, String)> = plan
        .pods
        .iter()
        .map(|p| (p.pod.ip, p.host_veth.clone()))
        .collect();
    plan.removals = legacy_plumbing::discover(&enis, &pods)?;
    Ok(plan)
}

/// The pod's MAC from the neighbour table; if it has none yet, one datagram
/// to the discard port over the legacy pod route makes the kernel resolve it.
fn pod_mac(ip: Ipv4Addr, veth: &str) -> Result<MacAddr> {
    let lookup = || -> Option<MacAddr> {
        procfs::net::arp().ok()?.into_iter().find_map(|e| {
            (e.ip_address == ip && e.device == veth && e.flags.contains(ARPFlags::COM))
                .then_some(e.hw_address)
                .flatten()
                .map(MacAddr)
        })
    };
    if let Some(m) = lookup() {
        return Ok(m);
    }
    if let Ok(s) = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
        let _ = s.send_to(&[], (ip, 9));
    }
    for _ in 0..100 {
        if let Some(m) = lookup() {
            return Ok(m);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no neighbour entry for {ip} on {veth}: the pod does not answer ARP")
}

/// What [`execute`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub adopted: usize,
    pub snat_flows: usize,
    pub via_stack_flows: usize,
    pub removed: usize,
}

fn import(ct: &mut CtMaps, flows: &[Adopted], report: &mut Report) -> Result<()> {
    for f in flows {
        match *f {
            Adopted::Snat { key, entry, reply } => {
                ct.adopt(key, entry, Some(reply))?;
                report.snat_flows += 1;
            }
            Adopted::ViaStack { key, entry } => {
                ct.adopt(key, entry, None)?;
                report.via_stack_flows += 1;
            }
        }
    }
    Ok(())
}

/// Adopts every adoptable pod of `plan`: its connections copied, its
/// programs attached and its PODS entry written, then its connections read
/// again for any opened meanwhile.
fn adopt_all(
    agent: &mut Agent,
    ct: &mut CtMaps,
    plan: &Plan,
    node_ip: Ipv4Addr,
    report: &mut Report,
) -> Result<()> {
    for p in plan.adoptable() {
        let mac = pod_mac(p.pod.ip, &p.host_veth)
            .with_context(|| format!("pod {}/{}", p.pod.namespace, p.pod.name))?;
        import(
            ct,
            &adoptions(&read_conntrack()?, node_ip, &[p.pod.ip]),
            report,
        )?;
        agent
            .adopt_pod(Adoptee {
                container_id: p.pod.container_id.clone(),
                ifname: p.pod.ifname.clone(),
                namespace: p.pod.namespace.clone(),
                name: p.pod.name.clone(),
                ip: p.pod.ip,
                host_veth: p.host_veth.clone(),
                pod_mac: mac.to_string(),
            })
            .with_context(|| format!("adopting {}/{}", p.pod.namespace, p.pod.name))?;
        // Connections netfilter saw open between the read and the switch.
        let late = adoptions(&read_conntrack()?, node_ip, &[p.pod.ip]);
        let mut ignored = Report::default();
        import(ct, &late, &mut ignored)?;
        report.adopted += 1;
    }
    Ok(())
}

/// Carries out `plan` on the started agent, copying connections into `ct`
/// (the agent's one `CT`/`SNAT_REV` writer, which GC gets afterwards).
/// Refuses a plan with blockers.
pub fn execute(agent: &mut Agent, ct: &mut CtMaps, plan: &Plan) -> Result<Report> {
    if !plan.blockers.is_empty() {
        bail!(
            "migration blocked, nothing changed:\n{}",
            plan.blockers.join("\n")
        );
    }
    let node_ip = agent.node_ip();
    let mut report = Report::default();
    // Until every pod is adopted, a veth whose programs are attached but
    // whose PODS entry is not yet written is still the legacy plumbing's:
    // its packets go to the stack rather than being dropped as spoofed.
    agent.set_adopting(true)?;
    let adopted = adopt_all(agent, ct, plan, node_ip, &mut report);
    agent.set_adopting(false)?;
    adopted?;
    for step in &plan.removals {
        step.run()
            .with_context(|| format!("removing {}", step.what))?;
        tracing::info!(removed = %step.what, "legacy plumbing");
        report.removed += 1;
    }
    Ok(report)
}

/// Plan with the node's pools, then execute it: `migrate` and `run
/// --migrate-from-aws-node`. On success aws-node's checkpoint is renamed
/// `<file>.migrated`, so that a later start does not take its stale entries
/// for pods (a new pod of the same name gets the same veth name).
pub fn migrate(
    agent: &mut Agent,
    ct: &mut CtMaps,
    checkpoint: &Path,
    policy_pins: &Path,
    policy_api: &network_policy::ApiCheck,
) -> Result<Report> {
    let node = agent.node_spec().clone();
    let plan = plan(
        &node,
        |ip| agent.eni_of(ip),
        checkpoint,
        policy_pins,
        policy_api,
    )?;
    tracing::info!(plan = %plan, "migrating from aws-node");
    let report = execute(agent, ct, &plan)?;
    let mut done = checkpoint.as_os_str().to_owned();
    done.push(".migrated");
    std::fs::rename(checkpoint, &done)
        .with_context(|| format!("renaming {} after the migration", checkpoint.display()))?;
    tracing::info!(?report, "migration from aws-node done");
    Ok(report)
}

/// `trunkline-agent migrate`: start the data path as `run` would (pinned,
/// so it stays when this process exits), migrate, exit.
pub fn run_once(
    config: crate::config::RunConfig,
    node: NodeSpec,
    checkpoint: &Path,
    policy_pins: &Path,
) -> Result<Report> {
    let bpf_root = config.bpf_root.clone();
    let policy_api = network_policy::check_api_blocking(config.kube.access(), node.node.primary_ip);
    let (mut agent, _) = Agent::start(config, node)?;
    let mut ct = CtMaps::open(&bpf_root).context("opening CT and SNAT_REV")?;
    migrate(&mut agent, &mut ct, checkpoint, policy_pins, &policy_api)
}

/// The ENI whose `pod_ips` in the node file hold `ip` (the dry run has no
/// agent to ask).
pub fn pool_of(node: &NodeSpec, ip: Ipv4Addr) -> Option<String> {
    node.eni
        .iter()
        .find(|e| e.pod_ips.iter().any(|p| *p.get_ref() == ip))
        .map(|e| e.interface.get_ref().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_veths_are_recognised() {
        assert!(is_branch_veth("vlanc440f455693"));
        assert!(!is_branch_veth("vlan.eth.1"));
        assert!(!is_branch_veth("enic440f455693"));
        assert!(!is_branch_veth("vlanxyz"));
    }
}
