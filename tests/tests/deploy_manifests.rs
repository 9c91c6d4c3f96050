//! The deployment as a cluster admin applies it (`deploy/`): every manifest
//! parses into its Kubernetes type and round-trips without losing a field
//! (a misspelt key would silently vanish on a real apply), the ClusterRole
//! grants exactly the access the agent's code lists, and the image recipe
//! and the manifests agree with the binaries' defaults.

use std::path::{Path, PathBuf};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    serde::{de::DeserializeOwned, Serialize},
};
use serde_json::Value;
use trunkline_agent::{aws_node_env, rbac::API_ACCESS};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn yaml(name: &str) -> Value {
    let path = deploy_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Parses `v` as `T` and serialises it back: equal only if every field was known.
fn round_trip<T: DeserializeOwned + Serialize>(name: &str, v: &Value) -> T {
    let typed: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let back = serde_json::to_value(&typed).expect("serialise");
    assert_eq!(
        &back, v,
        "{name}: a field was lost or changed in the round trip (misspelt key?)"
    );
    typed
}

#[test]
fn every_manifest_is_a_valid_kubernetes_object_without_unknown_fields() {
    round_trip::<ServiceAccount>("serviceaccount.yaml", &yaml("serviceaccount.yaml"));
    round_trip::<ClusterRole>("clusterrole.yaml", &yaml("clusterrole.yaml"));
    round_trip::<ClusterRoleBinding>("clusterrolebinding.yaml", &yaml("clusterrolebinding.yaml"));
    round_trip::<ConfigMap>("configmap.yaml", &yaml("configmap.yaml"));
    round_trip::<DaemonSet>("daemonset.yaml", &yaml("daemonset.yaml"));
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let k = yaml("kustomization.yaml");
    let mut listed: Vec<String> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let mut present: Vec<String> = std::fs::read_dir(deploy_dir())
        .expect("deploy/")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    listed.sort();
    present.sort();
    assert_eq!(listed, present);
}

#[test]
fn rbac_grants_exactly_what_the_agent_calls() {
    let role: ClusterRole = round_trip("clusterrole.yaml", &yaml("clusterrole.yaml"));
    let mut granted: Vec<(String, String, Vec<String>)> = role
        .rules
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| {
            let groups = r.api_groups.unwrap_or_default();
            let resources = r.resources.unwrap_or_default();
            let verbs = r.verbs;
            groups.into_iter().flat_map(move |g| {
                let verbs = verbs.clone();
                resources
                    .clone()
                    .into_iter()
                    .map(move |res| (g.clone(), res, verbs.clone()))
            })
        })
        .collect();
    let mut wanted: Vec<(String, String, Vec<String>)> = API_ACCESS
        .iter()
        .map(|(g, r, v)| {
            (
                g.to_string(),
                r.to_string(),
                v.iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect();
    granted.sort();
    wanted.sort();
    assert_eq!(granted, wanted);
}

#[test]
fn image_and_manifests_agree_with_the_binaries_defaults() {
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("Dockerfile");
    for bin in [
        "/usr/local/bin/trunkline-agent",
        "/usr/local/bin/trunkline-cni",
    ] {
        assert!(
            dockerfile
                .lines()
                .any(|l| l.starts_with("COPY") && l.trim_end().ends_with(bin)),
            "the image installs {bin}"
        );
    }
    let ds: DaemonSet = round_trip("daemonset.yaml", &yaml("daemonset.yaml"));
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    let agent = &pod.containers[0];
    let command = agent.command.clone().unwrap_or_default();
    assert_eq!(
        command.first().map(String::as_str),
        Some("/usr/local/bin/trunkline-agent")
    );
    let caps = agent
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    assert!(
        caps.iter().any(|c| c == "BPF") && caps.iter().any(|c| c == "NET_ADMIN"),
        "{caps:?}"
    );
    assert!(
        agent.security_context.as_ref().and_then(|s| s.privileged) != Some(true),
        "not privileged"
    );
    // The agent's default paths are the mounted ones.
    let mounts: Vec<String> = agent
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_path)
        .collect();
    for default in [
        "/sys/fs/bpf/trunkline",
        "/run/trunkline/agent.sock",
        "/var/lib/trunkline",
        trunkline_agent::migrate::aws_node_checkpoint::DEFAULT_PATH,
    ] {
        assert!(
            mounts.iter().any(|m| default.starts_with(m.as_str())),
            "{default} is under a mount: {mounts:?}"
        );
    }
    // The init step installs where kubelet looks, through the mounts.
    let init = &pod.init_containers.expect("init containers")[0];
    let args = init.command.clone().unwrap_or_default().join(" ");
    assert!(
        args.contains("install-cni")
            && args.contains("/host/opt/cni/bin")
            && args.contains("/host/etc/cni/net.d"),
        "{args}"
    );
    let host_paths: Vec<String> = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.host_path.map(|h| h.path))
        .collect();
    for p in [
        "/opt/cni/bin",
        "/etc/cni/net.d",
        "/sys/fs/bpf",
        "/run/trunkline",
        "/var/lib/trunkline",
        "/var/run/aws-node",
    ] {
        assert!(
            host_paths.iter().any(|h| h == p),
            "hostPath {p}: {host_paths:?}"
        );
    }
    // The conflist the init step writes points the plugin at the agent's socket.
    let conflist: Value = serde_json::from_str(&trunkline_agent::install_cni::conflist(
        9001,
        "/run/trunkline/agent.sock",
    ))
    .expect("conflist");
    assert_eq!(
        conflist["plugins"][0]["agentSocket"],
        "/run/trunkline/agent.sock"
    );
}

#[test]
fn the_configmap_holds_only_variables_the_agent_reads() {
    let cm: ConfigMap = round_trip("configmap.yaml", &yaml("configmap.yaml"));
    let known = [
        aws_node_env::EXTERNALSNAT,
        aws_node_env::RANDOMIZESNAT,
        aws_node_env::EXCLUDE_SNAT_CIDRS,
        aws_node_env::SG_ENFORCING_MODE,
        aws_node_env::PORT_RANGE,
        "TRUNKLINE_MTU",
        trunkline_agent::cloud::aws::SERVICE_CIDRS_ENV,
    ];
    let data = cm.data.unwrap_or_default();
    for key in data.keys() {
        assert!(
            known.contains(&key.as_str()) || trunkline_aws::env::ALL.contains(&key.as_str()),
            "{key} is not read by the agent"
        );
    }
    // And the values parse as the agent would parse them.
    let env = aws_node_env::parse(|k| data.get(k).cloned(), None).expect("valid settings");
    let pool = trunkline_aws::env::parse(|k| data.get(k).cloned()).expect("valid pool settings");
    assert_eq!(
        pool,
        trunkline_aws::env::PoolEnv::default(),
        "aws-node's defaults"
    );
    assert_eq!(env.sg_mode, aws_node_env::SgMode::Strict);
    // The service CIDR is the cluster's to say: shipped empty, which the
    // agent refuses with what to set, rather than SNATing ClusterIP traffic.
    let services = data
        .get(trunkline_agent::cloud::aws::SERVICE_CIDRS_ENV)
        .expect("the ConfigMap names TRUNKLINE_SERVICE_CIDRS");
    let refused = trunkline_agent::cloud::aws::service_cidrs(Some(services))
        .expect_err("an empty service CIDR refuses the start");
    assert!(
        format!("{refused:#}").contains("describe-cluster"),
        "{refused:#}"
    );
    assert!(trunkline_agent::cloud::aws::service_cidrs(Some("172.20.0.0/16")).is_ok());
}
