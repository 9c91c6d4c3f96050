//! Many pods: 200 ADD/DEL cycles leak nothing; CNI ADD latency over 100
//! pods is measured and reported (the benchmark issue enforces a target).

use serde_json::Value;
use testbed::{
    drivers::cni::{self, Call},
    topology::{netns::Netns, sim_node::SimNode},
};

/// The two tests here run one at a time so the latency is not measured
/// while 200 cycles run next to it.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn conf(node: &SimNode) -> Value {
    cni::trunkline_conf("1.0.0", &node.socket(), None)
}

#[test]
fn two_hundred_add_del_cycles_leak_no_veth_ip_entry_or_record() {
    let _serial = serial();
    let node = SimNode::new().expect("sim node");
    let pins_before = node.link_pins().expect("pins");
    let pod = Netns::new("pod").expect("pod");
    let path = format!("/run/netns/{}", pod.name());
    for i in 0..200 {
        let cid = format!("cycle-{i}");
        let mut c = Call {
            command: "ADD",
            container_id: &cid,
            netns: &path,
            ifname: "eth0",
            pod: ("default", "cycler"),
        };
        let out = cni::trunkline(node.node.name(), &c, &conf(&node)).expect("ADD");
        assert!(
            out.success,
            "cycle {i} ADD: {} {}\n{}",
            out.stdout,
            out.stderr,
            node.agent_log()
        );
        // No cooldown in tests: a released IP is the next one handed out.
        assert_eq!(
            out.json()["ips"][0]["address"],
            "192.168.31.170/32",
            "cycle {i}: IP leaked"
        );
        c.command = "DEL";
        let out = cni::trunkline(node.node.name(), &c, &conf(&node)).expect("DEL");
        assert!(out.success, "cycle {i} DEL: {} {}", out.stdout, out.stderr);
    }
    assert!(
        node.links_with_prefix("eni").expect("links").is_empty(),
        "veth leaked"
    );
    assert_eq!(
        node.inspect("pods").expect("pods"),
        Value::Array(vec![]),
        "PODS entry leaked"
    );
    assert!(
        node.checkpoint_pods().expect("checkpoint").is_empty(),
        "checkpoint record leaked"
    );
    assert_eq!(
        node.link_pins().expect("pins"),
        pins_before,
        "link pin leaked"
    );
    let enis = node
        .node
        .exec_ok(
            "curl",
            &["-sf", "--max-time", "5", "http://127.0.0.1:61679/v1/enis"],
        )
        .expect("introspection");
    let enis: Value = serde_json::from_str(&enis).expect("json");
    for e in enis.as_array().expect("array") {
        if !e["ips"].is_null() {
            assert_eq!(e["ips"]["used"], 0, "{e}");
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[test]
fn cni_add_latency_over_100_pods_is_measured() {
    let _serial = serial();
    let node = SimNode::new().expect("sim node");
    let pods: Vec<Netns> = (0..100).map(|_| Netns::new("pod").expect("pod")).collect();
    let mut took = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let cid = format!("lat-{i}");
        let name = format!("lat-{i}");
        let path = format!("/run/netns/{}", pod.name());
        let c = Call {
            command: "ADD",
            container_id: &cid,
            netns: &path,
            ifname: "eth0",
            pod: ("default", &name),
        };
        let out = cni::trunkline(node.node.name(), &c, &conf(&node)).expect("ADD");
        assert!(out.success, "ADD {i}: {} {}", out.stdout, out.stderr);
        took.push(out.took.as_secs_f64() * 1000.0);
    }
    assert_eq!(
        node.inspect("pods").expect("pods").as_array().map(Vec::len),
        Some(100)
    );
    took.sort_by(f64::total_cmp);
    let report = format!(
        "CNI ADD latency over {} pods (process start to exit, incl. the agent RPC): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        took.len(),
        percentile(&took, 0.50),
        percentile(&took, 0.99),
        took[took.len() - 1]
    );
    println!("{report}");
    eprintln!("{report}");
    // `cargo xtask test` prints this file after the run.
    if let Some(path) = std::env::var_os("TRUNKLINE_LATENCY_REPORT") {
        let _ = std::fs::write(path, &report);
    }
}
