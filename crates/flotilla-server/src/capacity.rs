//! The leader's soft state: what each executor last reported.
//!
//! Capacity reports change every second and are cheap to resend, so they are not Raft
//! entries (DESIGN.md). After a leader change the new leader waits one report interval
//! before it schedules, so that it never decides on an empty picture of the federation.

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

use flotilla_model::{Node, Resources};

#[derive(Clone, Debug)]
pub struct ClusterReport {
    pub nodes: Vec<Node>,
    /// Changes when the executor process restarts.
    pub executor_id: String,
    pub received: Instant,
}

/// One cluster's last report, summed up.
#[derive(Clone, Debug, Default)]
pub struct CapacitySummary {
    pub nodes: usize,
    /// What the schedulable nodes offer (not cordoned, draining or NotReady).
    pub allocatable: Resources,
    pub gpu_models: std::collections::BTreeSet<String>,
    /// Time since the report.
    pub age: Duration,
    /// Sum of the nodes' prices per hour.
    pub price_per_hour_usd: f64,
    /// By GPU model: (nodes, GPUs allocatable on the schedulable ones).
    pub gpu_by_model: BTreeMap<String, (u32, u64)>,
}

#[derive(Debug, Default)]
pub struct Capacity {
    pub reports: BTreeMap<String, ClusterReport>,
    /// When this replica last became leader: reports older than that are not trusted.
    pub leader_since: Option<Instant>,
}

impl Capacity {
    pub fn record(&mut self, cluster: &str, report: ClusterReport) {
        self.reports.insert(cluster.to_string(), report);
    }

    /// Nodes of clusters that reported within `fresh_within`.
    pub fn fresh_nodes(&self, now: Instant, fresh_within: Duration) -> Vec<Node> {
        self.reports
            .values()
            .filter(|r| now.saturating_duration_since(r.received) <= fresh_within)
            .flat_map(|r| r.nodes.iter().cloned())
            .collect()
    }

    pub fn age(&self, cluster: &str, now: Instant) -> Option<Duration> {
        self.reports.get(cluster).map(|r| now.saturating_duration_since(r.received))
    }

    /// What each cluster reported, summed: copied out so that nobody holds this lock and the
    /// state's at once (the one lock order rule of a replica: never both).
    pub fn summaries(&self, now: Instant) -> BTreeMap<String, CapacitySummary> {
        self.reports
            .iter()
            .map(|(name, r)| {
                let mut summary =
                    CapacitySummary { nodes: r.nodes.len(), age: now.saturating_duration_since(r.received), ..Default::default() };
                // Capacity offered: a cordoned, draining or NotReady node's is not.
                for n in &r.nodes {
                    if !n.unschedulable {
                        summary.allocatable.add(&n.allocatable);
                    }
                    if let Some(m) = &n.gpu_model {
                        summary.gpu_models.insert(m.clone());
                        let slot = summary.gpu_by_model.entry(m.clone()).or_default();
                        slot.0 += 1;
                        if !n.unschedulable {
                            slot.1 += n.allocatable.gpu;
                        }
                    }
                    if n.price_per_hour_usd.is_finite() {
                        summary.price_per_hour_usd += n.price_per_hour_usd;
                    }
                }
                (name.clone(), summary)
            })
            .collect()
    }

    /// The GPU model of each GPU node of `cluster`, to count what tasks hold per model.
    pub fn gpu_model_of_nodes(&self, cluster: &str) -> std::collections::HashMap<String, String> {
        let nodes = self.reports.get(cluster).map(|r| r.nodes.as_slice()).unwrap_or_default();
        nodes.iter().filter_map(|n| n.gpu_model.clone().map(|m| (n.name.clone(), m))).collect()
    }

    /// Forget everything: called when leadership changes hands.
    pub fn reset(&mut self, leader_since: Option<Instant>) {
        self.reports.clear();
        self.leader_since = leader_since;
    }
}
