//! The aws-node environment variables trunkline honours for SNAT and
//! security groups for pods, parsed with aws-node's defaults, so that a
//! cluster migrates by changing the image, not the manifest.
//!
//! Names, defaults and meanings are in one table, README.md § "aws-node
//! environment variables"; `the_readme_table_matches_the_parsers` checks
//! that every variable read here and in `trunkline_aws::env` has a row whose
//! default, set explicitly, means what leaving it unset means.

pub mod unsupported;

use dataplane_common::SnatMode;
use ipnet::Ipv4Net;
use trunkline_aws::env::parse_bool;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("{name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgMode {
    Strict,
    Standard,
}

/// What the environment says about SNAT and security-group enforcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatEnv {
    pub mode: SnatMode,
    pub excluded: Vec<Ipv4Net>,
    /// Entries of `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS` that were skipped, with why.
    pub skipped: Vec<String>,
    pub port_range: (u16, u16),
    pub sg_mode: SgMode,
}

pub const EXTERNALSNAT: &str = "AWS_VPC_K8S_CNI_EXTERNALSNAT";
pub const RANDOMIZESNAT: &str = "AWS_VPC_K8S_CNI_RANDOMIZESNAT";
pub const EXCLUDE_SNAT_CIDRS: &str = "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS";
pub const SG_ENFORCING_MODE: &str = "POD_SECURITY_GROUP_ENFORCING_MODE";
pub const PORT_RANGE: &str = "TRUNKLINE_SNAT_PORT_RANGE";

fn invalid(name: &'static str, value: &str, reason: &'static str) -> EnvError {
    EnvError::Invalid {
        name,
        value: value.to_string(),
        reason,
    }
}

/// Default SNAT ports: the larger side of 1024–65535 outside the host's
/// ephemeral range (`ip_local_port_range`), so the node's own sockets and
/// SNAT never want the same port (conflicts that remain are avoided per
/// destination by the data path). With Linux's default 32768–60999 that is
/// 1024–32767: 31,744 ports per destination, where netfilter's SNAT has
/// 1024–65535. (The side above the ephemeral range, 61000–65535, would
/// leave only 4,536, and closed flows hold their port until GC.)
pub fn default_port_range(host_ephemeral: Option<(u16, u16)>) -> (u16, u16) {
    match host_ephemeral {
        Some((lo, hi)) if hi >= lo && hi < 65535 => {
            let below = u32::from(lo).saturating_sub(1024);
            let above = 65535 - u32::from(hi);
            if below >= above && below > 0 {
                (1024, lo - 1)
            } else {
                (hi + 1, 65535)
            }
        }
        _ => (1024, 65535),
    }
}

/// Parses the environment through `get` (`std::env::var` in the agent).
pub fn parse(
    get: impl Fn(&str) -> Option<String>,
    host_ephemeral: Option<(u16, u16)>,
) -> Result<SnatEnv, EnvError> {
    let external = match get(EXTERNALSNAT).as_deref().map(str::trim) {
        None | Some("") => false,
        Some(v) => {
            parse_bool(v).ok_or_else(|| invalid(EXTERNALSNAT, v, "expected true or false"))?
        }
    };
    let mode = match get(RANDOMIZESNAT).as_deref().map(str::trim) {
        None | Some("") | Some("prng") => SnatMode::Random,
        Some("hashrandom") => SnatMode::Hash,
        Some("none") => SnatMode::Sequential,
        Some(v) => {
            return Err(invalid(
                RANDOMIZESNAT,
                v,
                "expected prng, hashrandom or none",
            ))
        }
    };
    let mut excluded = Vec::new();
    let mut skipped = Vec::new();
    for entry in get(EXCLUDE_SNAT_CIDRS)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        match entry.parse::<Ipv4Net>() {
            Ok(net) => excluded.push(net.trunc()),
            Err(_) if entry.contains(':') => skipped.push(format!("{entry}: IPv6 is not SNATed")),
            Err(_) => skipped.push(format!("{entry}: not an IPv4 CIDR")),
        }
    }
    let sg_mode = match get(SG_ENFORCING_MODE).as_deref().map(str::trim) {
        None | Some("") | Some("strict") => SgMode::Strict,
        Some("standard") => SgMode::Standard,
        Some(v) => return Err(invalid(SG_ENFORCING_MODE, v, "expected strict or standard")),
    };
    let port_range = match get(PORT_RANGE) {
        None => default_port_range(host_ephemeral),
        Some(v) => parse_range(&v).ok_or_else(|| {
            invalid(
                PORT_RANGE,
                &v,
                "expected MIN-MAX with 1 <= MIN <= MAX <= 65535",
            )
        })?,
    };
    Ok(SnatEnv {
        mode: if external { SnatMode::Off } else { mode },
        excluded,
        skipped,
        port_range,
        sg_mode,
    })
}

fn parse_range(v: &str) -> Option<(u16, u16)> {
    let (lo, hi) = v.trim().split_once('-')?;
    let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    (lo >= 1 && lo <= hi).then_some((lo, hi))
}

/// The host's ephemeral port range, from `/proc/sys/net/ipv4/ip_local_port_range`.
pub fn host_ephemeral_range() -> Option<(u16, u16)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

#[cfg(test)]
mod tests {
    use trunkline_aws::env::vars as env;

