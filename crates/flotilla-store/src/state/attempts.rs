//! Attempts and leases: scheduling decisions, executor reports, failures and retries,
//! cancellation, and clusters seen and lost.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_model::{quote, truncate, AttemptStatus, FailureKind, TaskId, TaskState, MAX_REASON_BYTES};

use super::records::{task_set_key, ClusterRecord, ClusterState, EventKind, TaskRecord, TaskSetKey};
use super::State;
use crate::command::{AttemptEvent, CancelTarget, CommandResult, LeaseDecision, PreemptDecision, RejectKind, ScheduleDecisions};

impl State {
    pub(super) fn cancel(&mut self, now: u64, target: &CancelTarget, reason: &str) -> CommandResult {
        let ids: Vec<TaskId> = match target {
            CancelTarget::Tasks(ids) => ids.clone(),
            CancelTarget::TaskSet { queue, task_set } => match self.task_sets.get(&task_set_key(queue, task_set)) {
                Some(s) => s.tasks.clone(),
                None => {
                    return CommandResult::rejected(
                        RejectKind::NotFound,
                        format!("task set {}/{} does not exist", quote(queue), quote(task_set)),
                    )
                }
            },
        };
        // The services cut it already; a proposal that did not is cut here, before it is
        // copied into every task and event.
        let reason = if reason.is_empty() { "cancelled by user".to_string() } else { truncate(reason, MAX_REASON_BYTES) };
        let mut n = 0;
        for id in ids {
            n += self.cancel_task(now, id, &reason);
        }
        CommandResult::Count(n)
    }

