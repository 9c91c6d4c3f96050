//! The reference: the AWS VPC CNI's host plumbing, as legacy-vpc-cni.md
//! describes it, installed with iptables (nf_tables backend) inside a test
//! namespace, so trunkline's outcomes can be compared with it scenario by
//! scenario in the same topology.

use anyhow::Result;
use dataplane_common::SnatMode;

use crate::topology::netns::Netns;

/// What aws-node would be configured with.
#[derive(Clone, Debug)]
pub struct LegacySnat {
    pub node_ip: String,
    /// VPC CIDRs (each a RETURN rule).
    pub vpc_cidrs: Vec<String>,
    /// `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS`.
    pub excluded: Vec<String>,
    /// `AWS_VPC_K8S_CNI_EXTERNALSNAT` = Off, `AWS_VPC_K8S_CNI_RANDOMIZESNAT` otherwise.
    pub mode: SnatMode,
    /// A narrower port range than the default, for exhaustion scenarios
    /// (aws-node has no such knob; iptables needs a protocol for it).
    pub ports: Option<(u16, u16)>,
}

fn ipt(ns: &Netns, args: &[&str]) -> Result<()> {
    ns.exec_ok("iptables", args).map(|_| ())
}

/// Installs `AWS-SNAT-CHAIN-0` in `ns`'s nat table (v1.16+ layout: one chain
/// of RETURNs then the SNAT rule). External SNAT installs nothing.
pub fn install_snat_chain(ns: &Netns, cfg: &LegacySnat) -> Result<()> {
    if cfg.mode == SnatMode::Off {
        return Ok(());
    }
    ipt(ns, &["-t", "nat", "-N", "AWS-SNAT-CHAIN-0"])?;
    ipt(
        ns,
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "AWS SNAT CHAIN",
            "-j",
            "AWS-SNAT-CHAIN-0",
        ],
    )?;
    for cidr in cfg.vpc_cidrs.iter().chain(&cfg.excluded) {
        ipt(
            ns,
            &[
                "-t",
                "nat",
                "-A",
                "AWS-SNAT-CHAIN-0",
                "-d",
                cidr,
                "-m",
                "comment",
                "--comment",
                "AWS SNAT CHAIN",
                "-j",
                "RETURN",
            ],
        )?;
    }
    let random: &[&str] = match cfg.mode {
        SnatMode::Random => &["--random-fully"],
        SnatMode::Hash => &["--random"],
        SnatMode::Sequential | SnatMode::Off => &[],
    };
    let mut targets: Vec<(Option<&str>, String)> = Vec::new();
    match cfg.ports {
        Some((lo, hi)) => {
            for proto in ["tcp", "udp"] {
                targets.push((Some(proto), format!("{}:{lo}-{hi}", cfg.node_ip)));
            }
        }
        None => targets.push((None, cfg.node_ip.clone())),
    }
    for (proto, to) in &targets {
        let mut args = vec!["-t", "nat", "-A", "AWS-SNAT-CHAIN-0", "!", "-o", "vlan+"];
        if let Some(p) = proto {
            args.extend(["-p", p]);
        }
        args.extend([
            "-m",
            "comment",
            "--comment",
            "AWS, SNAT",
            "-m",
            "addrtype",
            "!",
            "--dst-type",
            "LOCAL",
        ]);
        args.extend(["-j", "SNAT", "--to-source", to.as_str()]);
        args.extend(random);
        ipt(ns, &args)?;
    }
    Ok(())
}

/// Wires a pod the way aws-node's CNI does: veth `host_veth` ↔ `pod:eth0`,
/// pod side as trunkline-cni does it, and on the host the plumbing
/// trunkline replaces: a `/32` main-table route to the host veth, rule 512
/// `to <pod> lookup main`, and for a secondary-ENI pod rule 1536
/// `from <pod> lookup <table>` with the ENI's table (gateway + default).
pub fn wire_pod(
    node: &Netns,
    pod: &Netns,
    host_veth: &str,
    ip: std::net::Ipv4Addr,
    eni: Option<(&str, u32)>,
) -> Result<()> {
    crate::topology::netns::veth(pod, "eth0", node, host_veth)?;
    crate::topology::mini_node::wire_pod(pod, node, host_veth, ip)?;
    let cidr = format!("{ip}/32");
    node.ip(&["route", "add", &cidr, "dev", host_veth, "scope", "link"])?;
    node.ip(&[
        "rule", "add", "to", &cidr, "lookup", "main", "priority", "512",
    ])?;
    if let Some((link, table)) = eni {
        let t = table.to_string();
        // Created once per ENI; a second pod finds them there.
        let _ = node.ip(&[
            "route",
            "add",
            "192.168.0.1",
            "dev",
            link,
            "scope",
            "link",
            "table",
            &t,
        ]);
        let _ = node.ip(&[
            "route",
            "add",
            "default",
            "via",
            "192.168.0.1",
            "dev",
            link,
            "table",
            &t,
        ]);
        node.ip(&[
            "rule", "add", "from", &cidr, "lookup", &t, "priority", "1536",
        ])?;
    }
    Ok(())
}

