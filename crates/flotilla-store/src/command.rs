//! Commands: the only way the replicated state changes.
//!
//! Each Raft entry carries one [`Request`]: a batch of commands (group commit) and the
//! leader's clock reading, so that applying it is deterministic on every replica.

use flotilla_model::{AttemptStatus, NodeRef, PriorityClass, Queue, TaskId, TaskSpec};
use serde::{Deserialize, Serialize};

use crate::cost::LeaseCost;

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
    /// Adds validated tasks. A repeated `client_request_id` returns the first call's ids if
    /// the body is the same (equal `body_digest`), and is refused if it is not.
    /// Encoded compactly: an array task or gang is one spec and a count in the log.
    Submit {
        client_request_id: String,
        queue: String,
        task_set: String,
        #[serde(with = "compact_specs")]
        specs: Vec<TaskSpec>,
        /// A stable hash of the request's body (queue, task set, templates), computed by the
        /// service that took it. 0: unknown (entries written before digests were kept), which
        /// matches any body.
        #[serde(default)]
        body_digest: u64,
    },
    /// Cancels the given tasks, or every unfinished task of a task set.
    Cancel { target: CancelTarget, reason: String },
    /// Resumes a task set paused by the circuit breaker.
    Resume { queue: String, task_set: String },
    /// One scheduling cycle's decisions.
    Schedule(ScheduleDecisions),
    /// What executors saw happen to attempts.
    ReportEvents { cluster: String, events: Vec<AttemptEvent> },
    /// An executor synced with the leader of `term`: the cluster is (again) ready.
    ClusterSeen {
        cluster: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        term: Option<u64>,
    },
    /// A cluster's executor showed these attempts, ended by a decision, gone: their tasks may
    /// be leased again (see `TaskRecord::stopping`).
    AttemptsGone { cluster: String, attempts: Vec<(TaskId, u32)> },
    /// The leader of `term` found the cluster silent: requeue its tasks as new attempts.
    ClusterLost {
        cluster: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        term: Option<u64>,
    },
    /// Names the installation: the first one applied wins and later ones change nothing, so
    /// the id never changes once set (everything executors create carries it).
    SetInstallation { id: String },
    /// Forget finished tasks older than the cutoff (bounded state).
    Compact {
        finished_before_ms: u64,
        max_tasks: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        term: Option<u64>,
    },
    /// Cordon (`cordoned: true`: no new leases there) or uncordon (also ends a drain) a
    /// known cluster. Idempotent.
    CordonCluster { cluster: String, cordoned: bool },
    /// Cordon the cluster and move its preemptible tasks elsewhere (the leader preempts
    /// them over its cycles within disruption budgets). Idempotent.
    DrainCluster { cluster: String },
    /// Create (`create: true`, fails if it exists) or update (fails if missing) a priority
    /// class. An update applies to every task of the class from the next scheduling cycle.
    PutPriorityClass { class: PriorityClass, create: bool },
    /// Fails while an unfinished task uses the class.
    DeletePriorityClass { name: String },
}

impl Command {
    /// The term of the leader whose own decision this is, for commands only a leader makes
    /// (invariant 7). Applying such a command in an entry of another term drops it: the
    /// decision was made on a picture (capacity, silence of a cluster) that a later leader
    /// does not share. `None` for commands any caller may make, and for entries written
    /// before terms were recorded.
    pub fn proposer_term(&self) -> Option<u64> {
        match self {
            Command::Schedule(d) => d.term,
            Command::ClusterSeen { term, .. } | Command::ClusterLost { term, .. } | Command::Compact { term, .. } => *term,
            _ => None,
        }
    }
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
    /// The node's price and the task's share of it, for the attempt's cost (`crate::cost`).
    #[serde(default, skip_serializing_if = "LeaseCost::is_zero")]
    pub cost: LeaseCost,
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
    /// The term of the leader that decided (see [`Command::proposer_term`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
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
        kind: RejectKind,
        message: String,
    },
}

/// Why a command was refused, so callers need not read the message to answer right.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectKind {
    /// The queue, task set or cluster it names does not exist.
    NotFound,
    AlreadyExists,
    /// A field is out of range (the services check these first; kept for direct proposals).
    Invalid,
    /// A leader's decision applied in another leader's term: dropped (invariant 7).
    Stale,
    /// The state does not allow it now (a queue with unfinished tasks, a set not paused).
    Conflict,
}

impl CommandResult {
    pub fn rejected(kind: RejectKind, message: impl Into<String>) -> CommandResult {
        CommandResult::Rejected { kind, message: message.into() }
    }
}

/// Array tasks and gangs expand into specs that differ only in `index` or `gang.rank`. In the
/// log they are written as runs (one spec and a count), which makes a 500-task submission
/// 723 bytes instead of 295 KB (measured); reading expands them exactly back.
mod compact_specs {
    use flotilla_model::TaskSpec;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Most tasks one run may expand to: bounds what a corrupt or hostile entry can allocate.
    const MAX_RUN: u32 = 100_000;

    #[derive(Serialize, Deserialize)]
    struct Run {
        spec: TaskSpec,
        count: u32,
    }

    /// True when `next` is `prev` with the following index (or gang rank) and nothing else changed.
    fn continues(prev: &TaskSpec, next: &TaskSpec) -> bool {
        match (&prev.gang, &next.gang) {
            (None, None) => next.index == prev.index.wrapping_add(1) && TaskSpec { index: prev.index, ..next.clone() } == *prev,
            (Some(pg), Some(ng)) => {
                ng.rank == pg.rank.wrapping_add(1) && {
                    let mut n = next.clone();
                    if let Some(g) = &mut n.gang {
                        g.rank = pg.rank;
                    }
                    n == *prev
                }
            }
            _ => false,
        }
    }

    fn step(spec: &TaskSpec, k: u32) -> TaskSpec {
        let mut s = spec.clone();
        match &mut s.gang {
            Some(g) => g.rank = g.rank.wrapping_add(k),
            None => s.index = s.index.wrapping_add(k),
        }
        s
    }

    pub fn serialize<S: Serializer>(specs: &[TaskSpec], ser: S) -> Result<S::Ok, S::Error> {
        let mut runs: Vec<Run> = Vec::new();
        let mut last: Option<&TaskSpec> = None;
        for spec in specs {
            match (runs.last_mut(), last) {
                (Some(run), Some(prev)) if run.count < MAX_RUN && continues(prev, spec) => run.count += 1,
                _ => runs.push(Run { spec: spec.clone(), count: 1 }),
            }
            last = Some(spec);
        }
        runs.serialize(ser)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<TaskSpec>, D::Error> {
        let runs = Vec::<Run>::deserialize(de)?;
        let total: u64 = runs.iter().map(|r| u64::from(r.count.min(MAX_RUN))).sum();
        let mut specs = Vec::with_capacity(total.min(1_000_000) as usize);
        for run in runs {
            for k in 0..run.count.min(MAX_RUN) {
                specs.push(step(&run.spec, k));
            }
        }
        Ok(specs)
    }
}
