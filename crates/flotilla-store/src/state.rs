//! The replicated state machine: queues, tasks, task-set event logs and the cluster registry.
//!
//! [`State::apply`] is deterministic: it reads nothing but the state and the request (whose
//! `now_ms` the leader stamped), so every replica that applies the same log holds the same
//! state. Every task transition goes through one function, [`State::transition`], which keeps
//! the indexes (queued, active, by cluster, counts) true and refuses to leave a terminal
//! state (invariant 5).
//!
//! Attempts: a task's `attempt` is the number of the attempt it is on. A lease starts attempt
//! `attempt + 1`; a preemption, a lost cluster or a failure ends it. Executors are told to stop
//! any attempt that is not the current lease of its task (invariant 2).
//!
//! The code is split by concern: `records` (what is stored), `submission` (new tasks and
//! request-id dedupe), `attempts` (leases, reports, failures, cancels, clusters), `indexes`
//! (`transition` and the indexes and event logs it keeps), `compaction`, `queues`, `priority_classes`, `invariants`
//! ([`State::check_invariants`]), and
//! `compact_tasks` (the snapshot encoding of the task table), and `costs` (what attempts
//! cost, summed per task set and queue).

mod attempts;
mod compact_tasks;
mod compaction;
mod cordon;
mod costs;
mod dispatch;
mod indexes;
mod invariants;
mod priority_classes;
mod queues;
mod records;
mod sched_feed;
mod submission;
use submission::RequestKey;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use flotilla_model::{Queue, TaskId, TaskState};
use serde::{Deserialize, Serialize};

use crate::command::*;
use crate::cost::QueueCost;
pub use cordon::{ClusterDrain, DrainState};
pub use dispatch::DispatchStats;
pub use records::{
    held_resources, task_set_key, ClusterRecord, ClusterState, EventKind, Limits, TaskEvent, TaskRecord, TaskSetKey, TaskSetRecord,
};
pub use sched_feed::{FeedCursor, SchedFeed};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub limits: Limits,
    next_task_id: u64,
    queues: BTreeMap<String, Queue>,
    #[serde(with = "compact_tasks")]
    tasks: BTreeMap<TaskId, TaskRecord>,
    task_sets: BTreeMap<TaskSetKey, TaskSetRecord>,
    clusters: BTreeMap<String, ClusterRecord>,
    /// Request id -> the ids its submission got; at most `limits.max_request_ids`, oldest
    /// forgotten first (`request_order`).
    request_ids: BTreeMap<String, submission::SubmittedIds>,
    request_order: VecDeque<String>,
    // Indexes, kept by `transition`.
    queued: BTreeSet<TaskId>,
    active_by_cluster: BTreeMap<String, BTreeSet<TaskId>>,
    /// Queued tasks whose ended attempt may still run, by that attempt's cluster.
    #[serde(default)]
    stopping_by_cluster: BTreeMap<String, BTreeSet<TaskId>>,
    counts: BTreeMap<String, [u64; 7]>,
    /// Events trimmed from task-set logs since the beginning (a metric).
    pub events_trimmed: u64,
    /// The latest time an entry was applied at. Entries proposed concurrently can commit
    /// with decreasing `Request.now_ms`; every timestamp uses the max of the two so that the
    /// state's clock (event times, backoffs, breaker windows) never goes backwards.
    #[serde(default)]
    last_now_ms: u64,
    /// The installation's id (see [`Command::SetInstallation`]); empty until set. Left out
    /// of the JSON while empty, so snapshots written before it existed read the same.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    installation_id: String,
    /// What each queue's ended attempts cost (see `crate::cost`). Kept when its task sets
    /// are compacted away, so the total only grows.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    queue_costs: BTreeMap<String, QueueCost>,
    /// Operator-defined priority classes; `None` until the first priority-class command, which
    /// means the built-in ones (see `priority_classes`). Left out of the JSON while `None`, so
    /// snapshots written before classes were replicated read the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    priority_classes: Option<BTreeMap<String, flotilla_model::PriorityClass>>,
    /// Tasks whose schedulability may have changed, for the leader's backlog (not replicated).
    #[serde(skip)]
    sched_feed: SchedFeed,
    /// Dispatch counters for metrics (not replicated; see `dispatch`).
    #[serde(skip)]
    dispatch: DispatchStats,
}

