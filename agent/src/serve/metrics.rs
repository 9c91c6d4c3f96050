//! Prometheus metrics (text format). RPC latencies and errors are recorded
//! as they happen; pod, IP, map and data-path gauges are refreshed from the
//! agent's published snapshot and the pinned maps at each scrape.

use std::time::Duration;

use dataplane_common::{maps as names, Stats};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    agent::Shared,
    conntrack_gc::GcReport,
    dataplane::{read_stats, EnisMap, FragExpiry, PodsMap},
};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rpc_histogram() -> Histogram {
    // 0.25 ms .. ~4 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00025, 2.0, 15,
    ))
}

pub struct Metrics {
    registry: Registry,
    pods: Gauge,
    eni_ips: Family<Labels, Gauge>,
    rpc_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    rpc_errors: Family<Labels, Counter>,
    map_entries: Family<Labels, Gauge>,
    map_capacity: Family<Labels, Gauge>,
    datapath: Family<Labels, Gauge>,
    drops: Family<Labels, Gauge>,
    nat_alloc_failures: Gauge,
    nat_allocations: Family<Labels, Gauge>,
    ct_expired: Counter,
    ct_early_drops: Counter,
    ct_lru_evictions: Counter,
    ct_host_flows_removed: Counter,
    ct_gc_interval: Gauge,
    ct_gc_seconds: Histogram,
    ct_gc_budget_exhausted: Counter,
    fragments_expired: Family<Labels, Counter>,
    pod_eni_decisions: Family<Labels, Counter>,
    pod_eni_decide_seconds: Histogram,
    branches_revoked: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("trunkline");
        let m = Self {
            registry: Registry::default(),
            pods: Gauge::default(),
            eni_ips: Family::default(),
            rpc_seconds: Family::new_with_constructor(rpc_histogram as fn() -> Histogram),
            rpc_errors: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            datapath: Family::default(),
            drops: Family::default(),
            nat_alloc_failures: Gauge::default(),
            nat_allocations: Family::default(),
            ct_expired: Counter::default(),
            ct_early_drops: Counter::default(),
            ct_lru_evictions: Counter::default(),
            ct_host_flows_removed: Counter::default(),
            ct_gc_interval: Gauge::default(),
            // 1 ms .. ~16 s: a pass over 1M flows takes about a second.
            ct_gc_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
            ),
            ct_gc_budget_exhausted: Counter::default(),
            fragments_expired: Family::default(),
            pod_eni_decisions: Family::default(),
            pod_eni_decide_seconds: rpc_histogram(),
            branches_revoked: Counter::default(),
        };
        registry.register("pods", "Pods wired on this node", m.pods.clone());
        registry.register(
            "eni_ips",
            "Pod IPs per ENI by state (free, used, cooling)",
            m.eni_ips.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "CNI RPC latency by method",
            m.rpc_seconds.clone(),
        );
        registry.register(
            "rpc_errors",
            "CNI RPCs that failed, by method",
            m.rpc_errors.clone(),
        );
        registry.register(
            "map_entries",
            "Entries in each agent-owned map",
            m.map_entries.clone(),
        );
        registry.register(
            "map_capacity",
            "max_entries of each map",
            m.map_capacity.clone(),
        );
        registry.register(
            "datapath_packets",
            "Data-path counters from STATS (all programs, all CPUs)",
            m.datapath.clone(),
        );
        registry.register(
            "drops",
            "Packets the data path dropped, by reason",
            m.drops.clone(),
        );
        registry.register(
            "nat_allocation_failures",
            "SNAT port allocations that failed (counted drops)",
            m.nat_alloc_failures.clone(),
        );
        registry.register(
            "nat_allocations",
            "New SNAT mappings by the attempts they needed (1, 2-4, 5-16, 17+)",
            m.nat_allocations.clone(),
        );
        registry.register(
            "conntrack_expired",
            "Flows conntrack GC removed after their timeout",
            m.ct_expired.clone(),
        );
        registry.register(
            "conntrack_early_drops",
            "Unassured flows GC removed before their timeout because CT was nearly full (netfilter's early drop)",
            m.ct_early_drops.clone(),
        );
        registry.register(
            "conntrack_lru_evictions",
            "Flows GC found with one half missing (tables an earlier version pinned as LRU maps evict)",
            m.ct_lru_evictions.clone(),
        );
        registry.register(
            "conntrack_host_flows_removed",
            "Host connections forgotten by GC once their socket was gone",
            m.ct_host_flows_removed.clone(),
        );
        registry.register(
            "conntrack_gc_interval_seconds",
            "Current conntrack GC interval (adapts to churn)",
            m.ct_gc_interval.clone(),
        );
        registry.register(
            "conntrack_gc_pass_seconds",
            "How long a conntrack GC pass took (batched walk of CT, re-reads, deletes)",
            m.ct_gc_seconds.clone(),
        );
        registry.register(
            "conntrack_gc_budget_exhausted",
            "GC passes that stopped at their removal budget and left the rest to the next pass",
            m.ct_gc_budget_exhausted.clone(),
        );
        registry.register(
            "fragments_expired",
            "Fragment entries GC removed after the 30 s reassembly timeout: datagrams that lost a fragment (map=FRAG_PORTS), and fragments whose first never came (map=FRAG_HELD)",
            m.fragments_expired.clone(),
        );
        registry.register(
            "pod_eni_decisions",
            "AddPod branch decisions in Kubernetes mode, by outcome",
            m.pod_eni_decisions.clone(),
        );
        registry.register(
            "pod_eni_decide_seconds",
            "Time AddPod spent deciding a pod's branch ENI (waiting for its annotation)",
            m.pod_eni_decide_seconds.clone(),
        );
        registry.register(
            "branches_revoked",
            "Branch pods whose entries were removed because their annotation went away or changed, or the pod was deleted",
            m.branches_revoked.clone(),
        );
        Self { registry, ..m }
    }

    /// One AddPod branch decision (Kubernetes mode).
    pub fn observe_pod_eni(&self, outcome: &str, took: Duration) {
        self.pod_eni_decisions
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
        self.pod_eni_decide_seconds.observe(took.as_secs_f64());
    }

    pub fn observe_branches_revoked(&self, n: usize) {
        self.branches_revoked.inc_by(n as u64);
    }

    /// What a conntrack GC pass found.
    pub fn observe_gc(&self, r: &GcReport, took: Duration, interval: Duration) {
        self.ct_gc_seconds.observe(took.as_secs_f64());
        if r.budget_exhausted {
            self.ct_gc_budget_exhausted.inc();
        }
        self.ct_expired.inc_by(r.expired as u64);
        self.ct_early_drops.inc_by(r.early_dropped as u64);
        self.ct_lru_evictions.inc_by(r.lru_evictions() as u64);
        self.ct_host_flows_removed
            .inc_by(r.host_flows_removed as u64);
        self.ct_gc_interval.set(interval.as_secs() as i64);
        for (name, n) in [(names::CT, r.ct_entries), (names::SNAT_REV, r.rev_entries)] {
            self.map_entries
                .get_or_create(&labels(&[("map", name)]))
                .set(n as i64);
        }
    }

    pub fn observe_frag_gc(&self, r: &FragExpiry) {
        for (name, entries, expired) in [
            (names::FRAG_PORTS, r.datagrams, r.datagrams_expired),
            (names::FRAG_HELD, r.held, r.held_expired),
        ] {
            let l = labels(&[("map", name)]);
            self.fragments_expired
                .get_or_create(&l)
                .inc_by(expired as u64);
            self.map_entries
                .get_or_create(&l)
                .set(entries.saturating_sub(expired) as i64);
        }
    }

    pub fn observe_rpc(&self, method: &str, took: Duration, ok: bool) {
        let l = labels(&[("method", method)]);
        self.rpc_seconds
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        if !ok {
            self.rpc_errors.get_or_create(&l).inc();
        }
    }

    fn refresh(&self, agent: &Shared) {
        self.pods.set(agent.snapshot().pods.len() as i64);
        for u in agent.ipam().usage() {
            for (state, v) in [("free", u.free), ("used", u.used), ("cooling", u.cooling)] {
                self.eni_ips
                    .get_or_create(&labels(&[("eni", &u.eni), ("state", state)]))
                    .set(v as i64);
            }
        }
        let bpf_root = &agent.config().bpf_root;
        let counts = [
            (
                names::PODS,
                PodsMap::open(bpf_root)
                    .and_then(|m| m.entries())
                    .map(|v| v.len()),
                names::PODS_MAX,
            ),
            (
                names::ENIS,
                EnisMap::open(bpf_root)
                    .and_then(|m| m.entries())
                    .map(|v| v.len()),
                names::ENIS_MAX,
            ),
        ];
        for (name, n, cap) in counts {
            if let Ok(n) = n {
                self.map_entries
                    .get_or_create(&labels(&[("map", name)]))
                    .set(n as i64);
            }
            self.map_capacity
                .get_or_create(&labels(&[("map", name)]))
                .set(cap as i64);
        }
        for (name, cap) in [
            (names::NO_SNAT, names::NO_SNAT_MAX),
            (names::SERVICE_CIDRS, names::SERVICE_CIDRS_MAX),
            (names::FRAG_PORTS, names::FRAG_PORTS_MAX),
            (names::FRAG_HELD, names::FRAG_HELD_MAX),
            (
                names::CT,
                crate::dataplane::pinned_capacity(bpf_root, names::CT)
                    .map_or(names::CT_MAX, |n| n as usize),
            ),
            (
                names::SNAT_REV,
                crate::dataplane::pinned_capacity(bpf_root, names::SNAT_REV)
                    .map_or(names::SNAT_REV_MAX, |n| n as usize),
            ),
        ] {
            self.map_capacity
                .get_or_create(&labels(&[("map", name)]))
                .set(cap as i64);
        }
        if let Ok(stats) = read_stats(bpf_root) {
            let total = stats.total();
            let mut nat_fail = 0u64;
            for (name, v) in Stats::NAMES.iter().zip(total.values()) {
                let v = i64::try_from(v).unwrap_or(i64::MAX);
                self.datapath
                    .get_or_create(&labels(&[("counter", name)]))
                    .set(v);
                if let Some(reason) = name.strip_prefix("drop_") {
                    self.drops
                        .get_or_create(&labels(&[("reason", reason)]))
                        .set(v);
                }
                if *name == "drop_nat_no_port" {
                    nat_fail = nat_fail.saturating_add(v as u64);
                }
                if let Some(bucket) = name.strip_prefix("nat_alloc_try_") {
                    self.nat_allocations
                        .get_or_create(&labels(&[("attempts", &bucket.replace('_', "-"))]))
                        .set(v);
                }
            }
            self.nat_alloc_failures
                .set(i64::try_from(nat_fail).unwrap_or(i64::MAX));
        }
    }

    /// The text exposition, refreshed from `agent`'s snapshot, IPAM and
    /// the pinned maps (read-only views; the agent's lock is not taken).
    pub fn render(&self, agent: &Shared) -> String {
        self.refresh(agent);
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}
