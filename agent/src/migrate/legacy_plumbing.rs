//! aws-node's host plumbing that trunkline replaces: what of it a node has,
//! and the steps that remove it.
//!
//! iptables and nft have no library interface, so their own tools are
//! driven (`iptables-save` to read, one `iptables-restore --noflush`
//! transaction per table to remove). Rules, routes and links are read with
//! `ip -j` and removed with `ip`, so that the plan printed by `--dry-run` is
//! the commands that run.

use std::{collections::BTreeSet, fmt, net::Ipv4Addr, process::Command};

use serde::Deserialize;

/// The priorities of aws-node's ip rules.
pub const LEGACY_RULE_PRIORITIES: [u32; 4] = [10, 512, 1024, 1536];

#[derive(Debug, thiserror::Error)]
pub enum PlumbingError {
    #[error("running {cmd}: {reason}")]
    Command { cmd: String, reason: String },
    #[error("parsing the output of {cmd}: {reason}")]
    Parse { cmd: String, reason: String },
}

/// One removal, as the command that performs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// What it removes, for the plan.
    pub what: String,
    pub program: String,
    pub args: Vec<String>,
    /// Fed to the program's stdin (iptables-restore).
    pub stdin: Option<String>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n      $ {} {}",
            self.what,
            self.program,
            self.args.join(" ")
        )?;
        if let Some(input) = &self.stdin {
            for line in input.lines() {
                write!(f, "\n        {line}")?;
            }
        }
        Ok(())
    }
}

fn step(what: String, program: &str, args: &[&str]) -> Step {
    Step {
        what,
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin: None,
    }
}

pub fn run_tool(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, PlumbingError> {
    use std::io::Write as _;
    let cmd = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| PlumbingError::Command {
            cmd: cmd.clone(),
            reason: e.to_string(),
        })?;
    if let Some(mut pipe) = child.stdin.take() {
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes())
                .map_err(|e| PlumbingError::Command {
                    cmd: cmd.clone(),
                    reason: e.to_string(),
                })?;
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| PlumbingError::Command {
            cmd: cmd.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(PlumbingError::Command {
            cmd,
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Step {
    pub fn run(&self) -> Result<(), PlumbingError> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        run_tool(&self.program, &args, self.stdin.as_deref()).map(|_| ())
    }
}

fn is_legacy_chain(name: &str) -> bool {
    name.starts_with("AWS-SNAT-CHAIN-") || name.starts_with("AWS-CONNMARK-CHAIN-")
}

/// A rule aws-node added: a jump to one of its chains, or its comment
/// ("AWS SNAT CHAIN", "AWS, SNAT", "AWS, primary ENI", ...).
fn is_legacy_rule(rule: &str) -> bool {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let jumps = words
        .windows(2)
        .any(|w| (w[0] == "-j" || w[0] == "-g") && is_legacy_chain(w[1]));
    let commented = rule.contains("--comment \"AWS") || rule.contains("--comment AWS");
    jumps || commented
}

/// From `iptables-save` output: per table, one `iptables-restore
/// --noflush` transaction that deletes aws-node's rules from the built-in
/// (and other foreign) chains, then flushes and deletes its chains.
pub fn iptables_steps(save: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut table: Option<&str> = None;
    let mut chains: Vec<&str> = Vec::new();
    let mut deletes: Vec<String> = Vec::new();
    let mut flush = |table: &str, chains: &mut Vec<&str>, deletes: &mut Vec<String>| {
        if chains.is_empty() && deletes.is_empty() {
            return;
        }
        let mut script = format!("*{table}\n");
        for d in deletes.iter() {
            script.push_str(d);
            script.push('\n');
        }
        for c in chains.iter() {
            script.push_str(&format!("-F {c}\n"));
        }
        for c in chains.iter() {
            script.push_str(&format!("-X {c}\n"));
        }
        script.push_str("COMMIT\n");
        steps.push(Step {
            what: format!(
                "iptables {table}: delete {} rule(s) and chain(s) {}",
                deletes.len(),
                if chains.is_empty() {
                    "-".to_string()
                } else {
                    chains.join(", ")
                }
            ),
            program: "iptables-restore".into(),
            args: vec!["--noflush".into()],
            stdin: Some(script),
        });
        chains.clear();
        deletes.clear();
    };
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = Some(t.trim());
        } else if line.trim() == "COMMIT" {
            if let Some(t) = table.take() {
                flush(t, &mut chains, &mut deletes);
            }
        } else if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                if is_legacy_chain(name) {
                    chains.push(name);
                }
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            // Rules inside aws-node's chains go with the flush.
            if !is_legacy_chain(chain) && is_legacy_rule(rule) {
                deletes.push(format!("-D {rule}"));
            }
        }
    }
    steps
}

