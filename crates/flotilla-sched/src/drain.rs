//! Draining clusters: which running tasks a cycle moves off them.
//!
//! A drain moves the preemptible tasks of a cluster elsewhere over several cycles. Each cycle
//! moves at most what each queue's disruption budget leaves after the cycle's own
//! preemptions, and no more than the cycle's eviction bound; a running gang moves whole and
//! counts whole. Non-preemptible tasks are never chosen: the drain waits for them to finish.
//! Tasks go in (cluster, submit order), so the oldest work moves first and a cycle's choice
//! is deterministic.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use flotilla_model::TaskId;

use crate::{Input, Preemption};

/// The preemptions that move tasks off `draining` clusters this cycle, given the cycle's
/// own preemptions `already` (which count against the same budgets).
pub fn drain_preemptions(input: &Input, draining: &BTreeSet<String>, already: &[Preemption]) -> Vec<Preemption> {
    if draining.is_empty() {
        return Vec::new();
    }
    // Running tasks per gang, to count a gang whole.
    let mut gang_size: HashMap<TaskId, u32> = HashMap::new();
    for r in &input.running {
        if let Some(g) = &r.task.gang {
            *gang_size.entry(g.id).or_default() += 1;
        }
    }
    let unit = |r: &crate::Running| r.task.gang.as_ref().map_or((r.task.id, 1), |g| (g.id, gang_size[&g.id]));
    let by_id: HashMap<TaskId, &crate::Running> = input.running.iter().map(|r| (r.task.id, r)).collect();

    // What the cycle already evicted, per queue, counted once per unit.
    let mut moved_units: BTreeSet<TaskId> = BTreeSet::new();
    let mut evicted: BTreeMap<&str, u64> = BTreeMap::new();
    let mut total = 0u64;
    for p in already {
        let Some(r) = by_id.get(&p.task) else { continue };
        let (id, size) = unit(r);
        if moved_units.insert(id) {
            *evicted.entry(r.task.queue.as_str()).or_default() += u64::from(size);
            total += u64::from(size);
        }
    }
    let budget: HashMap<&str, u64> = input.queues.iter().map(|q| (q.name.as_str(), u64::from(q.disruption_budget))).collect();
    let max_total = input.config.max_evictions_per_cycle as u64;

    let mut candidates: Vec<&crate::Running> =
        input.running.iter().filter(|r| r.task.preemptible && draining.contains(&r.node.cluster)).collect();
    candidates.sort_by(|a, b| (&a.node.cluster, a.task.submit_seq, a.task.id).cmp(&(&b.node.cluster, b.task.submit_seq, b.task.id)));
    let mut out = Vec::new();
    for r in candidates {
        let (id, size) = unit(r);
        if moved_units.contains(&id) {
            continue;
        }
        let queue = r.task.queue.as_str();
        let used = evicted.get(queue).copied().unwrap_or(0);
        if used + u64::from(size) > budget.get(queue).copied().unwrap_or(0) || total + u64::from(size) > max_total {
            continue;
        }
        moved_units.insert(id);
        *evicted.entry(queue).or_default() += u64::from(size);
        total += u64::from(size);
        // One decision per gang: the store ends the whole gang with it.
        out.push(Preemption { task: r.task.id, reason: format!("cluster {} is draining; moving elsewhere", r.node.cluster) });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Running;
    use flotilla_model::{GangRef, NodeRef, Queue, Resources, SchedTask};

    fn running(id: u64, queue: &str, cluster: &str, preemptible: bool, gang: Option<(u64, u32)>) -> Running {
        Running {
            task: SchedTask {
                id: TaskId(id),
                queue: queue.into(),
                priority: 100,
                preemptible,
                priority_class: String::new(),
                submit_seq: id,
                resources: Resources::new(1000, 1 << 30, 0),
                gang: gang.map(|(g, size)| GangRef {
                    id: TaskId(g),
                    size,
                    rank: (id - g) as u32,
                    topology: flotilla_model::TopologyLevel::Cluster,
                    same_value_of: None,
                    roles: Vec::new(),
                }),
                placement: Default::default(),
                avoid_nodes: vec![],
                avoid_clusters: vec![],
            },
            node: NodeRef { cluster: cluster.into(), node: "n".into() },
        }
    }

    fn queue(name: &str, budget: u32) -> Queue {
        Queue { disruption_budget: budget, ..Queue::new(name, 1.0) }
    }

    #[test]
    fn a_drain_moves_only_preemptible_tasks_of_draining_clusters_within_each_queue_budget() {
        let mut run: Vec<Running> = (1..=6).map(|i| running(i, "q", "a", true, None)).collect();
        run.push(running(7, "q", "a", false, None));
        run.push(running(8, "q", "b", true, None));
        run.extend((9..=11).map(|i| running(i, "r", "a", true, None)));
        let input = Input { queues: vec![queue("q", 2), queue("r", 5)], running: run, ..Input::default() };
        let draining: BTreeSet<String> = ["a".to_string()].into();
        let picked: Vec<u64> = drain_preemptions(&input, &draining, &[]).iter().map(|p| p.task.0).collect();
        assert_eq!(picked, vec![1, 2, 9, 10, 11], "two of q (its budget), all three of r, never 7 (critical) or 8 (cluster b)");
        // The cycle's own preemptions use the same budget.
        let already = [Preemption { task: TaskId(8), reason: "reclaim".into() }];
        let picked: Vec<u64> = drain_preemptions(&input, &draining, &already).iter().map(|p| p.task.0).collect();
        assert_eq!(picked, vec![1, 9, 10, 11]);
        assert!(drain_preemptions(&input, &BTreeSet::new(), &[]).is_empty());
    }

    #[test]
    fn a_gang_moves_whole_and_counts_whole_against_the_budget_and_the_cycle_bound() {
        let run: Vec<Running> =
            (1..=3).map(|i| running(i, "q", "a", true, Some((1, 3)))).chain([running(4, "q", "a", true, None)]).collect();
        let mut input = Input { queues: vec![queue("q", 2)], running: run, ..Input::default() };
        let draining: BTreeSet<String> = ["a".to_string()].into();
        let picked: Vec<u64> = drain_preemptions(&input, &draining, &[]).iter().map(|p| p.task.0).collect();
        assert_eq!(picked, vec![4], "the 3-member gang does not fit a budget of 2");
        input.queues = vec![queue("q", 10)];
        let picked: Vec<u64> = drain_preemptions(&input, &draining, &[]).iter().map(|p| p.task.0).collect();
        assert_eq!(picked, vec![1, 4], "one decision for the gang");
        input.config.max_evictions_per_cycle = 3;
        let picked: Vec<u64> = drain_preemptions(&input, &draining, &[]).iter().map(|p| p.task.0).collect();
        assert_eq!(picked, vec![1], "the cycle bound counts the gang's 3 members");
    }
}
