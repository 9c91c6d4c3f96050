//! `inspect ct` and `inspect nat`: conntrack the way `conntrack -L` users
//! read it, and SNAT by destination (which one is running out of ports).

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr};

use dataplane_common::{
    conntrack::{CT_F_INBOUND, CT_F_SNAT, CT_F_VIA_STACK},
    flow_state, CtEntry, CtKey,
};
use serde_json::{json, Value};

use crate::conntrack_gc::Timeouts;

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        _ => "unknown",
    }
}

/// The reply direction as it is on the wire (after SNAT when translated).
fn reply_tuple(key: &CtKey, ct: &CtEntry) -> CtKey {
    if ct.flags & CT_F_SNAT != 0 {
        key.snat_reply(ct.nat_ip, ct.nat_port)
    } else {
        key.reversed()
    }
}

/// Seconds until the entry expires at `now_ns`.
fn remaining(key: &CtKey, ct: &CtEntry, now_ns: u64, t: &Timeouts) -> u64 {
    let age = now_ns.saturating_sub(ct.last_seen_ns) / 1_000_000_000;
    t.for_entry(key, ct).as_secs().saturating_sub(age)
}

fn tuple(k: &CtKey) -> String {
    format!(
        "src={} dst={} sport={} dport={}",
        Ipv4Addr::from(k.src_ip),
        Ipv4Addr::from(k.dst_ip),
        k.src_port,
        k.dst_port
    )
}