/// From `nft list tables`: aws-node's own table (`aws-cni`), in any family.
pub fn nft_steps(tables: &str) -> Vec<Step> {
    tables
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("table"), Some(family), Some("aws-cni")) => Some(step(
                    format!("nft table {family} aws-cni"),
                    "nft",
                    &["delete", "table", family, "aws-cni"],
                )),
                _ => None,
            }
        })
        .collect()
}

#[derive(Deserialize)]
struct Rule {
    priority: u32,
    #[serde(default)]
    src: Option<String>,
    #[serde(default)]
    srclen: Option<u8>,
    #[serde(default)]
    dst: Option<String>,
    #[serde(default)]
    dstlen: Option<u8>,
    #[serde(default)]
    iif: Option<String>,
    #[serde(default)]
    fwmark: Option<String>,
    #[serde(default)]
    fwmask: Option<String>,
    #[serde(default)]
    table: Option<String>,
}

fn selector(addr: &Option<String>, len: Option<u8>) -> Option<String> {
    match addr.as_deref() {
        None | Some("all") => None,
        Some(a) => Some(match len {
            Some(l) => format!("{a}/{l}"),
            None => a.to_string(),
        }),
    }
}

/// From `ip -j rule show`: aws-node's rules (priorities 10, 512, 1024, 1536
/// of its shapes), one `ip rule del` each, fully qualified so that nothing
/// else at the same priority goes.
pub fn rule_steps(json: &str) -> Result<Vec<Step>, PlumbingError> {
    let rules: Vec<Rule> = serde_json::from_str(json).map_err(|e| PlumbingError::Parse {
        cmd: "ip -j rule show".into(),
        reason: e.to_string(),
    })?;
    let mut steps = Vec::new();
    for r in rules {
        let legacy_shape = match r.priority {
            10 => r.iif.is_some(),
            512 => r.dst.is_some() && r.table.as_deref() == Some("main"),
            1024 => r.fwmark.as_deref() == Some("0x80") && r.table.as_deref() == Some("main"),
            1536 => r.src.as_deref().is_some_and(|s| s != "all"),
            _ => false,
        };
        if !legacy_shape {
            continue;
        }
        let mut args: Vec<String> = vec![
            "rule".into(),
            "del".into(),
            "priority".into(),
            r.priority.to_string(),
        ];
        if let Some(s) = selector(&r.src, r.srclen) {
            args.extend(["from".into(), s]);
        }
        if let Some(d) = selector(&r.dst, r.dstlen) {
            args.extend(["to".into(), d]);
        }
        if let Some(i) = &r.iif {
            args.extend(["iif".into(), i.clone()]);
        }
        if let Some(m) = &r.fwmark {
            let mark = match &r.fwmask {
                Some(mask) => format!("{m}/{mask}"),
                None => m.clone(),
            };
            args.extend(["fwmark".into(), mark]);
        }
        if let Some(t) = &r.table {
            args.extend(["table".into(), t.clone()]);
        }
        steps.push(Step {
            what: format!("ip rule {}", args[2..].join(" ")),
            program: "ip".into(),
            args,
            stdin: None,
        });
    }
    Ok(steps)
}

#[derive(Deserialize)]
struct Route {
    dst: String,
    #[serde(default)]
    dev: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    table: Option<String>,
}

