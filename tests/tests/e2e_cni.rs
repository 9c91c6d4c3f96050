//! trunkline-cni and trunkline-agent end to end, through the real binaries:
//! the agent runs in local mode inside a simulated node namespace, the CNI
//! plugin is called exactly as a container runtime calls it.

use std::net::Ipv4Addr;

use serde_json::Value;
use testbed::{
    drivers::cni::{self, Call},
    topology::{
        netns::Netns,
        sim_node::{SimNode, BRANCH_IP, BRANCH_MAC, BRANCH_POD, BRANCH_VLAN},
    },
};

fn netns_path(ns: &Netns) -> String {
    format!("/run/netns/{}", ns.name())
}

fn call<'a>(command: &'a str, cid: &'a str, netns: &'a str, pod: (&'a str, &'a str)) -> Call<'a> {
    Call {
        command,
        container_id: cid,
        netns,
        ifname: "eth0",
        pod,
    }
}

fn conf(node: &SimNode, prev: Option<&Value>) -> Value {
    cni::trunkline_conf("1.0.0", &node.socket(), prev)
}

fn run(node: &SimNode, c: &Call<'_>, conf: &Value) -> cni::CniOut {
    cni::trunkline(node.node.name(), c, conf).expect("running trunkline-cni")
}

fn ok(node: &SimNode, c: &Call<'_>, conf: &Value) -> Value {
    let out = run(node, c, conf);
    assert!(
        out.success,
        "{} failed: {}\nstderr: {}\nagent log:\n{}",
        c.command,
        out.stdout,
        out.stderr,
        node.agent_log()
    );
    out.json()
}

