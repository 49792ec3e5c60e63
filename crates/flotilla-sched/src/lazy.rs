//! Scheduling from a [`Backlog`]: each queue's units are pulled lazily, group by group.
//!
//! The full cycle visits every unit of a queue in order (priority, then submit order). A
//! unit that fails leaves nothing changed, and its queue (still the one with the lowest
//! share) takes the next turn at once; so a queue's failing units are visited back to
//! back, and every unit of the same group (priority and shape) fails alike for the same
//! reason, as long as nothing that failure depended on changed:
//! - capacity only shrinks until a preemption frees some (the cycle's `generation`);
//! - a queue's allocation, and what each of its priority classes holds, only grows until
//!   one of its tasks is preempted (which also moves the generation), so a queue limit or
//!   a class limit once reached stays reached (a group's tasks share one class: the
//!   backlog files classes apart);
//! - the lease count and the eviction count only grow; a failed preemption plan is
//!   remembered for the whole cycle; the reclaim test (share below fair share) only
//!   turns false as the share grows.
//!
//! So once a group's head fails, the group is *parked*: the queue goes on with its other
//! groups' heads, merged in order from a small heap. A parked group's units that the full
//! cycle would have visited meanwhile are those ordered before the queue's latest visited
//! unit; they are skipped (they would have failed) when the generation moves and the group
//! is taken back. A queue whose heap runs dry has visited everything: its parked groups
//! are dropped, as the full cycle would have failed them one by one.
//!
//! Leases, preemptions and queue shares are exactly those of [`crate::schedule`] on the
//! same tasks (a property test checks it). Reasons are given only for tasks the cycle
//! visited; tasks it skipped keep whatever reason they had.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::ops::Bound;

use flotilla_model::{Placement, Resources, SchedTask, TaskId};

use crate::amount::Amount;
use crate::backlog::{Backlog, GangGroup, QueueBacklog, SingleGroup};
use crate::cycle::{Cycle, Unit};
use crate::gang::gang_problem;
use crate::reasons::ReasonTable;
use crate::Input;

/// A unit's place in its queue: priority (high first), submit order, id.
type OrderKey = (Reverse<i32>, u64, TaskId);

enum Members<'a> {
    Singles { tasks: &'a SingleGroup, shape: u32 },
    Gangs(&'a GangGroup),
}

struct Group<'a> {
    priority: i32,
    members: Members<'a>,
    /// The last unit taken from (or skipped in) this group.
    cursor: Option<(u64, TaskId)>,
}

impl Group<'_> {
    fn head(&self) -> Option<OrderKey> {
        let from = self.cursor.map_or(Bound::Unbounded, Bound::Excluded);
        let next = match &self.members {
            Members::Singles { tasks, .. } => tasks.range((from, Bound::Unbounded)).next().map(|(k, _)| *k),
            Members::Gangs(gangs) => gangs.range((from, Bound::Unbounded)).next().copied(),
        };
        next.map(|(seq, id)| (Reverse(self.priority), seq, id))
    }
}

#[derive(Default)]
struct LazyQueue<'a> {
    source: Option<&'a QueueBacklog>,
    groups: Vec<Group<'a>>,
    /// Heads of the groups that are not parked, smallest first.
    heads: BinaryHeap<Reverse<(OrderKey, u32)>>,
    parked: Vec<u32>,
    last_taken: Option<OrderKey>,
    /// The group of the unit being tried.
    current: Option<u32>,
    exhausted: bool,
}

impl LazyQueue<'_> {
    fn push_head(&mut self, g: u32) {
        if let Some(key) = self.groups[g as usize].head() {
            self.heads.push(Reverse((key, g)));
        }
    }

    /// Takes parked groups back after capacity was freed: units ordered before the latest
    /// visited one count as visited (they failed while parked).
    fn unpark(&mut self) {
        for g in std::mem::take(&mut self.parked) {
            let group = &mut self.groups[g as usize];
            if let Some((priority, seq, id)) = self.last_taken {
                if Reverse(group.priority) < priority {
                    continue;
                }
                if Reverse(group.priority) == priority {
                    group.cursor = group.cursor.max(Some((seq, id)));
                }
            }
            self.push_head(g);
        }
    }
}

pub(crate) struct Lazy<'a> {
    backlog: &'a Backlog,
    queues: Vec<LazyQueue<'a>>,
    /// Backlog shape id -> this cycle's shape id.
    shapes: HashMap<u32, u32>,
    /// This cycle's shape ids by resources and placement: backlog shapes that differ only
    /// in priority class share one, as in the full cycle (same failures, same reasons).
    cycle_shapes: HashMap<(&'a Resources, &'a Placement), u32>,
}

