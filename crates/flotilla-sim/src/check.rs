//! The checker: judges one run's recorded history against Flotilla's invariants.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{Hash, Hasher};

use flotilla_executor::sim::RunRecord;
use flotilla_model::{Node, TaskId};
use flotilla_store::State;

/// One simulated cluster's own record of the pods it ran.
pub struct ClusterHistory {
    pub cluster: String,
    pub nodes: Vec<Node>,
    pub runs: Vec<RunRecord>,
}

/// A broken invariant, with what shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

pub struct Report {
    pub violations: Vec<Violation>,
    pub digest: u64,
    pub tasks: usize,
    /// Attempts ended by preemption (a sign the run exercised it).
    pub preemptions: usize,
}

/// Most violations reported per invariant (one is enough to fail; a few help to debug).
const MAX_PER_INVARIANT: usize = 5;

struct Found(Vec<Violation>);

impl Found {
    fn add(&mut self, invariant: &'static str, detail: String) {
        if self.0.iter().filter(|v| v.invariant == invariant).count() < MAX_PER_INVARIANT {
            self.0.push(Violation { invariant, detail });
        }
    }
}

/// `acked`: request id → (task set, task ids) the client was told; `states`: each live
/// replica's final state; `now_unix_ms`: the end of the run (pods still running end there).
pub fn check(
    acked: &BTreeMap<String, (String, Vec<u64>)>,
    states: &[(u64, State)],
    histories: &[ClusterHistory],
    now_unix_ms: u64,
) -> Report {
    let mut found = Found(Vec::new());
    let Some((_, state)) = states.first() else {
        found.add("replicas", "no replica was running at the end".into());
        return Report { violations: found.0, digest: 0, tasks: 0, preemptions: 0 };
    };

    // Every replica: the same state, and one that is consistent in itself.
    for (id, s) in states {
        if let Err(e) = s.check_invariants() {
            found.add("state invariants", format!("replica {id}: {e}"));
        }
        if s != state {
            found.add("replicas agree", format!("replica {id}'s state differs from replica {}'s", states[0].0));
        }
    }

    // No acknowledged submission lost or duplicated.
    let mut acked_ids = BTreeSet::new();
    for (request, (task_set, ids)) in acked {
        for id in ids {
            if !acked_ids.insert(*id) {
                found.add("submissions", format!("task {id} was acknowledged to two submissions (the second is {request})"));
            }
            match state.task(TaskId(*id)) {
                None => found.add("submissions", format!("task {id} of acknowledged submission {request} is missing")),
                Some(t) if t.spec.task_set != *task_set => {
                    found.add("submissions", format!("task {id} of {request} is in task set {:?}, not {task_set:?}", t.spec.task_set))
                }
                Some(_) => {}
            }
        }
    }
    let mut per_set: BTreeMap<&str, usize> = BTreeMap::new();
    for t in state.tasks() {
        *per_set.entry(t.spec.task_set.as_str()).or_default() += 1;
    }
    for (request, (task_set, ids)) in acked {
        let held = per_set.get(task_set.as_str()).copied().unwrap_or(0);
        if held != ids.len() {
            found.add("submissions", format!("{request} was acknowledged with {} tasks but task set {task_set} holds {held}", ids.len()));
        }
    }

    // Every task terminal.
    for t in state.tasks() {
        if !t.state.is_terminal() {
            found.add("terminal after heal", format!("task {} ({}) is {:?}: {}", t.id.0, t.spec.name, t.state, t.reason));
        }
    }

    // From the clusters' own records: never two attempts of one task at once, and no node
    // over its allocatable resources.
    let mut by_task: BTreeMap<TaskId, Vec<(u64, u64, &str, u32)>> = BTreeMap::new();
    for h in histories {
        for r in &h.runs {
            let end = r.ended_unix_ms.unwrap_or(now_unix_ms);
            by_task.entry(r.task_id).or_default().push((r.started_unix_ms, end, h.cluster.as_str(), r.attempt));
        }
    }
    for (task, runs) in &mut by_task {
        runs.sort();
        for pair in runs.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.0 < a.1 {
                found.add(
                    "one attempt at a time",
                    format!(
                        "task {}: attempt {} on {} ran {}..{} ms and attempt {} on {} started at {} ms",
                        task.0, a.3, a.2, a.0, a.1, b.3, b.2, b.0
                    ),
                );
            }
        }
    }
    for h in histories {
        for node in &h.nodes {
            let mut changes: Vec<(u64, i64, i64)> = Vec::new();
            for r in h.runs.iter().filter(|r| r.node == node.name) {
                let Some(t) = state.task(r.task_id) else { continue };
                let (cpu, mem) = (t.spec.resources.cpu_millis as i64, t.spec.resources.memory_bytes as i64);
                changes.push((r.started_unix_ms, cpu, mem));
                changes.push((r.ended_unix_ms.unwrap_or(now_unix_ms), -cpu, -mem));
            }
            // Ends before starts at one instant: a pod that ends frees its room first.
            changes.sort_by_key(|(at, cpu, _)| (*at, *cpu));
            let (mut cpu, mut mem) = (0i64, 0i64);
            for (at, dc, dm) in changes {
                cpu += dc;
                mem += dm;
                if cpu > node.allocatable.cpu_millis as i64 || mem > node.allocatable.memory_bytes as i64 {
                    found.add("node capacity", format!("{}/{} held {cpu} mCPU and {mem} bytes at {at} ms", h.cluster, node.name));
                    break;
                }
            }
        }
    }

    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for h in histories {
        h.cluster.hash(&mut hasher);
        for r in &h.runs {
            (r.task_id.0, r.attempt, &r.node, r.started_unix_ms, r.ended_unix_ms).hash(&mut hasher);
        }
    }
    for t in state.tasks() {
        (t.id.0, t.attempt, t.state.as_str(), t.updated_ms).hash(&mut hasher);
    }
    let preemptions = state.task_sets().flat_map(|s| s.events.iter()).filter(|e| e.kind == flotilla_store::EventKind::Preempted).count();
    Report { violations: found.0, digest: hasher.finish(), tasks: state.task_count(), preemptions }
}