fn pods_map(node: &SimNode) -> Vec<Value> {
    node.inspect("pods")
        .expect("inspect pods")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Everything `hook` counted (sum of its STATS counters).
fn hook_packets(node: &SimNode, hook: &str) -> u64 {
    let stats = node.inspect("stats").expect("inspect stats");
    stats[hook]
        .as_object()
        .map(|o| o.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

fn mac_of(ns: &Netns, iface: &str) -> String {
    ns.exec_ok("cat", &[&format!("/sys/class/net/{iface}/address")])
        .expect("mac")
        .trim()
        .to_string()
}

#[test]
fn add_check_del_wire_the_pod_exactly_and_leave_the_host_routing_alone() {
    let node = SimNode::new().expect("sim node");
    let pod = Netns::new("pod").expect("pod ns");
    let path = netns_path(&pod);
    let routing_before = node.host_routing().expect("routing");
    let pins_before = node.link_pins().expect("pins");

    let add = call("ADD", "c-web-1", &path, ("default", "web"));
    let result = ok(&node, &add, &conf(&node, None));

    // The result: our two interfaces, the pod IP /32 via 169.254.1.1.
    let host_veth = "eni68caf03a5f4"; // eni + sha1("default.web")[..11]
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][0]["name"], host_veth);
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["sandbox"], path.as_str());
    assert_eq!(result["ips"][0]["address"], "192.168.31.170/32");
    assert_eq!(result["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(result["ips"][0]["interface"], 1);
    let host_mac = mac_of(&node.node, host_veth);
    assert_eq!(result["interfaces"][0]["mac"], host_mac.as_str());

    // The pod namespace has exactly this, nothing more.
    let addrs = pod
        .exec_ok("ip", &["-4", "-o", "addr", "show", "dev", "eth0"])
        .expect("addr");
    let addrs: Vec<&str> = addrs
        .lines()
        .map(|l| l.split_whitespace().nth(3).unwrap_or(""))
        .collect();
    assert_eq!(addrs, ["192.168.31.170/32"]);
    let routes = pod.exec_ok("ip", &["-4", "route", "show"]).expect("routes");
    assert_eq!(
        routes.lines().map(str::trim).collect::<Vec<_>>(),
        [
            "default via 169.254.1.1 dev eth0",
            "169.254.1.1 dev eth0 scope link"
        ]
    );
    let neigh = pod
        .exec_ok("ip", &["-4", "neigh", "show", "dev", "eth0"])
        .expect("neigh");
    assert_eq!(
        neigh.trim(),
        format!("169.254.1.1 lladdr {host_mac} PERMANENT")
    );
    let mtu = pod
        .exec_ok("cat", &["/sys/class/net/eth0/mtu"])
        .expect("mtu");
    assert_eq!(mtu.trim(), "9001");

    // The host: a veth, no new route or rule.
    assert_eq!(node.host_routing().expect("routing"), routing_before);
    assert_eq!(node.links_with_prefix("eni").expect("links"), [host_veth]);

    // The agent: PODS entry, pinned links on the host veth, checkpoint.
    let host_ifindex = node.node.ifindex(host_veth).expect("ifindex");
    let eth0_ifindex = node.node.ifindex("eth0").expect("ifindex");
    let pods = pods_map(&node);
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0]["ip"], "192.168.31.170");
    assert_eq!(pods[0]["host_ifindex"], host_ifindex);
    assert_eq!(pods[0]["eni_ifindex"], eth0_ifindex);
    assert_eq!(pods[0]["mac"], mac_of(&pod, "eth0").as_str());
    assert_eq!(pods[0]["vlan_id"], 0);
    // from_pod/to_pod are cls_bpf filters at trunkline's priority and
    // handle on the host veth; no link is pinned for a pod.
    assert_eq!(node.link_pins().expect("pins"), pins_before);
    let filters = node.pod_filters(host_veth).expect("tc filter show");
    let (ingress, egress) = filters.split_once("egress:").expect("both");
    assert!(
        ingress.contains("from_pod") && ingress.contains("pref 20000"),
        "{filters}"
    );
    assert!(
        ingress.contains("handle 0x7431") || ingress.contains("handle 7431:1"),
        "{filters}"
    );
    assert!(
        egress.contains("to_pod") && egress.contains("pref 20000"),
        "{filters}"
    );
    // The pinned links run: traffic from the pod hits from_pod, traffic the
    // host sends to the pod hits to_pod.
    let (from_before, to_before) = (
        hook_packets(&node, "from_pod"),
        hook_packets(&node, "to_pod"),
    );
    let _ = pod.exec("ping", &["-c", "2", "-W", "1", "169.254.1.1"]);
    let _ = node.node.exec(
        "ping",
        &["-c", "2", "-W", "1", "-I", host_veth, "192.168.31.170"],
    );
    assert!(
        hook_packets(&node, "from_pod") > from_before,
        "from_pod saw nothing"
    );
    assert!(
        hook_packets(&node, "to_pod") > to_before,
        "to_pod saw nothing"
    );
    assert_eq!(node.checkpoint_pods().expect("checkpoint").len(), 1);

    // CHECK with the ADD result as prevResult.
    let check = call("CHECK", "c-web-1", &path, ("default", "web"));
    ok(&node, &check, &conf(&node, Some(&result)));

    // DEL, then DEL again: both succeed; everything is gone.
    let del = call("DEL", "c-web-1", &path, ("default", "web"));
    assert_eq!(ok(&node, &del, &conf(&node, None)), Value::Null);
    assert_eq!(ok(&node, &del, &conf(&node, None)), Value::Null);
    assert!(pods_map(&node).is_empty());
    assert_eq!(node.link_pins().expect("pins"), pins_before);
    assert!(node.links_with_prefix("eni").expect("links").is_empty());
    assert!(node.checkpoint_pods().expect("checkpoint").is_empty());
    assert_eq!(node.host_routing().expect("routing"), routing_before);
    let gone = pod.exec_ok("ip", &["-o", "link", "show"]).expect("links");
    assert!(!gone.contains("eth0"), "{gone}");

    // CHECK now fails: the pod is not wired any more.
    let out = run(&node, &check, &conf(&node, Some(&result)));
    assert!(!out.success, "{}", out.stdout);

    // DEL when the pod namespace is gone succeeds too.
    drop(pod);
    ok(&node, &del, &conf(&node, None));
}