    use super::*;

    #[test]
    fn defaults_match_aws_node() {
        let e = parse(env(&[]), Some((32768, 60999))).unwrap();
        assert_eq!(e.mode, SnatMode::Random);
        assert!(e.excluded.is_empty());
        assert_eq!(e.sg_mode, SgMode::Strict);
        assert_eq!(
            e.port_range,
            (1024, 32767),
            "the host's ephemeral ports are left to it"
        );
        assert_eq!(parse(env(&[]), None).unwrap().port_range, (1024, 65535));
        assert_eq!(
            default_port_range(Some((1024, 40000))),
            (40001, 65535),
            "the larger side"
        );
    }

    #[test]
    fn external_snat_wins_over_the_randomisation() {
        let e = parse(
            env(&[(EXTERNALSNAT, "true"), (RANDOMIZESNAT, "hashrandom")]),
            None,
        )
        .unwrap();
        assert_eq!(e.mode, SnatMode::Off);
        assert_eq!(
            parse(env(&[(RANDOMIZESNAT, "none")]), None).unwrap().mode,
            SnatMode::Sequential
        );
        assert_eq!(
            parse(env(&[(RANDOMIZESNAT, "hashrandom")]), None)
                .unwrap()
                .mode,
            SnatMode::Hash
        );
    }

    #[test]
    fn exclusions_skip_invalid_and_ipv6_entries_with_a_reason() {
        let e = parse(
            env(&[(
                EXCLUDE_SNAT_CIDRS,
                "10.0.0.0/8, 2001:db8::/32,nonsense,172.16.5.7/16,,",
            )]),
            None,
        )
        .unwrap();
        assert_eq!(
            e.excluded,
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "172.16.0.0/16".parse().unwrap()
            ]
        );
        assert_eq!(e.skipped.len(), 2);
        assert!(e.skipped[0].contains("IPv6"), "{:?}", e.skipped);
        assert!(e.skipped[1].contains("nonsense"), "{:?}", e.skipped);
    }

    #[test]
    fn unknown_values_are_errors_naming_the_variable() {
        for (name, value) in [
            (EXTERNALSNAT, "yes"),
            (RANDOMIZESNAT, "random"),
            (SG_ENFORCING_MODE, "lax"),
            (PORT_RANGE, "9-3"),
        ] {
            let err = parse(env(&[(name, value)]), None).unwrap_err();
            assert!(err.to_string().starts_with(name), "{err}");
        }
        assert_eq!(
            parse(env(&[(PORT_RANGE, "40000-40099")]), None)
                .unwrap()
                .port_range,
            (40000, 40099)
        );
        assert_eq!(
            parse(env(&[(SG_ENFORCING_MODE, "standard")]), None)
                .unwrap()
                .sg_mode,
            SgMode::Standard
        );
    }
}

/// The README's table of aws-node variables is the only place their
/// defaults are written for users; this keeps it and the parsers one thing.
#[cfg(test)]
mod readme_table {
    use std::collections::HashMap;

    const README: &str = include_str!("../../../README.md");

    /// `variable -> default` of each row of the README's aws-node table;
    /// a default that is not one backticked value (`unset`, `empty`) is None.
    fn rows() -> HashMap<String, Option<String>> {
        let section = README
            .split("\n## aws-node environment variables\n")
            .nth(1)
            .expect("README has the aws-node section");
        let section = section.split("\n## ").next().unwrap_or(section);
        let tick = |cell: &str| {
            let cell = cell.trim();
            (cell.starts_with('`') && cell.ends_with('`') && cell.matches('`').count() == 2)
                .then(|| cell.trim_matches('`').to_string())
        };
        section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .flat_map(|l| {
                let cells: Vec<&str> = l.split('|').collect();
                let default = cells.get(2).and_then(|c| tick(c));
                // A row may name several variables: "`A`, `B`".
                cells[1]
                    .split(',')
                    .filter_map(|n| n.split_whitespace().next().and_then(tick))
                    .map(|n| (n, default.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn the_readme_table_matches_the_parsers() {
        let rows = rows();
        let snat = [
            super::EXTERNALSNAT,
            super::RANDOMIZESNAT,
            super::EXCLUDE_SNAT_CIDRS,
            super::SG_ENFORCING_MODE,
        ];
        let ephemeral = Some((32768, 60999));
        let unset_snat = super::parse(|_| None, ephemeral).expect("defaults parse");
        let unset_pool = trunkline_aws::env::parse(|_| None).expect("defaults parse");
        let mut checked = 0;
        for name in snat.iter().chain(trunkline_aws::env::ALL) {
            let default = rows
                .get(*name)
                .unwrap_or_else(|| panic!("README's aws-node table has no row for {name}"));
            let Some(default) = default else { continue };
            let set = |n: &str| (n == *name).then(|| default.clone());
            if snat.contains(name) {
                assert_eq!(
                    super::parse(set, ephemeral).expect("README default parses"),
                    unset_snat,
                    "{name}={default} (README's default) differs from unset"
                );
            } else {
                assert_eq!(
                    trunkline_aws::env::parse(set).expect("README default parses"),
                    unset_pool,
                    "{name}={default} (README's default) differs from unset"
                );
            }
            checked += 1;
        }
        assert!(checked >= 8, "only {checked} defaults were comparable");
    }
}
