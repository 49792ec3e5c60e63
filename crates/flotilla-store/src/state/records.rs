//! The records the state holds: tasks, their events, task sets, clusters, and the limits.

use std::collections::{BTreeMap, VecDeque};

use flotilla_model::{NodeRef, Resources, TaskId, TaskSpec, TaskState};
use serde::{Deserialize, Serialize};

use crate::cost::LeaseCost;

/// Bounds and thresholds of the state machine. Part of the replicated state so that every
/// replica applies the same rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Events kept per task set; older ones are trimmed (counted in `events_trimmed`).
    pub max_events_per_task_set: usize,
    /// Submission request ids remembered for retry deduplication.
    pub max_request_ids: usize,
    /// Failures of one task set within `breaker_window_ms` that pause it.
    pub breaker_failures: usize,
    pub breaker_window_ms: u64,
    /// An OOM-killed task's memory never grows beyond this factor of its first limit.
    pub oom_memory_cap_factor: f64,
    /// Failures of one task in one cluster after which the scheduler avoids that cluster.
    pub avoid_cluster_after_failures: u32,
    /// Nodes remembered per task for avoidance.
    pub max_avoid_nodes: usize,
    /// How long a task avoids a cluster where its pod stayed pending past its
    /// `pendingTimeout` (an `Unschedulable` failure).
    #[serde(default = "default_unschedulable_avoid_ms")]
    pub unschedulable_avoid_ms: u64,
}

fn default_unschedulable_avoid_ms() -> u64 {
    10 * 60 * 1000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_events_per_task_set: 100_000,
            max_request_ids: 100_000,
            breaker_failures: 20,
            breaker_window_ms: 5 * 60 * 1000,
            oom_memory_cap_factor: 4.0,
            avoid_cluster_after_failures: 2,
            max_avoid_nodes: 8,
            unschedulable_avoid_ms: default_unschedulable_avoid_ms(),
        }
    }
}

/// `queue/task-set`. Both parts are DNS labels, so `/` cannot be ambiguous.
pub type TaskSetKey = String;

pub fn task_set_key(queue: &str, task_set: &str) -> TaskSetKey {
    format!("{queue}/{task_set}")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: TaskId,
    /// The current spec: memory grows here after OOM kills when the task opts in.
    /// Snapshots store specs once per run of alike tasks (see `compact_tasks`), not here.
    #[serde(skip)]
    pub spec: TaskSpec,
    pub state: TaskState,
    /// The attempt the task is on (0 before its first lease).
    pub attempt: u32,
    /// Where the current attempt runs, while the task is leased, pending or running.
    pub lease: Option<NodeRef>,
    /// Where the latest attempt ran (kept after it ended: "where did my task fail?").
    #[serde(default)]
    pub last_lease: Option<NodeRef>,
    /// Why it waits, failed or was cancelled.
    pub reason: String,
    pub exit_code: Option<i32>,
    pub submitted_ms: u64,
    pub updated_ms: u64,
    /// Backoff: not scheduled before this time.
    pub not_before_ms: u64,
    /// Dependencies (`after`) that have not succeeded yet.
    pub blocked_on: Vec<TaskId>,
    pub dependents: Vec<TaskId>,
    /// Failed attempts that count against `retry.max_attempts`.
    pub failures: u32,
    pub avoid_nodes: Vec<NodeRef>,
    pub cluster_failures: BTreeMap<String, u32>,
    /// Clusters avoided until a time (ms): where an attempt was `Unschedulable`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub avoid_until_ms: BTreeMap<String, u64>,
    /// The memory limit of the first attempt: the base of the OOM growth cap.
    pub first_memory_limit_bytes: u64,
    /// Where the attempt `attempt` may still run after a decision ended it (preemption, a
    /// gang restart): the task is not leased again until that cluster's executor shows the
    /// attempt gone, or the cluster is lost (invariant 2).
    #[serde(default)]
    pub stopping: Option<NodeRef>,
    /// The current attempt's price and share, from its lease (see `crate::cost`).
    #[serde(default, skip_serializing_if = "LeaseCost::is_zero")]
    pub lease_cost: LeaseCost,
    /// When the current attempt was reported running (the entry's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_since_ms: Option<u64>,
    /// What the task's ended attempts cost, in nano-dollars.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cost_nano_usd: u64,
    /// When the current (or latest) attempt was leased (the leader's clock), for the
    /// lease-to-running metric; 0 in records written before it was kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub leased_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TaskRecord {
    pub fn task_set_key(&self) -> TaskSetKey {
        task_set_key(&self.spec.queue, &self.spec.task_set)
    }

    /// What the running attempt has cost so far at `now_ms` (0 unless it runs).
    pub fn running_cost_nano_usd(&self, now_ms: u64) -> u64 {
        self.running_since_ms.map_or(0, |since| self.lease_cost.cost_nano_usd(now_ms.saturating_sub(since)))
    }

    /// (cluster, node) of the current attempt, or of the latest one once it ended.
    pub fn placement(&self) -> (String, String) {
        self.lease.as_ref().or(self.last_lease.as_ref()).map(|l| (l.cluster.clone(), l.node.clone())).unwrap_or_default()
    }

    /// Clusters the task avoids at `now_ms`: those it failed in `threshold` times, and those
    /// where it was unschedulable not long ago.
    pub fn avoid_clusters(&self, threshold: u32, now_ms: u64) -> Vec<String> {
        let failed = self.cluster_failures.iter().filter(|(_, n)| **n >= threshold).map(|(c, _)| c);
        let unschedulable = self.avoid_until_ms.iter().filter(|(_, until)| **until > now_ms).map(|(c, _)| c);
        let mut out: Vec<String> = failed.chain(unschedulable).cloned().collect();
        out.sort();
        out.dedup();
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Submitted,
    Leased,
    Pending,
    Running,
    Succeeded,
    /// The attempt failed and the task will not run again.
    Failed,
    /// The attempt failed; the task goes back to its queue after a backoff.
    Retrying,
    Preempted,
    /// Its cluster was lost or its gang restarted: back to the queue, not the task's fault.
    Requeued,
    Cancelled,
    /// The task set was paused by the circuit breaker.
    Paused,
    Resumed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Submitted => "submitted",
            EventKind::Leased => "leased",
            EventKind::Pending => "pending",
            EventKind::Running => "running",
            EventKind::Succeeded => "succeeded",
            EventKind::Failed => "failed",
            EventKind::Retrying => "retrying",
            EventKind::Preempted => "preempted",
            EventKind::Requeued => "requeued",
            EventKind::Cancelled => "cancelled",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
        }
    }
}