#[test]
fn branch_pod_gets_its_branch_eni_entry_on_the_trunk() {
    let node = SimNode::new().expect("sim node");
    let pod = Netns::new("pod").expect("pod ns");
    let path = netns_path(&pod);
    let add = call("ADD", "c-branch", &path, BRANCH_POD);
    let result = ok(&node, &add, &conf(&node, None));
    assert_eq!(result["ips"][0]["address"], format!("{BRANCH_IP}/32"));
    let pods = pods_map(&node);
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["ip"], BRANCH_IP.to_string());
    assert_eq!(pods[0]["vlan_id"], BRANCH_VLAN);
    assert_eq!(pods[0]["branch_mac"], BRANCH_MAC);
    assert_eq!(
        pods[0]["eni_ifindex"],
        node.node.ifindex("eth2").expect("trunk")
    );
    // The pool IPs are untouched: the next regular pod gets the first one.
    let other = Netns::new("pod").expect("pod ns");
    let other_path = netns_path(&other);
    let r = ok(
        &node,
        &call("ADD", "c-regular", &other_path, ("default", "web")),
        &conf(&node, None),
    );
    assert_eq!(r["ips"][0]["address"], "192.168.31.170/32");
    ok(
        &node,
        &call("DEL", "c-branch", &path, BRANCH_POD),
        &conf(&node, None),
    );
    ok(
        &node,
        &call("DEL", "c-regular", &other_path, ("default", "web")),
        &conf(&node, None),
    );
    assert!(pods_map(&node).is_empty());
}

#[test]
fn version_status_and_gc_follow_the_spec() {
    let node = SimNode::with_pools(&[Ipv4Addr::new(192, 168, 31, 170)], &[]).expect("sim node");
    let none = call("VERSION", "", "", ("", ""));
    let v = ok(
        &node,
        &none,
        &cni::trunkline_conf("1.1.0", &node.socket(), None),
    );
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["1.0.0", "1.1.0"])
    );

    let status = call("STATUS", "", "", ("", ""));
    let c11 = cni::trunkline_conf("1.1.0", &node.socket(), None);
    ok(&node, &status, &c11);

    // Use the only IP: STATUS says 51 (no IPs available).
    let pod = Netns::new("pod").expect("pod ns");
    let path = netns_path(&pod);
    ok(&node, &call("ADD", "c-a", &path, ("default", "a")), &c11);
    let out = run(&node, &status, &c11);
    assert_eq!(out.code(), Some(51), "{}", out.stdout);

    // GC with no valid attachment releases it.
    let mut gc = c11.clone();
    gc["cni.dev/valid-attachments"] = serde_json::json!([]);
    ok(&node, &call("GC", "", "", ("", "")), &gc);
    assert!(pods_map(&node).is_empty());
    assert!(node.checkpoint_pods().expect("checkpoint").is_empty());
    ok(&node, &status, &c11);

    // A valid attachment survives GC.
    let pod2 = Netns::new("pod").expect("pod ns");
    let path2 = netns_path(&pod2);
    ok(&node, &call("ADD", "c-b", &path2, ("default", "b")), &c11);
    gc["cni.dev/valid-attachments"] = serde_json::json!([{"containerID": "c-b", "ifname": "eth0"}]);
    ok(&node, &call("GC", "", "", ("", "")), &gc);
    assert_eq!(pods_map(&node).len(), 1);

    // STATUS with no agent: 50 (plugin not available).
    let dead = cni::trunkline_conf("1.1.0", &node.dir.path().join("nobody.sock"), None);
    let out = run(&node, &status, &dead);
    assert_eq!(out.code(), Some(50), "{}", out.stdout);
}

