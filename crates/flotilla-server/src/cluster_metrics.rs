//! Per-cluster metrics: cordon and drain state, and dispatch health.
//!
//! Every series here is labelled by `cluster`, whose values are the registered clusters
//! only (the state machine's cluster registry), so the label's cardinality is bounded by
//! the federation's size; `reason` takes the fixed set of `FailureKind` names and `kind`
//! is `start` or `stop`. The sync age per cluster is `flotilla_executor_sync_age_seconds`.
//!
//! Dispatch counts come from what this replica applied (`flotilla_store::DispatchStats`):
//! each refresh adds what was applied since the last one, so every replica shows them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use flotilla_store::State;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

pub struct ClusterMetrics {
    /// 1 while the cluster is cordoned (or draining), 0 otherwise.
    pub cordoned: IntGaugeVec,
    /// 1 while a drain is asked for (until uncordoned).
    pub draining: IntGaugeVec,
    /// Flotilla tasks still holding the cluster (active attempts and stopped ones not yet gone).
    pub tasks_left: IntGaugeVec,
    /// Attempts that began running (`rate()` gives starts per second).
    pub attempts_started: IntCounterVec,
    /// Failed attempts by failure kind (`reason`).
    pub attempt_failures: IntCounterVec,
    /// From the lease's commit to the attempt's running report (p50/p99 by `histogram_quantile`).
    pub lease_to_running_seconds: HistogramVec,
    /// Decisions the leader sent that the executor has not acknowledged yet: leases not yet
    /// reported pending or running (`kind="start"`) and stopped attempts not yet shown gone
    /// (`kind="stop"`).
    pub unacknowledged: IntGaugeVec,
    /// What the counters last added, to add only what is new.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    started: BTreeMap<String, u64>,
    failures: BTreeMap<(String, &'static str), u64>,
    sample_from: u64,
}

/// What a counter should add to go from `last` to `now`; a counter that went back (the
/// state was replaced by a snapshot) starts over from `now`.
fn delta(last: u64, now: u64) -> u64 {
    if now >= last {
        now - last
    } else {
        now
    }
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure here is a programming error caught by tests.
    r.expect("metric definition")
}

impl ClusterMetrics {
    pub fn new(registry: &Registry) -> ClusterMetrics {
        let m = ClusterMetrics {
            cordoned: must(IntGaugeVec::new(Opts::new("cluster_cordoned", "1 when the cluster takes no new leases"), &["cluster"])),
            draining: must(IntGaugeVec::new(Opts::new("cluster_draining", "1 while the cluster is being drained"), &["cluster"])),
            tasks_left: must(IntGaugeVec::new(
                Opts::new("cluster_tasks_left", "Flotilla tasks holding the cluster, stopped attempts not yet gone included"),
                &["cluster"],
            )),
            attempts_started: must(IntCounterVec::new(
                Opts::new("cluster_attempts_started_total", "Attempts that began running, by cluster"),
                &["cluster"],
            )),
            attempt_failures: must(IntCounterVec::new(
                Opts::new("cluster_attempt_failures_total", "Failed attempts by cluster and failure kind"),
                &["cluster", "reason"],
            )),
            lease_to_running_seconds: must(HistogramVec::new(
                HistogramOpts::new("cluster_lease_to_running_seconds", "Time from an attempt's lease to its running report")
                    .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0]),
                &["cluster"],
            )),
            unacknowledged: must(IntGaugeVec::new(
                Opts::new("cluster_unacknowledged", "Starts and stops sent to the executor and not yet acknowledged"),
                &["cluster", "kind"],
            )),
            seen: Mutex::default(),
        };
        must(registry.register(Box::new(m.attempts_started.clone())));
        must(registry.register(Box::new(m.attempt_failures.clone())));
        must(registry.register(Box::new(m.lease_to_running_seconds.clone())));
        must(registry.register(Box::new(m.unacknowledged.clone())));
        must(registry.register(Box::new(m.cordoned.clone())));
        must(registry.register(Box::new(m.draining.clone())));
        must(registry.register(Box::new(m.tasks_left.clone())));
        m
    }
}

impl ClusterMetrics {
    /// Brings the per-cluster series up to date with `s` (called under the state's read lock;
    /// takes only its own small lock).
    pub fn refresh(&self, s: &State) {
        for c in s.clusters() {
            let name = c.name.as_str();
            self.cordoned.with_label_values(&[name]).set(i64::from(c.cordoned));
            self.draining.with_label_values(&[name]).set(i64::from(c.draining));
            // `cluster_drain(name).tasks_left`, without listing what a drain waits for.
            self.tasks_left.with_label_values(&[name]).set((s.active_count_in(name) + s.stopping_count_in(name)) as i64);
            let starts = s.active_in(name).filter(|t| t.state == flotilla_model::TaskState::Leased).count();
            self.unacknowledged.with_label_values(&[name, "start"]).set(starts as i64);
            self.unacknowledged.with_label_values(&[name, "stop"]).set(s.stopping_count_in(name) as i64);
        }
        let stats = s.dispatch_stats();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for (cluster, n) in stats.started.iter().filter(|(c, _)| s.cluster(c).is_some()) {
            let last = seen.started.insert(cluster.clone(), *n).unwrap_or(0);
            self.attempts_started.with_label_values(&[cluster.as_str()]).inc_by(delta(last, *n));
        }
        for ((cluster, reason), n) in stats.failures.iter().filter(|((c, _), _)| s.cluster(c).is_some()) {
            let last = seen.failures.insert((cluster.clone(), reason), *n).unwrap_or(0);
            self.attempt_failures.with_label_values(&[cluster.as_str(), reason]).inc_by(delta(last, *n));
        }
        let (samples, next) = stats.samples_from(seen.sample_from);
        for (cluster, ms) in samples.filter(|(c, _)| s.cluster(c).is_some()) {
            self.lease_to_running_seconds.with_label_values(&[cluster]).observe(ms as f64 / 1000.0);
        }
        seen.sample_from = next;
    }
}