impl<'a> Lazy<'a> {
    /// One lazy queue per cycle queue (`names` in the cycle's queue order).
    pub fn new(backlog: &'a Backlog, names: &[&str]) -> Lazy<'a> {
        let queues = names
            .iter()
            .map(|name| {
                let Some(source) = backlog.queue(name) else { return LazyQueue::default() };
                let mut lq = LazyQueue { source: Some(source), ..LazyQueue::default() };
                // Singles first: on a tie with a gang, the full cycle's stable sort keeps them first.
                for ((Reverse(priority), shape), tasks) in &source.singles {
                    lq.groups.push(Group { priority: *priority, members: Members::Singles { tasks, shape: *shape }, cursor: None });
                }
                for ((Reverse(priority), _, _, _), gangs) in &source.gangs {
                    lq.groups.push(Group { priority: *priority, members: Members::Gangs(gangs), cursor: None });
                }
                for g in 0..lq.groups.len() as u32 {
                    lq.push_head(g);
                }
                lq
            })
            .collect();
        Lazy { backlog, queues, shapes: HashMap::new(), cycle_shapes: HashMap::new() }
    }

    pub fn has_units(&self, q: usize) -> bool {
        let lq = &self.queues[q];
        !lq.exhausted && (!lq.heads.is_empty() || !lq.parked.is_empty())
    }

    /// Which index sets the backlog's shapes need (a superset of what the visited tasks
    /// need: extra sets change no decision).
    pub fn index_needs(&self) -> (bool, bool) {
        let shapes = self.backlog.shapes.iter().flatten();
        let with_cpu = shapes.clone().any(|((r, _, _), _)| r.gpu == 0);
        let with_clusters = shapes.clone().any(|((_, p, _), _)| !p.allowed_clusters.is_empty() || p.preferred_cluster.is_some());
        (with_cpu, with_clusters)
    }

    pub fn unit_demand(&self, q: usize) -> Amount {
        self.queues[q].source.map_or(Amount::default(), |s| s.unit_demand)
    }

    /// Reasons for broken gangs of known queues, and every queue's demand (leases not yet
    /// taken off).
    pub fn finish(&self, reasons: &mut ReasonTable, known: &HashMap<&str, usize>, tasks: &mut Vec<(TaskId, u32)>, demand: &mut [Amount]) {
        for (q, lq) in self.queues.iter().enumerate() {
            demand[q] = lq.source.map_or(Amount::default(), |s| s.all_demand);
        }
        for gang in &self.backlog.broken_gangs {
            let Some(entry) = self.backlog.gangs.get(gang) else { continue };
            let members: Vec<&SchedTask> = entry.members.values().map(|(t, _)| t).collect();
            let Some(problem) = gang_problem(*gang, &members) else { continue };
            let r = reasons.intern(problem);
            tasks.extend(members.iter().filter(|t| known.contains_key(t.queue.as_str())).map(|t| (t.id, r)));
        }
    }
}

impl<'a> Cycle<'a> {
    /// A cycle over `backlog`'s tasks (`input.queued` is not read).
    pub fn from_backlog(input: &'a Input, backlog: &'a Backlog) -> Cycle<'a> {
        let mut cycle = Cycle::without_queued(input);
        let names: Vec<&str> = cycle.queues.iter().map(|q| q.queue.name.as_str()).collect();
        cycle.lazy = Some(Lazy::new(backlog, &names));
        cycle
    }

    /// Queue `q`'s next unit from its groups' heads, its tasks added to the cycle.
    pub(crate) fn lazy_next_unit(&mut self, q: usize) -> Option<Unit> {
        loop {
            let lazy = self.lazy.as_mut()?;
            let backlog = lazy.backlog;
            let lq = &mut lazy.queues[q];
            let Some(Reverse((key, g))) = lq.heads.pop() else {
                // Everything left is parked: the full cycle would fail it unit by unit.
                lq.exhausted = true;
                lq.parked.clear();
                return None;
            };
            let group = &mut lq.groups[g as usize];
            group.cursor = Some((key.1, key.2));
            lq.last_taken = Some(key);
            lq.current = Some(g);
            match group.members {
                Members::Singles { tasks, shape } => {
                    let task: &'a SchedTask = &tasks[&(key.1, key.2)];
                    if self.running_ids.contains(&task.id) {
                        let i = self.pull_task(task, shape, None);
                        self.task_reason[i as usize] = Some(self.reasons.intern("task is already running".to_string()));
                        if let Some(lazy) = self.lazy.as_mut() {
                            lazy.queues[q].push_head(g);
                        }
                        continue;
                    }
                    return Some(Unit::Single(self.pull_task(task, shape, Some(q))));
                }
                Members::Gangs(_) => {
                    let entry = backlog.gangs.get(&key.2)?;
                    let members: Vec<u32> = entry.members.values().map(|(t, s)| self.pull_task(t, *s, Some(q))).collect();
                    return Some(Unit::Gang(self.gang_unit(key.2, members)));
                }
            }
        }
    }

    /// Adds a backlog task to the cycle's tasks; returns its index.
    fn pull_task(&mut self, t: &'a SchedTask, backlog_shape: u32, q: Option<usize>) -> u32 {
        let known =
            self.lazy.as_ref().and_then(|l| l.shapes.get(&backlog_shape).or_else(|| l.cycle_shapes.get(&(&t.resources, &t.placement))));
        let shape = match known.copied() {
            Some(s) => s,
            None => {
                let s = self.add_shape(t);
                if let Some(lazy) = self.lazy.as_mut() {
                    lazy.cycle_shapes.insert((&t.resources, &t.placement), s);
                }
                s
            }
        };
        if let Some(lazy) = self.lazy.as_mut() {
            lazy.shapes.insert(backlog_shape, shape);
        }
        self.queued.push(t);
        self.task_shape.push(shape);
        self.task_queue.push(q);
        self.task_reason.push(None);
        self.leased.push(false);
        self.duplicate.push(false);
        self.queued.len() as u32 - 1
    }

    /// After queue `q`'s unit was tried: a group that failed is parked; one that placed its
    /// unit offers its next; freed capacity (a new generation) takes parked groups back.
    pub(crate) fn lazy_unit_done(&mut self, q: usize, placed: bool, generation_before: u32) {
        let moved = self.generation != generation_before;
        let Some(lazy) = self.lazy.as_mut() else { return };
        let lq = &mut lazy.queues[q];
        if let Some(g) = lq.current.take() {
            if placed {
                lq.push_head(g);
            } else {
                lq.parked.push(g);
            }
        }
        if moved {
            for lq in lazy.queues.iter_mut().filter(|lq| !lq.exhausted) {
                lq.unpark();
            }
        }
    }
}