#[test]
fn bad_input_returns_the_spec_error_codes_and_leaves_nothing_behind() {
    let node = SimNode::new().expect("sim node");
    let pod = Netns::new("pod").expect("pod ns");
    let path = netns_path(&pod);
    let add = call("ADD", "c-bad", &path, ("default", "bad"));
    let cni_bin = testbed::drivers::binaries::cni();

    // Malformed stdin: 6.
    let out = cni::run_plugin(
        node.node.name(),
        &cni_bin,
        &[
            ("CNI_COMMAND".into(), "ADD".into()),
            ("CNI_CONTAINERID".into(), "c".into()),
            ("CNI_NETNS".into(), path.clone()),
            ("CNI_IFNAME".into(), "eth0".into()),
        ],
        b"{\"cniVersion\": ",
    )
    .expect("run");
    assert_eq!(out.code(), Some(6), "{}", out.stdout);
    assert!(
        out.json()["msg"]
            .as_str()
            .unwrap_or("")
            .contains("not valid"),
        "{}",
        out.stdout
    );

    // Missing env: 4, naming what is missing.
    let out = cni::run_plugin(
        node.node.name(),
        &cni_bin,
        &[("CNI_COMMAND".into(), "ADD".into())],
        conf(&node, None).to_string().as_bytes(),
    )
    .expect("run");
    assert_eq!(out.code(), Some(4), "{}", out.stdout);
    assert!(out.stdout.contains("CNI_CONTAINERID"), "{}", out.stdout);

    // Unknown agent socket: 11 (try again later), and no veth left.
    let dead = cni::trunkline_conf("1.0.0", &node.dir.path().join("nobody.sock"), None);
    let out = run(&node, &add, &dead);
    assert_eq!(out.code(), Some(11), "{}", out.stdout);
    assert!(out.stdout.contains("nobody.sock"), "{}", out.stdout);
    assert!(node.links_with_prefix("eni").expect("links").is_empty());
    let pod_links = pod.exec_ok("ip", &["-o", "link", "show"]).expect("links");
    assert!(!pod_links.contains("eth0"), "{pod_links}");

    // Invalid network config: 7.
    let mut bad = conf(&node, None);
    bad["vethPrefix"] = "much-too-long".into();
    assert_eq!(run(&node, &add, &bad).code(), Some(7));

    // Pool exhausted half-way through ADD: the veth is undone.
    let node2 = SimNode::with_pools(&[], &[]).expect("sim node");
    let out = cni::trunkline(
        node2.node.name(),
        &add,
        &cni::trunkline_conf("1.0.0", &node2.socket(), None),
    )
    .expect("run");
    assert!(!out.success);
    assert_eq!(out.code(), Some(11), "{}", out.stdout);
    assert!(out.stdout.contains("no free pod IP"), "{}", out.stdout);
    assert!(node2.links_with_prefix("eni").expect("links").is_empty());
    let pod_links = pod.exec_ok("ip", &["-o", "link", "show"]).expect("links");
    assert!(!pod_links.contains("eth0"), "{pod_links}");
}

#[test]
fn chains_with_the_reference_tuning_plugin_like_libcni() {
    let node = SimNode::new().expect("sim node");
    let pod = Netns::new("pod").expect("pod ns");
    let path = netns_path(&pod);
    let tuning = std::path::Path::new(cni::REFERENCE_PLUGINS).join("tuning");
    assert!(
        tuning.exists(),
        "{} missing: cargo xtask test installs containernetworking-plugins",
        tuning.display()
    );
    // The conflist: [trunkline-cni, tuning]. libcni runs ADD in order,
    // passing each result as the next plugin's prevResult.
    let tuning_conf = |prev: Option<&Value>| {
        let mut c = serde_json::json!({
            "cniVersion": "1.0.0", "name": "aws-cni", "type": "tuning",
            "sysctl": {"net.core.somaxconn": "777"}
        });
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    };
    let add = call("ADD", "c-chain", &path, ("default", "chain"));
    let r1 = ok(&node, &add, &conf(&node, None));
    let out =
        cni::plugin(node.node.name(), &tuning, &add, &tuning_conf(Some(&r1))).expect("tuning");
    assert!(out.success, "tuning ADD: {} {}", out.stdout, out.stderr);
    let r2 = out.json();
    assert_eq!(r2["ips"], r1["ips"], "tuning passes our result through");
    let somaxconn = pod
        .exec_ok("cat", &["/proc/sys/net/core/somaxconn"])
        .expect("sysctl");
    assert_eq!(somaxconn.trim(), "777");

    // CHECK in order with the final result.
    let check = call("CHECK", "c-chain", &path, ("default", "chain"));
    ok(&node, &check, &conf(&node, Some(&r2)));
    let out =
        cni::plugin(node.node.name(), &tuning, &check, &tuning_conf(Some(&r2))).expect("tuning");
    assert!(out.success, "tuning CHECK: {} {}", out.stdout, out.stderr);

    // DEL in reverse order.
    let del = call("DEL", "c-chain", &path, ("default", "chain"));
    let out =
        cni::plugin(node.node.name(), &tuning, &del, &tuning_conf(Some(&r2))).expect("tuning");
    assert!(out.success, "tuning DEL: {} {}", out.stdout, out.stderr);
    ok(&node, &del, &conf(&node, Some(&r2)));
    assert!(pods_map(&node).is_empty());
    assert!(node.links_with_prefix("eni").expect("links").is_empty());
}

