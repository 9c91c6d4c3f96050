//! aws-node variables trunkline does not honour. A cluster migrating with
//! its aws-node manifest may still set them: the ones whose absence would
//! silently give pods a different network refuse the start; the others
//! are named in a warning with the reason they do not apply.

/// (variable, refuse the start when it is enabled, why it is not honoured)
pub const NOT_HONOURED: &[(&str, bool, &str)] = &[
    ("ENABLE_IPv6", true, "IPv6 pods are not supported"),
    (
        "ENABLE_NETWORK_POLICY",
        true,
        "NetworkPolicy is not enforced yet; starting would silently drop the cluster's policies (aws-network-policy-agent's programs would be replaced on every pod veth)",
    ),
    (
        "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG",
        true,
        "custom networking (ENIConfig subnets) is not supported; pods would get IPs of the node's subnets",
    ),
    (
        "ENABLE_POD_ENI",
        false,
        "branch ENIs are taken from the pod-eni annotation whenever the agent reaches the apiserver",
    ),
    (
        "DISABLE_TCP_EARLY_DEMUX",
        false,
        "not needed: branch pods' replies never pass the host's early demux",
    ),
    (
        "AWS_VPC_K8S_CNI_CONNMARK",
        false,
        "there is no connmark: the data path's conntrack sends replies back the way they came",
    ),
    (
        "AWS_VPC_K8S_CNI_VETHPREFIX",
        false,
        "trunkline names host veths itself",
    ),
    ("AWS_VPC_ENI_MTU", false, "set TRUNKLINE_MTU"),
    ("POD_MTU", false, "set TRUNKLINE_MTU"),
    ("AWS_VPC_K8S_CNI_LOGLEVEL", false, "set RUST_LOG"),
    ("AWS_VPC_K8S_CNI_LOG_FILE", false, "the agent logs to stderr"),
];

/// Whether a refusing variable is on, as aws-node decides it: its boolean
/// rule, and a value that is not a boolean is its default, off.
fn enabled(value: &str) -> bool {
    trunkline_aws::env::parse_bool(value) == Some(true)
}

/// Errors for set variables whose absence would change the pods' network,
/// warnings for the other set ones.
pub fn check(get: impl Fn(&str) -> Option<String>) -> (Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for (name, refuse, why) in NOT_HONOURED {
        let Some(value) = get(name) else { continue };
        if *refuse && enabled(&value) {
            errors.push(format!("{name}={value:?}: {why}"));
        } else if !value.trim().is_empty() {
            warnings.push(format!("{name}={value:?} is not honoured: {why}"));
        }
    }
    (errors, warnings)
}

#[cfg(test)]
mod tests {
    use trunkline_aws::env::vars as env;

    use super::*;

    #[test]
    fn enabled_ipv6_or_custom_networking_refuse_the_start() {
        let (errors, warnings) = check(env(&[
            ("ENABLE_IPv6", "true"),
            ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "TRUE"),
        ]));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("ENABLE_IPv6=\"true\""), "{errors:?}");
        assert!(warnings.is_empty());
    }

    #[test]
    fn enabled_network_policy_refuses_the_start_until_it_is_enforced() {
        let (errors, _) = check(env(&[("ENABLE_NETWORK_POLICY", "true")]));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("NetworkPolicy is not enforced"),
            "{errors:?}"
        );
        let (errors, warnings) = check(env(&[("ENABLE_NETWORK_POLICY", "false")]));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(warnings.len(), 1, "named, as every set variable is");
    }

    #[test]
    fn disabled_or_harmless_ones_only_warn() {
        let (errors, warnings) = check(env(&[
            ("ENABLE_IPv6", "false"),
            ("AWS_VPC_K8S_CNI_CONNMARK", "true"),
            ("POD_MTU", "9001"),
            ("ENABLE_POD_ENI", ""),
        ]));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings.iter().any(|w| w.starts_with("POD_MTU")));
    }
}
