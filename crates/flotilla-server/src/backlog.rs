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
//! The tasks holding resources are kept the same way, converted: copying every running task
//! into each cycle's input (a `SchedTask` per task, under the read lock) took most of the
//! leader's CPU at 150,000 running tasks and 5,000 starts per second. Each cycle borrows the
//! kept list ([`LeaderBacklog::lend_running`]) and gives it back.
//!
//! It mirrors the state, not leadership: it stays valid across leader changes, and a
//! replica that becomes leader again only catches up on what changed meanwhile.

use std::collections::{BTreeSet, HashMap};

use flotilla_model::{TaskId, TaskState};
use flotilla_sched::{Backlog, Running};
use flotilla_store::state::FeedCursor;
use flotilla_store::{State, TaskRecord};

use crate::convert::sched_task;

#[derive(Default)]
pub struct LeaderBacklog {
    pub backlog: Backlog,
    /// Queued tasks waiting out a backoff, or filed with a cluster avoided until a time:
    /// (when to file again, id), and the time by id.
    waiting: BTreeSet<(u64, TaskId)>,
    waiting_until: HashMap<TaskId, u64>,
    cursor: Option<FeedCursor>,
    /// The avoid threshold the tasks were converted with: another one means a rebuild.
    avoid_after: Option<u32>,
    /// Every task holding resources, converted, in no particular order, and where each is.
    running: Vec<Running>,
    running_at: HashMap<TaskId, usize>,
    /// The running list is lent to a cycle and not given back yet.
    lent: bool,
}

/// Every queued task that may be scheduled at `now_ms`, converted: what each cycle built
/// before the backlog was kept (O(queued tasks) under the read lock). Kept so that the
/// `leader` benchmark compares both in one run.
pub fn all_schedulable(s: &State, now_ms: u64) -> Vec<flotilla_model::SchedTask> {
    let avoid_after = s.limits.avoid_cluster_after_failures;
    s.queued().filter(|t| s.is_schedulable(t, now_ms)).map(|t| sched_task(s, t, avoid_after, now_ms)).collect()
}

/// Every task holding resources, converted for the scheduler (O(running tasks)): what each
/// cycle built before the leader kept the list ([`LeaderBacklog::lend_running`]). Kept for
/// the `leader` benchmark and as what the kept list is checked against.
pub fn running(s: &State) -> Vec<Running> {
    let avoid_after = s.limits.avoid_cluster_after_failures;
    s.active().filter_map(|t| converted_running(s, t, avoid_after)).collect()
}