#[test]
fn agent_serves_metrics_and_introspection() {
    let node = SimNode::new().expect("sim node");
    let pod = Netns::new("pod").expect("pod ns");
    let path = netns_path(&pod);
    ok(
        &node,
        &call("ADD", "c-m", &path, ("default", "m")),
        &conf(&node, None),
    );
    let get = |url: &str| -> String {
        node.node
            .exec_ok("curl", &["-sf", "--max-time", "5", url])
            .unwrap_or_else(|e| panic!("GET {url}: {e:#}"))
    };
    let metrics = get("http://127.0.0.1:61678/metrics");
    for needle in [
        "trunkline_pods 1",
        "trunkline_eni_ips{eni=\"eth0\",state=\"used\"} 1",
        "trunkline_rpc_duration_seconds_count{method=\"AddPod\"} 1",
        "trunkline_map_entries{map=\"PODS\"} 1",
        "trunkline_map_capacity{map=\"PODS\"} 1024",
        "trunkline_drops{reason=\"",
    ] {
        assert!(
            metrics.contains(needle),
            "missing {needle:?} in:\n{metrics}"
        );
    }
    let pods: Value = serde_json::from_str(&get("http://127.0.0.1:61679/v1/pods")).expect("json");
    assert_eq!(pods[0]["ip"], "192.168.31.170");
    assert_eq!(pods[0]["name"], "m");
    let enis: Value = serde_json::from_str(&get("http://127.0.0.1:61679/v1/enis")).expect("json");
    assert_eq!(enis.as_array().map(Vec::len), Some(3));
    let config: Value =
        serde_json::from_str(&get("http://127.0.0.1:61679/v1/config")).expect("json");
    assert_eq!(
        config["run"]["socket"],
        node.socket().to_string_lossy().as_ref()
    );
}

#[test]
fn a_new_sandbox_of_the_same_pod_replaces_the_old_one() {
    let node = SimNode::with_pools(&[Ipv4Addr::new(192, 168, 31, 170)], &[]).expect("sim node");
    let old = Netns::new("pod").expect("pod ns");
    let old_path = netns_path(&old);
    ok(
        &node,
        &call("ADD", "sandbox-1", &old_path, ("default", "web")),
        &conf(&node, None),
    );
    // The runtime never DELs sandbox-1; a new sandbox of default/web comes.
    // Its veth name is the same, so the old veth is replaced and the old
    // sandbox's IP (the node's only one) is released for the new one.
    let new = Netns::new("pod").expect("pod ns");
    let new_path = netns_path(&new);
    let r = ok(
        &node,
        &call("ADD", "sandbox-2", &new_path, ("default", "web")),
        &conf(&node, None),
    );
    assert_eq!(r["ips"][0]["address"], "192.168.31.170/32");
    let pods = pods_map(&node);
    assert_eq!(pods.len(), 1);
    assert_eq!(
        pods[0]["host_ifindex"],
        node.node.ifindex("eni68caf03a5f4").expect("veth")
    );
    let cp = node.checkpoint_pods().expect("checkpoint");
    assert_eq!(cp.len(), 1);
    assert_eq!(cp[0]["container_id"], "sandbox-2");
    // The late DEL of the old sandbox touches nothing of the new one.
    ok(
        &node,
        &call("DEL", "sandbox-1", &old_path, ("default", "web")),
        &conf(&node, None),
    );
    assert_eq!(pods_map(&node).len(), 1);
    ok(
        &node,
        &call("CHECK", "sandbox-2", &new_path, ("default", "web")),
        &conf(&node, Some(&r)),
    );
}
