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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use flotilla_model::{AttemptStatus, FailureKind, NodeRef, Queue, Resources, TaskId, TaskSpec, TaskState};
use serde::{Deserialize, Serialize};

use crate::command::*;

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
    /// Snapshots store specs once per run of alike tasks (see [`compact_tasks`]), not here.
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
    /// The memory limit of the first attempt: the base of the OOM growth cap.
    pub first_memory_limit_bytes: u64,
}

impl TaskRecord {
    pub fn task_set_key(&self) -> TaskSetKey {
        task_set_key(&self.spec.queue, &self.spec.task_set)
    }

    /// (cluster, node) of the current attempt, or of the latest one once it ended.
    pub fn placement(&self) -> (String, String) {
        self.lease.as_ref().or(self.last_lease.as_ref()).map(|l| (l.cluster.clone(), l.node.clone())).unwrap_or_default()
    }

    pub fn avoid_clusters(&self, threshold: u32) -> Vec<String> {
        self.cluster_failures.iter().filter(|(_, n)| **n >= threshold).map(|(c, _)| c.clone()).collect()
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
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub limits: Limits,
    next_task_id: u64,
    queues: BTreeMap<String, Queue>,
    #[serde(with = "compact_tasks")]
    tasks: BTreeMap<TaskId, TaskRecord>,
    task_sets: BTreeMap<TaskSetKey, TaskSetRecord>,
    clusters: BTreeMap<String, ClusterRecord>,
    request_ids: BTreeMap<String, Vec<TaskId>>,
    request_order: VecDeque<String>,
    // Indexes, kept by `transition`.
    queued: BTreeSet<TaskId>,
    active_by_cluster: BTreeMap<String, BTreeSet<TaskId>>,
    counts: BTreeMap<String, [u64; 7]>,
    /// Events trimmed from task-set logs since the beginning (a metric).
    pub events_trimmed: u64,
}

fn state_index(s: TaskState) -> usize {
    TaskState::ALL.iter().position(|x| *x == s).unwrap_or(0)
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

    /// Task counts of a queue by state, in `TaskState::ALL` order.
    pub fn counts(&self, queue: &str) -> [u64; 7] {
        self.counts.get(queue).copied().unwrap_or_default()
    }

    /// True when the task may be handed to the scheduler at `now_ms`.
    pub fn is_schedulable(&self, t: &TaskRecord, now_ms: u64) -> bool {
        t.state == TaskState::Queued
            && t.blocked_on.is_empty()
            && t.not_before_ms <= now_ms
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
        let now = req.now_ms;
        let results = req
            .commands
            .iter()
            .map(|c| match c {
                c if c.proposer_term().zip(entry_term).is_some_and(|(decided, committed)| decided != committed) => {
                    CommandResult::rejected(RejectKind::Stale, "decided by the leader of another term")
                }
                Command::PutQueue { queue, create } => self.put_queue(queue, *create),
                Command::DeleteQueue { name } => self.delete_queue(name),
                Command::Submit { client_request_id, queue, task_set, specs } => {
                    self.submit(now, client_request_id, queue, task_set, specs)
                }
                Command::Cancel { target, reason } => self.cancel(now, target, reason),
                Command::Resume { queue, task_set } => self.resume(now, queue, task_set),
                Command::Schedule(d) => self.schedule(now, d),
                Command::ReportEvents { cluster, events } => self.report_events(now, cluster, events),
                Command::ClusterSeen { cluster, .. } => self.cluster_seen(now, cluster),
                Command::ClusterLost { cluster, .. } => self.cluster_lost(now, cluster),
                Command::Compact { finished_before_ms, max_tasks, .. } => self.compact(*finished_before_ms, *max_tasks),
            })
            .collect();
        Response { results }
    }

    fn put_queue(&mut self, queue: &Queue, create: bool) -> CommandResult {
        let exists = self.queues.contains_key(&queue.name);
        if create && exists {
            return CommandResult::rejected(RejectKind::AlreadyExists, format!("queue {:?} already exists", queue.name));
        }
        if !create && !exists {
            return CommandResult::rejected(RejectKind::NotFound, format!("queue {:?} does not exist", queue.name));
        }
        if !(queue.weight.is_finite() && queue.weight >= 0.0) {
            return CommandResult::rejected(RejectKind::Invalid, format!("weight: {} must be a number >= 0", queue.weight));
        }
        self.queues.insert(queue.name.clone(), queue.clone());
        CommandResult::Ok
    }

    fn delete_queue(&mut self, name: &str) -> CommandResult {
        if !self.queues.contains_key(name) {
            return CommandResult::rejected(RejectKind::NotFound, format!("queue {name:?} does not exist"));
        }
        let c = self.counts(name);
        let unfinished: u64 = TaskState::ALL.iter().filter(|s| !s.is_terminal()).map(|s| c[state_index(*s)]).sum();
        if unfinished > 0 {
            return CommandResult::rejected(
                RejectKind::Conflict,
                format!("queue {name:?} has {unfinished} unfinished tasks; cancel them first"),
            );
        }
        self.queues.remove(name);
        CommandResult::Ok
    }

    fn submit(&mut self, now: u64, request_id: &str, queue: &str, task_set: &str, specs: &[TaskSpec]) -> CommandResult {
        if !request_id.is_empty() {
            if let Some(ids) = self.request_ids.get(request_id) {
                return CommandResult::Submitted { task_ids: ids.clone() };
            }
        }
        if !self.queues.contains_key(queue) {
            return CommandResult::rejected(RejectKind::NotFound, format!("queue: {queue:?} does not exist"));
        }
        if specs.is_empty() {
            return CommandResult::rejected(RejectKind::Invalid, "tasks: at least one task is required");
        }
        let first = self.next_task_id.max(1);
        let ids: Vec<TaskId> = (0..specs.len() as u64).map(|i| TaskId(first + i)).collect();
        self.next_task_id = first + specs.len() as u64;

        // `after` names refer to tasks of this submission.
        let mut by_name: HashMap<&str, Vec<TaskId>> = HashMap::new();
        for (spec, id) in specs.iter().zip(&ids) {
            by_name.entry(spec.name.as_str()).or_default().push(*id);
        }
        let key = task_set_key(queue, task_set);
        let mut gang_id = TaskId(0);
        for (spec, &id) in specs.iter().zip(&ids) {
            let mut spec = spec.clone();
            spec.queue = queue.to_string();
            spec.task_set = task_set.to_string();
            if let Some(g) = &mut spec.gang {
                if g.rank == 0 {
                    gang_id = id;
                }
                g.id = gang_id;
            }
            let blocked_on: Vec<TaskId> = spec.after.iter().flat_map(|n| by_name.get(n.as_str()).cloned().unwrap_or_default()).collect();
            for dep in &blocked_on {
                if let Some(d) = self.tasks.get_mut(dep) {
                    d.dependents.push(id);
                }
            }
            let reason = if blocked_on.is_empty() { String::new() } else { format!("waiting for {} to succeed", spec.after.join(", ")) };
            let record = TaskRecord {
                id,
                first_memory_limit_bytes: spec.limits.memory_bytes.max(spec.resources.memory_bytes),
                spec,
                state: TaskState::Queued,
                attempt: 0,
                lease: None,
                last_lease: None,
                reason,
                exit_code: None,
                submitted_ms: now,
                updated_ms: now,
                not_before_ms: 0,
                blocked_on,
                dependents: Vec::new(),
                failures: 0,
                avoid_nodes: Vec::new(),
                cluster_failures: BTreeMap::new(),
            };
            self.tasks.insert(id, record);
            self.queued.insert(id);
            self.counts.entry(queue.to_string()).or_default()[state_index(TaskState::Queued)] += 1;
            let set = self.task_sets.entry(key.clone()).or_insert_with(|| TaskSetRecord {
                queue: queue.to_string(),
                task_set: task_set.to_string(),
                next_seq: 1,
                ..Default::default()
            });
            set.tasks.push(id);
            self.push_task_event(now, id, EventKind::Submitted, String::new(), None);
        }
        if !request_id.is_empty() {
            self.request_ids.insert(request_id.to_string(), ids.clone());
            self.request_order.push_back(request_id.to_string());
            while self.request_order.len() > self.limits.max_request_ids {
                if let Some(old) = self.request_order.pop_front() {
                    self.request_ids.remove(&old);
                }
            }
        }
        CommandResult::Submitted { task_ids: ids }
    }

    fn cancel(&mut self, now: u64, target: &CancelTarget, reason: &str) -> CommandResult {
        let ids: Vec<TaskId> = match target {
            CancelTarget::Tasks(ids) => ids.clone(),
            CancelTarget::TaskSet { queue, task_set } => match self.task_sets.get(&task_set_key(queue, task_set)) {
                Some(s) => s.tasks.clone(),
                None => return CommandResult::rejected(RejectKind::NotFound, format!("task set {queue}/{task_set} does not exist")),
            },
        };
        let reason = if reason.is_empty() { "cancelled by user".to_string() } else { reason.to_string() };
        let mut n = 0;
        for id in ids {
            n += self.cancel_task(now, id, &reason);
        }
        CommandResult::Count(n)
    }

    /// Cancels a task, the rest of its gang and its dependents. Returns how many changed.
    fn cancel_task(&mut self, now: u64, id: TaskId, reason: &str) -> u64 {
        let mut n = 0;
        let mut work = vec![(id, reason.to_string())];
        while let Some((id, reason)) = work.pop() {
            let Some(t) = self.tasks.get(&id) else { continue };
            if t.state.is_terminal() {
                continue;
            }
            let dependents = t.dependents.clone();
            let name = t.spec.name.clone();
            let gang = self.gang_members(t);
            self.transition(now, id, TaskState::Cancelled, None, EventKind::Cancelled, reason.clone(), None);
            n += 1;
            for m in gang {
                work.push((m, format!("gang member {id} was cancelled")));
            }
            for d in dependents {
                work.push((d, format!("dependency {name} ({id}) did not succeed")));
            }
        }
        n
    }

    fn resume(&mut self, now: u64, queue: &str, task_set: &str) -> CommandResult {
        let key = task_set_key(queue, task_set);
        match self.task_sets.get_mut(&key) {
            None => CommandResult::rejected(RejectKind::NotFound, format!("task set {queue}/{task_set} does not exist")),
            Some(s) if !s.paused => CommandResult::rejected(RejectKind::Conflict, format!("task set {queue}/{task_set} is not paused")),
            Some(s) => {
                s.paused = false;
                s.recent_failures_ms.clear();
                self.push_set_event(now, &key, EventKind::Resumed, "resumed by user".into());
                CommandResult::Ok
            }
        }
    }

    fn schedule(&mut self, now: u64, d: &ScheduleDecisions) -> CommandResult {
        let mut changed = 0;
        // Preemptions first: they free what the leases of the same cycle may use.
        for p in &d.preemptions {
            let Some(t) = self.tasks.get(&p.task) else { continue };
            if !t.state.is_active() || t.attempt != p.attempt {
                continue;
            }
            self.requeue(now, p.task, EventKind::Preempted, p.reason.clone(), false);
            changed += 1;
        }
        // Leases, a gang all at once or not at all (invariant 4).
        let mut gangs: BTreeMap<TaskId, Vec<&LeaseDecision>> = BTreeMap::new();
        let mut singles = Vec::new();
        for l in &d.leases {
            match self.tasks.get(&l.task).and_then(|t| t.spec.gang.as_ref()) {
                Some(g) => gangs.entry(g.id).or_default().push(l),
                None => singles.push(l),
            }
        }
        for l in singles {
            if self.lease_valid(now, l) {
                self.lease(now, l);
                changed += 1;
            }
        }
        for (gang, leases) in gangs {
            let size = self.tasks.get(&gang).and_then(|t| t.spec.gang.as_ref()).map_or(0, |g| g.size as usize);
            let distinct: BTreeSet<TaskId> = leases.iter().map(|l| l.task).collect();
            if distinct.len() != size || leases.len() != size || !leases.iter().all(|l| self.lease_valid(now, l)) {
                continue;
            }
            for l in leases {
                self.lease(now, l);
                changed += 1;
            }
        }
        for (id, reason) in &d.reasons {
            if let Some(t) = self.tasks.get_mut(id) {
                if t.state == TaskState::Queued {
                    t.reason.clone_from(reason);
                }
            }
        }
        CommandResult::Count(changed)
    }

    fn lease_valid(&self, now: u64, l: &LeaseDecision) -> bool {
        let Some(t) = self.tasks.get(&l.task) else { return false };
        self.is_schedulable(t, now)
            && t.attempt + 1 == l.attempt
            && self.clusters.get(&l.node.cluster).is_some_and(|c| c.state == ClusterState::Ready)
    }

    fn lease(&mut self, now: u64, l: &LeaseDecision) {
        if let Some(t) = self.tasks.get_mut(&l.task) {
            t.attempt = l.attempt;
        }
        self.transition(now, l.task, TaskState::Leased, Some(l.node.clone()), EventKind::Leased, String::new(), None);
    }

    fn report_events(&mut self, now: u64, cluster: &str, events: &[AttemptEvent]) -> CommandResult {
        let mut n = 0;
        for e in events {
            let Some(t) = self.tasks.get(&e.task) else { continue };
            // Stale: an earlier attempt, or one this cluster does not hold (invariant 2).
            if t.attempt != e.attempt || !t.state.is_active() || t.lease.as_ref().is_none_or(|l| l.cluster != cluster) {
                continue;
            }
            let lease = t.lease.clone();
            match &e.status {
                AttemptStatus::Pending if t.state == TaskState::Leased => {
                    self.transition(now, e.task, TaskState::Pending, lease, EventKind::Pending, String::new(), None);
                }
                AttemptStatus::Running if matches!(t.state, TaskState::Leased | TaskState::Pending) => {
                    self.transition(now, e.task, TaskState::Running, lease, EventKind::Running, String::new(), None);
                }
                AttemptStatus::Succeeded => {
                    self.transition(now, e.task, TaskState::Succeeded, None, EventKind::Succeeded, String::new(), Some(0));
                    self.unblock_dependents(now, e.task);
                }
                AttemptStatus::Failed { kind, exit_code, message } => {
                    self.attempt_failed(now, e.task, *kind, *exit_code, message);
                }
                _ => continue,
            }
            n += 1;
        }
        CommandResult::Count(n)
    }

    fn unblock_dependents(&mut self, now: u64, id: TaskId) {
        let dependents = self.tasks.get(&id).map(|t| t.dependents.clone()).unwrap_or_default();
        for d in dependents {
            if let Some(t) = self.tasks.get_mut(&d) {
                t.blocked_on.retain(|x| *x != id);
                if t.blocked_on.is_empty() && t.state == TaskState::Queued {
                    t.reason.clear();
                    t.updated_ms = now;
                }
            }
        }
    }

    fn attempt_failed(&mut self, now: u64, id: TaskId, kind: FailureKind, exit_code: Option<i32>, message: &str) {
        let Some(t) = self.tasks.get_mut(&id) else { return };
        let node = t.lease.clone();
        let detail = match (exit_code, message.is_empty()) {
            (Some(c), true) => format!("{} (exit code {c})", kind.as_str()),
            (Some(c), false) => format!("{} (exit code {c}): {message}", kind.as_str()),
            (None, true) => kind.as_str().to_string(),
            (None, false) => format!("{}: {message}", kind.as_str()),
        };
        let counts = kind.counts_against_attempts();
        if counts {
            t.failures += 1;
        }
        if let Some(n) = &node {
            if !t.avoid_nodes.contains(n) {
                t.avoid_nodes.push(n.clone());
                if t.avoid_nodes.len() > self.limits.max_avoid_nodes {
                    t.avoid_nodes.remove(0);
                }
            }
            if counts {
                *t.cluster_failures.entry(n.cluster.clone()).or_default() += 1;
            }
        }
        if kind == FailureKind::OomKilled {
            if let Some(growth) = t.spec.retry.oom_memory_growth {
                let current = t.spec.limits.memory_bytes.max(t.spec.resources.memory_bytes);
                let cap = (t.first_memory_limit_bytes as f64 * self.limits.oom_memory_cap_factor) as u64;
                let grown = ((current as f64 * growth).ceil() as u64).min(cap).max(current);
                t.spec.limits.memory_bytes = grown;
                t.spec.resources.memory_bytes = grown;
            }
        }
        // A gang restarts only whole: once a member has finished, a failed one cannot rejoin.
        let gang = t.spec.gang.clone();
        let gang_partly_done = gang.is_some_and(|g| {
            (0..g.size as u64)
                .map(|i| TaskId(g.id.0 + i))
                .any(|m| m != id && self.tasks.get(&m).is_some_and(|x| x.state == TaskState::Succeeded))
        });
        let Some(t) = self.tasks.get_mut(&id) else { return };
        let out_of_attempts = (counts && t.failures >= t.spec.retry.max_attempts) || gang_partly_done;
        let next_attempt = t.attempt + 1;
        let backoff = if counts { t.spec.retry.backoff_before(next_attempt) } else { 0 };
        let gang = self.gang_members(&self.tasks[&id]);
        let key = self.tasks[&id].task_set_key();

        if out_of_attempts {
            let reason = if gang_partly_done {
                format!("{detail}; not retried: other members of its gang already finished, and a gang restarts only whole")
            } else {
                format!("failed after {} attempts: {detail}", self.tasks[&id].failures)
            };
            self.transition(now, id, TaskState::Failed, None, EventKind::Failed, reason, exit_code);
            let dependents = self.tasks[&id].dependents.clone();
            let name = self.tasks[&id].spec.name.clone();
            for m in gang {
                self.cancel_task(now, m, &format!("gang member {name} ({id}) failed"));
            }
            for d in dependents {
                self.cancel_task(now, d, &format!("dependency {name} ({id}) failed"));
            }
        } else {
            let reason = if backoff > 0 { format!("{detail}; retrying in {}", fmt_ms(backoff)) } else { format!("{detail}; retrying") };
            if let Some(t) = self.tasks.get_mut(&id) {
                t.not_before_ms = now.saturating_add(backoff);
                t.exit_code = exit_code;
            }
            self.requeue(now, id, EventKind::Retrying, reason, true);
            // A gang restarts whole: its other members leave their nodes too.
            for m in gang {
                if self.tasks.get(&m).is_some_and(|t| t.state.is_active()) {
                    if let Some(t) = self.tasks.get_mut(&m) {
                        t.not_before_ms = now.saturating_add(backoff);
                    }
                    self.requeue(now, m, EventKind::Requeued, format!("gang member {id} failed; the gang restarts"), false);
                }
            }
        }
        if counts {
            self.record_failure(now, &key);
        }
    }

    /// Circuit breaker: too many failures in a window pause the task set.
    fn record_failure(&mut self, now: u64, key: &TaskSetKey) {
        let (limit, window) = (self.limits.breaker_failures, self.limits.breaker_window_ms);
        let Some(set) = self.task_sets.get_mut(key) else { return };
        set.recent_failures_ms.push_back(now);
        while set.recent_failures_ms.front().is_some_and(|t| now.saturating_sub(*t) > window) {
            set.recent_failures_ms.pop_front();
        }
        // Keep the window bounded even when failures arrive faster than it slides.
        while set.recent_failures_ms.len() > limit.max(1) {
            set.recent_failures_ms.pop_front();
        }
        if !set.paused && limit > 0 && set.recent_failures_ms.len() >= limit {
            set.paused = true;
            let reason = format!(
                "paused: {} failures within {}; fix the cause, then run `flotilla resume --queue {} --task-set {}`",
                set.recent_failures_ms.len(),
                fmt_ms(window),
                set.queue,
                set.task_set
            );
            self.push_set_event(now, key, EventKind::Paused, reason);
        }
    }

    fn cluster_seen(&mut self, now: u64, cluster: &str) -> CommandResult {
        match self.clusters.get_mut(cluster) {
            Some(c) if c.state == ClusterState::Ready => {}
            Some(c) => {
                c.state = ClusterState::Ready;
                c.changed_ms = now;
            }
            None => {
                self.clusters.insert(
                    cluster.to_string(),
                    ClusterRecord { name: cluster.to_string(), state: ClusterState::Ready, first_seen_ms: now, changed_ms: now },
                );
            }
        }
        CommandResult::Ok
    }

    fn cluster_lost(&mut self, now: u64, cluster: &str) -> CommandResult {
        let Some(c) = self.clusters.get_mut(cluster) else {
            return CommandResult::rejected(RejectKind::NotFound, format!("cluster {cluster:?} is not known"));
        };
        c.state = ClusterState::Lost;
        c.changed_ms = now;
        let ids: Vec<TaskId> = self.active_by_cluster.get(cluster).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for id in &ids {
            self.requeue(now, *id, EventKind::Requeued, format!("cluster {cluster} stopped reporting"), false);
        }
        CommandResult::Count(ids.len() as u64)
    }

    fn compact(&mut self, finished_before_ms: u64, max_tasks: usize) -> CommandResult {
        let mut finished: Vec<(u64, TaskId)> =
            self.tasks.values().filter(|t| t.state.is_terminal()).map(|t| (t.updated_ms, t.id)).collect();
        finished.sort_unstable();
        let over = self.tasks.len().saturating_sub(max_tasks);
        let mut removed = 0u64;
        for (i, (updated, id)) in finished.into_iter().enumerate() {
            if updated >= finished_before_ms && i >= over {
                break;
            }
            if let Some(t) = self.tasks.remove(&id) {
                self.counts.entry(t.spec.queue.clone()).or_default()[state_index(t.state)] -= 1;
                let key = t.task_set_key();
                if let Some(set) = self.task_sets.get_mut(&key) {
                    set.tasks.retain(|x| *x != id);
                    if set.tasks.is_empty() {
                        self.task_sets.remove(&key);
                    }
                }
                removed += 1;
            }
        }
        CommandResult::Count(removed)
    }

    // ---- transitions ---------------------------------------------------------------------

    /// Other members of the task's gang that are not finished.
    fn gang_members(&self, t: &TaskRecord) -> Vec<TaskId> {
        let Some(g) = &t.spec.gang else { return Vec::new() };
        (0..g.size as u64)
            .map(|i| TaskId(g.id.0 + i))
            .filter(|id| *id != t.id)
            .filter(|id| self.tasks.get(id).is_some_and(|m| m.spec.gang.as_ref().is_some_and(|mg| mg.id == g.id) && !m.state.is_terminal()))
            .collect()
    }

    /// Ends the current attempt and puts the task back in its queue.
    fn requeue(&mut self, now: u64, id: TaskId, kind: EventKind, reason: String, keep_exit_code: bool) {
        let exit_code = if keep_exit_code { self.tasks.get(&id).and_then(|t| t.exit_code) } else { None };
        self.transition(now, id, TaskState::Queued, None, kind, reason, exit_code);
    }

    /// The one place a task changes state: keeps every index true and logs the event.
    #[allow(clippy::too_many_arguments)]
    fn transition(
        &mut self,
        now: u64,
        id: TaskId,
        to: TaskState,
        lease: Option<NodeRef>,
        kind: EventKind,
        reason: String,
        exit_code: Option<i32>,
    ) {
        let Some(t) = self.tasks.get_mut(&id) else { return };
        let from = t.state;
        debug_assert!(!from.is_terminal(), "task {id} left terminal state {from}");
        if from.is_terminal() {
            return;
        }
        debug_assert_eq!(to.is_active(), lease.is_some(), "an active task must hold a lease");
        if let Some(old) = t.lease.take() {
            if let Some(set) = self.active_by_cluster.get_mut(&old.cluster) {
                set.remove(&id);
            }
        }
        if let Some(new) = &lease {
            self.active_by_cluster.entry(new.cluster.clone()).or_default().insert(id);
            t.last_lease = Some(new.clone());
        }
        // One grep for `task=ID` tells a task's whole story (at debug level: a line per change).
        tracing::debug!(
            task = %id,
            attempt = t.attempt,
            queue = %t.spec.queue,
            task_set = %t.spec.task_set,
            cluster = lease.as_ref().map_or("", |l| l.cluster.as_str()),
            node = lease.as_ref().map_or("", |l| l.node.as_str()),
            from = %from,
            to = %to,
            event = kind.as_str(),
            reason = %reason,
            "task state changed"
        );
        t.lease = lease;
        t.state = to;
        t.updated_ms = now;
        t.reason = reason.clone();
        if exit_code.is_some() {
            t.exit_code = exit_code;
        }
        if from == TaskState::Queued {
            self.queued.remove(&id);
        }
        if to == TaskState::Queued {
            self.queued.insert(id);
        }
        let counts = self.counts.entry(t.spec.queue.clone()).or_default();
        counts[state_index(from)] -= 1;
        counts[state_index(to)] += 1;
        self.push_task_event(now, id, kind, reason, exit_code);
    }

    fn push_task_event(&mut self, now: u64, id: TaskId, kind: EventKind, reason: String, exit_code: Option<i32>) {
        let Some(t) = self.tasks.get(&id) else { return };
        let (cluster, node) = t.placement();
        let event =
            TaskEvent { seq: 0, task: id, attempt: t.attempt, kind, state: t.state, cluster, node, reason, time_ms: now, exit_code };
        let key = t.task_set_key();
        self.push_event(&key, event);
    }

    fn push_set_event(&mut self, now: u64, key: &TaskSetKey, kind: EventKind, reason: String) {
        let event = TaskEvent {
            seq: 0,
            task: TaskId(0),
            attempt: 0,
            kind,
            state: TaskState::Queued,
            cluster: String::new(),
            node: String::new(),
            reason,
            time_ms: now,
            exit_code: None,
        };
        self.push_event(key, event);
    }

    fn push_event(&mut self, key: &TaskSetKey, mut event: TaskEvent) {
        let max = self.limits.max_events_per_task_set.max(1);
        let Some(set) = self.task_sets.get_mut(key) else { return };
        event.seq = set.next_seq.max(1);
        set.next_seq = event.seq + 1;
        set.events.push_back(event);
        while set.events.len() > max {
            set.events.pop_front();
            self.events_trimmed += 1;
        }
    }
}

fn fmt_ms(ms: u64) -> String {
    humantime_like(ms)
}

/// "30s", "2m", "1h30m": short enough for a reason line.
fn humantime_like(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// Snapshot encoding of the task table. The tasks of one array task or gang share a spec but
/// for `index`, `gang.rank` and `gang.id`; a snapshot stores each such spec once and every task
/// as (spec number, index, rank, gang id, the rest of its record). Without this a snapshot
/// repeats a full spec per task (measured: about 1.15 KB per task, half of it specs).
mod compact_tasks {
    use std::collections::BTreeMap;

    use flotilla_model::{TaskId, TaskSpec};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::TaskRecord;

    /// The spec with what differs between tasks of one submission zeroed.
    fn shape(spec: &TaskSpec) -> TaskSpec {
        let mut s = spec.clone();
        s.index = 0;
        if let Some(g) = &mut s.gang {
            g.rank = 0;
            g.id = TaskId(0);
        }
        s
    }

    #[derive(Serialize)]
    struct Out<'a> {
        specs: Vec<TaskSpec>,
        tasks: Vec<(u32, u32, u32, u64, &'a TaskRecord)>,
    }

    #[derive(Deserialize)]
    struct In {
        specs: Vec<TaskSpec>,
        tasks: Vec<(u32, u32, u32, u64, TaskRecord)>,
    }

    pub fn serialize<S: Serializer>(tasks: &BTreeMap<TaskId, TaskRecord>, ser: S) -> Result<S::Ok, S::Error> {
        let mut specs: Vec<TaskSpec> = Vec::new();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks.values() {
            // Tasks of one submission have consecutive ids: comparing with the last spec
            // finds every run without hashing specs.
            let s = shape(&t.spec);
            if specs.last() != Some(&s) {
                specs.push(s);
            }
            let gang = t.spec.gang.as_ref();
            out.push(((specs.len() - 1) as u32, t.spec.index, gang.map_or(0, |g| g.rank), gang.map_or(0, |g| g.id.0), t));
        }
        Out { specs, tasks: out }.serialize(ser)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<BTreeMap<TaskId, TaskRecord>, D::Error> {
        let input = In::deserialize(de)?;
        let mut tasks = BTreeMap::new();
        for (spec, index, rank, gang_id, mut t) in input.tasks {
            let shape = input
                .specs
                .get(spec as usize)
                .ok_or_else(|| serde::de::Error::custom(format!("task {} refers to spec {spec} of {}", t.id, input.specs.len())))?;
            t.spec = shape.clone();
            t.spec.index = index;
            if let Some(g) = &mut t.spec.gang {
                g.rank = rank;
                g.id = TaskId(gang_id);
            }
            tasks.insert(t.id, t);
        }
        Ok(tasks)
    }
}

/// The resources a task holds while active, for capacity accounting.
pub fn held_resources(t: &TaskRecord) -> &Resources {
    &t.spec.resources
}

#[cfg(test)]
mod tests;