/// One line per flow, as `conntrack -L` prints them:
/// `tcp 6 431999 ESTABLISHED src=.. dst=.. sport=.. dport=.. packets=.. bytes=.. src=.. (reply) .. [SNAT]`.
pub fn ct_lines(flows: &[(CtKey, CtEntry)], now_ns: u64, t: &Timeouts) -> String {
    let mut out = String::new();
    for (key, ct) in flows {
        let reply = reply_tuple(key, ct);
        let _ = write!(
            out,
            "{:<8} {} {} {} {} packets={} bytes={} {} packets={} bytes={}",
            proto_name(key.proto),
            key.proto,
            remaining(key, ct, now_ns, t),
            flow_state::name(key.proto, ct.state),
            tuple(key),
            ct.packets_orig,
            ct.bytes_orig,
            tuple(&reply),
            ct.packets_reply,
            ct.bytes_reply
        );
        if ct.flags & CT_F_SNAT != 0 {
            out.push_str(" [SNAT]");
        }
        if ct.flags & CT_F_VIA_STACK != 0 {
            out.push_str(" [VIA_STACK]");
        }
        if ct.flags & CT_F_INBOUND != 0 {
            out.push_str(" [INBOUND]");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "conntrack v1 (trunkline): {} flow entries have been shown.",
        flows.len()
    );
    out
}

pub fn ct_json(flows: &[(CtKey, CtEntry)], now_ns: u64, t: &Timeouts) -> Value {
    let entry = |(key, ct): &(CtKey, CtEntry)| {
        let reply = reply_tuple(key, ct);
        json!({
            "proto": proto_name(key.proto),
            "state": flow_state::name(key.proto, ct.state),
            "timeout": remaining(key, ct, now_ns, t),
            "orig": {"src": Ipv4Addr::from(key.src_ip).to_string(), "dst": Ipv4Addr::from(key.dst_ip).to_string(),
                     "sport": key.src_port, "dport": key.dst_port, "packets": ct.packets_orig, "bytes": ct.bytes_orig},
            "reply": {"src": Ipv4Addr::from(reply.src_ip).to_string(), "dst": Ipv4Addr::from(reply.dst_ip).to_string(),
                      "sport": reply.src_port, "dport": reply.dst_port, "packets": ct.packets_reply, "bytes": ct.bytes_reply},
            "snat": ct.flags & CT_F_SNAT != 0,
            "via_stack": ct.flags & CT_F_VIA_STACK != 0,
            "inbound": ct.flags & CT_F_INBOUND != 0,
        })
    };
    Value::Array(flows.iter().map(entry).collect())
}

/// SNAT ports in use per destination (IP, port, protocol), most used first.
pub fn ports_by_destination(flows: &[(CtKey, CtEntry)]) -> Vec<((Ipv4Addr, u16, u8), usize)> {
    let mut by_dst: BTreeMap<(Ipv4Addr, u16, u8), usize> = BTreeMap::new();
    for (key, ct) in flows.iter().filter(|(_, ct)| ct.flags & CT_F_SNAT != 0) {
        let _ = ct;
        *by_dst
            .entry((Ipv4Addr::from(key.dst_ip), key.dst_port, key.proto))
            .or_default() += 1;
    }
    let mut v: Vec<_> = by_dst.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// `inspect nat`: every mapping, then the top destinations with how much
/// of the port range each uses (exhaustion is per destination).
pub fn nat_table(flows: &[(CtKey, CtEntry)], port_range: (u16, u16), top: usize) -> String {
    let capacity = usize::from(port_range.1.saturating_sub(port_range.0)) + 1;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<22} {:<22} {:<22}",
        "PROTO", "POD", "NODE (NAT)", "DESTINATION"
    );
    for (key, ct) in flows.iter().filter(|(_, ct)| ct.flags & CT_F_SNAT != 0) {
        let _ = writeln!(
            out,
            "{:<6} {:<22} {:<22} {:<22}",
            proto_name(key.proto),
            format!("{}:{}", Ipv4Addr::from(key.src_ip), key.src_port),
            format!("{}:{}", Ipv4Addr::from(ct.nat_ip), ct.nat_port),
            format!("{}:{}", Ipv4Addr::from(key.dst_ip), key.dst_port)
        );
    }
    let _ = writeln!(
        out,
        "\nTOP DESTINATIONS BY SNAT PORTS IN USE (range {}-{}, {capacity} ports each)",
        port_range.0, port_range.1
    );
    let _ = writeln!(
        out,
        "{:<6} {:<22} {:>8} {:>7}",
        "PROTO", "DESTINATION", "PORTS", "USED"
    );
    for ((ip, port, proto), n) in ports_by_destination(flows).into_iter().take(top) {
        let _ = writeln!(
            out,
            "{:<6} {:<22} {:>8} {:>6.1}%",
            proto_name(proto),
            format!("{ip}:{port}"),
            n,
            n as f64 * 100.0 / capacity as f64
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_common::conntrack::CT_STATE_ESTABLISHED;

    fn flow(sport: u16, dst: [u8; 4], dport: u16, nat_port: u16) -> (CtKey, CtEntry) {
        (
            CtKey::new([192, 168, 31, 170], dst, sport, dport, 6),
            CtEntry {
                last_seen_ns: 10_000_000_000,
                nat_ip: [192, 168, 16, 10],
                nat_port,
                state: CT_STATE_ESTABLISHED,
                flags: CT_F_SNAT,
                packets_orig: 3,
                bytes_orig: 180,
                ..Default::default()
            },
        )
    }

    #[test]
    fn conntrack_l_format() {
        let flows = [flow(40000, [203, 0, 113, 10], 443, 50000)];
        let text = ct_lines(&flows, 12_000_000_000, &Timeouts::default());
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("tcp      6 431998 ESTABLISHED src=192.168.31.170 dst=203.0.113.10 sport=40000 dport=443 packets=3 bytes=180 src=203.0.113.10 dst=192.168.16.10 sport=443 dport=50000"), "{first}");
        assert!(first.ends_with("[SNAT]"));
        assert!(text.ends_with("1 flow entries have been shown.\n"));
        assert_eq!(
            ct_json(&flows, 12_000_000_000, &Timeouts::default())[0]["reply"]["dport"],
            50000
        );
    }

    #[test]
    fn top_destinations_are_counted_and_ranked() {
        let flows = [
            flow(1, [203, 0, 113, 10], 443, 1),
            flow(2, [203, 0, 113, 10], 443, 2),
            flow(3, [198, 51, 100, 1], 53, 3),
        ];
        let top = ports_by_destination(&flows);
        assert_eq!(top[0], ((Ipv4Addr::new(203, 0, 113, 10), 443, 6), 2));
        let t = nat_table(&flows, (50000, 50099), 10);
        assert!(
            t.contains("tcp    203.0.113.10:443              2    2.0%"),
            "{t}"
        );
    }
}
