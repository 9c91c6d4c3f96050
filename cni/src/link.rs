//! Netlink operations (rtnetlink; no `ip` subprocess): the veth pair, the
//! pod side's address, routes and neighbour, and what CHECK reads back.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
};

use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteProtocol, RouteScope},
        AddressFamily,
    },
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::{
    error::{code, CniError, Result},
    netns::NsGuard,
};

pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

fn nl_err(what: &str) -> impl Fn(rtnetlink::Error) -> CniError + '_ {
    move |e| CniError::new(code::IO, format!("{what}: {e}"))
}

/// errno of a netlink error, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().raw_os_error(),
        _ => None,
    }
}

/// A link as netlink reports it.
#[derive(Clone, Debug)]
pub struct Link {
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub up: bool,
}

pub fn mac_string(m: &[u8; 6]) -> String {
    dataplane_common::MacAddr(*m).to_string()
}

fn link_of(msg: &LinkMessage) -> Link {
    let mut l = Link {
        index: msg.header.index,
        mac: [0; 6],
        mtu: 0,
        up: msg
            .header
            .flags
            .contains(rtnetlink::packet_route::link::LinkFlags::Up),
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::Address(b) if b.len() == 6 => l.mac.copy_from_slice(b),
            LinkAttribute::Mtu(m) => l.mtu = *m,
            _ => {}
        }
    }
    l
}

/// A netlink connection in one network namespace.
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// In the calling thread's namespace. Must run inside the tokio runtime.
    pub fn here() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| CniError::new(code::IO, format!("opening a netlink socket: {e}")))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// In the namespace of `netns` (the socket is opened there, then this
    /// thread returns to its own namespace).
    pub fn in_netns(netns: &File) -> Result<Self> {
        let _guard = NsGuard::enter(netns)?;
        Self::here()
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(link_of(&m))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err("reading a link")(e)),
        }
    }

    /// Creates `host` here (up) and its peer directly in `pod_netns`,
    /// named `pod_ifname`, both with `mtu`.
    pub async fn add_veth(
        &self,
        host: &str,
        pod_ifname: &str,
        pod_netns: &File,
        mtu: u32,
    ) -> Result<()> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(pod_ifname.to_string())
            .mtu(mtu)
            .setns_by_fd(pod_netns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .mtu(mtu)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            let reason = match errno(&e) {
                Some(libc::EEXIST) => format!(
                    "creating veth {host} with peer {pod_ifname} in the pod: a link of one of these names already exists"
                ),
                _ => format!("creating veth {host} with peer {pod_ifname} in the pod: {e}"),
            };
            CniError::new(code::IO, reason)
        })
    }

    /// Deletes link `index`; already gone is fine.
    pub async fn del_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ENODEV) | Some(libc::ENOENT)) => Ok(()),
            Err(e) => Err(nl_err("deleting a link")(e)),
        }
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_err("setting the pod interface up"))
    }

    /// The pod side: `ip`/32, 169.254.1.1/32 scope link, default via
    /// 169.254.1.1, permanent neighbour 169.254.1.1 → `gateway_mac`.
    pub async fn configure_pod(
        &self,
        index: u32,
        ip: Ipv4Addr,
        gateway_mac: &[u8; 6],
    ) -> Result<()> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), 32)
            .execute()
            .await
            .map_err(nl_err("adding the pod address"))?;
        self.set_up(index).await?;
        let gw = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(GATEWAY, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Boot)
            .build();
        self.handle
            .route()
            .add(gw)
            .execute()
            .await
            .map_err(nl_err("adding the route to 169.254.1.1"))?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(GATEWAY)
            .output_interface(index)
            .protocol(RouteProtocol::Boot)
            .build();
        self.handle
            .route()
            .add(default)
            .execute()
            .await
            .map_err(nl_err("adding the default route"))?;
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(GATEWAY))
            .link_layer_address(gateway_mac)
            .state(NeighbourState::Permanent)
            .execute()
            .await
            .map_err(nl_err("adding the neighbour 169.254.1.1"))?;
        Ok(())
    }

    /// IPv4 addresses of `index` as (address, prefix length).
    pub async fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl_err("reading addresses"))? {
            if m.header.family != AddressFamily::Inet {
                continue;
            }
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    out.push((*ip, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// IPv4 routes of the main table through `index` as (dst, prefix, gateway, scope link?).
    pub async fn routes(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8, Option<Ipv4Addr>, bool)>> {
        let q = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut s = self.handle.route().get(q).execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl_err("reading routes"))? {
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gw = None;
            let mut oif = 0;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    RouteAttribute::Oif(o) => oif = *o,
                    _ => {}
                }
            }
            if oif == index && m.header.table == 254 {
                out.push((
                    dst,
                    m.header.destination_prefix_length,
                    gw,
                    m.header.scope == RouteScope::Link,
                ));
            }
        }
        Ok(out)
    }

    /// Permanent IPv4 neighbours of `index` as (ip, MAC).
    pub async fn permanent_neighbours(&self, index: u32) -> Result<Vec<(Ipv4Addr, [u8; 6])>> {
        let mut s = self.handle.neighbours().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl_err("reading neighbours"))? {
            if m.header.ifindex != index || m.header.state != NeighbourState::Permanent {
                continue;
            }
            let mut ip = None;
            let mut mac = [0u8; 6];
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(*d),
                    NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                        mac.copy_from_slice(b)
                    }
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                out.push((ip, mac));
            }
        }
        Ok(out)
    }
}
