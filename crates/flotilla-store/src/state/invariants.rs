//! [`State::check_invariants`]: what must hold between any two applies. Run after every
//! apply in debug builds and by the fault simulator; O(tasks + events), so not in release
//! builds' apply path.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_model::{TaskId, TaskState};

use super::records::{state_index, EventKind};
use super::State;

impl State {
    /// Checks that the indexes agree with the records and that the records agree with each
    /// other. Returns the first broken invariant, naming the task, set or queue.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_ids()?;
        self.check_task_states()?;
        self.check_indexes()?;
        self.check_counts()?;
        self.check_task_sets()?;
        self.check_events()?;
        self.check_gangs()?;
        self.check_request_ids()?;
        self.check_priority_classes()
    }

    /// Every unfinished task's priority class exists (a class in use is never deleted).
    fn check_priority_classes(&self) -> Result<(), String> {
        match self.queued().chain(self.active()).find(|t| self.priority_class(&t.spec.priority_class).is_none()) {
            Some(t) => Err(format!("unfinished task {} has the deleted priority class {:?}", t.id, t.spec.priority_class)),
            None => Ok(()),
        }
    }

    /// Ids are the map keys and below `next_task_id` (a new submission never reuses one).
    fn check_ids(&self) -> Result<(), String> {
        for (id, t) in &self.tasks {
            if t.id != *id {
                return Err(format!("task stored under {id} has id {}", t.id));
            }
            if id.0 >= self.next_task_id {
                return Err(format!("task {id} is not below next_task_id {}", self.next_task_id));
            }
        }
        Ok(())
    }

    /// An active task holds a lease on an attempt it started; no other task holds a lease.
    fn check_task_states(&self) -> Result<(), String> {
        for t in self.tasks.values() {
            if t.state.is_active() != t.lease.is_some() {
                return Err(format!("task {} is {} but its lease is {:?}", t.id, t.state, t.lease));
            }
            if t.state.is_active() && t.attempt == 0 {
                return Err(format!("task {} is {} on attempt 0", t.id, t.state));
            }
            if let Some(dep) = t.blocked_on.iter().find(|d| self.tasks.get(d).is_some_and(|d| d.state == TaskState::Succeeded)) {
                return Err(format!("task {} is still blocked on {dep}, which succeeded", t.id));
            }
        }
        Ok(())
    }

    /// `queued` is exactly the Queued tasks and `active_by_cluster` exactly the active tasks
    /// by their lease's cluster: so no terminal task is in an index.
    fn check_indexes(&self) -> Result<(), String> {
        let queued: BTreeSet<TaskId> = self.tasks.values().filter(|t| t.state == TaskState::Queued).map(|t| t.id).collect();
        if queued != self.queued {
            let diff: Vec<_> = queued.symmetric_difference(&self.queued).take(5).collect();
            return Err(format!("the queued index disagrees with the records on tasks {diff:?}"));
        }
        let mut active: BTreeMap<&str, BTreeSet<TaskId>> = BTreeMap::new();
        for t in self.tasks.values() {
            if let (true, Some(l)) = (t.state.is_active(), &t.lease) {
                active.entry(l.cluster.as_str()).or_default().insert(t.id);
            }
        }
        // `transition` leaves a cluster's set in place when it empties; that is not a mismatch.
        let indexed: BTreeMap<&str, &BTreeSet<TaskId>> =
            self.active_by_cluster.iter().filter(|(_, s)| !s.is_empty()).map(|(c, s)| (c.as_str(), s)).collect();
        if indexed.len() != active.len() || active.iter().any(|(c, s)| indexed.get(c) != Some(&s)) {
            return Err(format!("the active-by-cluster index {indexed:?} disagrees with the records {active:?}"));
        }
        let mut stopping: BTreeMap<&str, BTreeSet<TaskId>> = BTreeMap::new();
        for t in self.tasks.values() {
            if let Some(s) = &t.stopping {
                if t.state != TaskState::Queued {
                    return Err(format!("task {} is {:?} but still waits for its attempt to stop", t.id, t.state));
                }
                stopping.entry(s.cluster.as_str()).or_default().insert(t.id);
            }
        }
        let indexed: BTreeMap<&str, &BTreeSet<TaskId>> =
            self.stopping_by_cluster.iter().filter(|(_, s)| !s.is_empty()).map(|(c, s)| (c.as_str(), s)).collect();
        if indexed.len() != stopping.len() || stopping.iter().any(|(c, s)| indexed.get(c) != Some(&s)) {
            return Err(format!("the stopping-by-cluster index {indexed:?} disagrees with the records {stopping:?}"));
        }
        Ok(())
    }

    /// The counts per queue and state are those of the records.
    fn check_counts(&self) -> Result<(), String> {
        let mut counts: BTreeMap<&str, [u64; 7]> = BTreeMap::new();
        for t in self.tasks.values() {
            counts.entry(t.spec.queue.as_str()).or_default()[state_index(t.state)] += 1;
        }
        for (queue, c) in &self.counts {
            let want = counts.remove(queue.as_str()).unwrap_or_default();
            if *c != want {
                return Err(format!("queue {queue} counts {c:?} but holds {want:?}"));
            }
        }
        match counts.into_iter().next() {
            Some((queue, c)) => Err(format!("queue {queue} holds tasks {c:?} but has no counts")),
            None => Ok(()),
        }
    }

    /// Every task set lists exactly its tasks, once each, and no set is empty.
    fn check_task_sets(&self) -> Result<(), String> {
        let mut members: BTreeMap<String, BTreeSet<TaskId>> = BTreeMap::new();
        for t in self.tasks.values() {
            members.entry(t.task_set_key()).or_default().insert(t.id);
        }
        for (key, set) in &self.task_sets {
            let listed: BTreeSet<TaskId> = set.tasks.iter().copied().collect();
            if listed.len() != set.tasks.len() {
                return Err(format!("task set {key} lists a task twice"));
            }
            let want = members.remove(key).unwrap_or_default();
            if listed != want || listed.is_empty() {
                return Err(format!("task set {key} lists {} tasks but {} tasks are in it", listed.len(), want.len()));
            }
        }
        match members.into_iter().next() {
            Some((key, _)) => Err(format!("tasks of task set {key} have no task-set record")),
            None => Ok(()),
        }
    }

    /// Event logs are dense and in order, in time too; an event names only attempts its task has made,
    /// and a task's events never go back to an earlier attempt (invariant 2 and 5).
    fn check_events(&self) -> Result<(), String> {
        for (key, set) in &self.task_sets {
            if let Some(last) = set.events.back() {
                if last.seq + 1 != set.next_seq || last.seq + 1 - set.first_seq() != set.events.len() as u64 {
                    return Err(format!("task set {key}: event sequence numbers are not dense up to next_seq {}", set.next_seq));
                }
            }
            if let Some(pair) = set.events.iter().zip(set.events.iter().skip(1)).find(|(a, b)| b.time_ms < a.time_ms) {
                return Err(format!(
                    "task set {key}: event {} at {} ms is before event {} at {} ms",
                    pair.1.seq, pair.1.time_ms, pair.0.seq, pair.0.time_ms
                ));
            }
            let mut last_attempt: BTreeMap<TaskId, u32> = BTreeMap::new();
            for e in set.events.iter().filter(|e| e.task != TaskId(0)) {
                // A compacted task's remaining events are history only.
                let Some(t) = self.tasks.get(&e.task) else { continue };
                if e.attempt > t.attempt {
                    return Err(format!("event {} of task {} names attempt {} beyond the task's {}", e.seq, e.task, e.attempt, t.attempt));
                }
                if e.kind == EventKind::Leased && e.attempt == 0 {
                    return Err(format!("event {} leases task {} on attempt 0", e.seq, e.task));
                }
                let previous = last_attempt.insert(e.task, e.attempt).unwrap_or(0);
                if e.attempt < previous {
                    return Err(format!("event {} of task {} goes back from attempt {previous} to {}", e.seq, e.task, e.attempt));
                }
            }
        }
        Ok(())
    }

    /// Invariant 4 as the state can see it: no gang has members holding resources while
    /// others wait in the queue, and a gang's active members are in one cluster.
    fn check_gangs(&self) -> Result<(), String> {
        let mut gangs: BTreeMap<TaskId, (usize, usize, BTreeSet<&str>)> = BTreeMap::new();
        for t in self.tasks.values() {
            let Some(g) = &t.spec.gang else { continue };
            let (active, queued, clusters) = gangs.entry(g.id).or_default();
            if let (true, Some(l)) = (t.state.is_active(), &t.lease) {
                *active += 1;
                clusters.insert(l.cluster.as_str());
            }
            if t.state == TaskState::Queued {
                *queued += 1;
            }
        }
        for (gang, (active, queued, clusters)) in gangs {
            if active > 0 && queued > 0 {
                return Err(format!("gang {gang} is partly leased: {active} members active, {queued} queued"));
            }
            if clusters.len() > 1 {
                return Err(format!("gang {gang} runs in several clusters: {clusters:?}"));
            }
        }
        Ok(())
    }

    /// The dedupe table and its order agree, within the bound.
    fn check_request_ids(&self) -> Result<(), String> {
        let ordered: BTreeSet<&String> = self.request_order.iter().collect();
        if ordered.len() != self.request_order.len() || ordered.len() != self.request_ids.len() {
            return Err(format!(
                "request ids: {} remembered, {} in order ({} distinct)",
                self.request_ids.len(),
                self.request_order.len(),
                ordered.len()
            ));
        }
        if let Some(id) = ordered.iter().find(|id| !self.request_ids.contains_key(id.as_str())) {
            return Err(format!("request id {id:?} is in the order but not remembered"));
        }
        if self.request_order.len() > self.limits.max_request_ids {
            return Err(format!("{} request ids remembered, above the bound {}", self.request_order.len(), self.limits.max_request_ids));
        }
        Ok(())
    }
}
