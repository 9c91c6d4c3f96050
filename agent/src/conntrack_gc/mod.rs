//! Conntrack garbage collection: the agent expires flows the way netfilter
//! would (timeouts per protocol and state), always removing a flow's two
//! entries together (`CT` and its `SNAT_REV`), early-drops unassured flows
//! when the table is nearly full, repairs a missing reverse entry, removes
//! reverse entries whose flow is gone, and forgets host connections once
//! their socket is gone. Reads and deletes are batched and a pass removes
//! at most [`REMOVAL_BUDGET`] entries.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use dataplane_common::{
    conntrack::{
        CT_F_SNAT, CT_STATE_CLOSE, CT_STATE_CLOSE_WAIT, CT_STATE_ESTABLISHED, CT_STATE_FIN_WAIT,
        CT_STATE_LAST_ACK, CT_STATE_NEW, CT_STATE_SYN_RECV, CT_STATE_TIME_WAIT,
        CT_STATE_UDP_STREAM,
    },
    CtEntry, CtKey, Ipv4,
};

use crate::dataplane::{CtMaps, DataplaneError};

const IPPROTO_ICMP: u8 = 1;

/// Flow timeouts by protocol and state: netfilter's defaults
/// (`net.netfilter.nf_conntrack_*_timeout*` on 6.x kernels). The table is
/// in `docs/conntrack.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: Duration,
    pub tcp_syn_recv: Duration,
    pub tcp_established: Duration,
    pub tcp_fin_wait: Duration,
    pub tcp_close_wait: Duration,
    pub tcp_last_ack: Duration,
    pub tcp_time_wait: Duration,
    pub tcp_close: Duration,
    pub udp_unreplied: Duration,
    pub udp_replied: Duration,
    pub udp_stream: Duration,
    pub icmp: Duration,
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            tcp_syn_sent: s(120),
            tcp_syn_recv: s(60),
            tcp_established: s(5 * 24 * 3600),
            tcp_fin_wait: s(120),
            tcp_close_wait: s(60),
            tcp_last_ack: s(30),
            tcp_time_wait: s(120),
            tcp_close: s(10),
            udp_unreplied: s(30),
            udp_replied: s(30),
            udp_stream: s(120),
            icmp: s(30),
            other: s(600),
        }
    }
}

impl Timeouts {
    pub fn for_entry(&self, key: &CtKey, ct: &CtEntry) -> Duration {
        match (key.proto, ct.state) {
            (6, CT_STATE_NEW) => self.tcp_syn_sent,
            (6, CT_STATE_SYN_RECV) => self.tcp_syn_recv,
            (6, CT_STATE_ESTABLISHED) => self.tcp_established,
            (6, CT_STATE_FIN_WAIT) => self.tcp_fin_wait,
            (6, CT_STATE_CLOSE_WAIT) => self.tcp_close_wait,
            (6, CT_STATE_LAST_ACK) => self.tcp_last_ack,
            (6, CT_STATE_TIME_WAIT) => self.tcp_time_wait,
            (6, _) => self.tcp_close,
            (17, CT_STATE_NEW) => self.udp_unreplied,
            (17, CT_STATE_UDP_STREAM) => self.udp_stream,
            (17, _) => self.udp_replied,
            (1, _) => self.icmp,
            _ => self.other,
        }
    }
}

/// Netfilter's early drop: with `CT` at least this full (per cent of its
/// capacity) a pass also removes flows that never became assured, so that
/// new flows find room instead of being refused (`drop_ct_full`).
pub const EARLY_DROP_PERCENT: u64 = 95;

/// An unassured flow is early-dropped only once idle this long: one being
/// set up right now is left to finish its handshake.
pub const EARLY_DROP_IDLE: Duration = Duration::from_secs(1);

/// Whether netfilter would count the flow as not assured, the kind its
/// early drop removes when the table is full: TCP before its handshake
/// completed or after an RST, UDP that is not a stream, ICMP.
pub fn unassured(key: &CtKey, ct: &CtEntry) -> bool {
    match (key.proto, ct.state) {
        (6, CT_STATE_NEW | CT_STATE_SYN_RECV | CT_STATE_CLOSE) => true,
        (6, _) => false,
        (17, CT_STATE_UDP_STREAM) => false,
        (17, _) | (1, _) => true,
        _ => false,
    }
}

