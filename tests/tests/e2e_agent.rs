//! `trunkline-agent run` itself: start-up checks, the socket, clean stop.

use std::{ffi::OsString, os::unix::fs::PermissionsExt as _};

use testbed::topology::sim_node::{node_file, pod_ips, SimNode};

#[test]
fn a_bad_node_file_is_rejected_with_file_line_and_reason() {
    let node = SimNode::build().expect("sim node");
    let good = node_file(&pod_ips("eth0"), &[]);
    let cases = [
        (
            good.replace("role = \"secondary\"", "role = \"secondary\"\nspeed = 10"),
            "unknown field `speed`",
        ),
        (
            good.replacen("mac = \"02:a5:ee:3d:4a:c9\"", "mac = \"02:a5:ee:3d:4a\"", 1),
            "is not a MAC address",
        ),
        (good.replace("vlan = 1", "vlan = 0"), "is not a VLAN id"),
    ];
    for (text, reason) in cases {
        std::fs::write(node.node_file(), &text).expect("write");
        let bad_line = text
            .lines()
            .position(|l| {
                l.contains("speed") || l.contains("02:a5:ee:3d:4a\"") || l.contains("vlan = 0")
            })
            .expect("line")
            + 1;
        let mut args = vec![OsString::from("run")];
        args.extend(
            node.agent_args()
                .ebpf_object(testbed::kernel::object::path())
                .build(),
        );
        let out = node
            .node
            .exec(
                &testbed::drivers::binaries::agent().to_string_lossy(),
                &args,
            )
            .expect("run agent");
        assert!(!out.status.success(), "agent accepted:\n{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = format!("{}:{bad_line}: ", node.node_file().display());
        assert!(
            stderr.contains(&want) && stderr.contains(reason),
            "want {want:?} and {reason:?} in:\n{stderr}"
        );
        assert!(
            !node.socket().exists(),
            "agent opened its socket with a bad node file"
        );
    }
}

#[test]
fn socket_is_root_only_and_sigterm_stops_without_detaching() {
    let mut node = SimNode::new().expect("sim node");
    let mode = std::fs::metadata(node.socket())
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let pins = node.link_pins().expect("pins");
    assert_eq!(pins.len(), 6, "{pins:?}");
    let status = node.agent.as_mut().expect("agent").stop().expect("stop");
    assert!(status.success(), "{status}");
    assert!(!node.socket().exists(), "socket left behind");
    assert_eq!(
        node.link_pins().expect("pins"),
        pins,
        "links were removed on stop"
    );
    assert_eq!(
        node.inspect("enis").expect("enis").as_array().map(Vec::len),
        Some(3)
    );
}

#[test]
fn the_agent_built_by_xtask_runs_with_its_embedded_object() {
    let node = SimNode::build().expect("sim node");
    std::fs::write(node.node_file(), node_file(&pod_ips("eth0"), &[])).expect("write");
    let args = node
        .agent_args()
        .metrics_addr("127.0.0.1:0")
        .introspection_addr("127.0.0.1:0");
    let log = node.dir.path().join("embedded.log");
    let agent = testbed::drivers::agent_proc::AgentProc::start(node.node.name(), &args, &[], &log)
        .expect("agent without --ebpf-object (cargo xtask builds it with the object embedded)");
    assert_eq!(node.link_pins().expect("pins").len(), 6);
    drop(agent);
}

#[test]
fn the_socket_serves_the_standard_grpc_health_service() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let node = SimNode::new().expect("sim node");
    let socket = node.socket().to_string_lossy().into_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let status = rt.block_on(async {
        let channel = trunkline_rpc::channel(&socket).await.expect("connect");
        let mut health = HealthClient::new(channel);
        let check = |service: &str| HealthCheckRequest {
            service: service.to_string(),
        };
        let agent = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            health.check(check("trunkline.v1.Agent")),
        )
        .await
        .expect("answer in time")
        .expect("health check")
        .into_inner()
        .status;
        let unknown = health.check(check("no.such.Service")).await;
        (agent, unknown.map(|r| r.into_inner().status))
    });
    assert_eq!(status.0, ServingStatus::Serving as i32);
    assert_eq!(
        status.1.expect_err("unknown service").code(),
        tonic::Code::NotFound
    );
}
