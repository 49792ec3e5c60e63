//! Commands: the only way the replicated state changes.
//!
//! Each Raft entry carries one [`Request`]: a batch of commands (group commit) and the
//! leader's clock reading, so that applying it is deterministic on every replica.

use flotilla_model::{AttemptStatus, NodeRef, Queue, TaskId, TaskSpec};
use serde::{Deserialize, Serialize};

/// One Raft entry's payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The proposing leader's wall clock, used for every timestamp the entry creates.
    pub now_ms: u64,
    pub commands: Vec<Command>,
}

/// One Raft entry's result: one result per command, in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub results: Vec<CommandResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Create (`create: true`, fails if it exists) or update (fails if missing) a queue.
    PutQueue { queue: Queue, create: bool },
    /// Fails while the queue has unfinished tasks.
    DeleteQueue { name: String },
    /// Adds validated tasks. A repeated `client_request_id` returns the first call's ids.
    Submit { client_request_id: String, queue: String, task_set: String, specs: Vec<TaskSpec> },
    /// Cancels the given tasks, or every unfinished task of a task set.
    Cancel { target: CancelTarget, reason: String },
    /// Resumes a task set paused by the circuit breaker.
    Resume { queue: String, task_set: String },
    /// One scheduling cycle's decisions.
    Schedule(ScheduleDecisions),
    /// What executors saw happen to attempts.
    ReportEvents { cluster: String, events: Vec<AttemptEvent> },
    /// An executor synced: the cluster is (again) ready.
    ClusterSeen { cluster: String },
    /// The cluster stopped reporting: requeue its tasks as new attempts elsewhere.
    ClusterLost { cluster: String },
    /// Forget finished tasks older than the cutoff (bounded state).
    Compact { finished_before_ms: u64, max_tasks: usize },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CancelTarget {
    Tasks(Vec<TaskId>),
    TaskSet { queue: String, task_set: String },
}

/// A lease decided by the scheduler. `attempt` is the attempt being started (previous + 1):
/// applying checks it so a stale decision is dropped instead of double-leasing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseDecision {
    pub task: TaskId,
    pub attempt: u32,
    pub node: NodeRef,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreemptDecision {
    pub task: TaskId,
    /// The attempt being preempted; a mismatch means the decision is stale.
    pub attempt: u32,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleDecisions {
    pub leases: Vec<LeaseDecision>,
    pub preemptions: Vec<PreemptDecision>,
    /// Reasons for tasks left queued, only where they changed since the last cycle.
    pub reasons: Vec<(TaskId, String)>,
}

/// One status change of one attempt, as an executor reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptEvent {
    pub task: TaskId,
    pub attempt: u32,
    pub status: AttemptStatus,
    pub node: String,
    pub time_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CommandResult {
    Ok,
    Submitted {
        task_ids: Vec<TaskId>,
    },
    /// How many tasks a command changed (cancel, events, leases).
    Count(u64),
    /// The command was refused; nothing changed.
    Rejected {
        message: String,
    },
}
