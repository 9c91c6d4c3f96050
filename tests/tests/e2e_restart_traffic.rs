//! An agent restart in the middle of a running flow loses nothing: the
//! data path lives in pinned maps and links, not in the agent. A steady
//! UDP stream through SNAT runs while the agent is SIGKILLed and started
//! again; the internet host must receive every datagram.

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use testbed::{
    sim_node::{pod_ips, SimNode, NODE_IP},
    vpc_fabric::{own, CniPod, Fabric},
};

const INET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const DATAGRAMS: u32 = 20_000;

#[test]
fn a_restart_during_a_udp_stream_loses_no_datagram() {
    let mut sim = SimNode::with_pools(&pod_ips("eth0"), &[]).expect("sim node");
    let _fabric = Fabric::install(&sim).expect("fabric");
    let a = CniPod::add(&sim, "default", "streamer").expect("pod");
    own(&sim, "eth0", a.ip).expect("own");

    let server = sim
        .inet
        .run_in(|| UdpSocket::bind((INET_IP, 7500)))
        .expect("server");
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let receiver = std::thread::spawn(move || {
        let mut got = 0u32;
        let mut from = std::collections::HashSet::new();
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = server.recv_from(&mut buf) {
            got += 1;
            from.insert(peer);
        }
        (got, from)
    });
    let client =
        a.ns.run_in(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .expect("client");
    // About 10,000 datagrams a second for 2 s, from one flow.
    let sender = std::thread::spawn(move || {
        for i in 0..DATAGRAMS {
            client
                .send_to(&i.to_be_bytes(), (INET_IP, 7500))
                .expect("send");
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    sim.kill_agent();
    sim.start_agent().expect("agent restarts");
    let restart = t.elapsed();
    sender.join().expect("sender");
    let (got, from) = receiver.join().expect("receiver");
    println!("agent down and back up in {restart:?} during the stream; {got}/{DATAGRAMS} datagrams arrived");
    assert!(
        restart < Duration::from_secs(2),
        "the restart happened while the stream ran"
    );
    // One source address and port for the whole stream: the flow kept its
    // translation, so conntrack survived the restart as it was.
    assert_eq!(from.len(), 1, "{from:?}");
    let node = std::net::IpAddr::V4(NODE_IP);
    assert!(
        from.iter().all(|a| a.ip() == node),
        "SNATed throughout: {from:?}"
    );
    assert_eq!(got, DATAGRAMS, "no datagram lost across the restart");
}

/// Program ids of what serves the node: the pinned ENI links (bpftool) and
/// the pod veth's filters (tc).
fn serving_programs(sim: &SimNode, veth: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    for pin in sim.link_pins().expect("pins") {
        let path = sim.bpf_root().join("links").join(pin);
        let out = std::process::Command::new("bpftool")
            .args(["-j", "link", "show", "pinned"])
            .arg(&path)
            .output()
            .expect("bpftool");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        ids.push(v["prog_id"].as_u64().expect("prog_id"));
    }
    let filters = sim.pod_filters(veth).expect("filters");
    for w in filters.split_whitespace().collect::<Vec<_>>().windows(2) {
        if w[0] == "id" {
            ids.push(w[1].parse().expect("filter prog id"));
        }
    }
    ids
}

#[test]
fn an_upgrade_to_a_rebuilt_object_during_a_stream_switches_programs_and_loses_nothing() {
    let mut sim = SimNode::with_pools(&pod_ips("eth0"), &[]).expect("sim node");
    let _fabric = Fabric::install(&sim).expect("fabric");
    let a = CniPod::add(&sim, "default", "streamer").expect("pod");
    own(&sim, "eth0", a.ip).expect("own");
    let veth = sim.inspect("pods").expect("pods")[0]["host_veth"]
        .as_str()
        .map(str::to_string);
    let veth = veth.unwrap_or_else(|| {
        // `inspect pods` names the veth by ifindex only: find it by prefix.
        sim.links_with_prefix("eni")
            .expect("links")
            .into_iter()
            .next()
            .expect("a pod veth")
    });
    let before = serving_programs(&sim, &veth);
    assert!(before.len() >= 4, "ENI links and pod filters: {before:?}");

    // A rebuilt object: the same programs in a different file (a trailing
    // byte changes its identity, as a rebuild would).
    let mut bytes = std::fs::read(testbed::object::path()).expect("object");
    bytes.push(0);
    let rebuilt = sim.dir.path().join("trunkline-ebpf.rebuilt");
    std::fs::write(&rebuilt, &bytes).expect("write");

    let server = sim
        .inet
        .run_in(|| UdpSocket::bind((INET_IP, 7501)))
        .expect("server");
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let receiver = std::thread::spawn(move || {
        let mut got = 0u32;
        let mut from = std::collections::HashSet::new();
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = server.recv_from(&mut buf) {
            got += 1;
            from.insert(peer);
        }
        (got, from)
    });
    let client =
        a.ns.run_in(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .expect("client");
    let sender = std::thread::spawn(move || {
        for i in 0..DATAGRAMS {
            client
                .send_to(&i.to_be_bytes(), (INET_IP, 7501))
                .expect("send");
            if i % 100 == 99 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    sim.kill_agent();
    sim.ebpf_object = Some(rebuilt);
    sim.start_agent()
        .expect("agent starts on the rebuilt object");
    sender.join().expect("sender");
    let (got, from) = receiver.join().expect("receiver");
    let after = serving_programs(&sim, &veth);
    println!("programs before {before:?}, after {after:?}; {got}/{DATAGRAMS} datagrams arrived");
    assert_eq!(after.len(), before.len());
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "every attachment runs the new object's program"
    );
    assert!(
        sim.agent_log().contains("switched to its programs"),
        "{}",
        sim.agent_log()
    );
    assert_eq!(from.len(), 1, "one translation throughout: {from:?}");
    assert_eq!(got, DATAGRAMS, "no datagram lost across the upgrade");

    // A plain restart on the same object leaves every attachment as it is.
    sim.kill_agent();
    sim.start_agent().expect("plain restart");
    assert_eq!(serving_programs(&sim, &veth), after);
}
