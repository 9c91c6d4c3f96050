//! AWS mode's service CIDRs: from the cluster's ServiceCIDR API where it is
//! served (Kubernetes 1.33+), else from `TRUNKLINE_SERVICE_CIDRS`, else a
//! refusal that says what to set. The agent's own start-up function,
//! against the fixture apiserver over HTTP in a namespace of its own.

use anyhow::Result;
use ipnet::Ipv4Net;
use testbed::{
    fakes::kube_api::FakeApi,
    topology::{netns::Netns, sim_node::TempDir},
};
use trunkline_agent::cloud::aws::cluster_service_cidrs;
use trunkline_kube::ApiAccess;

fn cidrs(list: &[&str]) -> Vec<Ipv4Net> {
    list.iter().map(|s| s.parse().expect("a CIDR")).collect()
}

/// `cluster_service_cidrs` run inside `ns` (where the apiserver listens).
fn resolve(
    ns: &Netns,
    access: Option<ApiAccess>,
    configured: Option<&str>,
) -> Result<Vec<Ipv4Net>> {
    let configured = configured.map(str::to_string);
    ns.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        cluster_service_cidrs(&rt, access, configured.as_deref())
    })
}

struct Cluster {
    ns: Netns,
    api: FakeApi,
    access: ApiAccess,
    _dir: TempDir,
}

fn cluster() -> Cluster {
    let ns = Netns::new("svccidr").expect("netns");
    let api = FakeApi::start_in(&ns).expect("fixture apiserver");
    let dir = TempDir::new("svccidr").expect("tempdir");
    let kubeconfig = api.write_kubeconfig(dir.path()).expect("kubeconfig");
    Cluster {
        ns,
        api,
        access: ApiAccess::Kubeconfig(kubeconfig),
        _dir: dir,
    }
}

#[test]
fn a_cluster_that_serves_the_api_gives_every_ipv4_service_cidr() {
    let c = cluster();
    c.api.set_service_cidrs(Some(&[
        ("kubernetes", &["10.100.0.0/16", "fd00:10::/108"]),
        ("grown", &["172.20.0.0/16"]),
    ]));
    let got = resolve(&c.ns, Some(c.access.clone()), None).expect("from the API");
    assert_eq!(got, cidrs(&["10.100.0.0/16", "172.20.0.0/16"]));
    // The cluster's word wins over a stale configured value.
    let got = resolve(&c.ns, Some(c.access.clone()), Some("10.200.0.0/16")).expect("from the API");
    assert_eq!(got, cidrs(&["10.100.0.0/16", "172.20.0.0/16"]));
}

#[test]
fn an_older_cluster_falls_back_to_the_configured_value_or_refuses() {
    let c = cluster(); // serves no ServiceCIDR API: a 404, as before 1.33
    let got = resolve(&c.ns, Some(c.access.clone()), Some("10.100.0.0/16")).expect("configured");
    assert_eq!(got, cidrs(&["10.100.0.0/16"]));
    let refused = resolve(&c.ns, Some(c.access.clone()), Some("")).expect_err("nothing to go on");
    let msg = format!("{refused:#}");
    assert!(
        msg.contains("does not serve the ServiceCIDR API") && msg.contains("describe-cluster"),
        "{msg}"
    );
}

#[test]
fn an_unreachable_apiserver_falls_back_to_the_configured_value_or_refuses() {
    let mut c = cluster();
    c.api
        .set_service_cidrs(Some(&[("kubernetes", &["10.100.0.0/16"])]));
    c.api.stop();
    let got = resolve(&c.ns, Some(c.access.clone()), Some("172.20.0.0/16")).expect("configured");
    assert_eq!(got, cidrs(&["172.20.0.0/16"]));
    let refused = resolve(&c.ns, Some(c.access.clone()), None).expect_err("nothing to go on");
    let msg = format!("{refused:#}");
    assert!(
        msg.contains("listing ServiceCIDRs") && msg.contains("describe-cluster"),
        "{msg}"
    );
    // Without any apiserver (local mode) the configured value is all there is.
    let refused = resolve(&c.ns, None, None).expect_err("nothing to go on");
    assert!(
        format!("{refused:#}").contains("no apiserver to ask"),
        "{refused:#}"
    );
}
