//! trunkline-cni: the CNI plugin binary (veth + pod addressing + one RPC to
//! the agent). Until the agent/CNI issue lands it answers every command
//! with a CNI error, so a runtime that calls it gets a clear reason.

use std::io::Write;

fn main() {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let err = format!(
        "{{\"cniVersion\":\"1.0.0\",\"code\":4,\"msg\":\"trunkline-cni {}: command {:?} is not supported by this build\"}}",
        env!("CARGO_PKG_VERSION"),
        command
    );
    let _ = writeln!(std::io::stdout(), "{err}");
    std::process::exit(1);
}
