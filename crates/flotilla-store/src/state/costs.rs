//! What attempts cost, summed per task set and per queue when each attempt ends (the
//! arithmetic and units are in `crate::cost`). Applying reads only the entry's clock, so
//! every replica sums the same; the sums are part of the snapshot.

use crate::cost::{utc_day, QueueCost};

use super::records::TaskSetKey;
use super::State;

impl State {
    /// Adds an ended attempt's cost to its task set and its queue.
    pub(super) fn add_cost(&mut self, now: u64, key: &TaskSetKey, nano_usd: u64) {
        let Some(set) = self.task_sets.get_mut(key) else { return };
        set.cost_nano_usd = set.cost_nano_usd.saturating_add(nano_usd);
        let queue = set.queue.clone();
        self.queue_costs.entry(queue).or_default().add(now, nano_usd);
    }

    /// What a queue's ended attempts cost (zero for a queue that never ran anything).
    pub fn queue_cost(&self, queue: &str) -> QueueCost {
        self.queue_costs.get(queue).cloned().unwrap_or_default()
    }

    /// Every queue's cost, also of queues deleted since (their counters go on existing).
    pub fn queue_costs(&self) -> impl Iterator<Item = (&String, &QueueCost)> {
        self.queue_costs.iter()
    }

    /// What a queue's running attempts have cost so far at `now_ms`, read from its active
    /// tasks (O(active tasks in all clusters)).
    pub fn queue_running_cost_nano_usd(&self, queue: &str, now_ms: u64) -> u64 {
        self.active().filter(|t| t.spec.queue == queue).map(|t| t.running_cost_nano_usd(now_ms)).fold(0, u64::saturating_add)
    }

    /// What a queue spent on the UTC day of `now_ms`: attempts that ended that day, and what
    /// its running attempts have cost so far (an attempt counts on the day it ends).
    pub fn queue_spent_today_nano_usd(&self, queue: &str, now_ms: u64) -> u64 {
        self.queue_cost(queue).spent_on(utc_day(now_ms)).saturating_add(self.queue_running_cost_nano_usd(queue, now_ms))
    }
}
