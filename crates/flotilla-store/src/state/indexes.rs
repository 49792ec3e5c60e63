//! Transitions and the indexes they keep: the queued set, active tasks by cluster, counts
//! per queue and state, and the task-set event logs.

use flotilla_model::{NodeRef, TaskId, TaskState};

use super::records::{state_index, EventKind, TaskEvent, TaskSetKey};
use super::State;

impl State {
    /// The one place a task changes state: keeps every index true and logs the event.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn transition(
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
        self.sched_feed.touch(id);
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
        // An attempt ends when its task leaves the active states: it costs what it ran.
        let mut cost_nano_usd = 0;
        if from.is_active() && !to.is_active() {
            cost_nano_usd = t.running_cost_nano_usd(now);
            t.cost_nano_usd = t.cost_nano_usd.saturating_add(cost_nano_usd);
            t.running_since_ms = None;
        } else if to == TaskState::Running && from != TaskState::Running {
            t.running_since_ms = Some(now);
        }
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
        if to.is_terminal() {
            // A finished task is never leased again: nothing waits for its old attempt.
            if let Some(old) = t.stopping.take() {
                if let Some(set) = self.stopping_by_cluster.get_mut(&old.cluster) {
                    set.remove(&id);
                }
            }
        }
        if to == TaskState::Queued {
            self.queued.insert(id);
        }
        let counts = self.counts.entry(t.spec.queue.clone()).or_default();
        counts[state_index(from)] -= 1;
        counts[state_index(to)] += 1;
        if cost_nano_usd > 0 {
            let key = t.task_set_key();
            self.add_cost(now, &key, cost_nano_usd);
        }
        self.push_task_event(now, id, kind, reason, exit_code, cost_nano_usd);
    }

    /// Requeues a task whose attempt a decision ended while its executor may still run it:
    /// it waits in the queue until that is known to be over (see [`Self::attempt_gone`]).
    pub(super) fn requeue_stopping(&mut self, now: u64, id: TaskId, kind: EventKind, reason: String) {
        let old = self.tasks.get(&id).and_then(|t| t.lease.clone());
        self.transition(now, id, TaskState::Queued, None, kind, reason, None);
        if crate::planted::SKIP_STOP_CONFIRMATION.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let (Some(old), Some(t)) = (old, self.tasks.get_mut(&id)) {
            if t.state == TaskState::Queued {
                self.stopping_by_cluster.entry(old.cluster.clone()).or_default().insert(id);
                t.stopping = Some(old);
            }
        }
    }

    /// The ended attempt `attempt` of a queued task is over in `cluster`: it may be leased
    /// again. A no-op for any other attempt or cluster. True when it changed anything.
    pub(super) fn attempt_gone(&mut self, id: TaskId, attempt: u32, cluster: &str) -> bool {
        let Some(t) = self.tasks.get_mut(&id) else { return false };
        if t.attempt != attempt || t.stopping.as_ref().is_none_or(|s| s.cluster != cluster) {
            return false;
        }
        t.stopping = None;
        self.sched_feed.touch(id);
        if let Some(set) = self.stopping_by_cluster.get_mut(cluster) {
            set.remove(&id);
        }
        true
    }

    pub(super) fn push_task_event(
        &mut self,
        now: u64,
        id: TaskId,
        kind: EventKind,
        reason: String,
        exit_code: Option<i32>,
        cost_nano_usd: u64,
    ) {
        let Some(t) = self.tasks.get(&id) else { return };
        let (cluster, node) = t.placement();
        let event = TaskEvent {
            seq: 0,
            task: id,
            attempt: t.attempt,
            kind,
            state: t.state,
            cluster,
            node,
            reason,
            time_ms: now,
            exit_code,
            cost_nano_usd,
        };
        let key = t.task_set_key();
        self.push_event(&key, event);
    }

    pub(super) fn push_set_event(&mut self, now: u64, key: &TaskSetKey, kind: EventKind, reason: String) {
        if matches!(kind, EventKind::Paused | EventKind::Resumed) {
            self.sched_feed.reset();
        }
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
            cost_nano_usd: 0,
        };
        self.push_event(key, event);
    }

    pub(super) fn push_event(&mut self, key: &TaskSetKey, mut event: TaskEvent) {
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
