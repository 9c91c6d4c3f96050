//! ADD, DEL, CHECK, STATUS, GC and VERSION.

use std::net::Ipv4Addr;

use serde_json::{json, Value};
use trunkline_rpc::v1;

use crate::{
    agent,
    config::{host_veth_name, NetConf, SUPPORTED_VERSIONS},
    env::Env,
    error::{code, CniError, Result},
    link::{mac_string, Netlink, GATEWAY},
    netns,
    result::{self, Added},
};

fn pod_ref(env: &Env) -> v1::PodRef {
    v1::PodRef {
        namespace: env.args.pod_namespace.clone(),
        name: env.args.pod_name.clone(),
        uid: env.args.pod_uid.clone(),
    }
}

fn veth_name(env: &Env, conf: &NetConf) -> String {
    host_veth_name(
        conf.veth_prefix(),
        &env.args.pod_namespace,
        &env.args.pod_name,
        &env.container_id,
    )
}

pub fn version(conf: Option<&NetConf>) -> Value {
    json!({
        "cniVersion": conf.map(|c| c.cni_version.as_str()).unwrap_or("1.1.0"),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

pub async fn add(env: &Env, conf: &NetConf) -> Result<Value> {
    let netns_file = netns::open(&env.netns)?.ok_or_else(|| {
        CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS={} does not exist", env.netns),
        )
    })?;
    let host_name = veth_name(env, conf);
    // Fail before touching anything when the agent is not there.
    let mut client = agent::connect(conf.agent_socket()).await?;
    let host = Netlink::here()?;
    let pod = Netlink::in_netns(&netns_file)?;
    if pod.link_by_name(&env.ifname).await?.is_some() {
        return Err(CniError::new(
            code::IO,
            format!(
                "the pod's network namespace already has an interface {}",
                env.ifname
            ),
        ));
    }
    // A veth of an earlier sandbox of the same pod.
    if let Some(old) = host.link_by_name(&host_name).await? {
        eprintln!(
            "trunkline-cni: removing stale host veth {host_name} (ifindex {})",
            old.index
        );
        host.del_link(old.index).await?;
    }
    host.add_veth(&host_name, &env.ifname, &netns_file, conf.mtu())
        .await?;

    let mut added = false;
    let outcome = async {
        let h = host
            .link_by_name(&host_name)
            .await?
            .ok_or_else(|| CniError::new(code::IO, format!("host veth {host_name} vanished")))?;
        let p = pod.link_by_name(&env.ifname).await?.ok_or_else(|| {
            CniError::new(code::IO, format!("pod interface {} vanished", env.ifname))
        })?;
        let req = v1::AddPodRequest {
            pod: Some(pod_ref(env)),
            container_id: env.container_id.clone(),
            netns: env.netns.clone(),
            ifname: env.ifname.clone(),
            host_veth_name: host_name.clone(),
            host_veth_ifindex: h.index,
            pod_mac: mac_string(&p.mac),
        };
        let reply = agent::call("AddPod", client.add_pod(req))
            .await
            .map_err(|(e, _)| e)?;
        added = true;
        let ip: Ipv4Addr = reply.ip.parse().map_err(|_| {
            CniError::new(
                code::AGENT_REFUSED,
                format!("trunkline-agent returned a bad IP {:?}", reply.ip),
            )
        })?;
        pod.configure_pod(p.index, ip, &h.mac).await?;
        Ok::<_, CniError>(result::build(
            &conf.cni_version,
            conf.prev_result.as_ref(),
            &Added {
                host_veth: &host_name,
                host_mac: &mac_string(&h.mac),
                ifname: &env.ifname,
                pod_mac: &mac_string(&p.mac),
                netns: &env.netns,
                ip,
            },
        ))
    }
    .await;
    match outcome {
        Ok(v) => Ok(v),
        Err(e) => {
            // Undo: the agent's side, then the veth (both ends go with it).
            if added {
                let req = v1::DelPodRequest {
                    pod: Some(pod_ref(env)),
                    container_id: env.container_id.clone(),
                    ifname: env.ifname.clone(),
                    host_veth_name: host_name.clone(),
                };
                if let Err((undo, _)) = agent::call("DelPod", client.del_pod(req)).await {
                    eprintln!("trunkline-cni: undo DelPod: {undo}");
                }
            }
            if let Ok(Some(h)) = host.link_by_name(&host_name).await {
                if let Err(undo) = host.del_link(h.index).await {
                    eprintln!("trunkline-cni: undo veth: {undo}");
                }
            }
            Err(e)
        }
    }
}

/// Idempotent: succeeds when the pod netns, the interface or the agent is
/// already gone (a restarted agent releases pods whose veth is gone).
pub async fn del(env: &Env, conf: &NetConf) -> Result<()> {
    match agent::connect(conf.agent_socket()).await {
        Ok(mut client) => {
            let req = v1::DelPodRequest {
                pod: Some(pod_ref(env)),
                container_id: env.container_id.clone(),
                ifname: env.ifname.clone(),
                host_veth_name: veth_name(env, conf),
            };
            match agent::call("DelPod", client.del_pod(req)).await {
                Ok(_) => {}
                Err((e, true)) => eprintln!("trunkline-cni: agent went away during DEL ({e}); it releases the pod when it restarts"),
                Err((e, false)) => return Err(e),
            }
        }
        Err(e) => eprintln!("trunkline-cni: {e}; the agent releases the pod when it starts"),
    }
    // Deleting the pod end removes the pair; never delete host links by
    // name (a newer sandbox of the same pod may own that name now).
    if env.netns.is_empty() {
        return Ok(());
    }
    if let Some(netns_file) = netns::open(&env.netns)? {
        let pod = Netlink::in_netns(&netns_file)?;
        if let Some(l) = pod.link_by_name(&env.ifname).await? {
            pod.del_link(l.index).await?;
        }
    }
    Ok(())
}

pub async fn check(env: &Env, conf: &NetConf) -> Result<()> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult in the network configuration",
        )
    })?;
    let ip = result::pod_ip(prev, &env.ifname, &env.netns).ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!(
                "prevResult has no IP for interface {} in {}",
                env.ifname, env.netns
            ),
        )
    })?;
    let fail = |msg: String| CniError::new(code::IO, msg);
    let netns_file = netns::open(&env.netns)?.ok_or_else(|| {
        CniError::new(
            code::CONTAINER_UNKNOWN,
            format!("CNI_NETNS={} does not exist", env.netns),
        )
    })?;
    let host_name = veth_name(env, conf);
    let host = Netlink::here()?;
    let h = host
        .link_by_name(&host_name)
        .await?
        .ok_or_else(|| fail(format!("host veth {host_name} does not exist")))?;
    let pod = Netlink::in_netns(&netns_file)?;
    let p = pod
        .link_by_name(&env.ifname)
        .await?
        .ok_or_else(|| fail(format!("the pod has no interface {}", env.ifname)))?;
    if !p.up {
        return Err(fail(format!("{} is down in the pod", env.ifname)));
    }
    let addrs = pod.addresses(p.index).await?;
    if addrs != [(ip, 32)] {
        return Err(fail(format!(
            "{} has addresses {addrs:?}, want only {ip}/32",
            env.ifname
        )));
    }
    let routes = pod.routes(p.index).await?;
    let has_gw = routes
        .iter()
        .any(|r| r.0 == GATEWAY && r.1 == 32 && r.2.is_none() && r.3);
    let has_default = routes.iter().any(|r| r.1 == 0 && r.2 == Some(GATEWAY));
    if !has_gw || !has_default {
        return Err(fail(format!(
            "pod routes {routes:?}: want 169.254.1.1/32 scope link and default via 169.254.1.1"
        )));
    }
    let neigh = pod.permanent_neighbours(p.index).await?;
    if !neigh.contains(&(GATEWAY, h.mac)) {
        return Err(fail(format!(
            "pod has no permanent neighbour 169.254.1.1 -> {} (has {neigh:?})",
            mac_string(&h.mac)
        )));
    }
    let mut client = agent::connect(conf.agent_socket()).await?;
    let reply = agent::call(
        "CheckPod",
        client.check_pod(v1::CheckPodRequest {
            pod: Some(pod_ref(env)),
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            host_veth_name: host_name,
            host_veth_ifindex: h.index,
            ip: ip.to_string(),
        }),
    )
    .await
    .map_err(|(e, _)| e)?;
    if !reply.ok {
        return Err(fail(format!("trunkline-agent: {}", reply.reason)));
    }
    Ok(())
}

pub async fn status(conf: &NetConf) -> Result<()> {
    let mut client = agent::connect(conf.agent_socket())
        .await
        .map_err(|e| CniError {
            code: code::PLUGIN_NOT_AVAILABLE,
            ..e
        })?;
    let reply = agent::call("Status", client.status(v1::StatusRequest {}))
        .await
        .map_err(|(e, _)| CniError {
            code: code::PLUGIN_NOT_AVAILABLE,
            ..e
        })?;
    if !reply.ready {
        return Err(CniError::new(
            code::NO_IPS,
            format!("trunkline-agent: {}", reply.reason),
        ));
    }
    Ok(())
}

pub async fn gc(conf: &NetConf) -> Result<()> {
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "GC needs cni.dev/valid-attachments"))?;
    let mut client = agent::connect(conf.agent_socket()).await?;
    let req = v1::GcRequest {
        valid: valid
            .iter()
            .map(|a| v1::Attachment {
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
            })
            .collect(),
    };
    let reply = agent::call("Gc", client.gc(req))
        .await
        .map_err(|(e, _)| e)?;
    if reply.released > 0 {
        eprintln!(
            "trunkline-cni: GC released {} attachment(s)",
            reply.released
        );
    }
    Ok(())
}
