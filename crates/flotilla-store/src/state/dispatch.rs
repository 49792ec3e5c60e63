//! What applying entries observed about dispatch, per cluster, for metrics: attempts that
//! began running (and how long after their lease), and failures by kind.
//!
//! Not part of the replicated value (like `sched_feed`): never serialized, compares equal
//! whatever it holds, and a copy of the state starts empty. Each replica counts what it
//! applies, so its metrics are right on every replica; counters restart when a snapshot is
//! installed (Prometheus' `rate` handles counter resets). Bounded: one counter per cluster
//! (and failure kind), and at most [`MAX_SAMPLES`] lease-to-running samples not yet read.

use std::collections::{BTreeMap, VecDeque};

use flotilla_model::FailureKind;

/// Lease-to-running samples kept for the metrics reader; older ones are dropped (counted).
pub const MAX_SAMPLES: usize = 10_000;

#[derive(Debug, Default)]
pub struct DispatchStats {
    /// Attempts that began running, by cluster.
    pub started: BTreeMap<String, u64>,
    /// Failed attempts by (cluster, failure kind as `FailureKind::as_str`: a fixed set).
    pub failures: BTreeMap<(String, &'static str), u64>,
    /// (sequence number, cluster, ms from lease to running), oldest first.
    samples: VecDeque<(u64, String, u64)>,
    next_seq: u64,
}

impl Clone for DispatchStats {
    fn clone(&self) -> Self {
        DispatchStats::default()
    }
}

impl PartialEq for DispatchStats {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl DispatchStats {
    pub(super) fn started(&mut self, cluster: &str, lease_to_running_ms: u64) {
        *self.started.entry(cluster.to_string()).or_default() += 1;
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((self.next_seq, cluster.to_string(), lease_to_running_ms));
        self.next_seq += 1;
    }

    pub(super) fn failed(&mut self, cluster: &str, kind: FailureKind) {
        *self.failures.entry((cluster.to_string(), kind.as_str())).or_default() += 1;
    }

    /// Samples with a sequence number at or after `from`, and the next `from`. A reader whose
    /// `from` is ahead (the stats restarted) reads from the beginning.
    pub fn samples_from(&self, from: u64) -> (impl Iterator<Item = (&str, u64)>, u64) {
        let from = if from > self.next_seq { 0 } else { from };
        (self.samples.iter().filter(move |(seq, _, _)| *seq >= from).map(|(_, c, ms)| (c.as_str(), *ms)), self.next_seq)
    }
}
