//! The reference: the AWS VPC CNI's host plumbing, as legacy-vpc-cni.md
//! describes it, installed with iptables (nf_tables backend) inside a test
//! namespace, so trunkline's outcomes can be compared with it scenario by
//! scenario in the same topology.

use anyhow::Result;
use dataplane_common::SnatMode;

use crate::netns::Netns;

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
