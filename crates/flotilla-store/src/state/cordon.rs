//! Cordon and drain: taking a cluster out of service.
//!
//! A cordoned cluster gets no new leases (`lease_valid` refuses them, and the leader leaves
//! its nodes out of the cycle). A draining cluster is cordoned and its preemptible tasks are
//! moved elsewhere: the leader preempts them over its cycles, within each queue's disruption
//! budget, through the ordinary preemption path (grace honoured, a new attempt that does not
//! count against retries). Non-preemptible tasks are never stopped; the drain waits for them.

use flotilla_model::{quote, TaskId};
use serde::{Deserialize, Serialize};

use super::records::TaskRecord;
use super::State;
use crate::command::{CommandResult, RejectKind};

/// Where a cluster stands with respect to new work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainState {
    /// Takes new leases.
    Schedulable,
    /// No new leases; running tasks stay.
    Cordoned,
    /// Cordoned, and tasks still run there.
    Draining,
    /// Drained: no Flotilla task runs there any more.
    Drained,
}

impl DrainState {
    pub fn as_str(self) -> &'static str {
        match self {
            DrainState::Schedulable => "schedulable",
            DrainState::Cordoned => "cordoned",
            DrainState::Draining => "draining",
            DrainState::Drained => "drained",
        }
    }
}

/// A cluster's cordon and drain state as the state machine holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterDrain {
    pub state: DrainState,
    /// Tasks still holding the cluster: active attempts plus ended attempts not yet gone.
    pub tasks_left: u64,
    /// Active tasks a drain will not stop (their priority class is not preemptible).
    pub waiting_for: Vec<TaskId>,
}

impl State {
    /// Whether a drain may stop the task: its priority class is preemptible.
    pub fn drain_may_move(&self, t: &TaskRecord) -> bool {
        self.priority_class(&t.spec.priority_class).is_none_or(|c| c.preemptible)
    }

    pub(super) fn cordon_cluster(&mut self, now: u64, cluster: &str, cordoned: bool) -> CommandResult {
        let Some(c) = self.clusters.get_mut(cluster) else {
            return CommandResult::rejected(RejectKind::NotFound, format!("cluster {} is not known", quote(cluster)));
        };
        if c.cordoned != cordoned || (!cordoned && c.draining) {
            c.cordoned = cordoned;
            c.draining = false;
            c.changed_ms = now;
        }
        CommandResult::Ok
    }

    pub(super) fn drain_cluster(&mut self, now: u64, cluster: &str) -> CommandResult {
        let Some(c) = self.clusters.get_mut(cluster) else {
            return CommandResult::rejected(RejectKind::NotFound, format!("cluster {} is not known", quote(cluster)));
        };
        if !(c.cordoned && c.draining) {
            c.cordoned = true;
            c.draining = true;
            c.changed_ms = now;
        }
        CommandResult::Ok
    }

    /// The cluster's cordon and drain state; `None` for an unknown cluster.
    pub fn cluster_drain(&self, name: &str) -> Option<ClusterDrain> {
        let c = self.clusters.get(name)?;
        let tasks_left = (self.active_count_in(name) + self.stopping_count_in(name)) as u64;
        let state = match (c.cordoned, c.draining) {
            (false, _) => DrainState::Schedulable,
            (true, false) => DrainState::Cordoned,
            (true, true) if tasks_left > 0 => DrainState::Draining,
            (true, true) => DrainState::Drained,
        };
        let waiting_for =
            if c.draining { self.active_in(name).filter(|t| !self.drain_may_move(t)).map(|t| t.id).collect() } else { Vec::new() };
        Some(ClusterDrain { state, tasks_left, waiting_for })
    }

    /// Clusters being drained, in name order.
    pub fn draining_clusters(&self) -> impl Iterator<Item = &str> {
        self.clusters.values().filter(|c| c.draining).map(|c| c.name.as_str())
    }

    /// True when the cluster takes no new leases.
    pub fn is_cordoned(&self, name: &str) -> bool {
        self.clusters.get(name).is_some_and(|c| c.cordoned)
    }
}
