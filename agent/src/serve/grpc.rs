//! The `trunkline.v1.Agent` gRPC service trunkline-cni calls.

use std::{net::Ipv4Addr, time::Instant};

use tonic::{Request, Response, Status};
use trunkline_rpc::{v1, POD_GATEWAY};

use crate::{
    agent::Shared,
    cloud::kube::BranchSource,
    pods::ipam::IpamError,
    pods::{AddPod, BranchChoice, PodError},
    serve::metrics::Metrics,
};

pub struct AgentService {
    agent: Shared,
    metrics: std::sync::Arc<Metrics>,
    /// Branch ENIs from Kubernetes; `None` in local mode (node file).
    branches: Option<std::sync::Arc<BranchSource>>,
}

impl AgentService {
    pub fn new(agent: Shared, metrics: std::sync::Arc<Metrics>) -> Self {
        Self {
            agent,
            metrics,
            branches: None,
        }
    }

    pub fn with_branches(mut self, branches: Option<std::sync::Arc<BranchSource>>) -> Self {
        self.branches = branches;
        self
    }

    fn observe<T>(&self, method: &str, start: Instant, r: &Result<T, Status>) {
        self.metrics.observe_rpc(method, start.elapsed(), r.is_ok());
    }
}

fn status_of(e: PodError) -> Status {
    match e {
        PodError::Invalid(_) | PodError::NoVeth(_) => Status::invalid_argument(e.to_string()),
        PodError::Ipam(IpamError::Exhausted { .. }) => Status::resource_exhausted(e.to_string()),
        PodError::Ipam(_) | PodError::Conflict(_) => Status::failed_precondition(e.to_string()),
        PodError::Checkpoint(_) | PodError::Dataplane(_) | PodError::RpFilter { .. } => {
            Status::internal(e.to_string())
        }
    }
}

#[tonic::async_trait]
impl v1::agent_server::Agent for AgentService {
    async fn add_pod(
        &self,
        req: Request<v1::AddPodRequest>,
    ) -> Result<Response<v1::AddPodReply>, Status> {
        let start = Instant::now();
        let r = req.into_inner();
        let pod = r.pod.unwrap_or_default();
        let add = AddPod {
            container_id: r.container_id,
            ifname: r.ifname,
            namespace: pod.namespace,
            name: pod.name,
            uid: pod.uid,
            netns: r.netns,
            host_veth: r.host_veth_name,
            host_ifindex: r.host_veth_ifindex,
            pod_mac: r.pod_mac,
            branch: BranchChoice::NodeSpec,
        };
        // The branch decision may wait for an annotation: before the lock,
        // so other pods' RPCs go on meanwhile.
        let decided = match &self.branches {
            None => None,
            Some(src) => match src.decide(&add.namespace, &add.name).await {
                Ok(b) => Some(b),
                Err(status) => {
                    tracing::warn!(pod = %format!("{}/{}", add.namespace, add.name), error = %status.message(), "AddPod failed");
                    let result = Err(status);
                    self.observe("AddPod", start, &result);
                    return result;
                }
            },
        };
        let result = {
            let mut agent = self.agent.lock();
            let mut add = add;
            if let (Some(src), Some(b)) = (&self.branches, decided) {
                if !src.still(&add.namespace, &add.name, &b) {
                    let result = Err(Status::unavailable(format!(
                        "the pod-eni annotation of {}/{} changed during AddPod; retry",
                        add.namespace, add.name
                    )));
                    drop(agent);
                    self.observe("AddPod", start, &result);
                    return result;
                }
                add.branch = BranchChoice::Decided(b);
            }
            let mtu = agent.config().mtu;
            agent
                .add_pod(add)
                .map(|rec| v1::AddPodReply {
                    ip: rec.ip.to_string(),
                    gateway: POD_GATEWAY.to_string(),
                    mtu,
                    eni: rec.eni,
                    vlan: u32::from(rec.vlan),
                })
                .map_err(status_of)
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e.message(), "AddPod failed");
        }
        self.observe("AddPod", start, &result);
        result.map(Response::new)
    }

    async fn del_pod(
        &self,
        req: Request<v1::DelPodRequest>,
    ) -> Result<Response<v1::DelPodReply>, Status> {
        let start = Instant::now();
        let r = req.into_inner();
        let result = {
            self.agent
                .lock()
                .del_pod(&r.container_id, &r.ifname)
                .map(|rec| v1::DelPodReply {
                    released: rec.is_some(),
                    ip: rec.map(|r| r.ip.to_string()).unwrap_or_default(),
                })
                .map_err(status_of)
        };
        self.observe("DelPod", start, &result);
        result.map(Response::new)
    }

    async fn check_pod(
        &self,
        req: Request<v1::CheckPodRequest>,
    ) -> Result<Response<v1::CheckPodReply>, Status> {
        let start = Instant::now();
        let r = req.into_inner();
        let ip = if r.ip.is_empty() {
            None
        } else {
            Some(
                r.ip.parse::<Ipv4Addr>()
                    .map_err(|_| Status::invalid_argument(format!("ip {:?} is not IPv4", r.ip)))?,
            )
        };
        let verdict = self.agent.lock().check_pod(&r.container_id, &r.ifname, ip);
        let result = Ok(match verdict {
            Ok(()) => v1::CheckPodReply {
                ok: true,
                reason: String::new(),
            },
            Err(reason) => v1::CheckPodReply { ok: false, reason },
        });
        self.observe("CheckPod", start, &result);
        result.map(Response::new)
    }

    async fn status(
        &self,
        _req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusReply>, Status> {
        let free = self.agent.ipam().free_count();
        let free_ips = u32::try_from(free).unwrap_or(u32::MAX);
        Ok(Response::new(v1::StatusReply {
            ready: free > 0,
            free_ips,
            reason: if free > 0 {
                String::new()
            } else {
                "no free pod IP on this node (all in use or cooling down)".into()
            },
        }))
    }

    async fn gc(&self, req: Request<v1::GcRequest>) -> Result<Response<v1::GcReply>, Status> {
        let start = Instant::now();
        let valid: Vec<(String, String)> = req
            .into_inner()
            .valid
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        let result = {
            self.agent
                .lock()
                .gc_pods(&valid)
                .map(|n| v1::GcReply {
                    released: u32::try_from(n).unwrap_or(u32::MAX),
                })
                .map_err(status_of)
        };
        self.observe("Gc", start, &result);
        result.map(Response::new)
    }
}
