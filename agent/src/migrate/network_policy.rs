//! aws-network-policy-agent on the node. trunkline does not enforce
//! Kubernetes NetworkPolicy yet, so migrating a node where that agent
//! enforces policies would drop them without a word: migration refuses.
//! The agent pins the TC programs it attaches to a pod's host veth as
//! `<dir>/<pod identifier>_handle_ingress` and `..._handle_egress`, `dir`
//! being `/sys/fs/bpf/globals/aws/programs`; a pin exists exactly while a
//! policy selects the pod.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use trunkline_kube::{
    policy_endpoints::{selecting_node, PolicyEndpoints, SelectedPod},
    ApiAccess,
};

/// Where aws-network-policy-agent pins its per-pod programs.
pub const DEFAULT_PINS: &str = "/sys/fs/bpf/globals/aws/programs";

const SUFFIXES: [&str; 2] = ["_handle_ingress", "_handle_egress"];

/// The pod identifiers (`<name prefix>-<namespace>`) whose programs are
/// pinned in `dir`, sorted, each once; none when `dir` does not exist.
pub fn enforced_pods(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut pods = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pod) = SUFFIXES.iter().find_map(|s| name.strip_suffix(s)) {
            pods.push(pod.to_string());
        }
    }
    pods.sort();
    pods.dedup();
    Ok(pods)
}

/// The blocker for `pods` found in `dir`.
pub fn blocker(dir: &Path, pods: &[String]) -> String {
    format!(
        "aws-network-policy-agent enforces NetworkPolicy on {} pod(s) of this node ({}; programs \
         pinned in {}): trunkline does not enforce NetworkPolicy yet, and migrating would drop \
         those policies. Keep this node on aws-node until it does, or remove the policies that \
         select these pods first",
        pods.len(),
        pods.join(", "),
        dir.display()
    )
}

/// How long the check waits for the apiserver.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// What the Kubernetes API says of the PolicyEndpoints that select this
/// node's pods (the controller's view, which the node agent's pins follow).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiCheck {
    /// Pods of this node that policies select: a blocker.
    Selected(Vec<SelectedPod>),
    /// The API serves PolicyEndpoints and none selects a pod of this node,
    /// or it serves none (no network policy controller).
    Clear,
    /// Not asked (no API configured) or no answer: a warning; the pins
    /// decide alone.
    NotChecked(String),
}

/// Asks the API, if there is one, about the node with IP `node_ip`.
pub async fn check_api(access: Option<ApiAccess>, node_ip: Ipv4Addr) -> ApiCheck {
    let Some(access) = access else {
        return ApiCheck::NotChecked(
            "no Kubernetes API configured (no kubeconfig, not in a cluster)".into(),
        );
    };
    match selecting_node(&access, node_ip, API_TIMEOUT).await {
        Ok(PolicyEndpoints::Served(pods)) if !pods.is_empty() => ApiCheck::Selected(pods),
        Ok(_) => ApiCheck::Clear,
        Err(e) => ApiCheck::NotChecked(e.to_string()),
    }
}

/// [`check_api`] for callers outside a runtime (the `migrate` command).
pub fn check_api_blocking(access: Option<ApiAccess>, node_ip: Ipv4Addr) -> ApiCheck {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(check_api(access, node_ip)),
        Err(e) => ApiCheck::NotChecked(format!("starting a runtime: {e}")),
    }
}

/// The blocker, or the warning, `check` makes of the API's answer.
pub fn api_finding(check: &ApiCheck) -> Option<Result<String, String>> {
    match check {
        ApiCheck::Clear => None,
        ApiCheck::Selected(pods) => {
            let listed: Vec<String> = pods
                .iter()
                .map(|p| format!("{} by {}", p.pod, p.policy_endpoint))
                .collect();
            Some(Err(format!(
                "NetworkPolicy selects {} pod(s) of this node (PolicyEndpoints: {}): trunkline \
                 does not enforce NetworkPolicy yet, and migrating would drop those policies. \
                 Keep this node on aws-node until it does, or remove the policies that select \
                 these pods first",
                pods.len(),
                listed.join(", ")
            )))
        }
        ApiCheck::NotChecked(why) => Some(Ok(format!(
            "PolicyEndpoints not checked ({why}); only aws-network-policy-agent's pinned \
             programs were"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_programs_name_their_pods_once() {
        let dir = std::env::temp_dir().join(format!("tl-np-pins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in [
            "web-default_handle_ingress",
            "web-default_handle_egress",
            "db-prod_handle_egress",
            "unrelated_map",
        ] {
            std::fs::write(dir.join(f), b"").expect("write");
        }
        let pods = enforced_pods(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            pods.expect("readable"),
            vec!["db-prod".to_string(), "web-default".to_string()]
        );
        assert!(enforced_pods(Path::new("/nonexistent/tl-np"))
            .expect("absent dir")
            .is_empty());
    }

    #[test]
    fn the_blocker_says_why_and_what_to_do() {
        let b = blocker(Path::new("/x"), &["web-default".into()]);
        assert!(
            b.contains("web-default") && b.contains("does not enforce NetworkPolicy"),
            "{b}"
        );
    }
}
