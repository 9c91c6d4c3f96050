//! The subnet gateway's MAC on an ENI, asked of the VPC by ARP: what the
//! data path writes as the destination of a branch pod's tagged frames on
//! the trunk (the trunk ENI's `gateway_mac`). In local mode the node file
//! gives it; in AWS mode nothing else does (IMDS has no such field, and the
//! trunk has no route or neighbour entry of the host stack to read it from,
//! since trunkline adds no `vlan.eth.N` device and no route).
//!
//! One request from the ENI's own MAC and primary IP (the VPC answers ARP
//! for its gateway, and checks sources per ENI), sent again a few times
//! until a reply from the gateway's address arrives or the time is up.
//!
//! Written here on an `AF_PACKET` datagram socket: an ARP request is 28
//! fixed bytes, and the kernel adds the link header. The packet crates the
//! project uses for tests have no ARP (etherparse 0.16), and the kernel's
//! own neighbour resolution needs a route through the link, which the
//! trunk must not have.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use dataplane_common::MacAddr;

const ETH_P_ARP: u16 = 0x0806;
const ARP_LEN: usize = 28;
const OP_REQUEST: u16 = 1;
const OP_REPLY: u16 = 2;

/// How long one request waits for its reply before it is sent again.
pub const RETRY: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum GatewayArpError {
    #[error("{link}: no such interface")]
    Missing { link: String },
    #[error("{link}: {what}: {source}")]
    Io {
        link: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{link}: no ARP reply from the gateway {gateway} within {waited:?} (is the link up, with the ENI's address?)")]
    NoReply {
        link: String,
        gateway: Ipv4Addr,
        waited: Duration,
    },
}

/// The ARP request `sender` (MAC, IP) sends for `target`.
pub fn request(sender_mac: MacAddr, sender_ip: Ipv4Addr, target: Ipv4Addr) -> [u8; ARP_LEN] {
    let mut p = [0u8; ARP_LEN];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&OP_REQUEST.to_be_bytes());
    p[8..14].copy_from_slice(&sender_mac.0);
    p[14..18].copy_from_slice(&sender_ip.octets());
    // The target's hardware address stays zero: it is what is asked.
    p[24..28].copy_from_slice(&target.octets());
    p
}

/// The sender MAC of `frame` if it is an Ethernet/IPv4 ARP reply from
/// `from`; anything else (requests, other hosts, short or odd frames) is
/// `None`.
pub fn reply_from(frame: &[u8], from: Ipv4Addr) -> Option<MacAddr> {
    let p = frame.get(..ARP_LEN)?;
    let field = |a: usize| u16::from_be_bytes([p[a], p[a + 1]]);
    if field(0) != 1 || field(2) != 0x0800 || p[4] != 6 || p[5] != 4 || field(6) != OP_REPLY {
        return None;
    }
    if p[14..18] != from.octets() {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&p[8..14]);
    let mac = MacAddr(mac);
    mac.is_unicast().then_some(mac)
}

fn io(link: &str, what: &'static str) -> impl FnOnce(std::io::Error) -> GatewayArpError {
    let link = link.to_string();
    move |source| GatewayArpError::Io { link, what, source }
}

fn sockaddr(ifindex: u32, dst: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = ETH_P_ARP.to_be();
    sa.sll_ifindex = ifindex as i32;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&dst);
    sa
}

/// Asks for `gateway`'s MAC on `link` (in the caller's network namespace)
/// from `sender_ip` and the link's own MAC, for up to `within`. Blocking.
pub fn resolve(
    link: &str,
    sender_ip: Ipv4Addr,
    gateway: Ipv4Addr,
    within: Duration,
) -> Result<MacAddr, GatewayArpError> {
    let missing = || GatewayArpError::Missing {
        link: link.to_string(),
    };
    let ifindex = super::netif::ifindex(link).ok_or_else(missing)?;
    let own_mac = super::netif::mac(link).ok_or_else(missing)?;
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io(link, "opening a packet socket")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let bound = sockaddr(ifindex, [0; 6]);
    // SAFETY: a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&bound as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io(link, "binding the packet socket")(
            std::io::Error::last_os_error(),
        ));
    }
    let req = request(own_mac, sender_ip, gateway);
    let broadcast = sockaddr(ifindex, [0xff; 6]);
    let started = Instant::now();
    let deadline = started + within;
    let mut buf = [0u8; 128];
    while Instant::now() < deadline {
        // SAFETY: a valid buffer and sockaddr_ll of the sizes given.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&broadcast as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io(link, "sending the ARP request")(
                std::io::Error::last_os_error(),
            ));
        }
        let round_end = (Instant::now() + RETRY).min(deadline);
        loop {
            let left = round_end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io(link, "waiting for the ARP reply")(e));
            }
            if ready == 0 {
                break;
            }
            // SAFETY: a valid buffer of the size given.
            let n = unsafe {
                libc::recv(
                    sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) {
                    continue;
                }
                return Err(io(link, "reading the ARP reply")(e));
            }
            if let Some(mac) = reply_from(&buf[..n as usize], gateway) {
                return Ok(mac);
            }
        }
    }
    Err(GatewayArpError::NoReply {
        link: link.to_string(),
        gateway,
        waited: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: MacAddr = MacAddr([0x02, 0xa5, 0xee, 0x3d, 0x4a, 0xcb]);
    const GW: MacAddr = MacAddr([0x02, 0, 0, 0xfe, 0xfe, 0x01]);

    fn reply(op: u16, sender: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
        let mut p = request(sender, ip, Ipv4Addr::new(192, 168, 29, 10)).to_vec();
        p[6..8].copy_from_slice(&op.to_be_bytes());
        p
    }

    #[test]
    fn the_request_asks_for_the_target_from_the_eni() {
        let r = request(
            ME,
            Ipv4Addr::new(192, 168, 29, 10),
            Ipv4Addr::new(192, 168, 0, 1),
        );
        assert_eq!(
            r,
            [
                0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0xa5, 0xee, 0x3d, 0x4a, 0xcb, 192, 168, 29, 10, 0, 0,
                0, 0, 0, 0, 192, 168, 0, 1
            ]
        );
    }

    #[test]
    fn only_a_reply_from_the_gateway_gives_its_mac() {
        let gw = Ipv4Addr::new(192, 168, 0, 1);
        assert_eq!(reply_from(&reply(OP_REPLY, GW, gw), gw), Some(GW));
        // Trailing padding (a short frame padded to 46 bytes) is fine.
        let mut padded = reply(OP_REPLY, GW, gw);
        padded.resize(46, 0);
        assert_eq!(reply_from(&padded, gw), Some(GW));
        // A request, another host's reply, a truncated frame, a group MAC.
        assert_eq!(reply_from(&reply(OP_REQUEST, GW, gw), gw), None);
        assert_eq!(
            reply_from(&reply(OP_REPLY, GW, Ipv4Addr::new(192, 168, 0, 2)), gw),
            None
        );
        assert_eq!(reply_from(&reply(OP_REPLY, GW, gw)[..27], gw), None);
        assert_eq!(
            reply_from(&reply(OP_REPLY, MacAddr([0xff; 6]), gw), gw),
            None
        );
        assert_eq!(reply_from(&[], gw), None);
    }
}
