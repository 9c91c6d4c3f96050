//! trunkline-cni's network-configuration parser (stdin from the runtime) on
//! arbitrary bytes: never a panic, and an accepted configuration always
//! yields a valid host veth name and MTU.
#![no_main]

// The plugin is a binary crate: its parser is compiled in from source.
#[path = "../../cni/src/config.rs"]
#[allow(dead_code)]
mod config;
#[path = "../../cni/src/error.rs"]
#[allow(dead_code)]
mod error;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(conf) = config::NetConf::parse(data) else {
        return;
    };
    assert!((576..=65535).contains(&conf.mtu()));
    assert!(!conf.agent_socket().is_empty());
    let name = config::host_veth_name(conf.veth_prefix(), "default", "pod", "cid");
    assert!(!name.is_empty() && name.len() <= 15, "veth name {name:?}");
    if let Some(valid) = &conf.valid_attachments {
        for a in valid {
            let _ = (&a.container_id, &a.ifname);
        }
    }
});
