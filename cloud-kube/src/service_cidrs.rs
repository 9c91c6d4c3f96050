//! The cluster's service CIDRs from the `networking.k8s.io/v1` ServiceCIDR
//! API (Kubernetes 1.33+). The apiserver creates the object `kubernetes`
//! from its `--service-cluster-ip-range`, and an administrator may add more
//! to grow the range; every one of them is a range ClusterIPs come from, so
//! all are returned. Older clusters do not serve the API.

use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::{api::ListParams, Api, Client};

use crate::{client, ApiAccess, KubeError};

/// What the apiserver says of its service CIDRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceCidrs {
    /// The API is served: the IPv4 CIDRs of every ServiceCIDR object
    /// (IPv6 ones are left out: trunkline is IPv4 only).
    Served(Vec<Ipv4Net>),
    /// The cluster does not serve the API (older than 1.33, or disabled).
    NotServed,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceCidrError {
    #[error(transparent)]
    Client(#[from] KubeError),
    #[error("listing ServiceCIDRs: {0}")]
    List(#[source] kube::Error),
    #[error("listing ServiceCIDRs: no answer within {0:?}")]
    Timeout(Duration),
    #[error("ServiceCIDR {name}: {cidr:?} is not a CIDR")]
    Invalid { name: String, cidr: String },
}

/// Lists the cluster's ServiceCIDRs through `access`, bounded by `timeout`.
pub async fn service_cidrs(
    access: &ApiAccess,
    timeout: Duration,
) -> Result<ServiceCidrs, ServiceCidrError> {
    let client = client(access).await?;
    match tokio::time::timeout(timeout, list(client)).await {
        Ok(r) => r,
        Err(_) => Err(ServiceCidrError::Timeout(timeout)),
    }
}

async fn list(client: Client) -> Result<ServiceCidrs, ServiceCidrError> {
    let api: Api<ServiceCIDR> = Api::all(client);
    match api.list(&ListParams::default()).await {
        Ok(list) => {
            let objects = list.items.iter().map(|o| {
                let name = o.metadata.name.clone().unwrap_or_default();
                let cidrs = o.spec.as_ref().and_then(|s| s.cidrs.clone());
                (name, cidrs.unwrap_or_default())
            });
            ipv4_of(objects).map(ServiceCidrs::Served)
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(ServiceCidrs::NotServed),
        Err(e) => Err(ServiceCidrError::List(e)),
    }
}

/// The IPv4 CIDRs of `(object name, spec.cidrs)` pairs, sorted and without
/// repeats; an unparsable entry is an error (the apiserver validates them,
/// so one means something else answered).
fn ipv4_of(
    objects: impl Iterator<Item = (String, Vec<String>)>,
) -> Result<Vec<Ipv4Net>, ServiceCidrError> {
    let mut out = Vec::new();
    for (name, cidrs) in objects {
        for cidr in cidrs {
            match cidr.parse::<ipnet::IpNet>() {
                Ok(ipnet::IpNet::V4(n)) => out.push(n.trunc()),
                Ok(ipnet::IpNet::V6(_)) => {}
                Err(_) => return Err(ServiceCidrError::Invalid { name, cidr }),
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_cidrs_of_every_object_are_kept_and_ipv6_left_out() {
        let objects = vec![
            (
                "kubernetes".to_string(),
                vec!["10.100.0.0/16".to_string(), "fd00:10::/108".to_string()],
            ),
            ("extra".to_string(), vec!["172.20.0.1/16".to_string()]),
            ("again".to_string(), vec!["10.100.0.0/16".to_string()]),
        ];
        let got = ipv4_of(objects.into_iter()).expect("valid");
        let want: Vec<Ipv4Net> = vec![
            "10.100.0.0/16".parse().expect("cidr"),
            "172.20.0.0/16".parse().expect("cidr"),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn an_unparsable_cidr_names_its_object() {
        let objects = vec![("odd".to_string(), vec!["10.100.0.0/33".to_string()])];
        let e = ipv4_of(objects.into_iter()).unwrap_err().to_string();
        assert!(e.contains("odd") && e.contains("10.100.0.0/33"), "{e}");
    }
}
