//! The CNI result of ADD, chained onto a `prevResult` when there is one.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::link::GATEWAY;

pub struct Added<'a> {
    pub host_veth: &'a str,
    pub host_mac: &'a str,
    pub ifname: &'a str,
    pub pod_mac: &'a str,
    pub netns: &'a str,
    pub ip: Ipv4Addr,
}

/// `prev` (if any) with our two interfaces, the pod IP and the default
/// route appended; interface indexes are shifted past `prev`'s.
pub fn build(cni_version: &str, prev: Option<&Value>, a: &Added<'_>) -> Value {
    let mut interfaces: Vec<Value> = prev
        .and_then(|p| p.get("interfaces"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut ips: Vec<Value> = prev
        .and_then(|p| p.get("ips"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut routes: Vec<Value> = prev
        .and_then(|p| p.get("routes"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let dns = prev
        .and_then(|p| p.get("dns"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    interfaces.push(json!({"name": a.host_veth, "mac": a.host_mac}));
    let pod_index = interfaces.len();
    interfaces.push(json!({"name": a.ifname, "mac": a.pod_mac, "sandbox": a.netns}));
    ips.push(json!({"address": format!("{}/32", a.ip), "gateway": GATEWAY.to_string(), "interface": pod_index}));
    routes.push(json!({"dst": "0.0.0.0/0", "gw": GATEWAY.to_string()}));
    json!({
        "cniVersion": cni_version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dns,
    })
}

/// The pod IP a result says `ifname` in `netns` has.
pub fn pod_ip(result: &Value, ifname: &str, netns: &str) -> Option<Ipv4Addr> {
    let interfaces = result.get("interfaces")?.as_array()?;
    let idx = interfaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(ifname)
            && i.get("sandbox").and_then(Value::as_str) == Some(netns)
    })?;
    result.get("ips")?.as_array()?.iter().find_map(|ip| {
        if ip.get("interface").and_then(Value::as_u64) != Some(idx as u64) {
            return None;
        }
        let addr = ip.get("address")?.as_str()?;
        addr.split('/').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_after_a_previous_result() {
        let prev = json!({"cniVersion":"1.0.0","interfaces":[{"name":"x"}],"ips":[{"address":"10.9.9.9/24","interface":0}],"dns":{"nameservers":["10.0.0.2"]}});
        let a = Added {
            host_veth: "eni0123456789a",
            host_mac: "02:00:00:00:00:01",
            ifname: "eth0",
            pod_mac: "02:00:00:00:00:02",
            netns: "/run/netns/p",
            ip: Ipv4Addr::new(192, 168, 31, 170),
        };
        let r = build("1.1.0", Some(&prev), &a);
        assert_eq!(r["interfaces"].as_array().map(Vec::len), Some(3));
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(r["ips"][1]["address"], "192.168.31.170/32");
        assert_eq!(r["dns"]["nameservers"][0], "10.0.0.2");
        assert_eq!(pod_ip(&r, "eth0", "/run/netns/p"), Some(a.ip));
        assert_eq!(pod_ip(&r, "eth0", "/run/netns/other"), None);
    }
}