/// What one pass found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub ct_scanned: usize,
    pub expired: usize,
    /// Unassured flows removed early because the table was nearly full.
    pub early_dropped: usize,
    /// `CT` was at least [`EARLY_DROP_PERCENT`] full.
    pub pressure: bool,
    /// Flows that looked removable but had a packet by the time they were
    /// re-read: kept.
    pub revived: usize,
    /// The pass stopped removing at its budget ([`Collector::budget`]);
    /// the rest waits for the next pass, which comes at the shortest
    /// interval.
    pub budget_exhausted: bool,
    /// SNAT flows whose reverse entry was missing (an LRU table of an
    /// earlier version evicted it): re-inserted.
    pub rev_repaired: usize,
    /// Reverse entries whose flow was missing (seen twice): removed.
    pub rev_orphans_removed: usize,
    /// Identity entries of host connections whose socket is gone: removed.
    pub host_flows_removed: usize,
    pub ct_entries: usize,
    pub rev_entries: usize,
}

impl GcReport {
    /// Evictions GC noticed (either half of a flow missing).
    pub fn lru_evictions(&self) -> usize {
        self.rev_repaired + self.rev_orphans_removed
    }

    fn removed(&self) -> usize {
        self.expired + self.early_dropped + self.rev_orphans_removed + self.host_flows_removed
    }
}

/// Removals per pass by default: a pass over a table whose flows all
/// expired at once stays short (about 0.1 s of deletes) and the rest
/// follows a second later.
pub const REMOVAL_BUDGET: usize = 131_072;

/// Candidates re-read and then deleted together: the window between a
/// flow's re-read and its delete stays a few milliseconds.
const REMOVAL_BATCH: usize = 1024;

/// Runs GC passes and keeps what must be seen twice before acting on it.
pub struct Collector {
    pub timeouts: Timeouts,
    /// At most this many removals per pass.
    pub budget: usize,
    /// Reverse entries without a flow at the last pass: a flow being created
    /// inserts its reverse first, so one sighting is not enough.
    suspect_orphans: HashSet<CtKey>,
    /// The node's echo ids (identity entries, reply key) and when a pass
    /// first saw each. Ping sockets are not all in /proc (raw ones carry no
    /// id there), so an id is kept for ICMP's timeout after it was first
    /// seen; the data path records it again with the next echo request.
    host_echoes: HashMap<CtKey, u64>,
}

impl Default for Collector {
    fn default() -> Self {
        Self::new(Timeouts::default())
    }
}

impl Collector {
    pub fn new(timeouts: Timeouts) -> Self {
        Self {
            timeouts,
            budget: REMOVAL_BUDGET,
            suspect_orphans: HashSet::new(),
            host_echoes: HashMap::new(),
        }
    }

