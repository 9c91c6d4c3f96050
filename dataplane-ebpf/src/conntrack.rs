//! Conntrack stage: flow keys, the `CT` entry of a flow, and fragment
//! tracking (later fragments carry no ports; the first fragment's are
//! remembered in `FRAGS`).

use dataplane_common::{
    conntrack::{CT_STATE_CLOSING, CT_STATE_ESTABLISHED, TCP_FIN, TCP_RST},
    CtEntry, CtKey, DropReason, FragKey, FragPorts,
};

use crate::{
    headers::IPPROTO_TCP,
    maps::{self, FRAGS},
    parse::{Fragment, Parsed},
};

/// The packet's flow key in the direction it travels, with the ports of
/// its datagram's first fragment when it is a later fragment.
#[inline(always)]
pub fn flow_key(pkt: &Parsed) -> Result<CtKey, DropReason> {
    let (src_port, dst_port) = match pkt.fragment {
        Fragment::None => (pkt.src_port, pkt.dst_port),
        Fragment::First => {
            let ports = FragPorts {
                src_port: pkt.src_port,
                dst_port: pkt.dst_port,
            };
            // Best effort: a full FRAGS only costs the later fragments.
            let _ = FRAGS.insert(frag_key(pkt), ports, 0);
            (pkt.src_port, pkt.dst_port)
        }
        Fragment::Later => {
            let ports = maps::frag_ports(&frag_key(pkt)).ok_or(DropReason::FragUnknown)?;
            (ports.src_port, ports.dst_port)
        }
    };
    Ok(CtKey::new(pkt.src, pkt.dst, src_port, dst_port, pkt.proto))
}

#[inline(always)]
fn frag_key(pkt: &Parsed) -> FragKey {
    FragKey {
        src_ip: pkt.src,
        dst_ip: pkt.dst,
        id: pkt.ip_id,
        proto: pkt.proto,
        _pad: 0,
    }
}

pub use crate::skb::now;

/// The flow's entry, if tracked.
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<&'static mut CtEntry> {
    maps::ct_mut(key)
}

/// Accounts a packet of the original direction.
#[inline(always)]
pub fn seen_orig(ct: &mut CtEntry, pkt: &Parsed) {
    touch(ct);
    ct.packets_orig += 1;
    ct.bytes_orig += pkt.ip_len as u64;
    track_tcp_close(ct, pkt);
}

/// Accounts a packet of the reply direction.
#[inline(always)]
pub fn seen_reply(ct: &mut CtEntry, pkt: &Parsed) {
    touch(ct);
    ct.packets_reply += 1;
    ct.bytes_reply += pkt.ip_len as u64;
    if ct.state < CT_STATE_ESTABLISHED {
        ct.state = CT_STATE_ESTABLISHED;
    }
    track_tcp_close(ct, pkt);
}

/// Updates last-seen only when the coarse clock has moved, so that most
/// packets do not write that word.
#[inline(always)]
fn touch(ct: &mut CtEntry) {
    let t = now();
    if ct.last_seen_ns != t {
        ct.last_seen_ns = t;
    }
}

/// FIN or RST in either direction moves the flow to the short closing timeout.
#[inline(always)]
fn track_tcp_close(ct: &mut CtEntry, pkt: &Parsed) {
    if pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        ct.state = CT_STATE_CLOSING;
    }
}