/// One entry of a task set's event log. `seq` is dense per task set, from 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub seq: u64,
    /// `TaskId(0)` for task-set events (paused, resumed).
    pub task: TaskId,
    pub attempt: u32,
    pub kind: EventKind,
    pub state: TaskState,
    pub cluster: String,
    pub node: String,
    pub reason: String,
    pub time_ms: u64,
    pub exit_code: Option<i32>,
    /// What the attempt this event ended cost, in nano-dollars (0 for other events).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cost_nano_usd: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSetRecord {
    pub queue: String,
    pub task_set: String,
    pub tasks: Vec<TaskId>,
    pub events: VecDeque<TaskEvent>,
    pub next_seq: u64,
    pub paused: bool,
    /// Times of recent failures, for the circuit breaker.
    pub recent_failures_ms: VecDeque<u64>,
    /// What its tasks' ended attempts cost, in nano-dollars.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cost_nano_usd: u64,
}

impl TaskSetRecord {
    /// The oldest sequence number still kept (`next_seq` when the log is empty).
    pub fn first_seq(&self) -> u64 {
        self.events.front().map_or(self.next_seq, |e| e.seq)
    }

    /// Events with `seq >= from_seq`, at most `max`.
    pub fn events_from(&self, from_seq: u64, max: usize) -> Vec<TaskEvent> {
        let start = from_seq.saturating_sub(self.first_seq()) as usize;
        self.events.iter().skip(start).take(max).cloned().collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    Ready,
    Lost,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub name: String,
    pub state: ClusterState,
    pub first_seen_ms: u64,
    pub changed_ms: u64,
    /// No new leases here (`flotilla cluster cordon`); running tasks stay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cordoned: bool,
    /// Cordoned, and its preemptible tasks are being moved elsewhere (`flotilla cluster drain`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// The resources a task holds while active, for capacity accounting.
pub fn held_resources(t: &TaskRecord) -> &Resources {
    &t.spec.resources
}

/// Position of a state in `TaskState::ALL`: the index into a queue's counts.
pub(super) fn state_index(s: TaskState) -> usize {
    TaskState::ALL.iter().position(|x| *x == s).unwrap_or(0)
}
