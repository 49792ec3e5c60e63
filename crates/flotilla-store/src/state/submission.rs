//! Submission: new tasks, their dependencies and gangs, and request-id deduplication.

use std::collections::{BTreeMap, HashMap};

use flotilla_model::{quote, TaskId, TaskSpec, TaskState};
use serde::{Deserialize, Serialize};

use super::records::{state_index, EventKind, TaskRecord, TaskSetRecord};
use super::State;
use crate::command::{CommandResult, RejectKind};

/// What identifies a submission for deduplicating retries: the caller's request id and a
/// digest of the body it was sent with.
#[derive(Clone, Copy, Debug)]
pub(super) struct RequestKey<'a> {
    pub id: &'a str,
    /// 0: unknown, matches any body.
    pub body_digest: u64,
}

impl State {
    pub(super) fn submit(&mut self, now: u64, request: RequestKey<'_>, queue: &str, task_set: &str, specs: &[TaskSpec]) -> CommandResult {
        if let Some(before) = self.submitted_before(request.id) {
            if before.digest != 0 && request.body_digest != 0 && before.digest != request.body_digest {
                // The first submission stands; the caller must learn this one was not taken.
                return CommandResult::rejected(
                    RejectKind::AlreadyExists,
                    format!(
                        "clientRequestId: client_request_id {} was used for a different submission (tasks {}..={}); \
                         use a new id for a new submission",
                        quote(request.id),
                        before.first,
                        TaskId(before.first.0 + before.count.saturating_sub(1))
                    ),
                );
            }
            return CommandResult::Submitted { task_ids: before.ids() };
        }
        if !self.queues.contains_key(queue) {
            return CommandResult::rejected(RejectKind::NotFound, format!("queue: {queue:?} does not exist"));
        }
        if specs.is_empty() {
            return CommandResult::rejected(RejectKind::Invalid, "tasks: at least one task is required");
        }
        if let Err(refused) = self.check_submitted_classes(specs) {
            return refused;
        }
        let first = self.next_task_id.max(1);
        let ids: Vec<TaskId> = (0..specs.len() as u64).map(|i| TaskId(first + i)).collect();
        self.next_task_id = first + specs.len() as u64;

        // `after` names refer to tasks of this submission.
        let mut by_name: HashMap<&str, Vec<TaskId>> = HashMap::new();
        for (spec, id) in specs.iter().zip(&ids) {
            by_name.entry(spec.name.as_str()).or_default().push(*id);
        }
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
            self.insert_queued(now, new_record(now, id, spec, blocked_on));
        }
        // Only now: `after` may name a task defined later in the file, whose record did not
        // exist while the earlier task was inserted.
        for id in &ids {
            for dep in self.tasks[id].blocked_on.clone() {
                if let Some(d) = self.tasks.get_mut(&dep) {
                    d.dependents.push(*id);
                }
            }
        }
        self.remember_request(request, &ids);
        CommandResult::Submitted { task_ids: ids }
    }

    /// What a retried submission got the first time, if its request id is remembered.
    fn submitted_before(&self, request_id: &str) -> Option<SubmittedIds> {
        if request_id.is_empty() {
            return None;
        }
        self.request_ids.get(request_id).copied()
    }

    /// Remembers a submission's ids and body digest for retries, forgetting the oldest
    /// beyond the bound.
    fn remember_request(&mut self, request: RequestKey<'_>, ids: &[TaskId]) {
        let request_id = request.id;
        if request_id.is_empty() {
            return;
        }
        // `submit` allocates one contiguous run of ids; anything else is a bug here.
        let mut submitted = SubmittedIds::of(ids).expect("a submission's task ids are contiguous");
        submitted.digest = request.body_digest;
        self.request_ids.insert(request_id.to_string(), submitted);
        self.request_order.push_back(request_id.to_string());
        while self.request_order.len() > self.limits.max_request_ids {
            if let Some(old) = self.request_order.pop_front() {
                self.request_ids.remove(&old);
            }
        }
    }

    /// Adds a new queued task to the records, its task set and the indexes.
    fn insert_queued(&mut self, now: u64, record: TaskRecord) {
        let (id, queue, task_set) = (record.id, record.spec.queue.clone(), record.spec.task_set.clone());
        let key = record.task_set_key();
        self.tasks.insert(id, record);
        self.queued.insert(id);
        self.sched_feed.touch(id);
        self.counts.entry(queue.clone()).or_default()[state_index(TaskState::Queued)] += 1;
        let set = self.task_sets.entry(key).or_insert_with(|| TaskSetRecord { queue, task_set, next_seq: 1, ..Default::default() });
        set.tasks.push(id);
        self.push_task_event(now, id, EventKind::Submitted, String::new(), None, 0);
    }
}

fn new_record(now: u64, id: TaskId, spec: TaskSpec, blocked_on: Vec<TaskId>) -> TaskRecord {
    let reason = if blocked_on.is_empty() { String::new() } else { format!("waiting for {} to succeed", spec.after.join(", ")) };
    TaskRecord {
        id,
        first_memory_limit_bytes: spec.limits.memory_bytes.max(spec.resources.memory_bytes),
        spec,
        state: TaskState::Queued,
        attempt: 0,
        lease: None,
        stopping: None,
        leased_ms: 0,
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
        avoid_until_ms: BTreeMap::new(),
        lease_cost: Default::default(),
        running_since_ms: None,
        cost_nano_usd: 0,
    }
}

/// The ids one submission got, remembered for deduplicating retries. They are contiguous,
/// so they are stored as the first and a count: a few bytes per remembered submission
/// whatever its size, where a list cost about 8 bytes per task. Beside them, the digest of
/// the body they were submitted with (0: unknown, remembered before digests were kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SubmittedIdsEncoding")]
pub(super) struct SubmittedIds {
    first: TaskId,
    count: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    digest: u64,
}

fn is_zero(d: &u64) -> bool {
    *d == 0
}

impl SubmittedIds {
    /// `None` unless `ids` are consecutive.
    fn of(ids: &[TaskId]) -> Option<SubmittedIds> {
        let first = ids.first().copied().unwrap_or(TaskId(0));
        let contiguous = ids.iter().enumerate().all(|(i, id)| first.0.checked_add(i as u64) == Some(id.0));
        contiguous.then_some(SubmittedIds { first, count: ids.len() as u64, digest: 0 })
    }

    fn ids(&self) -> Vec<TaskId> {
        (0..self.count).map(|i| TaskId(self.first.0 + i)).collect()
    }
}

/// What snapshots hold: the range, or (written before ranges) the whole list.
#[derive(Deserialize)]
#[serde(untagged)]
enum SubmittedIdsEncoding {
    Range {
        first: TaskId,
        count: u64,
        #[serde(default)]
        digest: u64,
    },
    List(Vec<TaskId>),
}

impl TryFrom<SubmittedIdsEncoding> for SubmittedIds {
    type Error = String;

    fn try_from(e: SubmittedIdsEncoding) -> Result<SubmittedIds, String> {
        match e {
            SubmittedIdsEncoding::Range { first, count, digest } if first.0.checked_add(count).is_some() => {
                Ok(SubmittedIds { first, count, digest })
            }
            SubmittedIdsEncoding::Range { first, count, .. } => Err(format!("request ids: {count} ids from {first} overflow")),
            SubmittedIdsEncoding::List(ids) => {
                SubmittedIds::of(&ids).ok_or_else(|| format!("request ids: a remembered submission's ids {ids:?} are not contiguous"))
            }
        }
    }
}
