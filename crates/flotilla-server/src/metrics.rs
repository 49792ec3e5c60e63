//! Prometheus metrics of a replica, served at `/metrics`.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub tasks: IntGaugeVec,
    pub queue_fair_share: GaugeVec,
    pub queue_actual_share: GaugeVec,
    pub schedule_cycle_seconds: Histogram,
    pub placements_total: IntCounter,
    pub preemptions_total: IntCounter,
    pub cluster_capacity: GaugeVec,
    pub cluster_usage: GaugeVec,
    pub cluster_ready: IntGaugeVec,
    pub executor_sync_age_seconds: GaugeVec,
    pub raft_term: IntGauge,
    pub raft_leader: IntGauge,
    pub raft_is_leader: IntGauge,
    pub raft_commit_index: IntGauge,
    pub raft_applied_index: IntGauge,
    pub raft_apply_lag: IntGauge,
    pub events_trimmed_total: IntGauge,
    pub submitted_tasks_total: IntCounter,
    pub rejected_requests_total: IntCounterVec,
    pub clusters_lost_total: IntCounter,
    pub schedulable_tasks: Gauge,
    /// Cordon, drain and dispatch health by cluster.
    pub clusters: crate::cluster_metrics::ClusterMetrics,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure here is a programming error caught by tests.
    r.expect("metric definition")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("flotilla".into()), None).expect("registry");
        let m = Metrics {
            tasks: must(IntGaugeVec::new(Opts::new("tasks", "Tasks by queue and state"), &["queue", "state"])),
            queue_fair_share: must(GaugeVec::new(Opts::new("queue_fair_share", "Fair share of the federation (0-1)"), &["queue"])),
            queue_actual_share: must(GaugeVec::new(Opts::new("queue_actual_share", "Share of the federation held (0-1)"), &["queue"])),
            schedule_cycle_seconds: must(Histogram::with_opts(
                HistogramOpts::new("schedule_cycle_seconds", "Duration of one scheduling cycle (decide and commit)")
                    .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            )),
            placements_total: must(IntCounter::new("placements_total", "Leases committed")),
            preemptions_total: must(IntCounter::new("preemptions_total", "Preemptions committed")),
            cluster_capacity: must(GaugeVec::new(
                Opts::new("cluster_capacity", "Allocatable by cluster and resource"),
                &["cluster", "resource"],
            )),
            cluster_usage: must(GaugeVec::new(
                Opts::new("cluster_usage", "Used by Flotilla tasks by cluster and resource"),
                &["cluster", "resource"],
            )),
            cluster_ready: must(IntGaugeVec::new(Opts::new("cluster_ready", "1 when the cluster is ready, 0 when lost"), &["cluster"])),
            executor_sync_age_seconds: must(GaugeVec::new(
                Opts::new("executor_sync_age_seconds", "Seconds since the cluster's executor last synced with the leader"),
                &["cluster"],
            )),
            raft_term: must(IntGauge::new("raft_term", "Current Raft term")),
            raft_leader: must(IntGauge::new("raft_leader", "Id of the current leader (0 when unknown)")),
            raft_is_leader: must(IntGauge::new("raft_is_leader", "1 on the leader")),
            raft_commit_index: must(IntGauge::new("raft_commit_index", "Last committed log index")),
            raft_applied_index: must(IntGauge::new("raft_applied_index", "Last applied log index")),
            raft_apply_lag: must(IntGauge::new("raft_apply_lag", "Committed but not yet applied entries")),
            events_trimmed_total: must(IntGauge::new("events_trimmed_total", "Task-set events trimmed from bounded logs")),
            submitted_tasks_total: must(IntCounter::new("submitted_tasks_total", "Tasks accepted by this replica")),
            rejected_requests_total: must(IntCounterVec::new(Opts::new("rejected_requests_total", "Requests rejected"), &["reason"])),
            clusters_lost_total: must(IntCounter::new("clusters_lost_total", "Times a cluster was declared lost")),
            schedulable_tasks: must(Gauge::new("schedulable_tasks", "Queued tasks handed to the last scheduling cycle")),
            clusters: crate::cluster_metrics::ClusterMetrics::new(&registry),
            registry,
        };
        let r = &m.registry;
        must(r.register(Box::new(m.tasks.clone())));
        must(r.register(Box::new(m.queue_fair_share.clone())));
        must(r.register(Box::new(m.queue_actual_share.clone())));
        must(r.register(Box::new(m.schedule_cycle_seconds.clone())));
        must(r.register(Box::new(m.placements_total.clone())));
        must(r.register(Box::new(m.preemptions_total.clone())));
        must(r.register(Box::new(m.cluster_capacity.clone())));
        must(r.register(Box::new(m.cluster_usage.clone())));
        must(r.register(Box::new(m.cluster_ready.clone())));
        must(r.register(Box::new(m.executor_sync_age_seconds.clone())));
        must(r.register(Box::new(m.raft_term.clone())));
        must(r.register(Box::new(m.raft_leader.clone())));
        must(r.register(Box::new(m.raft_is_leader.clone())));
        must(r.register(Box::new(m.raft_commit_index.clone())));
        must(r.register(Box::new(m.raft_applied_index.clone())));
        must(r.register(Box::new(m.raft_apply_lag.clone())));
        must(r.register(Box::new(m.events_trimmed_total.clone())));
        must(r.register(Box::new(m.submitted_tasks_total.clone())));
        must(r.register(Box::new(m.rejected_requests_total.clone())));
        must(r.register(Box::new(m.clusters_lost_total.clone())));
        must(r.register(Box::new(m.schedulable_tasks.clone())));
        m
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# error encoding metrics: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
