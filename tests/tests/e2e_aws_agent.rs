//! The agent in AWS mode in a simulated node: no node file; the node comes
//! from the IMDS fixture, pod IPs from the EC2 warm pool on moto. Real CNI
//! ADDs get IPs that moto shows assigned to the instance's ENI, and an ENI
//! the pool attached gets its ENIS entry once its interface appears. The
//! service CIDR comes from the cluster's ServiceCIDR API (the fixture
//! apiserver), with `TRUNKLINE_SERVICE_CIDRS` left empty as the shipped
//! ConfigMap has it, and a pod reaches a Service through it.
//!
//! moto and the fixture listen on the host's loopback; the agent reaches
//! them through forwarders bound inside the node namespace.

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use testbed::{
    drivers::traffic,
    fakes::{
        imds_fixture::{FixtureEni, ImdsFixture},
        kube_api::FakeApi,
        moto::{client, instance_enis, InstanceEni as Ni, Moto},
    },
    topology::{
        ns_forward::NsForward,
        sim_node::SimNode,
        vpc_fabric::{CniPod, Fabric},
    },
    wait,
};

const INSTANCE_TYPE: &str = "m5.xlarge";

#[test]
fn agent_in_aws_mode_gives_pods_ec2_ips_and_adopts_new_enis() -> Result<()> {
    let moto = Moto::start()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let c = client(&moto.endpoint());
    // The simulated node's subnet, so the rendered node file is valid for
    // its links.
    let (instance, subnet, primary) = rt.block_on(async {
        let (id, subnet) = testbed::fakes::moto::launch_instance(
            &c,
            "192.168.0.0/16",
            "192.168.0.0/19",
            INSTANCE_TYPE,
        )
        .await?;
        let enis = instance_enis(&c, &id).await?;
        let primary = enis.into_iter().next().context("primary ENI")?;
        anyhow::Ok((id, subnet, primary))
    })?;

    let mut sim = SimNode::build()?;
    // eth1 as EC2 attaches an ENI: down, at the kernel's default MTU, no
    // address; the agent brings it up once IMDS lists its ENI.
    sim.node.ip(&["link", "set", "eth1", "down"])?;
    sim.node.ip(&["link", "set", "eth1", "mtu", "1500"])?;
    // eth0 becomes the instance's primary ENI: its MAC and address.
    sim.node
        .ip(&["link", "set", "eth0", "address", &primary.mac])?;
    sim.node.ip(&[
        "addr",
        "add",
        &format!("{}/19", primary.primary_ip),
        "dev",
        "eth0",
    ])?;
    let imds = ImdsFixture::start()?;
    imds.set_instance(&instance, INSTANCE_TYPE, "us-east-1a", &primary.mac);
    let eni = |ni: &Ni, dev: u32| FixtureEni {
        mac: ni.mac.clone(),
        device_number: dev,
        interface_id: ni.id.clone(),
        subnet_id: subnet.clone(),
        subnet_cidr: "192.168.0.0/19".into(),
        local_ipv4s: vec![ni.primary_ip],
        prefixes: vec![],
        security_groups: vec![],
        vpc_cidrs: vec!["192.168.0.0/16".into()],
    };
    imds.set_eni(&eni(&primary, 0));
    let to_moto = NsForward::new(&sim.node, SocketAddr::from(([127, 0, 0, 1], moto.port)))?;
    let to_imds = NsForward::new(&sim.node, imds.addr)?;
    let moto_url = to_moto.endpoint();
    let imds_url = to_imds.endpoint();
    // A 1.33+ apiserver: the service CIDR is its ServiceCIDR `kubernetes`.
    let api = FakeApi::start_in(&sim.node)?;
    api.set_service_cidrs(Some(&[("kubernetes", &["10.100.0.0/16"])]));
    let kubeconfig = api.write_kubeconfig(sim.dir.path())?;
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    sim.aws_mode = true;
    sim.set_agent_env(&[
        ("AWS_ENDPOINT_URL_EC2", &moto_url),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds_url),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        // As shipped in deploy/configmap.yaml.
        ("TRUNKLINE_SERVICE_CIDRS", ""),
        ("KUBECONFIG", &kubeconfig),
        // 3 warm, and at least 18 in all: more than the primary's 14 slots,
        // so the pool attaches a second ENI.
        ("WARM_IP_TARGET", "3"),
        ("MINIMUM_IP_TARGET", "18"),
        ("IP_COOLDOWN_PERIOD", "1"),
    ]);
    let started = Instant::now();
    sim.start_agent()?;

    // The pool fills from EC2: 14 on the primary, 4 on a new ENI.
    let enis = wait(Duration::from_secs(30), "18 IPs on 2 ENIs in moto", || {
        let e = rt.block_on(instance_enis(&c, &instance))?;
        let total: usize = e.iter().map(|n| n.secondary.len()).sum();
        Ok((e.len() == 2 && total == 18).then_some(e))
    })
    .with_context(|| sim.agent_log())?;
    println!(
        "e2e_aws_agent: pool at MINIMUM_IP_TARGET in {:?}",
        started.elapsed()
    );
    assert!(enis[0].secondary.len() <= 14, "primary over its limit");

    // Pods get IPs of the primary ENI (eth1's ENI has no interface yet, so
    // its IPs are not offered).
    let mut pods = Vec::new();
    for i in 0..5 {
        let pod = wait(Duration::from_secs(20), "a pod IP", || {
            Ok(CniPod::add(&sim, "default", &format!("aws-{i}")).ok())
        })?;
        pods.push(pod);
    }
    let on_primary: HashSet<Ipv4Addr> = rt
        .block_on(instance_enis(&c, &instance))?
        .into_iter()
        .find(|n| n.id == primary.id)
        .context("primary")?
        .secondary
        .into_iter()
        .collect();
    let mut seen = HashSet::new();
    for p in &pods {
        assert!(seen.insert(p.ip), "{} twice", p.ip);
        assert!(
            on_primary.contains(&p.ip),
            "{} not assigned to {} in EC2",
            p.ip,
            primary.id
        );
    }

    // The second ENI's interface appears (eth1 takes its MAC) and IMDS lists
    // it: the agent gives it an ENIS entry.
    let second = &enis[1];
    sim.node
        .ip(&["link", "set", "eth1", "address", &second.mac])?;
    imds.set_eni(&eni(second, 1));
    let eth1 = sim.node.ifindex("eth1")?;
    wait(Duration::from_secs(30), "an ENIS entry for eth1", || {
        let v = sim.inspect("enis")?;
        let found = v.as_array().into_iter().flatten().any(|e| {
            e["ifindex"].as_u64() == Some(u64::from(eth1))
                && e["mac"].as_str() == Some(second.mac.as_str())
                && e["role"].as_str() == Some("secondary")
        });
        Ok(found.then_some(()))
    })
    .with_context(|| sim.agent_log())?;
    // The agent brought the ENI up as aws-node does: up, at TRUNKLINE_MTU
    // (9001, as AWS_VPC_ENI_MTU), with the ENI's primary IP (a /32: no
    // subnet route out of a secondary ENI).
    let link = sim
        .node
        .exec_ok("ip", &["-j", "addr", "show", "dev", "eth1"])?;
    let link: serde_json::Value = serde_json::from_str(&link).context("ip -j addr")?;
    let link = &link[0];
    let flags: Vec<&str> = link["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(flags.contains(&"UP"), "eth1 up: {link}");
    assert_eq!(link["mtu"].as_u64(), Some(9001), "eth1 MTU: {link}");
    let addrs: Vec<(String, u64)> = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["family"] == "inet")
        .filter_map(|a| Some((a["local"].as_str()?.to_string(), a["prefixlen"].as_u64()?)))
        .collect();
    assert_eq!(
        addrs,
        vec![(second.primary_ip.to_string(), 32)],
        "eth1 carries its ENI's primary IP: {link}"
    );
    let routes = sim.node.exec_ok("ip", &["route", "show", "dev", "eth1"])?;
    assert!(routes.trim().is_empty(), "no route out of eth1: {routes}");
    // The operators' copy is written once the maps hold the change (a
    // failed apply writes nothing), so it can trail the ENIS entry.
    let copy = sim.state_dir().join("aws-node.toml");
    wait(
        Duration::from_secs(10),
        "eth1 in the operators' aws-node.toml",
        || {
            let rendered = std::fs::read_to_string(&copy)?;
            Ok(rendered.contains(&second.mac).then_some(()))
        },
    )
    .with_context(|| std::fs::read_to_string(&copy).unwrap_or_default())?;
    // A ClusterIP from the API's service CIDR reaches its backend through
    // kube-proxy (not SNATed out of the VPC as a foreign address). The
    // VPC's side (ARP, the gateway) and a forwarding node, as EC2 and a
    // Kubernetes node have them.
    let _fabric = Fabric::install(&sim)?;
    sim.kube_proxy(&format!(
        "  ip daddr 10.100.0.10 tcp dport 80 dnat to {}:8083",
        pods[1].ip
    ))?;
    let seen = traffic::tcp_echo_via(
        &pods[0].ns,
        &pods[1].ns,
        SocketAddr::from((pods[1].ip, 8083)),
        SocketAddr::from((Ipv4Addr::new(10, 100, 0, 10), 80)),
        b"svc",
    )
    .with_context(|| sim.agent_log())?;
    assert_eq!(seen.peer.ip(), pods[0].ip, "the backend saw the pod");
    assert_eq!(seen.echoed, b"svc");
    drop(pods);
    Ok(())
}
