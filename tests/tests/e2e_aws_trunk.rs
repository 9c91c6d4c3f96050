//! Security groups for pods in AWS mode, end to end, with no node file:
//! the trunk ENI comes from EC2 (moto: `InterfaceType` trunk, created and
//! attached as the VPC resource controller does, after the node is up),
//! its gateway MAC from the VPC's answer to the agent's ARP on the trunk,
//! and the branch pod from its `vpc.amazonaws.com/pod-eni` annotation
//! (the fixture apiserver). What is asserted is what the remote end and
//! EC2's trunk (the VPC fixture) saw, and what the agent reports:
//!
//! 1. before a trunk is attached, a branch pod's ADD fails, saying why;
//! 2. once EC2 lists the trunk and its interface appears, the agent brings
//!    the link up (MTU, its /32), resolves the gateway, gives the trunk its
//!    ENIS entry, and the retried ADD wires the pod: its datagrams leave
//!    tagged with the annotation's VLAN and MAC, never SNATed;
//! 3. after an agent restart the trunk is found at start (EC2 and ARP
//!    before pods are restored) and the pod's traffic still flows.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result};
use testbed::{
    drivers::traffic,
    fakes::{
        imds_fixture::{FixtureEni, ImdsFixture},
        kube_api::{pod_json, FakeApi},
        moto::{attach_trunk, client, instance_enis, launch_instance, InstanceEni, Moto},
    },
    topology::{
        ns_forward::NsForward,
        sim_node::{
            SimNode, BRANCH_IP, BRANCH_MAC, BRANCH_POD, BRANCH_VLAN, SUBNET, VPC_GATEWAY_MAC,
        },
        vpc_fabric::{own, CniPod, Fabric},
    },
    wait,
};

const INSTANCE_TYPE: &str = "m5.xlarge";
const NODE: &str = "ip-192-168-31-166.ec2.internal";
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 10);

/// The VPC resource controller's annotation for the branch ENI the trunk
/// fixture knows (`Fabric::install` registers it).
fn annotation() -> String {
    format!(
        r#"[{{"eniId":"eni-09a7a909e06fc4be6","ifAddress":"{BRANCH_MAC}","privateIp":"{BRANCH_IP}","vlanID":{BRANCH_VLAN},"subnetCidr":"{SUBNET}"}}]"#
    )
}

fn fixture_eni(ni: &InstanceEni, dev: u32, subnet: &str) -> FixtureEni {
    FixtureEni {
        mac: ni.mac.clone(),
        device_number: dev,
        interface_id: ni.id.clone(),
        subnet_id: subnet.to_string(),
        subnet_cidr: SUBNET.into(),
        local_ipv4s: vec![ni.primary_ip],
        prefixes: vec![],
        security_groups: vec![],
        vpc_cidrs: vec!["192.168.0.0/16".into()],
    }
}

/// The trunk's ENIS entry as `inspect enis` shows it: (role, gateway MAC).
fn trunk_entry(sim: &SimNode, ifindex: u32) -> Result<Option<(String, String)>> {
    let v = sim.inspect("enis")?;
    Ok(v.as_array().into_iter().flatten().find_map(|e| {
        (e["ifindex"].as_u64() == Some(u64::from(ifindex))).then(|| {
            (
                e["role"].as_str().unwrap_or_default().to_string(),
                e["gateway_mac"].as_str().unwrap_or_default().to_string(),
            )
        })
    }))
}

/// The branch pod reaches the peer in the VPC tagged as EC2 wants it:
/// the peer saw the branch IP, the trunk fixture accepted `n` more tagged
/// frames and rejected none.
fn branch_round_trip(sim: &SimNode, fabric: &Fabric, pod: &CniPod, port: u16) -> Result<()> {
    let before = fabric.trunk.stats()?;
    let seen =
        traffic::udp_echo(&pod.ns, &sim.peer, PEER_IP, port, 3).with_context(|| sim.agent_log())?;
    assert_eq!(seen.peer.ip(), IpAddr::V4(BRANCH_IP), "never SNATed");
    let after = fabric.trunk.stats()?;
    assert!(
        after.accepted >= before.accepted + 3 && after.tagged >= before.tagged + 3,
        "tagged both ways through the trunk: {before:?} -> {after:?}"
    );
    assert_eq!(after.rejected, 0, "{after:?}");
    Ok(())
}