    /// One pass at `now_ns` (CLOCK_MONOTONIC_COARSE, the data path's clock).
    /// `host_sockets` are the node's live connections as `CT` keys
    /// (node IP first), from [`host_sockets`].
    ///
    /// One batched read of `SNAT_REV`, one batched walk of `CT` that
    /// removes expired flows as it goes (each re-read just before its
    /// delete), then what needs the whole table: early drop, repairs,
    /// orphans. Memory is one map of the reverse entries; `CT` is never
    /// held whole.
    pub fn collect(
        &mut self,
        maps: &mut CtMaps,
        now_ns: u64,
        node_ip: Ipv4,
        host_sockets: &HashSet<CtKey>,
    ) -> Result<GcReport, DataplaneError> {
        let mut report = GcReport::default();
        let capacity = u64::from(maps.ct_capacity()?).max(1);
        // SNAT_REV before CT: a flow created in between is missing from this
        // copy, looks unrepaired, and its repair finds the port taken.
        let rev_read = maps.rev_entries()?;
        let rev_count = rev_read.len();
        let mut revs: HashMap<CtKey, CtKey> = rev_read.into_iter().collect();
        let mut pass = Pass {
            now_ns,
            budget: self.budget,
            ..Pass::default()
        };
        let mut repairs = Vec::new();
        let mut early = Vec::new();
        {
            let mut walk = maps.ct_walk()?;
            while let Some((keys, flows)) = walk.next_chunk()? {
                for (key, ct) in keys.iter().zip(flows) {
                    report.ct_scanned += 1;
                    let reply = key.snat_reply(ct.nat_ip, ct.nat_port);
                    let snat = ct.flags & CT_F_SNAT != 0;
                    // The flow's own reverse entry: not an orphan.
                    let has_rev = snat && revs.get(&reply) == Some(key);
                    if has_rev {
                        revs.remove(&reply);
                    }
                    match self.removable(key, ct, now_ns, true) {
                        Some(Removal::Expired) => pass.queue(*key, &mut report),
                        why => {
                            if why.is_some() && early.len() < self.budget {
                                early.push(*key); // if the table turns out full
                            }
                            if snat && !has_rev {
                                repairs.push((reply, *key));
                            }
                        }
                    }
                }
                if pass.queued.len() >= REMOVAL_BATCH {
                    pass.flush(self, maps, false, &mut report)?;
                }
            }
        }
        pass.flush(self, maps, false, &mut report)?;
        report.pressure = report.ct_scanned as u64 * 100 >= capacity * EARLY_DROP_PERCENT;
        if report.pressure {
            for chunk in early.chunks(REMOVAL_BATCH) {
                for key in chunk {
                    pass.queue(*key, &mut report);
                }
                pass.flush(self, maps, true, &mut report)?;
            }
        }
        for (reply, orig) in repairs {
            // Not for a flow this pass removed (early drop).
            if !pass.removed.contains(&orig) && maps.insert_rev_if_free(reply, orig) {
                report.rev_repaired += 1;
            }
        }
        // What no flow claimed: node connections' identity entries, and
        // reverse entries whose flow is gone.
        let mut suspects = HashSet::new();
        let mut echoes = HashMap::new();
        let mut stale = Vec::new();
        for (reply, orig) in revs {
            if stale.len() >= pass.budget {
                report.budget_exhausted = true;
                break;
            }
            let host = orig.src_ip == node_ip && orig.src_port == reply.dst_port;
            if host && orig.proto == IPPROTO_ICMP {
                let first_seen = self.host_echoes.get(&reply).copied().unwrap_or(now_ns);
                let age = Duration::from_nanos(now_ns.saturating_sub(first_seen));
                if age > self.timeouts.icmp {
                    stale.push(reply);
                    report.host_flows_removed += 1;
                } else {
                    echoes.insert(reply, first_seen);
                }
            } else if host {
                if !host_sockets.contains(&orig) {
                    stale.push(reply);
                    report.host_flows_removed += 1;
                }
            } else if self.suspect_orphans.contains(&reply) {
                stale.push(reply);
                report.rev_orphans_removed += 1;
            } else {
                suspects.insert(reply);
            }
        }
        let stale_removed = maps.remove_rev_batch(&stale)?;
        self.suspect_orphans = suspects;
        self.host_echoes = echoes;
        report.ct_entries = report.ct_scanned.saturating_sub(pass.ct_removed);
        report.rev_entries =
            (rev_count + report.rev_repaired).saturating_sub(pass.rev_removed + stale_removed);
        Ok(report)
    }

    /// Why a flow as read would be removed at `now_ns`, if it would.
    fn removable(&self, key: &CtKey, ct: &CtEntry, now_ns: u64, pressure: bool) -> Option<Removal> {
        let age = Duration::from_nanos(now_ns.saturating_sub(ct.last_seen_ns));
        if age > self.timeouts.for_entry(key, ct) {
            Some(Removal::Expired)
        } else if pressure && age >= EARLY_DROP_IDLE && unassured(key, ct) {
            Some(Removal::EarlyDrop)
        } else {
            None
        }
    }
}

#[derive(Clone, Copy)]
enum Removal {
    Expired,
    EarlyDrop,
}

/// The removals of one pass: flows queued as candidates, re-read and
/// deleted a batch at a time, within the budget.
#[derive(Default)]
struct Pass {
    now_ns: u64,
    /// Removals left.
    budget: usize,
    queued: Vec<CtKey>,
    /// Early-dropped flows (not repaired afterwards).
    removed: HashSet<CtKey>,
    ct_removed: usize,
    rev_removed: usize,
}

