//! Queue limits per priority class (`Queue::priority_class_limits`).
//!
//! Each limit becomes a [`ClassCap`] of its queue: the most the queue's tasks of one class
//! may hold of one resource this cycle (a fraction of the pool is resolved once, against
//! the federation's total the fair shares use), and what they hold now, kept as the cycle
//! goes: running tasks at the start, minus preempted ones, plus leases. A unit is checked
//! before it is placed or preempts anything, with every member of a gang counted, so a
//! lease never takes a class over its cap; a preemption only lowers what a class holds.
//!
//! Queues without class limits have no caps and pay nothing. What a class holds only grows
//! until one of its tasks is preempted (a new generation), which is what lets the backlog
//! path park a group that hit its cap (the backlog files tasks of different classes apart).

use flotilla_model::{ClassLimit, LimitResource, Queue, SchedTask};

use crate::amount::Amount;
use crate::cycle::Cycle;

pub(crate) struct ClassCap<'a> {
    pub limit: &'a ClassLimit,
    /// The most the class may hold this cycle, in the limit's resource.
    pub max: u64,
    /// What the queue's tasks of the class hold, in the limit's resource.
    pub used: u64,
}

/// The caps of queue `q`, with fractions resolved against the pool `total`.
pub(crate) fn caps(q: &Queue, total: Amount) -> Vec<ClassCap<'_>> {
    q.priority_class_limits.iter().map(|limit| ClassCap { limit, max: limit.max_of(resource_of(limit.resource, total)), used: 0 }).collect()
}

fn resource_of(r: LimitResource, a: Amount) -> u64 {
    match r {
        LimitResource::Cpu => a.cpu_millis,
        LimitResource::Memory => a.memory_bytes,
        LimitResource::Gpu => a.gpu,
    }
}

/// Adds (`add`) or takes off what `task` holds from the caps of its class.
pub(crate) fn charge(caps: &mut [ClassCap<'_>], task: &SchedTask, amount: Amount, add: bool) {
    for cap in caps.iter_mut().filter(|c| c.limit.priority_class == task.priority_class) {
        let a = resource_of(cap.limit.resource, amount);
        cap.used = if add { cap.used.saturating_add(a) } else { cap.used.saturating_sub(a) };
    }
}

impl Cycle<'_> {
    /// The first class limit of queue `q` that leasing the queued tasks `members` would
    /// exceed, as a reason.
    pub(crate) fn class_limit_reached(&self, q: usize, members: &[u32]) -> Option<String> {
        let caps = &self.queues[q].class_caps;
        if caps.is_empty() {
            return None;
        }
        caps.iter().find_map(|cap| {
            let need = members
                .iter()
                .map(|&m| self.queued[m as usize])
                .filter(|t| t.priority_class == cap.limit.priority_class)
                .fold(0u64, |sum, t| sum.saturating_add(cap.limit.resource.of(&t.resources)));
            (need > 0 && cap.used.saturating_add(need) > cap.max).then(|| crate::reasons::class_limit(cap.limit, cap.max))
        })
    }
}

#[cfg(test)]
mod tests {
    use flotilla_model::{LimitMax, Queue};

    use super::*;

    #[test]
    fn caps_resolve_pool_fractions_against_the_total_and_charge_only_their_class() {
        let mut q = Queue::new("q", 1.0);
        q.priority_class_limits = vec![
            ClassLimit::parse("urgent:gpu=25%").unwrap(),
            ClassLimit::parse("urgent:cpu=4").unwrap(),
            ClassLimit { priority_class: "batch".into(), resource: LimitResource::Memory, max: LimitMax::PoolFraction(0.5) },
        ];
        let total = Amount { gpu: 10, cpu_millis: 100_000, memory_bytes: 1000, ..Amount::default() };
        let mut caps = caps(&q, total);
        assert_eq!(caps.iter().map(|c| c.max).collect::<Vec<_>>(), [2, 4000, 500]);
        let mut task = SchedTask {
            id: flotilla_model::TaskId(1),
            queue: "q".into(),
            priority: 500,
            preemptible: true,
            priority_class: "urgent".into(),
            submit_seq: 1,
            resources: flotilla_model::Resources::new(1000, 7, 1),
            gang: None,
            placement: Default::default(),
            avoid_nodes: vec![],
            avoid_clusters: vec![],
        };
        let amount = Amount::task(&task.resources);
        charge(&mut caps, &task, amount, true);
        charge(&mut caps, &task, amount, true);
        assert_eq!(caps.iter().map(|c| c.used).collect::<Vec<_>>(), [2, 2000, 0]);
        charge(&mut caps, &task, amount, false);
        task.priority_class = "batch".into();
        charge(&mut caps, &task, amount, true);
        assert_eq!(caps.iter().map(|c| c.used).collect::<Vec<_>>(), [1, 1000, 7]);
    }
}
