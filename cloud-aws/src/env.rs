//! The aws-node warm-pool variables, parsed with aws-node's defaults so that a
//! cluster's existing ConfigMap/DaemonSet env keeps its meaning.
//!
//! The variables, their defaults and meanings are in README.md §
//! "aws-node environment variables" (checked against [`parse`] by the
//! agent's `the_readme_table_matches_the_parsers`).

use std::time::Duration;

pub const WARM_ENI_TARGET: &str = "WARM_ENI_TARGET";
pub const WARM_IP_TARGET: &str = "WARM_IP_TARGET";
pub const MINIMUM_IP_TARGET: &str = "MINIMUM_IP_TARGET";
pub const ENABLE_PREFIX_DELEGATION: &str = "ENABLE_PREFIX_DELEGATION";
pub const WARM_PREFIX_TARGET: &str = "WARM_PREFIX_TARGET";
pub const IP_COOLDOWN_PERIOD: &str = "IP_COOLDOWN_PERIOD";
pub const MAX_ENI: &str = "MAX_ENI";

/// Every variable this module reads (introspection lists them with values).
pub const ALL: &[&str] = &[
    WARM_ENI_TARGET,
    WARM_IP_TARGET,
    MINIMUM_IP_TARGET,
    ENABLE_PREFIX_DELEGATION,
    WARM_PREFIX_TARGET,
    IP_COOLDOWN_PERIOD,
    MAX_ENI,
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name}={value:?}: {reason}")]
pub struct EnvError {
    pub name: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// The warm-pool targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolEnv {
    pub warm_eni_target: u32,
    /// `None` when unset or 0 (aws-node treats 0 as "not set").
    pub warm_ip_target: Option<u32>,
    pub minimum_ip_target: Option<u32>,
    pub prefix_delegation: bool,
    pub warm_prefix_target: u32,
    pub ip_cooldown: Duration,
    /// `None` = only the instance type's limit.
    pub max_eni: Option<u32>,
}

impl Default for PoolEnv {
    fn default() -> Self {
        Self {
            warm_eni_target: 1,
            warm_ip_target: None,
            minimum_ip_target: None,
            prefix_delegation: false,
            warm_prefix_target: 1,
            ip_cooldown: Duration::from_secs(30),
            max_eni: None,
        }
    }
}

/// An aws-node boolean, read the way aws-node reads its variables (Go's
/// `strconv.ParseBool`): `1 t T TRUE true True` and `0 f F FALSE false
/// False`, surrounding blanks ignored; anything else is `None`. The one
/// boolean rule for every aws-node variable trunkline reads.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn non_empty(get: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn uint(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<u32>, EnvError> {
    match non_empty(get, name) {
        None => Ok(None),
        Some(v) => v.parse::<u32>().map(Some).map_err(|_| EnvError {
            name,
            value: v,
            reason: "expected a non-negative integer",
        }),
    }
}

/// Parses the environment through `get` (`std::env::var(..).ok()` in the agent).
pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<PoolEnv, EnvError> {
    let d = PoolEnv::default();
    let prefix_delegation = match non_empty(&get, ENABLE_PREFIX_DELEGATION).as_deref() {
        None => false,
        Some(v) if parse_bool(v).is_some() => parse_bool(v) == Some(true),
        Some(v) => {
            return Err(EnvError {
                name: ENABLE_PREFIX_DELEGATION,
                value: v.to_string(),
                reason: "expected true or false",
            })
        }
    };
    // MAX_ENI is the one signed variable: aws-node's manifests say -1 for
    // "no limit"; 0 would mean "not even the primary", which we reject.
    let max_eni = match non_empty(&get, MAX_ENI) {
        None => None,
        Some(v) => match v.parse::<i64>() {
            Ok(-1) => None,
            Ok(n) if n >= 1 && n <= i64::from(u32::MAX) => Some(n as u32),
            _ => {
                return Err(EnvError {
                    name: MAX_ENI,
                    value: v,
                    reason: "expected -1 (no limit) or a positive integer",
                })
            }
        },
    };
    Ok(PoolEnv {
        warm_eni_target: uint(&get, WARM_ENI_TARGET)?.unwrap_or(d.warm_eni_target),
        warm_ip_target: uint(&get, WARM_IP_TARGET)?.filter(|n| *n > 0),
        minimum_ip_target: uint(&get, MINIMUM_IP_TARGET)?.filter(|n| *n > 0),
        prefix_delegation,
        warm_prefix_target: uint(&get, WARM_PREFIX_TARGET)?.unwrap_or(d.warm_prefix_target),
        ip_cooldown: uint(&get, IP_COOLDOWN_PERIOD)?
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(d.ip_cooldown),
        max_eni,
    })
}

/// A lookup over fixed name/value pairs, for variables that do not come
/// from this process's environment (tests, a manifest's `env:` list).
pub fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |k| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

/// [`parse`] over the process environment.
pub fn from_process() -> Result<PoolEnv, EnvError> {
    parse(|k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::{vars as env, *};

    #[test]
    fn defaults_are_aws_nodes() {
        let e = parse(env(&[])).unwrap();
        assert_eq!(e.warm_eni_target, 1);
        assert_eq!(e.warm_ip_target, None);
        assert_eq!(e.minimum_ip_target, None);
        assert!(!e.prefix_delegation);
        assert_eq!(e.warm_prefix_target, 1);
        assert_eq!(e.ip_cooldown, Duration::from_secs(30));
        assert_eq!(e.max_eni, None);
        // Empty strings (a ConfigMap key with no value) mean unset too.
        assert_eq!(
            parse(env(&[(WARM_IP_TARGET, ""), (MAX_ENI, " ")])).unwrap(),
            e
        );
    }

    #[test]
    fn values_are_read() {
        let e = parse(env(&[
            (WARM_ENI_TARGET, "0"),
            (WARM_IP_TARGET, "5"),
            (MINIMUM_IP_TARGET, " 10 "),
            (ENABLE_PREFIX_DELEGATION, "TRUE"),
            (WARM_PREFIX_TARGET, "2"),
            (IP_COOLDOWN_PERIOD, "0"),
            (MAX_ENI, "3"),
        ]))
        .unwrap();
        assert_eq!(e.warm_eni_target, 0);
        assert_eq!(e.warm_ip_target, Some(5));
        assert_eq!(e.minimum_ip_target, Some(10));
        assert!(e.prefix_delegation);
        assert_eq!(e.warm_prefix_target, 2);
        assert_eq!(e.ip_cooldown, Duration::ZERO);
        assert_eq!(e.max_eni, Some(3));
        let e = parse(env(&[(WARM_IP_TARGET, "0"), (MAX_ENI, "-1")])).unwrap();
        assert_eq!(e.warm_ip_target, None, "0 means unset, as in aws-node");
        assert_eq!(e.max_eni, None);
    }

    #[test]
    fn invalid_values_are_errors_naming_the_variable() {
        for (name, value) in [
            (WARM_ENI_TARGET, "-1"),
            (WARM_IP_TARGET, "five"),
            (MINIMUM_IP_TARGET, "1.5"),
            (ENABLE_PREFIX_DELEGATION, "yes"),
            (WARM_PREFIX_TARGET, "x"),
            (IP_COOLDOWN_PERIOD, "30s"),
            (MAX_ENI, "0"),
            (MAX_ENI, "-2"),
        ] {
            let err = parse(env(&[(name, value)])).unwrap_err();
            assert_eq!(err.name, name);
            assert!(err.to_string().starts_with(name), "{err}");
        }
    }
}
