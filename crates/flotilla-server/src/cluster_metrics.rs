//! Per-cluster metrics: cordon and drain state now; dispatch health joins them.
//!
//! Every series here is labelled by `cluster`, whose values are the registered clusters
//! only (the state machine's cluster registry), so the label's cardinality is bounded by
//! the federation's size.

use prometheus::{IntGaugeVec, Opts, Registry};

pub struct ClusterMetrics {
    /// 1 while the cluster is cordoned (or draining), 0 otherwise.
    pub cordoned: IntGaugeVec,
    /// 1 while a drain is asked for (until uncordoned).
    pub draining: IntGaugeVec,
    /// Flotilla tasks still holding the cluster (active attempts and stopped ones not yet gone).
    pub tasks_left: IntGaugeVec,
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
        };
        must(registry.register(Box::new(m.cordoned.clone())));
        must(registry.register(Box::new(m.draining.clone())));
        must(registry.register(Box::new(m.tasks_left.clone())));
        m
    }
}