#[test]
fn a_branch_pod_works_once_ec2_attaches_the_trunk_and_after_a_restart() -> Result<()> {
    let moto = Moto::start()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let c = client(&moto.endpoint());
    let (instance, subnet, primary) = rt.block_on(async {
        let (id, subnet) =
            launch_instance(&c, "192.168.0.0/16", "192.168.0.0/19", INSTANCE_TYPE).await?;
        let primary = instance_enis(&c, &id)
            .await?
            .into_iter()
            .next()
            .context("primary ENI")?;
        anyhow::Ok((id, subnet, primary))
    })?;

    let mut sim = SimNode::build()?;
    sim.node
        .ip(&["link", "set", "eth0", "address", &primary.mac])?;
    sim.node.ip(&[
        "addr",
        "add",
        &format!("{}/19", primary.primary_ip),
        "dev",
        "eth0",
    ])?;
    // No trunk yet: eth2 is an unrelated, down interface.
    sim.node.ip(&["link", "set", "eth2", "down"])?;
    sim.node.ip(&["link", "set", "eth2", "mtu", "1500"])?;
    let fabric = Fabric::install(&sim)?;
    let imds = ImdsFixture::start()?;
    imds.set_instance(&instance, INSTANCE_TYPE, "us-east-1a", &primary.mac);
    imds.set_eni(&fixture_eni(&primary, 0, &subnet));
    let to_moto = NsForward::new(&sim.node, SocketAddr::from(([127, 0, 0, 1], moto.port)))?;
    let to_imds = NsForward::new(&sim.node, imds.addr)?;
    let moto_url = to_moto.endpoint();
    let imds_url = to_imds.endpoint();
    let api = FakeApi::start_in(&sim.node)?;
    api.set_service_cidrs(Some(&[("kubernetes", &["10.100.0.0/16"])]));
    api.put_pod(pod_json(
        BRANCH_POD.0,
        BRANCH_POD.1,
        NODE,
        true,
        Some(&annotation()),
    ));
    let kubeconfig = api.write_kubeconfig(sim.dir.path())?;
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    sim.aws_mode = true;
    sim.set_agent_env(&[
        ("AWS_ENDPOINT_URL_EC2", &moto_url),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds_url),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("TRUNKLINE_SERVICE_CIDRS", ""),
        ("KUBECONFIG", &kubeconfig),
        ("MY_NODE_NAME", NODE),
        ("WARM_IP_TARGET", "1"),
    ]);
    sim.start_agent()?;

    // 1. No trunk: the branch pod's ADD fails and says why.
    let err = wait(
        Duration::from_secs(20),
        "the agent serving pods",
        || match CniPod::add(&sim, BRANCH_POD.0, BRANCH_POD.1) {
            Ok(_) => anyhow::bail!("a branch pod was wired with no trunk ENI"),
            Err(e) => {
                let e = format!("{e:#}");
                Ok(e.contains("no trunk ENI").then_some(e))
            }
        },
    )
    .with_context(|| sim.agent_log())?;
    println!(
        "e2e_aws_trunk: before the trunk: {}",
        err.lines().next().unwrap_or_default()
    );

    // 2. The VPC resource controller attaches the trunk: EC2 lists it, its
    // interface (eth2) takes its MAC, IMDS lists it.
    let trunk = rt.block_on(attach_trunk(&c, &instance, &subnet, 2))?;
    assert_eq!(trunk.interface_type, "trunk", "moto kept InterfaceType");
    sim.node
        .ip(&["link", "set", "eth2", "address", &trunk.mac])?;
    imds.set_eni(&fixture_eni(&trunk, 2, &subnet));
    own(&sim, "eth2", trunk.primary_ip)?;
    let eth2 = sim.node.ifindex("eth2")?;
    let t0 = std::time::Instant::now();
    let entry = wait(Duration::from_secs(40), "the trunk's ENIS entry", || {
        Ok(trunk_entry(&sim, eth2)?.filter(|(role, _)| role == "trunk"))
    })
    .with_context(|| sim.agent_log())?;
    println!(
        "e2e_aws_trunk: trunk in service {:?} after EC2 attached it",
        t0.elapsed()
    );
    assert_eq!(
        entry.1, VPC_GATEWAY_MAC,
        "the gateway MAC the VPC answered the agent's ARP with"
    );
    // Brought up as any ENI the agent uses: up, TRUNKLINE_MTU, its /32.
    let link = sim
        .node
        .exec_ok("ip", &["-j", "addr", "show", "dev", "eth2"])?;
    let link: serde_json::Value = serde_json::from_str(&link).context("ip -j addr")?;
    let link = &link[0];
    assert!(
        link["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f == "UP"),
        "eth2 up: {link}"
    );
    assert_eq!(link["mtu"].as_u64(), Some(9001), "{link}");
    let addrs: Vec<(String, u64)> = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["family"] == "inet")
        .filter_map(|a| Some((a["local"].as_str()?.to_string(), a["prefixlen"].as_u64()?)))
        .collect();
    assert_eq!(addrs, vec![(trunk.primary_ip.to_string(), 32)], "{link}");
    let copy = std::fs::read_to_string(sim.state_dir().join("aws-node.toml"))?;
    assert!(copy.contains("role = \"trunk\""), "{copy}");

    // The runtime retries the ADD: now the pod is wired on the trunk.
    let pod = CniPod::add(&sim, BRANCH_POD.0, BRANCH_POD.1).with_context(|| sim.agent_log())?;
    assert_eq!(pod.ip, BRANCH_IP, "the annotation's address, not a pool IP");
    branch_round_trip(&sim, &fabric, &pod, 5201)?;

    // 3. A restart finds the trunk at start and keeps the pod working.
    sim.kill_agent();
    sim.start_agent()?;
    wait(
        Duration::from_secs(30),
        "the restarted agent's trunk",
        || {
            Ok(sim
                .agent_log()
                .contains("trunk ENI ready for branch pods")
                .then_some(()))
        },
    )
    .with_context(|| sim.agent_log())?;
    assert_eq!(
        trunk_entry(&sim, eth2)?,
        Some(("trunk".to_string(), VPC_GATEWAY_MAC.to_string()))
    );
    branch_round_trip(&sim, &fabric, &pod, 5202)?;
    drop(pod);
    Ok(())
}