/// From `ip -j route show table all`: the routes of aws-node's per-ENI and
/// per-VLAN tables (numbered tables whose routes leave by an ENI or a
/// `vlan.eth.N` device), and the main-table `/32` routes to the host veths
/// of `pods` (trunkline has no host routes to pods).
pub fn route_steps(
    json: &str,
    enis: &BTreeSet<String>,
    pods: &[(Ipv4Addr, String)],
) -> Result<Vec<Step>, PlumbingError> {
    let routes: Vec<Route> = serde_json::from_str(json).map_err(|e| PlumbingError::Parse {
        cmd: "ip -j route show table all".into(),
        reason: e.to_string(),
    })?;
    let mut steps = Vec::new();
    for r in routes {
        let Some(dev) = r.dev.as_deref() else {
            continue;
        };
        let table = r.table.as_deref().unwrap_or("main");
        let numbered = table
            .parse::<u32>()
            .is_ok_and(|t| !(253..=255).contains(&t));
        let eni_table = numbered && (enis.contains(dev) || dev.starts_with("vlan.eth."));
        let pod_route = table == "main"
            && pods.iter().any(|(ip, veth)| {
                veth == dev && (r.dst == ip.to_string() || r.dst == format!("{ip}/32"))
            });
        if !eni_table && !pod_route {
            continue;
        }
        let mut args: Vec<String> = vec!["route".into(), "del".into(), r.dst.clone()];
        if let Some(gw) = &r.gateway {
            args.extend(["via".into(), gw.clone()]);
        }
        args.extend([
            "dev".into(),
            dev.to_string(),
            "table".into(),
            table.to_string(),
        ]);
        steps.push(Step {
            what: format!("route {} dev {dev} table {table}", r.dst),
            program: "ip".into(),
            args,
            stdin: None,
        });
    }
    // Gateway host routes after the routes that go via them.
    steps.sort_by_key(|s| !s.args.iter().any(|a| a == "via"));
    Ok(steps)
}

/// aws-node's `vlan.eth.N` devices among `links`.
pub fn link_steps(links: &[String]) -> Vec<Step> {
    links
        .iter()
        .filter(|l| l.starts_with("vlan.eth."))
        .map(|l| step(format!("link {l}"), "ip", &["link", "del", l]))
        .collect()
}

