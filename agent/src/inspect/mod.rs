//! `trunkline-agent inspect {pods|enis|ct|nat|stats}`: the pinned maps as
//! aligned tables or JSON, read from the pins (works while the agent is
//! down). [`ct`] renders conntrack and NAT, [`stats`] the counters.

pub mod ct;
pub mod stats;

use std::{net::Ipv4Addr, path::Path};

use dataplane_common::{CtEntry, CtKey, EniEntry, EniRole, MacAddr, PodEntry};
use serde_json::{json, Value};

use crate::dataplane::{ConfigMap, CtView, EnisMap, PodsMap, Result};

fn mac(m: &[u8; 6]) -> String {
    MacAddr(*m).to_string()
}

/// Renders rows as columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn pod_row(ip: Ipv4Addr, e: &PodEntry) -> (Vec<String>, Value) {
    let row = vec![
        ip.to_string(),
        e.host_ifindex.to_string(),
        mac(&e.mac),
        e.eni_ifindex.to_string(),
        e.vlan_id.to_string(),
        if e.vlan_id == 0 {
            "-".into()
        } else {
            mac(&e.branch_mac)
        },
        format!("{:#x}", e.flags),
    ];
    let j = json!({"ip": ip.to_string(), "host_ifindex": e.host_ifindex, "mac": mac(&e.mac),
        "eni_ifindex": e.eni_ifindex, "vlan_id": e.vlan_id, "branch_mac": mac(&e.branch_mac), "flags": e.flags});
    (row, j)
}

pub fn pods(bpf_root: &Path, as_json: bool) -> Result<String> {
    let mut entries = PodsMap::open(bpf_root)?.entries()?;
    entries.sort_by_key(|(ip, _)| *ip);
    let (rows, js): (Vec<_>, Vec<_>) = entries.iter().map(|(ip, e)| pod_row(*ip, e)).unzip();
    Ok(if as_json {
        Value::Array(js).to_string()
    } else {
        table(
            &[
                "POD IP",
                "HOST IFINDEX",
                "POD MAC",
                "ENI IFINDEX",
                "VLAN",
                "BRANCH MAC",
                "FLAGS",
            ],
            &rows,
        )
    })
}

fn eni_row(ifindex: u32, e: &EniEntry) -> (Vec<String>, Value) {
    let role = EniRole::from_u32(e.role).map(EniRole::name).unwrap_or("?");
    let row = vec![
        ifindex.to_string(),
        role.to_string(),
        mac(&e.mac),
        Ipv4Addr::from(e.primary_ip).to_string(),
        Ipv4Addr::from(e.gateway_ip).to_string(),
        mac(&e.gateway_mac),
    ];
    let j = json!({"ifindex": ifindex, "role": role, "mac": mac(&e.mac),
        "primary_ip": Ipv4Addr::from(e.primary_ip).to_string(), "gateway_ip": Ipv4Addr::from(e.gateway_ip).to_string(),
        "gateway_mac": mac(&e.gateway_mac)});
    (row, j)
}

pub fn enis(bpf_root: &Path, as_json: bool) -> Result<String> {
    let mut entries = EnisMap::open(bpf_root)?.entries()?;
    entries.sort_by_key(|(i, _)| *i);
    let (rows, js): (Vec<_>, Vec<_>) = entries.iter().map(|(i, e)| eni_row(*i, e)).unzip();
    Ok(if as_json {
        Value::Array(js).to_string()
    } else {
        table(
            &[
                "IFINDEX",
                "ROLE",
                "MAC",
                "PRIMARY IP",
                "GATEWAY",
                "GATEWAY MAC",
            ],
            &rows,
        )
    })
}

fn flows(bpf_root: &Path) -> Result<Vec<(CtKey, CtEntry)>> {
    CtView::open(bpf_root)?.entries()
}

/// `inspect ct`: conntrack as `conntrack -L` prints it.
pub fn ct(bpf_root: &Path, as_json: bool) -> Result<String> {
    let flows = flows(bpf_root)?;
    let (now, t) = (
        crate::conntrack_gc::now_coarse_ns(),
        crate::conntrack_gc::Timeouts::default(),
    );
    Ok(if as_json {
        crate::inspect::ct::ct_json(&flows, now, &t).to_string()
    } else {
        crate::inspect::ct::ct_lines(&flows, now, &t)
    })
}

/// `inspect nat`: every SNAT mapping and the destinations using most ports.
pub fn nat(bpf_root: &Path, as_json: bool) -> Result<String> {
    let flows = flows(bpf_root)?;
    let config = ConfigMap::open(bpf_root)?.get()?;
    let range = (config.port_min, config.port_max);
    Ok(if as_json {
        let mappings: Vec<Value> =
            crate::inspect::ct::ct_json(&flows, 0, &crate::conntrack_gc::Timeouts::default())
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f["snat"] == true)
                .cloned()
                .collect();
        let top: Vec<Value> = crate::inspect::ct::ports_by_destination(&flows)
            .into_iter()
            .map(|((ip, port, proto), n)| json!({"destination": format!("{ip}:{port}"), "proto": proto, "ports": n}))
            .collect();
        json!({"port_range": [range.0, range.1], "mappings": mappings, "top_destinations": top})
            .to_string()
    } else {
        crate::inspect::ct::nat_table(&flows, range, 10)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_aligned() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xxxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A     LONGER\nxxxx  1\ny     22");
    }
}
