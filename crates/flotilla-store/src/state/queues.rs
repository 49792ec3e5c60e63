//! Queue commands and resuming a paused task set.

use flotilla_model::{quote, Queue, TaskState};

use super::records::{state_index, task_set_key, EventKind};
use super::State;
use crate::command::{CommandResult, RejectKind};

impl State {
    pub(super) fn put_queue(&mut self, queue: &Queue, create: bool) -> CommandResult {
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
        if !(queue.budget_usd_per_day.is_finite() && (0.0..=flotilla_model::MAX_BUDGET_USD_PER_DAY).contains(&queue.budget_usd_per_day)) {
            return CommandResult::rejected(
                RejectKind::Invalid,
                format!("budget_usd_per_day: {} must be from 0 to {}", queue.budget_usd_per_day, flotilla_model::MAX_BUDGET_USD_PER_DAY),
            );
        }
        if let Err(rejected) = self.check_class_limits(queue) {
            return rejected;
        }
        self.queues.insert(queue.name.clone(), queue.clone());
        CommandResult::Ok
    }

    /// A queue's per-class limits are well formed and name classes that exist.
    fn check_class_limits(&self, queue: &Queue) -> Result<(), CommandResult> {
        let mut errors = Vec::new();
        flotilla_model::check_class_limits("priorityClassLimits", &queue.priority_class_limits, &mut errors);
        if let Some(e) = errors.first() {
            return Err(CommandResult::rejected(RejectKind::Invalid, e.to_string()));
        }
        for (i, l) in queue.priority_class_limits.iter().enumerate() {
            self.check_class_exists(&format!("priorityClassLimits[{i}].priorityClass"), &l.priority_class)?;
        }
        Ok(())
    }

    pub(super) fn delete_queue(&mut self, name: &str) -> CommandResult {
        if !self.queues.contains_key(name) {
            return CommandResult::rejected(RejectKind::NotFound, format!("queue {} does not exist", quote(name)));
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

    pub(super) fn resume(&mut self, now: u64, queue: &str, task_set: &str) -> CommandResult {
        let key = task_set_key(queue, task_set);
        match self.task_sets.get_mut(&key) {
            None => CommandResult::rejected(RejectKind::NotFound, format!("task set {}/{} does not exist", quote(queue), quote(task_set))),
            Some(s) if !s.paused => {
                CommandResult::rejected(RejectKind::Conflict, format!("task set {}/{} is not paused", quote(queue), quote(task_set)))
            }
            Some(s) => {
                s.paused = false;
                s.recent_failures_ms.clear();
                self.push_set_event(now, &key, EventKind::Resumed, "resumed by user".into());
                CommandResult::Ok
            }
        }
    }
}
