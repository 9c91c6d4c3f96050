//! netfilter's connection table as `/proc/net/nf_conntrack` (or
//! `conntrack -L`) prints it, and what of it trunkline takes over.
//!
//! Written here rather than taken from a crate: the ctnetlink crates on
//! crates.io are unmaintained or incomplete, and the text format is stable
//! (one line per connection, `key=value` tuples) and read once, at
//! migration.

use std::net::Ipv4Addr;

use dataplane_common::{
    conntrack::{
        CT_F_OPENED_BY_PEER, CT_F_SNAT, CT_F_VIA_STACK, CT_STATE_ESTABLISHED, CT_STATE_NEW,
        CT_STATE_UDP_STREAM,
    },
    flow_state, CtEntry, CtKey,
};

/// One direction of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

/// One connection (TCP or UDP over IPv4; others are not taken over).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    pub proto: u8,
    /// TCP state name (`ESTABLISHED`, ...); `None` for UDP.
    pub tcp_state: Option<String>,
    /// A reply has been seen (no `[UNREPLIED]`).
    pub replied: bool,
    /// Netfilter marked it `[ASSURED]` (for UDP: a stream).
    pub assured: bool,
    pub orig: Tuple,
    pub reply: Tuple,
}

/// Parses every line it understands; lines of other families or protocols
/// and malformed lines are skipped (counted in the second value).
pub fn parse(text: &str) -> (Vec<Conn>, usize) {
    let mut conns = Vec::new();
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse_line(line) {
            Some(c) => conns.push(c),
            None => skipped += 1,
        }
    }
    (conns, skipped)
}

fn parse_line(line: &str) -> Option<Conn> {
    let mut words = line.split_whitespace().peekable();
    // /proc prints "ipv4 2 tcp 6 ..."; `conntrack -L` starts at "tcp 6".
    if words.peek() == Some(&"ipv4") {
        words.next();
        words.next();
    }
    let proto = match words.next()? {
        "tcp" => 6u8,
        "udp" => 17u8,
        _ => return None,
    };
    if words.next()?.parse::<u8>().ok()? != proto {
        return None;
    }
    let _timeout: u64 = words.next()?.parse().ok()?;
    let mut tcp_state = None;
    let mut tuples: Vec<Tuple> = Vec::with_capacity(2);
    let mut cur: [Option<&str>; 4] = [None; 4];
    let mut replied = true;
    let mut assured = false;
    for w in words {
        if w == "[UNREPLIED]" {
            replied = false;
            continue;
        }
        if w == "[ASSURED]" {
            assured = true;
            continue;
        }
        let Some((k, v)) = w.split_once('=') else {
            if proto == 6 && tcp_state.is_none() && tuples.is_empty() && cur[0].is_none() {
                tcp_state = Some(w.to_string());
            }
            continue;
        };
        let slot = match k {
            "src" => 0,
            "dst" => 1,
            "sport" => 2,
            "dport" => 3,
            _ => continue,
        };
        if slot == 0 && cur[0].is_some() {
            return None; // a tuple without its ports
        }
        cur[slot] = Some(v);
        if cur.iter().all(Option::is_some) {
            tuples.push(Tuple {
                src: cur[0]?.parse().ok()?,
                dst: cur[1]?.parse().ok()?,
                sport: cur[2]?.parse().ok()?,
                dport: cur[3]?.parse().ok()?,
            });
            cur = [None; 4];
        }
    }
    let [orig, reply] = <[Tuple; 2]>::try_from(tuples).ok()?;
    if proto == 6 && tcp_state.is_none() {
        return None;
    }
    Some(Conn {
        proto,
        tcp_state,
        replied,
        assured,
        orig,
        reply,
    })
}

/// What trunkline's conntrack gets for one netfilter connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adopted {
    /// A pod's connection netfilter source-NATed to the node IP: `CT[key]`
    /// and `SNAT_REV[reply]`, so the flow keeps its port.
    Snat {
        key: CtKey,
        entry: CtEntry,
        reply: CtKey,
    },
    /// A connection the stack delivered to a pod after translating it
    /// (NodePort, ClusterIP): `CT[key]` with `CT_F_VIA_STACK`, so the pod's
    /// replies go back through the stack to be un-translated.
    ViaStack { key: CtKey, entry: CtEntry },
}

