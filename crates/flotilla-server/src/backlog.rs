//! The leader's scheduling backlog, kept between cycles from the state's change feed.
//!
//! Building the scheduler's input from every queued task each cycle (a `SchedTask` clone
//! per task, under the state's read lock) cost about 145 ms at a million queued tasks,
//! before the scheduler even started. Instead, [`LeaderBacklog::refresh`] reads the ids the
//! state noted since the last cycle (`State::sched_feed`) and files or unfiles only those
//! tasks; it rebuilds from every queued task only when the feed says so (first use, a
//! replaced state, a paused or resumed task set, a reader far behind). Tasks waiting out a
//! retry backoff are kept aside by the time they become schedulable, since time moves
//! without any apply noting it.
//!
//! It mirrors the state, not leadership: it stays valid across leader changes, and a
//! replica that becomes leader again only catches up on what changed meanwhile.

use std::collections::{BTreeSet, HashMap};

use flotilla_model::{TaskId, TaskState};
use flotilla_sched::Backlog;
use flotilla_store::state::FeedCursor;
use flotilla_store::{State, TaskRecord};

use crate::convert::sched_task;

#[derive(Default)]
pub struct LeaderBacklog {
    pub backlog: Backlog,
    /// Queued tasks waiting out a backoff: (not before, id), and the time by id.
    waiting: BTreeSet<(u64, TaskId)>,
    waiting_until: HashMap<TaskId, u64>,
    cursor: Option<FeedCursor>,
    /// The avoid threshold the tasks were converted with: another one means a rebuild.
    avoid_after: Option<u32>,
}

/// Every queued task that may be scheduled at `now_ms`, converted: what each cycle built
/// before the backlog was kept (O(queued tasks) under the read lock). Kept so that the
/// `leader` benchmark compares both in one run.
pub fn all_schedulable(s: &State, now_ms: u64) -> Vec<flotilla_model::SchedTask> {
    let avoid_after = s.limits.avoid_cluster_after_failures;
    s.queued().filter(|t| s.is_schedulable(t, now_ms)).map(|t| sched_task(t, avoid_after)).collect()
}

/// Every task holding resources, converted for the scheduler (O(running tasks)).
pub fn running(s: &State) -> Vec<flotilla_sched::Running> {
    let avoid_after = s.limits.avoid_cluster_after_failures;
    s.active().filter_map(|t| t.lease.clone().map(|node| flotilla_sched::Running { task: sched_task(t, avoid_after), node })).collect()
}

/// What one refresh did (for logs and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refresh {
    pub rebuilt: bool,
    /// Ids read from the feed (or queued tasks read in a rebuild).
    pub read: usize,
}

impl LeaderBacklog {
    /// Brings the backlog up to date with `s` at `now_ms`.
    pub fn refresh(&mut self, s: &State, now_ms: u64) -> Refresh {
        let avoid_after = s.limits.avoid_cluster_after_failures;
        let feed = s.sched_feed();
        let changed: Option<Vec<TaskId>> = match (self.cursor, self.avoid_after == Some(avoid_after)) {
            (Some(c), true) => feed.since(&c).map(|ids| ids.collect()),
            _ => None,
        };
        let refresh = match changed {
            Some(ids) => {
                for id in &ids {
                    self.update(s, *id, now_ms, avoid_after);
                }
                Refresh { rebuilt: false, read: ids.len() }
            }
            None => {
                *self = LeaderBacklog::default();
                let mut read = 0;
                for t in s.queued() {
                    self.file(s, t, now_ms, avoid_after);
                    read += 1;
                }
                Refresh { rebuilt: true, read }
            }
        };
        while let Some(&(until, id)) = self.waiting.first() {
            if until > now_ms {
                break;
            }
            self.update(s, id, now_ms, avoid_after);
        }
        self.cursor = Some(feed.cursor());
        self.avoid_after = Some(avoid_after);
        refresh
    }

    /// Takes task `id` out, then files it again as the state has it now.
    fn update(&mut self, s: &State, id: TaskId, now_ms: u64, avoid_after: u32) {
        self.backlog.remove(id);
        if let Some(until) = self.waiting_until.remove(&id) {
            self.waiting.remove(&(until, id));
        }
        if let Some(t) = s.task(id) {
            self.file(s, t, now_ms, avoid_after);
        }
    }

    /// Files a task that is not filed yet: in the backlog when it may be scheduled now,
    /// aside when only its backoff keeps it, nowhere otherwise.
    fn file(&mut self, s: &State, t: &TaskRecord, now_ms: u64, avoid_after: u32) {
        if t.state != TaskState::Queued {
            return;
        }
        if s.is_schedulable(t, now_ms) {
            self.backlog.insert(sched_task(t, avoid_after));
        } else if t.not_before_ms > now_ms && s.is_schedulable(t, t.not_before_ms) {
            self.waiting.insert((t.not_before_ms, t.id));
            self.waiting_until.insert(t.id, t.not_before_ms);
        }
    }
}