impl Pass {
    fn queue(&mut self, key: CtKey, report: &mut GcReport) {
        if self.queued.len() < self.budget {
            self.queued.push(key);
        } else {
            report.budget_exhausted = true;
        }
    }

    /// Re-reads the queued flows, then deletes those still removable: the
    /// copy may be a pass old, and a packet since then keeps the flow.
    /// Reverse entries go first, so that a reply arriving in between finds
    /// nothing and goes to the stack rather than to a half-removed flow.
    fn flush(
        &mut self,
        gc: &Collector,
        maps: &CtMaps,
        pressure: bool,
        report: &mut GcReport,
    ) -> Result<(), DataplaneError> {
        let mut flows = Vec::with_capacity(self.queued.len());
        let mut replies = Vec::new();
        for key in self.queued.drain(..) {
            let Some(ct) = maps.flow(&key)? else {
                continue; // gone meanwhile
            };
            match gc.removable(&key, &ct, self.now_ns, pressure) {
                None => report.revived += 1,
                Some(why) => {
                    match why {
                        Removal::Expired => report.expired += 1,
                        Removal::EarlyDrop => {
                            report.early_dropped += 1;
                            self.removed.insert(key);
                        }
                    }
                    if ct.flags & CT_F_SNAT != 0 {
                        replies.push(key.snat_reply(ct.nat_ip, ct.nat_port));
                    }
                    flows.push(key);
                }
            }
        }
        self.budget = self.budget.saturating_sub(flows.len());
        self.rev_removed += maps.remove_rev_batch(&replies)?;
        self.ct_removed += maps.remove_ct_batch(&flows)?;
        Ok(())
    }
}

