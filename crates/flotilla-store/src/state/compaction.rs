//! Compaction: forgetting finished tasks so the state stays bounded.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_model::TaskId;

use super::records::{state_index, TaskSetKey};
use super::State;
use crate::command::CommandResult;

impl State {
    /// Forgets finished tasks updated before `finished_before_ms`, and the oldest finished
    /// ones beyond `max_tasks`. Linear in the tasks and the task sets' lists: removals are
    /// grouped per task set so each list is rewritten once, not once per removed task.
    pub(super) fn compact(&mut self, finished_before_ms: u64, max_tasks: usize) -> CommandResult {
        let mut finished: Vec<(u64, TaskId)> =
            self.tasks.values().filter(|t| t.state.is_terminal()).map(|t| (t.updated_ms, t.id)).collect();
        finished.sort_unstable();
        let over = self.tasks.len().saturating_sub(max_tasks);
        let mut removed_by_set: BTreeMap<TaskSetKey, BTreeSet<TaskId>> = BTreeMap::new();
        for (i, (updated, id)) in finished.into_iter().enumerate() {
            if updated >= finished_before_ms && i >= over {
                break;
            }
            if let Some(t) = self.tasks.remove(&id) {
                self.counts.entry(t.spec.queue.clone()).or_default()[state_index(t.state)] -= 1;
                removed_by_set.entry(t.task_set_key()).or_default().insert(id);
            }
        }
        let mut removed = 0u64;
        for (key, ids) in removed_by_set {
            removed += ids.len() as u64;
            if let Some(set) = self.task_sets.get_mut(&key) {
                set.tasks.retain(|x| !ids.contains(x));
                if set.tasks.is_empty() {
                    self.task_sets.remove(&key);
                }
            }
        }
        CommandResult::Count(removed)
    }
}