/// The connmark machinery that makes NodePort replies and SNATed traffic
/// leave by the primary ENI: connections arriving on eth0 for a local
/// address, and new connections from pods to outside the VPC, are marked
/// 0x80, the mark is restored on packets from pod veths, and rule 1024
/// sends marked packets by the main table; `rp_filter=2` on eth0.
pub fn install_connmark(node: &Netns, vpc_cidrs: &[&str]) -> Result<()> {
    // New connections from pod veths leaving the VPC are marked too, so they
    // take the main table to the primary ENI, where they are SNATed. In the
    // nat table, as aws-node has it: after kube-proxy's KUBE-SERVICES, so a
    // connection to a ClusterIP is judged by its DNATed backend (a
    // connection already DNATed does not reach a later nat chain).
    ipt(node, &["-t", "nat", "-N", "AWS-CONNMARK-CHAIN-0"])?;
    ipt(
        node,
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-i",
            "eni+",
            "-m",
            "comment",
            "--comment",
            "AWS, outbound connections",
            "-m",
            "state",
            "--state",
            "NEW",
            "-j",
            "AWS-CONNMARK-CHAIN-0",
        ],
    )?;
    for cidr in vpc_cidrs {
        ipt(
            node,
            &[
                "-t",
                "nat",
                "-A",
                "AWS-CONNMARK-CHAIN-0",
                "-d",
                cidr,
                "-j",
                "RETURN",
            ],
        )?;
    }
    ipt(
        node,
        &[
            "-t",
            "nat",
            "-A",
            "AWS-CONNMARK-CHAIN-0",
            "-j",
            "CONNMARK",
            "--set-xmark",
            "0x80/0x80",
        ],
    )?;
    // The first packet of a connection the chain just marked takes the mark
    // for its routing decision, which comes after nat PREROUTING.
    ipt(
        node,
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-m",
            "comment",
            "--comment",
            "AWS, CONNMARK",
            "-j",
            "CONNMARK",
            "--restore-mark",
            "--mask",
            "0x80",
        ],
    )?;
    ipt(
        node,
        &[
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-i",
            "eth0",
            "-m",
            "comment",
            "--comment",
            "AWS, primary ENI",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "--limit-iface-in",
            "-j",
            "CONNMARK",
            "--set-xmark",
            "0x80/0x80",
        ],
    )?;
    ipt(
        node,
        &[
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-i",
            "eni+",
            "-m",
            "comment",
            "--comment",
            "AWS, primary ENI",
            "-j",
            "CONNMARK",
            "--restore-mark",
            "--mask",
            "0x80",
        ],
    )?;
    node.ip(&[
        "rule",
        "add",
        "fwmark",
        "0x80/0x80",
        "lookup",
        "main",
        "priority",
        "1024",
    ])?;
    node.sysctl("net.ipv4.conf.eth0.rp_filter", "2")?;
    Ok(())
}

/// `n` more exclusion CIDRs (`RETURN` rules ahead of the SNAT rule), loaded
/// in one `iptables-restore` (aws-node adds them one iptables call at a time).
pub fn add_exclusions(ns: &Netns, dir: &std::path::Path, cidrs: &[String]) -> Result<()> {
    let mut rules = String::from("*nat\n");
    for c in cidrs {
        rules.push_str(&format!(
            "-I AWS-SNAT-CHAIN-0 1 -d {c} -m comment --comment \"AWS SNAT CHAIN\" -j RETURN\n"
        ));
    }
    rules.push_str("COMMIT\n");
    let file = dir.join(format!("exclusions-{}.rules", crate::unique("x")));
    std::fs::write(&file, rules)?;
    ns.exec_ok("iptables-restore", &["--noflush", &file.to_string_lossy()])?;
    Ok(())
}

/// The ip rules aws-node adds for `pods` pods on a secondary ENI (512 `to`,
/// 1536 `from`), loaded with `ip -batch`; every packet walks them.
pub fn add_pod_rules(
    ns: &Netns,
    dir: &std::path::Path,
    pods: &[std::net::Ipv4Addr],
    table: u32,
) -> Result<()> {
    let mut batch = String::new();
    for p in pods {
        batch.push_str(&format!("rule add to {p}/32 lookup main priority 512\nrule add from {p}/32 lookup {table} priority 1536\n"));
    }
    let file = dir.join(format!("rules-{}.batch", crate::unique("r")));
    std::fs::write(&file, batch)?;
    ns.exec_ok("ip", &["-batch", &file.to_string_lossy()])?;
    Ok(())
}
