//! A secondary ENI brought up by the agent (AWS mode), on a real link (one
//! end of a veth pair) in a namespace of its own: down at MTU 1500 without
//! an address as EC2 attaches it, then up at the requested MTU with its
//! primary IP as a /32; a second call changes nothing; bad input is refused
//! with the link's name and leaves it as it was.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use testbed::topology::netns::Netns;
use trunkline_agent::node::eni_link::{configure, Changed, EniLinkError};

const IP: Ipv4Addr = Ipv4Addr::new(192, 168, 30, 10);

fn in_ns<T: Send>(ns: &Netns, f: impl std::future::Future<Output = T> + Send) -> T {
    ns.run_in(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
}

fn link(ns: &Netns) -> Result<serde_json::Value> {
    let out = ns.exec_ok("ip", &["-j", "addr", "show", "dev", "eni1"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j addr")?;
    Ok(v[0].clone())
}

#[test]
fn a_secondary_eni_comes_up_at_its_mtu_with_its_address_once() -> Result<()> {
    let ns = Netns::new("enilink")?;
    ns.ip(&[
        "link", "add", "eni1", "type", "veth", "peer", "name", "vpc1",
    ])?;
    ns.ip(&["link", "set", "eni1", "mtu", "1500"])?;
    let before = link(&ns)?;
    assert!(
        !before["flags"].to_string().contains("\"UP\""),
        "starts down: {before}"
    );

    let changed = in_ns(&ns, configure("eni1", 9001, IP))?;
    assert_eq!(
        changed,
        Changed {
            up: true,
            mtu: Some((1500, 9001)),
            address: true
        }
    );
    let after = link(&ns)?;
    assert!(after["flags"].to_string().contains("\"UP\""), "{after}");
    assert_eq!(after["mtu"].as_u64(), Some(9001), "{after}");
    let inet: Vec<_> = after["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["family"] == "inet")
        .map(|a| {
            (
                a["local"].as_str().map(String::from),
                a["prefixlen"].as_u64(),
            )
        })
        .collect();
    assert_eq!(inet, vec![(Some(IP.to_string()), Some(32))], "{after}");
    let routes = ns.exec_ok("ip", &["route", "show", "dev", "eni1"])?;
    assert!(routes.trim().is_empty(), "a /32 routes nothing: {routes}");

    let again = in_ns(&ns, configure("eni1", 9001, IP))?;
    assert!(!again.any(), "nothing left to change: {again:?}");
    Ok(())
}

#[test]
fn bad_input_names_the_link_and_changes_nothing() -> Result<()> {
    let ns = Netns::new("enilink")?;
    ns.ip(&[
        "link", "add", "eni1", "type", "veth", "peer", "name", "vpc1",
    ])?;
    ns.ip(&["link", "set", "eni1", "mtu", "1500"])?;
    match in_ns(&ns, configure("eni1", 9002, IP)) {
        Err(e @ EniLinkError::BadMtu { .. }) => {
            assert!(e.to_string().contains("eni1"), "{e}")
        }
        other => panic!("MTU 9002 accepted: {other:?}"),
    }
    assert_eq!(link(&ns)?["mtu"].as_u64(), Some(1500), "unchanged");
    match in_ns(&ns, configure("eni9", 9001, IP)) {
        Err(e @ EniLinkError::Missing { .. }) => {
            assert!(e.to_string().contains("eni9"), "{e}")
        }
        other => panic!("a missing link configured: {other:?}"),
    }
    Ok(())
}