impl State {
    pub fn with_limits(limits: Limits) -> Self {
        State { limits, next_task_id: 1, ..State::default() }
    }

    // ---- queries -------------------------------------------------------------------------

    pub fn queue(&self, name: &str) -> Option<&Queue> {
        self.queues.get(name)
    }

    pub fn queues(&self) -> impl Iterator<Item = &Queue> {
        self.queues.values()
    }

    pub fn task(&self, id: TaskId) -> Option<&TaskRecord> {
        self.tasks.get(&id)
    }

    pub fn tasks(&self) -> impl DoubleEndedIterator<Item = &TaskRecord> {
        self.tasks.values()
    }

    /// Tasks with id greater than `after`, in id order.
    pub fn tasks_after(&self, after: TaskId) -> impl Iterator<Item = &TaskRecord> {
        self.tasks.range(TaskId(after.0.saturating_add(1))..).map(|(_, t)| t)
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Queued tasks, in id order, whether or not they may be scheduled now.
    pub fn queued(&self) -> impl Iterator<Item = &TaskRecord> {
        self.queued.iter().filter_map(|id| self.tasks.get(id))
    }

    /// Tasks holding resources (leased, pending, running) in one cluster.
    pub fn active_in(&self, cluster: &str) -> impl Iterator<Item = &TaskRecord> {
        self.active_by_cluster.get(cluster).into_iter().flatten().filter_map(|id| self.tasks.get(id))
    }

    /// How many tasks hold resources in `cluster` (as `active_in(cluster).count()`, without
    /// walking them).
    pub fn active_count_in(&self, cluster: &str) -> usize {
        self.active_by_cluster.get(cluster).map_or(0, BTreeSet::len)
    }

    /// How many tasks' ended attempts may still run in `cluster` (as
    /// `stopping_in(cluster).count()`, without walking them).
    pub fn stopping_count_in(&self, cluster: &str) -> usize {
        self.stopping_by_cluster.get(cluster).map_or(0, BTreeSet::len)
    }

    /// Tasks whose ended attempt may still run in `cluster` (see [`TaskRecord::stopping`]).
    pub fn stopping_in(&self, cluster: &str) -> impl Iterator<Item = &TaskRecord> {
        self.stopping_by_cluster.get(cluster).into_iter().flatten().filter_map(|id| self.tasks.get(id))
    }

    /// Every task holding resources, in all clusters.
    pub fn active(&self) -> impl Iterator<Item = &TaskRecord> {
        self.active_by_cluster.values().flatten().filter_map(|id| self.tasks.get(id))
    }

    pub fn task_set(&self, queue: &str, task_set: &str) -> Option<&TaskSetRecord> {
        self.task_sets.get(&task_set_key(queue, task_set))
    }

    pub fn task_sets(&self) -> impl Iterator<Item = &TaskSetRecord> {
        self.task_sets.values()
    }

    pub fn clusters(&self) -> impl Iterator<Item = &ClusterRecord> {
        self.clusters.values()
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterRecord> {
        self.clusters.get(name)
    }

    /// The installation's id, empty until its first leader set it.
    pub fn installation_id(&self) -> &str {
        &self.installation_id
    }

    /// The feed of tasks the scheduler may see differently since a cursor (see `sched_feed`).
    pub fn sched_feed(&self) -> &SchedFeed {
        &self.sched_feed
    }

    /// What applying observed about dispatch, per cluster (for metrics).
    pub fn dispatch_stats(&self) -> &DispatchStats {
        &self.dispatch
    }

    /// Task counts of a queue by state, in `TaskState::ALL` order.
    pub fn counts(&self, queue: &str) -> [u64; 7] {
        self.counts.get(queue).copied().unwrap_or_default()
    }

    /// True when the task may be handed to the scheduler at `now_ms`.
    pub fn is_schedulable(&self, t: &TaskRecord, now_ms: u64) -> bool {
        t.state == TaskState::Queued
            && t.blocked_on.is_empty()
            && t.not_before_ms <= now_ms
            && t.stopping.is_none()
            && !self.task_sets.get(&t.task_set_key()).is_some_and(|s| s.paused)
    }

    // ---- apply ---------------------------------------------------------------------------

    /// Applies one Raft entry. Deterministic; never panics on a well-formed request.
    pub fn apply(&mut self, req: &Request) -> Response {
        self.apply_in(req, None)
    }

    /// Applies an entry committed in `entry_term`. A leader's decision made in another term
    /// is dropped with [`RejectKind::Stale`] (invariant 7).
    pub fn apply_entry(&mut self, req: &Request, entry_term: u64) -> Response {
        self.apply_in(req, Some(entry_term))
    }

    fn apply_in(&mut self, req: &Request, entry_term: Option<u64>) -> Response {
        if self.next_task_id == 0 {
            self.next_task_id = 1;
        }
        let now = req.now_ms.max(self.last_now_ms);
        self.last_now_ms = now;
        let results = req
            .commands
            .iter()
            .map(|c| match c {
                c if c.proposer_term().zip(entry_term).is_some_and(|(decided, committed)| decided != committed)
                    && !crate::planted::SKIP_TERM_CHECK.load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    CommandResult::rejected(RejectKind::Stale, "decided by the leader of another term")
                }
                Command::PutQueue { queue, create } => self.put_queue(queue, *create),
                Command::DeleteQueue { name } => self.delete_queue(name),
                Command::Submit { client_request_id, queue, task_set, specs, body_digest } => {
                    self.submit(now, RequestKey { id: client_request_id, body_digest: *body_digest }, queue, task_set, specs)
                }
                Command::Cancel { target, reason } => self.cancel(now, target, reason),
                Command::Resume { queue, task_set } => self.resume(now, queue, task_set),
                Command::Schedule(d) => self.schedule(now, d),
                Command::ReportEvents { cluster, events } => self.report_events(now, cluster, events),
                Command::ClusterSeen { cluster, .. } => self.cluster_seen(now, cluster),
                Command::ClusterLost { cluster, .. } => self.cluster_lost(now, cluster),
                Command::AttemptsGone { cluster, attempts } => self.attempts_gone(cluster, attempts),
                Command::Compact { finished_before_ms, max_tasks, .. } => self.compact(*finished_before_ms, *max_tasks),
                Command::SetInstallation { id } => self.set_installation(id),
                Command::CordonCluster { cluster, cordoned } => self.cordon_cluster(now, cluster, *cordoned),
                Command::DrainCluster { cluster } => self.drain_cluster(now, cluster),
                Command::PutPriorityClass { class, create } => self.put_priority_class(class, *create),
                Command::DeletePriorityClass { name } => self.delete_priority_class(name),
            })
            .collect();
        // Assert on the way into storage (STYLE.md): a broken index found here names the
        // entry that broke it, not a confusing symptom many entries later.
        #[cfg(debug_assertions)]
        if let Err(broken) = self.check_invariants() {
            panic!("state invariant broken by the entry at {now} ms ({} commands): {broken}", req.commands.len());
        }
        Response { results }
    }

    fn set_installation(&mut self, id: &str) -> CommandResult {
        if !self.installation_id.is_empty() {
            return CommandResult::rejected(RejectKind::Conflict, format!("the installation is already {}", self.installation_id));
        }
        if !flotilla_model::is_installation_id(id) {
            return CommandResult::rejected(
                RejectKind::Invalid,
                format!("installation id {} is not 16 lowercase hex digits", flotilla_model::quote(id)),
            );
        }
        self.installation_id = id.to_string();
        CommandResult::Ok
    }
}

#[cfg(test)]
mod tests;
