//! An agent restart, or an upgrade to a rebuilt object, in the middle of a
//! running flow loses nothing: the data path lives in pinned maps, pinned
//! links and pod filters, not in the agent. A steady UDP stream through
//! SNAT runs while the agent is SIGKILLed and started again; the internet
//! host must receive every datagram, from one translation throughout.

use std::{
    net::{IpAddr, Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use testbed::{
    drivers::traffic::{udp_stream_across, StreamSeen},
    topology::{
        sim_node::{SimNode, NODE_IP},
        vpc_fabric::{CniPod, Fabric},
    },
};

const INET_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const DATAGRAMS: u32 = 20_000;

fn node_with_pod() -> (SimNode, Fabric, CniPod) {
    testbed::topology::vpc_fabric::node_with_pod(&[], "streamer").expect("node with a pod")
}

fn server(sim: &SimNode, port: u16) -> UdpSocket {
    sim.inet
        .run_in(|| UdpSocket::bind((INET_IP, port)))
        .expect("server")
}

/// Everything arrived, from the node IP, through one translation.
fn assert_nothing_lost(seen: &StreamSeen) {
    assert_eq!(
        seen.sources.len(),
        1,
        "one translation throughout: {:?}",
        seen.sources
    );
    assert!(
        seen.sources.iter().all(|a| a.ip() == IpAddr::V4(NODE_IP)),
        "SNATed: {:?}",
        seen.sources
    );
    assert_eq!(seen.received, seen.sent, "no datagram lost");
}

#[test]
fn a_restart_during_a_udp_stream_loses_no_datagram() {
    let (mut sim, _fabric, pod) = node_with_pod();
    let srv = server(&sim, 7500);
    let mut took = Duration::ZERO;
    let seen = udp_stream_across(&pod.ns, srv, DATAGRAMS, || {
        let t = Instant::now();
        sim.kill_agent();
        let r = sim.start_agent();
        took = t.elapsed();
        r
    })
    .expect("stream");
    println!(
        "agent down and back up in {took:?}; {}/{} datagrams arrived",
        seen.received, seen.sent
    );
    assert!(
        0 < seen.sent_when_started && seen.sent_when_done < seen.sent,
        "the restart ({took:?}) happened while the stream ran: {seen:?}"
    );
    assert_nothing_lost(&seen);
}

/// Program ids of what serves the node: the ENIs' attachments (pinned TCX
/// links, or cls_bpf filters without TCX) and the pod veth's filters (tc).
fn serving_programs(sim: &SimNode, veth: &str) -> Vec<u64> {
    let mut ids: Vec<u64> = sim
        .eni_attachments()
        .expect("ENI attachments")
        .iter()
        .map(|a| a.prog_id)
        .collect();
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
    let (mut sim, _fabric, pod) = node_with_pod();
    let veth = sim
        .links_with_prefix("eni")
        .expect("links")
        .into_iter()
        .next()
        .expect("a pod veth");
    let before = serving_programs(&sim, &veth);
    assert!(before.len() >= 4, "ENI links and pod filters: {before:?}");
    let rebuilt = testbed::kernel::object::rebuilt(sim.dir.path()).expect("rebuilt object");
    let srv = server(&sim, 7501);
    let seen = udp_stream_across(&pod.ns, srv, DATAGRAMS, || {
        sim.kill_agent();
        sim.ebpf_object = Some(rebuilt);
        sim.start_agent()
    })
    .expect("stream");
    let after = serving_programs(&sim, &veth);
    println!(
        "programs before {before:?}, after {after:?}; {}/{} datagrams arrived",
        seen.received, seen.sent
    );
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
    assert_nothing_lost(&seen);

    // A plain restart on the same object leaves every attachment as it is.
    sim.kill_agent();
    sim.start_agent().expect("plain restart");
    assert_eq!(serving_programs(&sim, &veth), after);
}
