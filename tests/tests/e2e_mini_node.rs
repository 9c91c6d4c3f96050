//! End to end on a real kernel: the four programs attached in a pod/node/peer
//! topology, real ICMP, UDP and TCP through them, counters read back both
//! through aya and through `bpftool map dump pinned`.

use std::process::Command;

use dataplane_common::{Hook, Stats};
use testbed::{drivers::traffic, kernel::object, topology::mini_node::*};
use trunkline_agent::dataplane::{read_stats, AttachMode};

#[test]
fn real_traffic_moves_every_programs_counters() {
    let node = MiniNode::new(&object::bytes()).expect("mini node");
    // TCX from Linux 6.6, read here from the release string rather than
    // from the agent's own probe; clsact + cls_bpf below.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (nums.next().expect("major"), nums.next().expect("minor"));
    let expected = if (major, minor) >= (6, 6) {
        AttachMode::Tcx
    } else {
        AttachMode::Clsact
    };
    assert_eq!(node.attach_mode, expected, "kernel {}", release.trim());

    traffic::ping(&node.pod, PEER_IP, 3).expect("ping pod -> peer");
    let udp = traffic::udp_echo(&node.pod, &node.peer, PEER_IP, 5300, 5).expect("udp");
    assert_eq!(
        udp.peer.ip(),
        std::net::IpAddr::V4(POD_IP),
        "no NAT yet: peer sees the pod"
    );
    assert_eq!(udp.echoed, udp.received);
    let tcp = traffic::tcp_echo(&node.pod, &node.peer, PEER_IP, 5301, &[7u8; 3000]).expect("tcp");
    assert_eq!(tcp.received.len(), 3000);
    assert_eq!(tcp.echoed, tcp.received);

    // The pins alone are enough to read the counters (the agent may be down).
    let stats = read_stats(node.bpffs.path()).expect("pinned STATS");
    let live = node.dataplane.stats().expect("STATS");
    assert_eq!(stats, live);
    for hook in Hook::ALL {
        let s = stats.hook(hook);
        // Echo requests out, replies back: each crosses each program once.
        assert_eq!(s.icmp, 3, "{hook:?}: {s:?}");
        assert_eq!(s.udp, 5, "{hook:?}: {s:?}");
        // SYN, ACK, data, FIN...: at least three segments each way.
        assert!(s.tcp >= 3, "{hook:?}: {s:?}");
        assert_eq!(s.drop, 0, "{hook:?}: {s:?}");
        assert_eq!(
            s.pass,
            s.icmp + s.udp + s.tcp + s.non_ipv4,
            "{hook:?}: {s:?}"
        );
    }
    // Neighbour resolution between node and peer is ARP.
    assert!(stats.total().non_ipv4 >= 1, "{:?}", stats.total());

    // bpftool prints the per-CPU slots with the field names from BTF.
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(node.bpffs.path().join("STATS"))
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let entries = dump.as_array().expect("array of entries");
    assert_eq!(entries.len(), Hook::COUNT);
    for entry in entries {
        // With BTF, bpftool adds a "formatted" view with the field names.
        let entry = &entry["formatted"];
        let hook = entry["key"].as_u64().expect("formatted key") as usize;
        let mut icmp = 0;
        for cpu in entry["values"].as_array().expect("per-CPU values") {
            let value = cpu["value"].as_object().expect("named fields");
            let mut names: Vec<&str> = value.keys().map(String::as_str).collect();
            let mut want = Stats::NAMES.to_vec();
            names.sort_unstable();
            want.sort_unstable();
            assert_eq!(names, want, "bpftool shows every counter by name");
            icmp += value["icmp"].as_u64().expect("icmp");
        }
        assert_eq!(
            icmp, stats.per_hook[hook].icmp,
            "bpftool and aya agree for slot {hook}"
        );
    }
}

#[test]
fn guards_remove_namespaces_and_pins_on_panic() {
    let names = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let node = MiniNode::new(&object::bytes()).expect("mini node");
        *names.lock().unwrap() = Some((
            vec![
                node.pod.name().to_string(),
                node.node.name().to_string(),
                node.peer.name().to_string(),
            ],
            node.bpffs.path().to_path_buf(),
        ));
        assert!(node.bpffs.path().join("STATS").exists());
        panic!("a failing test");
    });
    assert!(result.is_err());
    let (namespaces, bpffs) = names.lock().unwrap().take().expect("node was built");
    let listed = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for ns in namespaces {
        assert!(!listed.contains(&ns), "{ns} survived the panic");
    }
    assert!(!bpffs.exists(), "{} survived the panic", bpffs.display());
}