/// The next interval: shorter when a pass removed much (the table churns),
/// longer when it removed little; between `min` and `max`.
pub fn next_interval(
    current: Duration,
    report: &GcReport,
    min: Duration,
    max: Duration,
) -> Duration {
    if report.pressure || report.budget_exhausted {
        return min; // make room as fast as the table fills
    }
    let removed = report.removed();
    let next = if report.ct_scanned > 0 && removed * 4 >= report.ct_scanned {
        current / 2
    } else if removed * 20 <= report.ct_scanned.max(1) {
        current * 2
    } else {
        current
    };
    next.clamp(min, max)
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock of `CtEntry` timestamps.
pub fn now_coarse_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    // CLOCK_MONOTONIC_COARSE always exists on Linux; 0 (everything looks
    // old) is never reached in practice.
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        .map(|ts| ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The node's IPv4 TCP and UDP connections with a remote end, as `CT` keys
/// from the node's side, read from `/proc/net/{tcp,udp}` of the agent's
/// network namespace. A table that cannot be read contributes nothing: the
/// GC then keeps only what the kernel's own timestamps say is live.
pub fn host_sockets() -> HashSet<CtKey> {
    let tcp = procfs::net::tcp()
        .into_iter()
        .flatten()
        .map(|e| (e.local_address, e.remote_address, 6u8));
    let udp = procfs::net::udp()
        .into_iter()
        .flatten()
        .map(|e| (e.local_address, e.remote_address, 17u8));
    tcp.chain(udp)
        .filter_map(|(local, remote, proto)| socket_key(local, remote, proto))
        .collect()
}

/// A connected IPv4 socket as the `CT` key of its flow; listening and
/// unconnected sockets (remote port 0) and IPv6 have none.
fn socket_key(local: SocketAddr, remote: SocketAddr, proto: u8) -> Option<CtKey> {
    match (local, remote) {
        (SocketAddr::V4(l), SocketAddr::V4(r)) if r.port() != 0 => Some(CtKey::new(
            l.ip().octets(),
            r.ip().octets(),
            l.port(),
            r.port(),
            proto,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processes_own_connected_sockets_are_seen_as_node_side_keys() {
        use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
        let server = listener.local_addr().expect("addr");
        let client = TcpStream::connect(server).expect("connect");
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp");
        udp.connect(server).expect("udp connect");
        let seen = host_sockets();
        let key = |local: SocketAddr, proto| socket_key(local, server, proto).expect("key");
        assert!(seen.contains(&key(client.local_addr().expect("addr"), 6)));
        assert!(seen.contains(&key(udp.local_addr().expect("addr"), 17)));
        let lo = [127, 0, 0, 1];
        assert_eq!(
            key(client.local_addr().expect("addr"), 6),
            CtKey::new(
                lo,
                lo,
                client.local_addr().expect("addr").port(),
                server.port(),
                6
            )
        );
        assert_eq!(
            socket_key(server, "0.0.0.0:0".parse().expect("addr"), 6),
            None,
            "listening sockets have no remote end"
        );
    }

    #[test]
    fn timeouts_follow_netfilter() {
        use dataplane_common::conntrack::CT_STATE_CLOSE;
        let t = Timeouts::default();
        let k = |p| CtKey::new([0; 4], [0; 4], 1, 2, p);
        let secs = |p, s| {
            let e = CtEntry {
                state: s,
                ..Default::default()
            };
            t.for_entry(&k(p), &e).as_secs()
        };
        for (state, want) in [
            (CT_STATE_NEW, 120),
            (CT_STATE_SYN_RECV, 60),
            (CT_STATE_ESTABLISHED, 432_000),
            (CT_STATE_FIN_WAIT, 120),
            (CT_STATE_CLOSE_WAIT, 60),
            (CT_STATE_LAST_ACK, 30),
            (CT_STATE_TIME_WAIT, 120),
            (CT_STATE_CLOSE, 10),
        ] {
            assert_eq!(secs(6, state), want, "tcp {state}");
        }
        assert_eq!(secs(17, CT_STATE_NEW), 30);
        assert_eq!(secs(17, CT_STATE_ESTABLISHED), 30, "replied, not a stream");
        assert_eq!(secs(17, CT_STATE_UDP_STREAM), 120);
        assert_eq!(secs(1, CT_STATE_ESTABLISHED), 30);
        assert_eq!(secs(47, CT_STATE_NEW), 600);
    }

    #[test]
    fn early_drop_takes_only_what_netfilter_calls_unassured() {
        let k = |p| CtKey::new([0; 4], [0; 4], 1, 2, p);
        let at = |p, state| {
            unassured(
                &k(p),
                &CtEntry {
                    state,
                    ..Default::default()
                },
            )
        };
        for s in [CT_STATE_NEW, CT_STATE_SYN_RECV, CT_STATE_CLOSE] {
            assert!(at(6, s), "tcp {s}");
        }
        for s in [
            CT_STATE_ESTABLISHED,
            CT_STATE_FIN_WAIT,
            CT_STATE_CLOSE_WAIT,
            CT_STATE_LAST_ACK,
            CT_STATE_TIME_WAIT,
        ] {
            assert!(!at(6, s), "tcp {s}");
        }
        assert!(at(17, CT_STATE_NEW) && at(17, CT_STATE_ESTABLISHED));
        assert!(!at(17, CT_STATE_UDP_STREAM));
        assert!(at(1, CT_STATE_ESTABLISHED));
        assert!(
            !at(47, CT_STATE_NEW),
            "other protocols are left to their timeout"
        );
    }

    #[test]
    fn a_table_under_pressure_is_collected_at_the_shortest_interval() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let full = GcReport {
            ct_scanned: 100,
            pressure: true,
            ..Default::default()
        };
        assert_eq!(next_interval(Duration::from_secs(30), &full, min, max), min);
    }

    #[test]
    fn interval_adapts_to_churn() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let churn = GcReport {
            ct_scanned: 100,
            expired: 50,
            ..Default::default()
        };
        let calm = GcReport {
            ct_scanned: 100,
            expired: 1,
            ..Default::default()
        };
        let d = Duration::from_secs(10);
        assert_eq!(next_interval(d, &churn, min, max), Duration::from_secs(5));
        assert_eq!(next_interval(d, &calm, min, max), Duration::from_secs(20));
        assert_eq!(next_interval(Duration::from_secs(1), &churn, min, max), min);
        assert_eq!(next_interval(Duration::from_secs(60), &calm, min, max), max);
    }
}