/// The interfaces of the calling thread's namespace.
pub fn links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Everything of aws-node's plumbing this node has, as removal steps in the
/// order that keeps established flows alive once trunkline carries the
/// pods: translation and marking first (no longer on any pod's path), then
/// policy routing, then the pod routes, then devices and aws-node's nft
/// table.
pub fn discover(
    enis: &BTreeSet<String>,
    pods: &[(Ipv4Addr, String)],
) -> Result<Vec<Step>, PlumbingError> {
    let mut steps = Vec::new();
    // A node without iptables has no chains of aws-node's either.
    if let Ok(save) = run_tool("iptables-save", &[], None) {
        steps.extend(iptables_steps(&save));
    }
    steps.extend(rule_steps(&run_tool("ip", &["-j", "rule", "show"], None)?)?);
    steps.extend(route_steps(
        &run_tool("ip", &["-j", "route", "show", "table", "all"], None)?,
        enis,
        pods,
    )?);
    steps.extend(link_steps(&links()));
    if let Ok(tables) = run_tool("nft", &["list", "tables"], None) {
        steps.extend(nft_steps(&tables));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = r#"# Generated by iptables-save
*mangle
:PREROUTING ACCEPT [0:0]
:AWS-CONNMARK-CHAIN-0 - [0:0]
-A PREROUTING -i eni+ -m comment --comment "AWS, outbound connections" -m state --state NEW -j AWS-CONNMARK-CHAIN-0
-A PREROUTING -i eth0 -m comment --comment "AWS, primary ENI" -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark 0x80/0x80
-A PREROUTING -i cali+ -j MARK --set-xmark 0x1/0x1
-A AWS-CONNMARK-CHAIN-0 -d 192.168.0.0/16 -j RETURN
COMMIT
*nat
:POSTROUTING ACCEPT [0:0]
:AWS-SNAT-CHAIN-0 - [0:0]
:KUBE-SERVICES - [0:0]
-A POSTROUTING -m comment --comment "AWS SNAT CHAIN" -j AWS-SNAT-CHAIN-0
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-SERVICES
-A AWS-SNAT-CHAIN-0 ! -o vlan+ -j SNAT --to-source 192.168.31.166 --random-fully
COMMIT
*filter
:INPUT ACCEPT [0:0]
COMMIT
"#;

    #[test]
    fn iptables_removes_only_aws_nodes_rules_and_chains() {
        let steps = iptables_steps(SAVE);
        assert_eq!(steps.len(), 2, "{steps:#?}");
        let mangle = steps[0].stdin.as_deref().unwrap_or_default();
        assert_eq!(
            mangle,
            "*mangle\n\
             -D PREROUTING -i eni+ -m comment --comment \"AWS, outbound connections\" -m state --state NEW -j AWS-CONNMARK-CHAIN-0\n\
             -D PREROUTING -i eth0 -m comment --comment \"AWS, primary ENI\" -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark 0x80/0x80\n\
             -F AWS-CONNMARK-CHAIN-0\n-X AWS-CONNMARK-CHAIN-0\nCOMMIT\n"
        );
        let nat = steps[1].stdin.as_deref().unwrap_or_default();
        assert!(
            nat.contains(
                "-D POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0\n"
            ),
            "{nat}"
        );
        assert!(!nat.contains("KUBE"), "{nat}");
        assert!(
            nat.ends_with("-F AWS-SNAT-CHAIN-0\n-X AWS-SNAT-CHAIN-0\nCOMMIT\n"),
            "{nat}"
        );
    }

    #[test]
    fn ip_rules_of_aws_nodes_shapes_only() {
        let json = r#"[{"priority":0,"src":"all","table":"local"},
          {"priority":10,"src":"all","iif":"vlan.eth.1","table":"101"},
          {"priority":512,"src":"all","dst":"192.168.10.5","dstlen":32,"table":"main"},
          {"priority":512,"src":"all","dst":"10.0.0.0","dstlen":8,"table":"7"},
          {"priority":1024,"src":"all","fwmark":"0x80","fwmask":"0x80","table":"main"},
          {"priority":1536,"src":"192.168.10.9","srclen":32,"table":"2"},
          {"priority":32766,"src":"all","table":"main"}]"#;
        let args: Vec<String> = rule_steps(json)
            .expect("rules")
            .iter()
            .map(|s| s.args.join(" "))
            .collect();
        assert_eq!(
            args,
            [
                "rule del priority 10 iif vlan.eth.1 table 101",
                "rule del priority 512 to 192.168.10.5/32 table main",
                "rule del priority 1024 fwmark 0x80/0x80 table main",
                "rule del priority 1536 from 192.168.10.9/32 table 2",
            ]
        );
    }

    #[test]
    fn routes_of_eni_tables_and_pod_routes() {
        let json = r#"[{"dst":"default","gateway":"192.168.0.1","dev":"eth1","table":"2","flags":[]},
          {"dst":"192.168.0.1","dev":"eth1","table":"2","scope":"link","flags":[]},
          {"dst":"default","gateway":"10.1.1.1","dev":"wg0","table":"51820","flags":[]},
          {"dst":"default","gateway":"192.168.0.1","dev":"eth0","flags":[]},
          {"dst":"192.168.10.5","dev":"enic440f455693","scope":"link","flags":[]},
          {"dst":"192.168.10.6","dev":"other0","scope":"link","flags":[]},
          {"dst":"local 192.168.31.166","dev":"eth0","table":"local","flags":[]}]"#;
        let enis: BTreeSet<String> = ["eth0".into(), "eth1".into()].into();
        let pods = [(
            "192.168.10.5".parse().expect("ip"),
            "enic440f455693".to_string(),
        )];
        let args: Vec<String> = route_steps(json, &enis, &pods)
            .expect("routes")
            .iter()
            .map(|s| s.args.join(" "))
            .collect();
        assert_eq!(
            args,
            [
                "route del default via 192.168.0.1 dev eth1 table 2",
                "route del 192.168.0.1 dev eth1 table 2",
                "route del 192.168.10.5 dev enic440f455693 table main",
            ]
        );
    }

    #[test]
    fn nft_table_and_vlan_devices() {
        let nft = nft_steps("table ip kube-proxy\ntable ip aws-cni\ntable inet aws-cni\n");
        assert_eq!(nft.len(), 2);
        assert_eq!(nft[1].args.join(" "), "delete table inet aws-cni");
        let links = link_steps(&["eth0".into(), "vlan.eth.1".into(), "vlanc440f455693".into()]);
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].args.join(" "), "link del vlan.eth.1");
    }
}
