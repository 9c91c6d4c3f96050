//! The pod-eni annotation parser on arbitrary text: it must never panic,
//! and what it accepts must satisfy the invariants the agent relies on and
//! survive a round trip through its canonical JSON.
#![no_main]

// Compiled in from source: the fuzz build stays free of kube and rustls.
#[path = "../../cloud-kube/src/annotation.rs"]
#[allow(dead_code)]
mod annotation;

use annotation::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(b) = parse(text) else {
        return;
    };
    assert!((1..=4094).contains(&b.vlan), "accepted VLAN {}", b.vlan);
    assert!(
        b.mac.0 != [0; 6] && b.mac.0[0] & 1 == 0,
        "accepted MAC {}",
        b.mac
    );
    assert!(!b.ip.is_unspecified() && !b.ip.is_multicast() && !b.ip.is_broadcast());
    if let Some(net) = b.subnet {
        assert!(net.contains(&b.ip));
    }
    let mut obj = serde_json::json!({
        "eniId": b.eni_id,
        "ifAddress": b.mac.to_string(),
        "privateIp": b.ip.to_string(),
        "vlanId": b.vlan,
    });
    if let Some(n) = b.subnet {
        obj["subnetCidr"] = n.to_string().into();
    }
    if let Some(a) = b.ipv6 {
        obj["ipv6Addr"] = a.to_string().into();
    }
    if let Some(n) = b.subnet_v6 {
        obj["subnetV6Cidr"] = n.to_string().into();
    }
    let again = parse(&serde_json::Value::Array(vec![obj]).to_string());
    assert_eq!(again.as_ref(), Ok(&b), "canonical form does not round-trip");
});