/// A task holding resources, as the scheduler sees it; `None` for any other task.
fn converted_running(s: &State, t: &TaskRecord, avoid_after: u32) -> Option<Running> {
    // Running tasks are not placed again: clusters avoided for a while do not matter here.
    t.lease.clone().filter(|_| t.state.is_active()).map(|node| Running { task: sched_task(s, t, avoid_after, 0), node })
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
        // A list lent and never given back (a cycle that failed half way) is rebuilt.
        let changed = changed.filter(|_| !self.lent);
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
                for t in s.active() {
                    self.file_running(s, t, avoid_after);
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
        if let Some(at) = self.running_at.remove(&id) {
            self.running.swap_remove(at);
            if let Some(moved) = self.running.get(at) {
                self.running_at.insert(moved.task.id, at);
            }
        }
        if let Some(t) = s.task(id) {
            self.file(s, t, now_ms, avoid_after);
            self.file_running(s, t, avoid_after);
        }
    }

    /// Adds a task to the running list when it holds resources.
    fn file_running(&mut self, s: &State, t: &TaskRecord, avoid_after: u32) {
        if let Some(r) = converted_running(s, t, avoid_after) {
            self.running_at.insert(t.id, self.running.len());
            self.running.push(r);
        }
    }

    /// Every task holding resources, converted, as of the last refresh, for one cycle's
    /// input; give it back with [`LeaderBacklog::give_back_running`] (a list never given
    /// back is rebuilt at the next refresh).
    pub fn lend_running(&mut self) -> Vec<Running> {
        self.lent = true;
        std::mem::take(&mut self.running)
    }

    /// Takes back what [`LeaderBacklog::lend_running`] lent, unchanged.
    pub fn give_back_running(&mut self, running: Vec<Running>) {
        debug_assert!(self.lent && self.running.is_empty(), "nothing lent to give back");
        debug_assert_eq!(running.len(), self.running_at.len(), "a different list given back");
        self.running = running;
        self.lent = false;
    }

    /// Files a task that is not filed yet: in the backlog when it may be scheduled now,
    /// aside when only its backoff keeps it, nowhere otherwise.
    fn file(&mut self, s: &State, t: &TaskRecord, now_ms: u64, avoid_after: u32) {
        if t.state != TaskState::Queued {
            return;
        }
        if s.is_schedulable(t, now_ms) {
            self.backlog.insert(sched_task(s, t, avoid_after, now_ms));
            // A cluster avoided for a while (an `Unschedulable` attempt) is allowed again
            // later: the task is filed again then, like one whose backoff ends.
            if let Some(until) = t.avoid_until_ms.values().copied().filter(|u| *u > now_ms).min() {
                self.waiting.insert((until, t.id));
                self.waiting_until.insert(t.id, until);
            }
        } else if t.not_before_ms > now_ms && s.is_schedulable(t, t.not_before_ms) {
            self.waiting.insert((t.not_before_ms, t.id));
            self.waiting_until.insert(t.id, t.not_before_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_model::{expand, AttemptStatus, FailureKind, NodeRef, Queue, RetryTemplate, SubmitLimits, TaskTemplate};
    use flotilla_store::{AttemptEvent, CancelTarget, Command, LeaseDecision, Limits, Request, ScheduleDecisions};

    use super::*;

    fn apply(s: &mut State, now_ms: u64, c: Command) {
        s.apply(&Request { now_ms, commands: vec![c] });
    }

    fn template(name: &str, after: &[&str]) -> TaskTemplate {
        TaskTemplate {
            name: name.into(),
            image: "busybox".into(),
            resources: [("cpu".to_string(), "1".to_string())].into(),
            after: after.iter().map(|a| a.to_string()).collect(),
            retry: Some(RetryTemplate { max_attempts: Some(5), backoff: Some("10s".into()), ..Default::default() }),
            ..Default::default()
        }
    }

    /// The backlog, refreshed at `now_ms`, holds exactly the tasks the state says may be
    /// scheduled then.
    fn assert_mirrors(b: &mut LeaderBacklog, s: &State, now_ms: u64) -> Refresh {
        let refresh = b.refresh(s, now_ms);
        let expected: Vec<TaskId> = s.queued().filter(|t| s.is_schedulable(t, now_ms)).map(|t| t.id).collect();
        assert_eq!(b.backlog.len(), expected.len(), "at {now_ms} ms the backlog holds {} tasks, the state {expected:?}", b.backlog.len());
        assert!(expected.iter().all(|id| b.backlog.contains(*id)), "at {now_ms} ms some of {expected:?} are missing");
        // The kept running list is what converting every active task gives, lent whole.
        let key = |r: &Running| (r.task.id, r.node.cluster.clone(), r.node.node.clone());
        let lent = b.lend_running();
        let (mut kept, mut want): (Vec<_>, Vec<_>) = (lent.iter().map(key).collect(), running(s).iter().map(key).collect());
        kept.sort();
        want.sort();
        assert_eq!(kept, want, "at {now_ms} ms the running list differs from the state's active tasks");
        b.give_back_running(lent);
        refresh
    }

    #[test]
    fn the_backlog_follows_submits_leases_backoffs_dependencies_pauses_and_cancels() {
        let mut s = State::with_limits(Limits { breaker_failures: 3, ..Limits::default() });
        apply(&mut s, 0, Command::PutQueue { queue: Queue::new("q", 1.0), create: true });
        apply(&mut s, 0, Command::ClusterSeen { cluster: "a".into(), term: None });
        let mut b = LeaderBacklog::default();
        assert!(assert_mirrors(&mut b, &s, 0).rebuilt, "the first refresh files every queued task");

        let templates = [template("first", &[]), template("second", &["first"]), template("third", &[])];
        let specs = expand("q", "s", &templates, &SubmitLimits::default()).expect("valid templates");
        apply(&mut s, 1, Command::Submit { client_request_id: "r".into(), queue: "q".into(), task_set: "s".into(), specs, body_digest: 0 });
        let refresh = assert_mirrors(&mut b, &s, 1);
        assert!(!refresh.rebuilt, "a submit is read from the feed");
        let ids: Vec<TaskId> = s.tasks().map(|t| t.id).collect();
        let (first, third) = (ids[0], ids[2]);

        let lease = |task: TaskId, attempt: u32| {
            Command::Schedule(ScheduleDecisions {
                leases: vec![LeaseDecision {
                    task,
                    attempt,
                    node: NodeRef { cluster: "a".into(), node: "n".into() },
                    cost: Default::default(),
                }],
                ..Default::default()
            })
        };
        let report = |task: TaskId, attempt: u32, status: AttemptStatus| Command::ReportEvents {
            cluster: "a".into(),
            events: vec![AttemptEvent { task, attempt, status, node: "n".into(), time_ms: 0 }],
        };
        apply(&mut s, 2, lease(first, 1));
        assert_mirrors(&mut b, &s, 2);
        assert_eq!(b.running.iter().map(|r| r.task.id).collect::<Vec<_>>(), [first], "a lease files the task as running");
        // A list lent and never given back (a cycle failed half way) is rebuilt, not trusted.
        let lost = b.lend_running();
        drop(lost);
        assert!(assert_mirrors(&mut b, &s, 2).rebuilt, "a list not given back makes the next refresh rebuild");
        // A failure requeues `third` with a 10 s backoff: aside until then, back after.
        apply(&mut s, 3, lease(third, 1));
        let failed = AttemptStatus::Failed { kind: FailureKind::Error, exit_code: Some(1), message: String::new() };
        apply(&mut s, 4, report(third, 1, failed.clone()));
        assert_mirrors(&mut b, &s, 5);
        assert!(!b.backlog.contains(third), "a task in its backoff is not scheduled");
        assert_mirrors(&mut b, &s, 20_000);
        assert!(b.backlog.contains(third), "the backoff is over");
        // `second` waits for `first`, then becomes schedulable without a transition of its own.
        apply(&mut s, 20_001, report(first, 1, AttemptStatus::Succeeded));
        assert!(!assert_mirrors(&mut b, &s, 20_002).rebuilt);
        // Two more failures of `third` pause the task set: the next refresh rebuilds.
        for attempt in 2..=3 {
            apply(&mut s, 30_000 * u64::from(attempt), lease(third, attempt));
            apply(&mut s, 30_000 * u64::from(attempt) + 1, report(third, attempt, failed.clone()));
        }
        assert!(s.task_set("q", "s").is_some_and(|set| set.paused));
        assert!(assert_mirrors(&mut b, &s, 200_000).rebuilt, "a pause makes readers rebuild");
        assert!(b.backlog.is_empty());
        apply(&mut s, 200_001, Command::Resume { queue: "q".into(), task_set: "s".into() });
        assert!(assert_mirrors(&mut b, &s, 200_002).rebuilt);
        apply(&mut s, 200_003, Command::Cancel { target: CancelTarget::Tasks(ids.clone()), reason: "done".into() });
        assert_mirrors(&mut b, &s, 200_004);
        assert!(b.backlog.is_empty());
        // A state replaced wholesale (a snapshot installed) starts another feed: rebuild.
        let restored: State = serde_json::from_str(&serde_json::to_string(&s).expect("state serializes")).expect("and reads back");
        assert!(assert_mirrors(&mut b, &restored, 200_005).rebuilt);
    }
}
