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
