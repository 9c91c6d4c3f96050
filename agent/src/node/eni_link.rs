//! Bringing up a secondary ENI the agent uses (AWS mode). EC2 attaches an
//! ENI with its interface down at the kernel's default MTU; aws-node then
//! sets it up (`setupENINetwork`: MTU, link up, the ENI's primary IP).
//! Trunkline needs the same minus the routing: the link up, the MTU the
//! data path checks redirects against (`bpf_check_mtu`), and the ENI's
//! primary IP as a /32, so that ARP for the subnet gateway on this link
//! carries the ENI's own address (the VPC checks sources per ENI) and the
//! node answers on it. A /32 adds no subnet route: nothing is routed out
//! of a secondary ENI by the host stack, as without per-ENI route tables.
//!
//! The primary ENI is left as the node's OS configured it: it carries the
//! node's own connectivity, and the agent changing it at start could cut
//! that.
//!
//! Idempotent: each call reads the link and changes only what differs.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{LinkAttribute, LinkFlags, LinkMessage},
        AddressFamily,
    },
    Handle, LinkUnspec,
};

/// The lowest MTU IPv4 allows on a link and the highest EC2 gives.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9001;

#[derive(Debug, thiserror::Error)]
pub enum EniLinkError {
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("{link}: no such interface")]
    Missing { link: String },
    #[error("{link}: MTU {mtu} is outside {}..={}", MTU_RANGE.start(), MTU_RANGE.end())]
    BadMtu { link: String, mtu: u32 },
    #[error("{link}: {what}: {source}")]
    Netlink {
        link: String,
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// What a call changed (all false: the link was already configured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    pub up: bool,
    pub mtu: Option<(u32, u32)>,
    pub address: bool,
}

impl Changed {
    pub fn any(&self) -> bool {
        self.up || self.mtu.is_some() || self.address
    }
}

struct LinkState {
    index: u32,
    up: bool,
    mtu: u32,
}

fn state_of(m: &LinkMessage) -> LinkState {
    LinkState {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        mtu: m
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(v) => Some(*v),
                _ => None,
            })
            .unwrap_or(0),
    }
}

fn has_address(msgs: &[AddressMessage], index: u32, ip: Ipv4Addr) -> bool {
    msgs.iter().any(|m| {
        m.header.index == index
            && m.header.family == AddressFamily::Inet
            && m.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Local(IpAddr::V4(x)) | AddressAttribute::Address(IpAddr::V4(x)) if *x == ip)
            })
    })
}

/// Brings secondary ENI `link` up with `mtu` and `ip`/32, on a netlink
/// connection of the calling thread's network namespace. Must run inside
/// a tokio runtime.
pub async fn configure(link: &str, mtu: u32, ip: Ipv4Addr) -> Result<Changed, EniLinkError> {
    if !MTU_RANGE.contains(&mtu) {
        return Err(EniLinkError::BadMtu {
            link: link.into(),
            mtu,
        });
    }
    let (conn, handle, _) = rtnetlink::new_connection().map_err(EniLinkError::Socket)?;
    let conn = tokio::spawn(conn);
    let result = configure_with(&handle, link, mtu, ip).await;
    conn.abort();
    result
}

async fn configure_with(
    handle: &Handle,
    link: &str,
    mtu: u32,
    ip: Ipv4Addr,
) -> Result<Changed, EniLinkError> {
    let nl = |what| {
        move |source| EniLinkError::Netlink {
            link: link.into(),
            what,
            source,
        }
    };
    let msg = handle
        .link()
        .get()
        .match_name(link.to_string())
        .execute()
        .try_next()
        .await
        .map_err(|e| match &e {
            rtnetlink::Error::NetlinkError(m) if m.to_io().raw_os_error() == Some(libc::ENODEV) => {
                EniLinkError::Missing { link: link.into() }
            }
            _ => nl("reading the link")(e),
        })?
        .ok_or_else(|| EniLinkError::Missing { link: link.into() })?;
    let now = state_of(&msg);
    let mut changed = Changed::default();
    // MTU before up: the link never carries traffic at the wrong MTU.
    if now.mtu != mtu {
        let m = LinkUnspec::new_with_index(now.index).mtu(mtu).build();
        handle
            .link()
            .set(m)
            .execute()
            .await
            .map_err(nl("setting the MTU"))?;
        changed.mtu = Some((now.mtu, mtu));
    }
    let addrs: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(now.index)
        .execute()
        .try_collect()
        .await
        .map_err(nl("reading its addresses"))?;
    if !has_address(&addrs, now.index, ip) {
        handle
            .address()
            .add(now.index, IpAddr::V4(ip), 32)
            .execute()
            .await
            .or_else(|e| match &e {
                // Added meanwhile (another call): what we wanted.
                rtnetlink::Error::NetlinkError(m)
                    if m.to_io().raw_os_error() == Some(libc::EEXIST) =>
                {
                    Ok(())
                }
                _ => Err(nl("adding the ENI's address")(e)),
            })?;
        changed.address = true;
    }
    if !now.up {
        let m = LinkUnspec::new_with_index(now.index).up().build();
        handle
            .link()
            .set(m)
            .execute()
            .await
            .map_err(nl("setting the link up"))?;
        changed.up = true;
    }
    Ok(changed)
}
