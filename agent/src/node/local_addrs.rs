//! The node's local addresses, as they come and go: every `local` route of
//! the kernel's local table (each address of every interface, and AnyIP
//! ranges such as `local 169.254.170.0/24 dev lo`). This is the set
//! netfilter's `addrtype --dst-type LOCAL` matches, which keeps the legacy
//! plumbing from SNATing a pod's traffic to the node: the EKS Pod Identity
//! agent on 169.254.170.23, node-local DNS, anything bound to a host
//! address. `from_pod` hands these to the host stack (`SERVICE_CIDRS`,
//! reason `PASS_NODE_LOCAL`).
//!
//! The set is read once before the agent serves pods, then again on every
//! IPv4 route notification (a new or removed address adds or removes its
//! local route), and every [`RESYNC`] in case a notification was lost.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use ipnet::Ipv4Net;
use rtnetlink::{
    packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
    Handle, MulticastGroup, RouteMessageBuilder,
};

use crate::agent::Shared;

/// The kernel's local routing table (`RT_TABLE_LOCAL`).
const TABLE_LOCAL: u32 = 255;

/// Re-read even without a notification (multicast messages can be lost
/// when the socket's buffer overflows).
pub const RESYNC: Duration = Duration::from_secs(30);

/// How long a burst of notifications is let settle before one re-read.
const SETTLE: Duration = Duration::from_millis(50);

/// The prefix of `m` if it is a `local` route of the local table.
fn local_prefix(m: &RouteMessage) -> Option<Ipv4Net> {
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    if table != TABLE_LOCAL || m.header.kind != RouteType::Local {
        return None;
    }
    let dst = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
        _ => None,
    })?;
    Ipv4Net::new(dst, m.header.destination_prefix_length)
        .ok()
        .map(|n| n.trunc())
}

/// The node's local IPv4 prefixes now.
pub async fn read(handle: &Handle) -> Result<BTreeSet<Ipv4Net>> {
    let q = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let mut routes = handle.route().get(q).execute();
    let mut out = BTreeSet::new();
    while let Some(m) = routes.try_next().await.context("dumping the IPv4 routes")? {
        out.extend(local_prefix(&m));
    }
    Ok(out)
}

/// Reads the local addresses into the agent's maps, then keeps them
/// current from a background task for as long as the process runs.
pub async fn start(agent: Shared) -> Result<()> {
    let (conn, handle, mut notifications) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Ipv4Route])
            .context("opening a netlink socket for route notifications")?;
    tokio::spawn(conn);
    let first = read(&handle).await?;
    apply(&agent, first)?;
    tokio::spawn(async move {
        loop {
            match tokio::time::timeout(RESYNC, notifications.next()).await {
                Ok(Some(_)) => {
                    // Let the rest of a burst (an address brings several
                    // routes) arrive, then read once.
                    while let Ok(Some(_)) = tokio::time::timeout(SETTLE, notifications.next()).await
                    {
                    }
                }
                Ok(None) => {
                    tracing::warn!(
                        "route notifications ended; re-reading local addresses every {RESYNC:?}"
                    );
                    tokio::time::sleep(RESYNC).await;
                }
                Err(_) => {} // periodic re-read
            }
            let applied = match read(&handle).await {
                Ok(set) => apply(&agent, set),
                Err(e) => Err(e),
            };
            if let Err(e) = applied {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "updating the node's local addresses failed; keeping the previous set"
                );
            }
        }
    });
    Ok(())
}

fn apply(agent: &Shared, set: BTreeSet<Ipv4Net>) -> Result<()> {
    let mut a = agent.lock();
    let changed = a
        .set_node_local(set.clone())
        .context("writing the node's local addresses")?;
    if changed {
        tracing::info!(local = ?set.iter().map(ToString::to_string).collect::<Vec<_>>(), "node-local addresses");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::route::{RouteHeader, RouteProtocol, RouteScope};

    use super::*;

    fn route(table: u8, kind: RouteType, dst: Ipv4Addr, len: u8) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            table,
            kind,
            destination_prefix_length: len,
            protocol: RouteProtocol::Kernel,
            scope: RouteScope::Host,
            ..RouteHeader::default()
        };
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        m
    }

    /// Against this machine's kernel: loopback's address is always local.
    #[test]
    fn reads_the_kernels_local_table() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let set = rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
            tokio::spawn(conn);
            read(&handle).await.expect("dump")
        });
        assert!(set.contains(&"127.0.0.1/32".parse().unwrap()), "{set:?}");
    }

    #[test]
    fn only_local_routes_of_the_local_table_count() {
        let a = Ipv4Addr::new(169, 254, 170, 23);
        assert_eq!(
            local_prefix(&route(255, RouteType::Local, a, 32)),
            Some("169.254.170.23/32".parse().unwrap())
        );
        // AnyIP: a whole range is local.
        assert_eq!(
            local_prefix(&route(
                255,
                RouteType::Local,
                Ipv4Addr::new(10, 9, 0, 0),
                16
            )),
            Some("10.9.0.0/16".parse().unwrap())
        );
        assert_eq!(local_prefix(&route(255, RouteType::Broadcast, a, 32)), None);
        assert_eq!(local_prefix(&route(254, RouteType::Unicast, a, 32)), None);
        assert_eq!(local_prefix(&route(254, RouteType::Local, a, 32)), None);
    }
}
