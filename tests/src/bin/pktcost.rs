//! Per-packet cost of the data path through `BPF_PROG_TEST_RUN`, as the
//! kernel times it (run by `cargo xtask bench`).
//!
//! `repeat` feeds a program its own output, so a translated packet would be
//! seen untranslated only once; translation paths are therefore timed as
//! single runs averaged over many packets, and the timer's own overhead
//! (single run minus `repeat` of a packet every run leaves unchanged) is
//! reported and subtracted.

use dataplane_common::{conntrack::CT_F_SNAT, CtEntry, CtKey, Hook, SnatMode};
use testbed::kernel::{
    golden::{
        snat::{self, INET, NODE, PEER, POD},
        Golden,
    },
    packets::{self, Flow, TCP_ACK},
};

const RUNS: u32 = 100_000;
const REPEAT: u32 = 1_000_000;
const FROM_POD_REPEAT: u32 = 250;

fn mean_single(g: &Golden, hook: Hook, packets: impl Iterator<Item = Vec<u8>>) -> f64 {
    let mut total = 0u64;
    let mut n = 0u64;
    for p in packets {
        total += g.run(hook, &p).duration_ns;
        n += 1;
    }
    total as f64 / n.max(1) as f64
}

fn main() {
    let mut g = snat::node(SnatMode::Random, (1024, 65535));
    let steer_only = packets::tcp_syn(Flow::new(POD, PEER, 40000, 443));
    let repeated = g.run_repeat(Hook::ToEni, &steer_only, REPEAT).duration_ns as f64;
    let single = mean_single(&g, Hook::ToEni, (0..RUNS).map(|_| steer_only.clone()));
    let overhead = (single - repeated).max(0.0);

    let flow = Flow::new(POD, INET, 40000, 443);
    let nat_port = {
        let out = g.run(Hook::ToEni, &packets::tcp_syn(flow));
        u16::from_be_bytes([out.data[34], out.data[35]])
    };
    // A translation onto itself leaves the packet as it was, so `repeat`
    // can time the whole established path with warm caches (only the port
    // store, skipped when unchanged, is missing).
    let self_flow = Flow::new(POD, INET, 40001, 443);
    let self_key = CtKey::new(POD, INET, 40001, 443, 6);
    let entry = CtEntry {
        nat_ip: POD,
        nat_port: 40001,
        flags: CT_F_SNAT,
        ..Default::default()
    };
    g.ct_maps.adopt(self_key, entry, None).expect("CT");
    let established_repeat = g
        .run_repeat(Hook::ToEni, &packets::tcp_syn(self_flow), REPEAT)
        .duration_ns as f64;

    let established = mean_single(&g, Hook::ToEni, (0..RUNS).map(|_| packets::tcp_syn(flow)));
    // The way an established SNAT packet goes now: `from_pod` translates
    // it (its one CT lookup) and marks it final; the ENI's `to_eni` passes
    // it without a look (which leaves it unchanged, so `repeat` times it).
    let ack = packets::tcp(flow, TCP_ACK);
    let from_pod_established = mean_single(&g, Hook::FromPod, (0..RUNS).map(|_| ack.clone()));
    let decided = g.run(Hook::FromPod, &ack);
    assert!(
        dataplane_common::verdict::decided(&decided.cb),
        "from_pod marks an established SNAT packet final: {decided:?}"
    );
    let to_eni_decided = g
        .run_after_repeat(Hook::ToEni, &decided, snat::LO, REPEAT)
        .duration_ns as f64;
    // `from_pod` on the flow translated onto itself: only the TTL changes,
    // so from TTL 255 it can be repeated 250 times before the hop is spent.
    let mut own = packets::tcp(self_flow, TCP_ACK);
    packets::set_ttl(&mut own, 255);
    let own_out = g.run_repeat(Hook::FromPod, &own, FROM_POD_REPEAT);
    assert!(
        dataplane_common::verdict::decided(&own_out.cb),
        "every repeat took the established SNAT path: {own_out:?}"
    );
    let from_pod_repeat = own_out.duration_ns as f64;
    let reply_pkt = packets::tcp_syn(Flow::new(INET, NODE, 443, nat_port));
    let reply = mean_single(&g, Hook::FromEni, (0..RUNS).map(|_| reply_pkt.clone()));
    let new_flow = mean_single(
        &g,
        Hook::ToEni,
        (0..RUNS).map(|i| {
            let dst = [203, 0, (i >> 16) as u8 + 1, (i >> 8) as u8];
            packets::tcp_syn(Flow::new(POD, dst, 1024 + (i & 0xff) as u16, 443))
        }),
    );

    println!("per-packet cost, BPF_PROG_TEST_RUN on this machine (ns)");
    println!("{:<34} {:>10} {:>14}", "path", "measured", "minus timer");
    println!(
        "{:<34} {:>10.1} {:>14}",
        format!("steer-only (VPC dst), repeat {REPEAT}"),
        repeated,
        "-"
    );
    println!(
        "{:<34} {:>10.1} {:>14}",
        "timer overhead of a single run", overhead, "-"
    );
    println!(
        "{:<34} {:>10.1} {:>14}",
        format!("established SNAT, repeat {REPEAT}"),
        established_repeat,
        "-"
    );
    println!(
        "{:<34} {:>10.1} {:>14}",
        format!("established SNAT in from_pod, repeat {FROM_POD_REPEAT}"),
        from_pod_repeat,
        "-"
    );
    println!(
        "{:<34} {:>10.1} {:>14}",
        format!("to_eni, from_pod decided, repeat {REPEAT}"),
        to_eni_decided,
        "-"
    );
    for (name, v) in [
        ("established SNAT in from_pod", from_pod_established),
        ("established SNAT in to_eni (stack)", established),
        ("new flow: allocate + 2 inserts", new_flow),
        ("reply: reverse NAT + redirect_peer", reply),
    ] {
        println!(
            "{:<34} {:>10.1} {:>14.1}",
            format!("{name}, {RUNS} runs"),
            v,
            (v - overhead).max(0.0)
        );
    }
    // A strict branch pod's packet: tagged and sent out of the trunk
    // (the push changes the packet, so single runs).
    let branch = packets::tcp_syn(Flow::new(snat::BRANCH_POD, PEER, 40000, 443));
    let vlan_push = mean_single(&g, Hook::FromPod, (0..RUNS).map(|_| branch.clone()));
    println!(
        "{:<34} {:>10.1} {:>14.1}",
        format!("VLAN push to the trunk, {RUNS} runs"),
        vlan_push,
        (vlan_push - overhead).max(0.0)
    );

    // Conntrack at 1M flows: the same established-flow measurement with
    // CT and SNAT_REV sized for a million and filled.
    const BIG: u32 = 1 << 20;
    let mut big = snat::configure(
        Golden::load_sized(&[("CT", BIG + 1024), ("SNAT_REV", BIG + 1024)]),
        SnatMode::Random,
        (1024, 65535),
        snat::LO,
    );
    let filled = std::time::Instant::now();
    for i in 0..BIG {
        let key = CtKey::new(
            POD,
            [198, 18, (i >> 16) as u8, (i >> 8) as u8],
            (i & 0xff) as u16 + 1024,
            443,
            6,
        );
        let e = CtEntry {
            nat_ip: NODE,
            nat_port: (i % 60000) as u16 + 1024,
            flags: CT_F_SNAT,
            ..Default::default()
        };
        big.ct_maps.adopt(key, e, None).expect("CT");
    }
    let fill = filled.elapsed();
    big.ct_maps.adopt(self_key, entry, None).expect("CT");
    let established_1m = big
        .run_repeat(Hook::ToEni, &packets::tcp_syn(self_flow), REPEAT)
        .duration_ns as f64;
    println!(
        "{:<34} {:>10.1} {:>14}",
        format!("established SNAT, CT at {}k flows", BIG / 1024),
        established_1m,
        format!("(filled in {:.1}s)", fill.as_secs_f64())
    );

    let s = g.stats(Hook::ToEni);
    assert_eq!(
        s.nat_new,
        u64::from(RUNS) + 1,
        "every new-flow packet allocated: {s:?}"
    );
    assert_eq!(s.drop, 0, "{s:?}");
}