    /// Cancels a task, the rest of its gang and its dependents. Returns how many changed.
    pub(super) fn cancel_task(&mut self, now: u64, id: TaskId, reason: &str) -> u64 {
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

    pub(super) fn schedule(&mut self, now: u64, d: &ScheduleDecisions) -> CommandResult {
        let mut changed = 0;
        // Preemptions first: they free what the leases of the same cycle may use.
        for p in &d.preemptions {
            changed += self.preempt(now, p);
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
            if self.gang_lease_valid(now, gang, &leases) {
                for l in leases {
                    self.lease(now, l);
                    changed += 1;
                }
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

    /// Ends the preempted attempt if the decision is not stale. A gang restarts whole, so its
    /// other active members go back to the queue with it (invariant 4). Returns how many
    /// tasks changed.
    fn preempt(&mut self, now: u64, p: &PreemptDecision) -> u64 {
        let Some(t) = self.tasks.get(&p.task) else { return 0 };
        if !t.state.is_active() || t.attempt != p.attempt {
            return 0;
        }
        let gang: Vec<TaskId> = self.gang_members(t).into_iter().filter(|m| self.tasks[m].state.is_active()).collect();
        self.requeue_stopping(now, p.task, EventKind::Preempted, p.reason.clone());
        for m in &gang {
            self.requeue_stopping(now, *m, EventKind::Preempted, format!("gang member {} was preempted; the gang restarts", p.task));
        }
        1 + gang.len() as u64
    }

    /// A gang is leased whole, in one decision and one cluster (its topology domain is at
    /// most a cluster), or not at all (invariant 4).
    fn gang_lease_valid(&self, now: u64, gang: TaskId, leases: &[&LeaseDecision]) -> bool {
        let size = self.tasks.get(&gang).and_then(|t| t.spec.gang.as_ref()).map_or(0, |g| g.size as usize);
        let distinct: BTreeSet<TaskId> = leases.iter().map(|l| l.task).collect();
        let clusters: BTreeSet<&str> = leases.iter().map(|l| l.node.cluster.as_str()).collect();
        distinct.len() == size && leases.len() == size && clusters.len() == 1 && leases.iter().all(|l| self.lease_valid(now, l))
    }

    fn lease_valid(&self, now: u64, l: &LeaseDecision) -> bool {
        let Some(t) = self.tasks.get(&l.task) else { return false };
        self.is_schedulable(t, now)
            && t.attempt + 1 == l.attempt
            && self.clusters.get(&l.node.cluster).is_some_and(|c| c.state == ClusterState::Ready && !c.cordoned)
    }

    fn lease(&mut self, now: u64, l: &LeaseDecision) {
        if let Some(t) = self.tasks.get_mut(&l.task) {
            t.attempt = l.attempt;
            t.lease_cost = l.cost;
            t.running_since_ms = None;
            t.leased_ms = now;
        }
        self.transition(now, l.task, TaskState::Leased, Some(l.node.clone()), EventKind::Leased, String::new(), None);
    }

    pub(super) fn report_events(&mut self, now: u64, cluster: &str, events: &[AttemptEvent]) -> CommandResult {
        let mut n = 0;
        for e in events {
            let Some(t) = self.tasks.get(&e.task) else { continue };
            if t.state == TaskState::Queued && matches!(e.status, AttemptStatus::Succeeded | AttemptStatus::Failed { .. }) {
                // The end of an attempt a decision already ended: it is over now.
                n += u64::from(self.attempt_gone(e.task, e.attempt, cluster));
                continue;
            }
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
                    let waited_ms = if t.leased_ms > 0 { now.saturating_sub(t.leased_ms) } else { 0 };
                    self.dispatch.started(cluster, waited_ms);
                    self.transition(now, e.task, TaskState::Running, lease, EventKind::Running, String::new(), None);
                }
                AttemptStatus::Succeeded => {
                    self.transition(now, e.task, TaskState::Succeeded, None, EventKind::Succeeded, String::new(), Some(0));
                    self.unblock_dependents(now, e.task);
                }
                AttemptStatus::Failed { kind, exit_code, message } => {
                    self.dispatch.failed(cluster, *kind);
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
            self.sched_feed.touch(d);
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
        if !self.tasks.contains_key(&id) {
            return;
        }
        let mut detail = failure_detail(kind, exit_code, message);
        if let Some(cluster) = self.tasks[&id].lease.as_ref().map(|l| l.cluster.clone()).filter(|_| kind == FailureKind::Unschedulable) {
            detail = format!("{detail}; avoiding cluster {cluster} for {}", fmt_ms(self.limits.unschedulable_avoid_ms));
        }
        let counts = kind.counts_against_attempts();
        self.note_failure(now, id, kind, counts);
        // A gang restarts only whole: once a member has finished, a failed one cannot rejoin.
        let gang_partly_done = self.gang_partly_done(id);
        let t = &self.tasks[&id];
        let out_of_attempts = (counts && t.failures >= t.spec.retry.max_attempts) || gang_partly_done;
        let backoff = if counts { t.spec.retry.backoff_before(t.attempt + 1) } else { 0 };
        let gang = self.gang_members(t);
        let key = t.task_set_key();

        if out_of_attempts {
            let reason = if gang_partly_done {
                format!("{detail}; not retried: other members of its gang already finished, and a gang restarts only whole")
            } else {
                format!("failed after {} attempts: {detail}", t.failures)
            };
            self.fail_for_good(now, id, reason, exit_code, gang);
        } else {
            let reason = if backoff > 0 { format!("{detail}; retrying in {}", fmt_ms(backoff)) } else { format!("{detail}; retrying") };
            self.retry(now, id, reason, exit_code, backoff, gang);
        }
        if counts {
            self.record_failure(now, &key);
        }
    }

    /// Records what a failed attempt teaches: the failure count, nodes and clusters to avoid,
    /// and (for an OOM kill, when the task opts in) a larger memory limit.
    fn note_failure(&mut self, now: u64, id: TaskId, kind: FailureKind, counts: bool) {
        let (max_avoid_nodes, oom_memory_cap_factor) = (self.limits.max_avoid_nodes, self.limits.oom_memory_cap_factor);
        let avoid_ms = self.limits.unschedulable_avoid_ms;
        let Some(t) = self.tasks.get_mut(&id) else { return };
        if counts {
            t.failures += 1;
        }
        if let Some(n) = t.lease.clone() {
            if counts {
                *t.cluster_failures.entry(n.cluster.clone()).or_default() += 1;
            }
            if kind == FailureKind::Unschedulable {
                // Bounded: a task knows at most the clusters it was leased to.
                t.avoid_until_ms.retain(|_, until| *until > now);
                t.avoid_until_ms.insert(n.cluster.clone(), now.saturating_add(avoid_ms));
            }
            if !t.avoid_nodes.contains(&n) {
                t.avoid_nodes.push(n);
                if t.avoid_nodes.len() > max_avoid_nodes {
                    t.avoid_nodes.remove(0);
                }
            }
        }
        if kind == FailureKind::OomKilled {
            if let Some(growth) = t.spec.retry.oom_memory_growth {
                let current = t.spec.limits.memory_bytes.max(t.spec.resources.memory_bytes);
                let cap = (t.first_memory_limit_bytes as f64 * oom_memory_cap_factor) as u64;
                let grown = ((current as f64 * growth).ceil() as u64).min(cap).max(current);
                t.spec.limits.memory_bytes = grown;
                t.spec.resources.memory_bytes = grown;
            }
        }
    }

    /// True when another member of the task's gang already succeeded.
    fn gang_partly_done(&self, id: TaskId) -> bool {
        let Some(g) = self.tasks.get(&id).and_then(|t| t.spec.gang.as_ref()) else { return false };
        (0..g.size as u64)
            .map(|i| TaskId(g.id.0 + i))
            .any(|m| m != id && self.tasks.get(&m).is_some_and(|x| x.state == TaskState::Succeeded))
    }

    /// The task failed and will not run again: so do the rest of its gang and its dependents.
    fn fail_for_good(&mut self, now: u64, id: TaskId, reason: String, exit_code: Option<i32>, gang: Vec<TaskId>) {
        self.transition(now, id, TaskState::Failed, None, EventKind::Failed, reason, exit_code);
        let dependents = self.tasks[&id].dependents.clone();
        let name = self.tasks[&id].spec.name.clone();
        for m in gang {
            self.cancel_task(now, m, &format!("gang member {name} ({id}) failed"));
        }
        for d in dependents {
            self.cancel_task(now, d, &format!("dependency {name} ({id}) failed"));
        }
    }

    /// Back to the queue after `backoff_ms`; a gang restarts whole, so its other active
    /// members leave their nodes too.
    fn retry(&mut self, now: u64, id: TaskId, reason: String, exit_code: Option<i32>, backoff_ms: u64, gang: Vec<TaskId>) {
        if let Some(t) = self.tasks.get_mut(&id) {
            t.not_before_ms = now.saturating_add(backoff_ms);
            t.exit_code = exit_code;
        }
        self.requeue(now, id, EventKind::Retrying, reason, true);
        for m in gang {
            if self.tasks.get(&m).is_some_and(|t| t.state.is_active()) {
                if let Some(t) = self.tasks.get_mut(&m) {
                    t.not_before_ms = now.saturating_add(backoff_ms);
                }
                self.requeue_stopping(now, m, EventKind::Requeued, format!("gang member {id} failed; the gang restarts"));
            }
        }
    }

    /// Circuit breaker: too many failures in a window pause the task set.
    pub(super) fn record_failure(&mut self, now: u64, key: &TaskSetKey) {
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

    pub(super) fn cluster_seen(&mut self, now: u64, cluster: &str) -> CommandResult {
        match self.clusters.get_mut(cluster) {
            Some(c) if c.state == ClusterState::Ready => {}
            Some(c) => {
                c.state = ClusterState::Ready;
                c.changed_ms = now;
            }
            None => {
                self.clusters.insert(
                    cluster.to_string(),
                    ClusterRecord {
                        name: cluster.to_string(),
                        state: ClusterState::Ready,
                        first_seen_ms: now,
                        changed_ms: now,
                        cordoned: false,
                        draining: false,
                    },
                );
            }
        }
        CommandResult::Ok
    }

    pub(super) fn cluster_lost(&mut self, now: u64, cluster: &str) -> CommandResult {
        let Some(c) = self.clusters.get_mut(cluster) else {
            return CommandResult::rejected(RejectKind::NotFound, format!("cluster {} is not known", quote(cluster)));
        };
        c.state = ClusterState::Lost;
        c.changed_ms = now;
        // Its executor stopped every attempt when its lease ran out, before now.
        let stopping: Vec<TaskId> = self.stopping_by_cluster.get(cluster).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for id in stopping {
            let attempt = self.tasks.get(&id).map_or(0, |t| t.attempt);
            self.attempt_gone(id, attempt, cluster);
        }
        let ids: Vec<TaskId> = self.active_by_cluster.get(cluster).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for id in &ids {
            self.requeue(now, *id, EventKind::Requeued, format!("cluster {cluster} stopped reporting"), false);
        }
        CommandResult::Count(ids.len() as u64)
    }

    /// The cluster's executor showed these attempts gone (absent from, or finished in, its
    /// Sync): tasks waiting for them may be leased again.
    pub(super) fn attempts_gone(&mut self, cluster: &str, attempts: &[(TaskId, u32)]) -> CommandResult {
        let n = attempts.iter().filter(|(id, attempt)| self.attempt_gone(*id, *attempt, cluster)).count();
        CommandResult::Count(n as u64)
    }

    /// Other members of the task's gang that are not finished.
    pub(super) fn gang_members(&self, t: &TaskRecord) -> Vec<TaskId> {
        let Some(g) = &t.spec.gang else { return Vec::new() };
        (0..g.size as u64)
            .map(|i| TaskId(g.id.0 + i))
            .filter(|id| *id != t.id)
            .filter(|id| self.tasks.get(id).is_some_and(|m| m.spec.gang.as_ref().is_some_and(|mg| mg.id == g.id) && !m.state.is_terminal()))
            .collect()
    }

    /// Ends the current attempt and puts the task back in its queue.
    pub(super) fn requeue(&mut self, now: u64, id: TaskId, kind: EventKind, reason: String, keep_exit_code: bool) {
        let exit_code = if keep_exit_code { self.tasks.get(&id).and_then(|t| t.exit_code) } else { None };
        self.transition(now, id, TaskState::Queued, None, kind, reason, exit_code);
    }
}

/// "Error (exit code 1): message", for reason lines.
fn failure_detail(kind: FailureKind, exit_code: Option<i32>, message: &str) -> String {
    match (exit_code, message.is_empty()) {
        (Some(c), true) => format!("{} (exit code {c})", kind.as_str()),
        (Some(c), false) => format!("{} (exit code {c}): {message}", kind.as_str()),
        (None, true) => kind.as_str().to_string(),
        (None, false) => format!("{}: {message}", kind.as_str()),
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