fn state_of(c: &Conn) -> u8 {
    match c.tcp_state.as_deref() {
        // An unknown name (a future kernel's) is timed as an opening flow.
        Some(name) => flow_state::tcp_from_name(name).unwrap_or(CT_STATE_NEW),
        None if c.assured => CT_STATE_UDP_STREAM,
        None if c.replied => CT_STATE_ESTABLISHED,
        None => CT_STATE_NEW,
    }
}

fn key_of(t: &Tuple, proto: u8) -> CtKey {
    CtKey::new(t.src.octets(), t.dst.octets(), t.sport, t.dport, proto)
}

/// Classifies `c` for the pods in `is_pod`; `None` when trunkline needs no
/// state for it (not a pod's, or not translated: the data path steers such
/// flows without conntrack). SNAT to another address than `node_ip` is not
/// something trunkline would have done and is left to expire.
pub fn adopt(
    c: &Conn,
    node_ip: Ipv4Addr,
    is_pod: impl Fn(Ipv4Addr) -> bool,
    now_ns: u64,
) -> Option<Adopted> {
    let entry = CtEntry {
        created_ns: now_ns,
        last_seen_ns: now_ns,
        state: state_of(c),
        ..CtEntry::default()
    };
    let (o, r) = (&c.orig, &c.reply);
    // Pod -> outside, source rewritten: the reply comes back to node_ip.
    if is_pod(o.src) && r.dst != o.src {
        if r.dst != node_ip || r.src != o.dst || r.sport != o.dport {
            return None;
        }
        return Some(Adopted::Snat {
            key: key_of(o, c.proto),
            entry: CtEntry {
                nat_ip: node_ip.octets(),
                nat_port: r.dport,
                flags: CT_F_SNAT,
                ..entry
            },
            reply: key_of(r, c.proto),
        });
    }
    // Someone -> (translated) -> pod: the pod answers from r.src.
    let translated = r.src != o.dst || r.sport != o.dport || r.dst != o.src || r.dport != o.sport;
    if is_pod(r.src) && translated {
        return Some(Adopted::ViaStack {
            key: key_of(r, c.proto),
            entry: CtEntry {
                flags: CT_F_VIA_STACK | CT_F_OPENED_BY_PEER,
                ..entry
            },
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 31, 166);
    const POD: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 5);

    fn is_pod(ip: Ipv4Addr) -> bool {
        ip == POD
    }

    #[test]
    fn parses_proc_and_conntrack_tool_lines() {
        let text = "\
ipv4     2 tcp      6 431999 ESTABLISHED src=192.168.10.5 dst=203.0.113.10 sport=40000 dport=9000 src=203.0.113.10 dst=192.168.31.166 sport=9000 dport=61234 [ASSURED] mark=0 zone=0 use=2
udp      17 29 src=192.168.10.5 dst=203.0.113.10 sport=5353 dport=53 [UNREPLIED] src=203.0.113.10 dst=192.168.31.166 sport=53 dport=1055 mark=0 use=1
ipv4     2 icmp     1 29 src=192.168.10.5 dst=203.0.113.10 type=8 code=0 id=7 src=203.0.113.10 dst=192.168.31.166 type=0 code=0 id=7 mark=0 use=1
ipv6     10 tcp      6 10 ESTABLISHED src=::1 dst=::1 sport=1 dport=2 src=::1 dst=::1 sport=2 dport=1 use=1
garbage
ipv4 2 tcp 6 10 ESTABLISHED src=1.2.3.4 dst=5.6.7.8 sport=1 src=1.1.1.1
";
        let (conns, skipped) = parse(text);
        assert_eq!(skipped, 4);
        assert_eq!(conns.len(), 2);
        assert_eq!(conns[0].tcp_state.as_deref(), Some("ESTABLISHED"));
        assert_eq!(conns[0].reply.dport, 61234);
        assert!(conns[0].replied);
        assert_eq!(conns[1].proto, 17);
        assert!(!conns[1].replied);
        assert_eq!(conns[1].reply.dport, 1055);
    }

    #[test]
    fn snat_keeps_netfilters_port() {
        let (conns, _) = parse("tcp 6 100 ESTABLISHED src=192.168.10.5 dst=203.0.113.10 sport=40000 dport=9000 src=203.0.113.10 dst=192.168.31.166 sport=9000 dport=61234 [ASSURED]");
        let Some(Adopted::Snat { key, entry, reply }) = adopt(&conns[0], NODE, is_pod, 5) else {
            panic!("not adopted as SNAT");
        };
        assert_eq!(
            key,
            CtKey::new(POD.octets(), [203, 0, 113, 10], 40000, 9000, 6)
        );
        assert_eq!((entry.nat_ip, entry.nat_port), (NODE.octets(), 61234));
        assert_eq!(entry.state, CT_STATE_ESTABLISHED);
        assert_eq!(entry.flags, CT_F_SNAT);
        assert_eq!(
            reply,
            CtKey::new([203, 0, 113, 10], NODE.octets(), 9000, 61234, 6)
        );
    }

    #[test]
    fn nodeport_to_a_pod_goes_back_through_the_stack() {
        // client -> node:30080, DNAT to pod:8082.
        let (conns, _) = parse("tcp 6 100 ESTABLISHED src=203.0.113.10 dst=192.168.31.166 sport=50000 dport=30080 src=192.168.10.5 dst=203.0.113.10 sport=8082 dport=50000 [ASSURED]");
        let Some(Adopted::ViaStack { key, entry }) = adopt(&conns[0], NODE, is_pod, 5) else {
            panic!("not adopted as via-stack");
        };
        assert_eq!(
            key,
            CtKey::new(POD.octets(), [203, 0, 113, 10], 8082, 50000, 6)
        );
        assert_eq!(entry.flags, CT_F_VIA_STACK | CT_F_OPENED_BY_PEER);
    }

    #[test]
    fn untranslated_and_foreign_flows_are_left_alone() {
        let lines = [
            // pod -> VPC peer, no NAT: steered without state.
            "tcp 6 100 ESTABLISHED src=192.168.10.5 dst=192.168.64.10 sport=1 dport=2 src=192.168.64.10 dst=192.168.10.5 sport=2 dport=1 [ASSURED]",
            // the node's own connection.
            "tcp 6 100 ESTABLISHED src=192.168.31.166 dst=203.0.113.10 sport=1 dport=2 src=203.0.113.10 dst=192.168.31.166 sport=2 dport=1 [ASSURED]",
            // SNAT to an address trunkline would not use.
            "udp 17 100 src=192.168.10.5 dst=203.0.113.10 sport=1 dport=2 src=203.0.113.10 dst=10.9.9.9 sport=2 dport=1",
        ];
        for l in lines {
            let (conns, _) = parse(l);
            assert_eq!(adopt(&conns[0], NODE, is_pod, 5), None, "{l}");
        }
    }

    #[test]
    fn tcp_states_map_to_ct_states() {
        for (state, want) in [
            ("ESTABLISHED", CT_STATE_ESTABLISHED),
            ("SYN_SENT", CT_STATE_NEW),
            ("SYN_RECV", dataplane_common::conntrack::CT_STATE_SYN_RECV),
            ("FIN_WAIT", dataplane_common::conntrack::CT_STATE_FIN_WAIT),
            ("TIME_WAIT", dataplane_common::conntrack::CT_STATE_TIME_WAIT),
            ("CLOSE", dataplane_common::conntrack::CT_STATE_CLOSE),
        ] {
            let line = format!("tcp 6 100 {state} src=192.168.10.5 dst=203.0.113.10 sport=1 dport=2 src=203.0.113.10 dst=192.168.31.166 sport=2 dport=3");
            let (conns, _) = parse(&line);
            match adopt(&conns[0], NODE, is_pod, 0) {
                Some(Adopted::Snat { entry, .. }) => assert_eq!(entry.state, want, "{state}"),
                other => panic!("{state}: {other:?}"),
            }
        }
    }
}
