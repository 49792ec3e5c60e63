//! Compaction: forgetting finished tasks so the state stays bounded.

use flotilla_model::TaskId;

use super::records::state_index;
use super::State;
use crate::command::CommandResult;

impl State {
    pub(super) fn compact(&mut self, finished_before_ms: u64, max_tasks: usize) -> CommandResult {
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
}
