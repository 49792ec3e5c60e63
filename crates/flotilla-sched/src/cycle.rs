//! One scheduling cycle: the state it works on and its main loop.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use flotilla_model::{Placement, Queue, Resources, SchedTask, TaskId, TopologyLevel};

use crate::amount::Amount;
use crate::class_limits::{self, ClassCap};
use crate::fairness::{sanitize_weight, water_fill, Turn};
use crate::gang::GangUnit;
use crate::index::NodeIndex;
use crate::placement::Shape;
use crate::plan::Plan;
use crate::reasons::{self, ReasonTable};
use crate::{Config, Decisions, Input, Lease, Preemption, QueueShare, Stats, DEFAULT_PROTECTED_FRACTION};

/// What a queue offers next: one task or one whole gang.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Unit {
    Single(u32),
    Gang(u32),
}

pub(crate) struct QueueState<'a> {
    pub queue: &'a Queue,
    pub weight: f64,
    pub guarantee: Amount,
    /// Running minus preempted plus leased, as the cycle goes.
    pub alloc: Amount,
    pub fair_share: f64,
    /// Fair-share reclaim never takes this queue's dominant share below
    /// `protected_fraction × fair_share`.
    pub protected_fraction: f64,
    /// Units in queue order: priority (high first), then submit order.
    pub units: Vec<Unit>,
    pub next: usize,
    pub evicted: u32,
    pub version: u32,
    /// In `Input::held_queues`: takes no turn.
    pub held: bool,
    /// Its limits per priority class, with what each class holds (see `class_limits`).
    pub class_caps: Vec<ClassCap<'a>>,
}

pub(crate) struct RunState<'a> {
    pub task: &'a SchedTask,
    pub node: Option<u32>,
    pub queue: Option<usize>,
    pub amount: Amount,
    /// Preemptible, on a known node, of a known queue, and the first entry of its id.
    pub evictable: bool,
    pub evicted: bool,
}

pub(crate) struct Cycle<'a> {
    pub input: &'a Input,
    pub config: &'a Config,
    /// The queued tasks this cycle works on: all of `Input::queued`, or (scheduling from a
    /// [`crate::Backlog`]) only those pulled so far. Per-task vectors below follow it.
    pub queued: Vec<&'a SchedTask>,
    /// Set when scheduling from a backlog: where each queue's next unit comes from.
    pub lazy: Option<crate::lazy::Lazy<'a>>,
    pub index: NodeIndex<'a>,
    pub shapes: Vec<Shape<'a>>,
    /// Per queued task (by position in `Input::queued`).
    pub task_shape: Vec<u32>,
    pub task_queue: Vec<Option<usize>>,
    pub task_reason: Vec<Option<u32>>,
    pub leased: Vec<bool>,
    /// Later entries of an id already listed: ignored entirely.
    pub duplicate: Vec<bool>,
    pub queues: Vec<QueueState<'a>>,
    pub queue_by_name: HashMap<&'a str, usize>,
    pub gangs: Vec<GangUnit>,
    pub gang_shapes: HashMap<(Vec<u32>, TopologyLevel, Option<String>), u32>,
    pub running: Vec<RunState<'a>>,
    /// Running gang members by gang id: a gang is evicted whole.
    pub running_gangs: BTreeMap<TaskId, Vec<u32>>,
    /// Lowest priority among evictable running tasks: urgency preemption below it is futile.
    pub min_evictable_priority: Option<i32>,
    /// Most GPUs one evictable running task holds: bounds how much one eviction frees.
    pub max_victim_gpu: u64,
    /// Evictable running tasks in victim order (lowest priority, then newest).
    pub victim_order: Vec<u32>,
    pub reasons: ReasonTable,
    pub leases: Vec<Lease>,
    /// Per lease: the queued task and the node (for the final over-commit check).
    pub lease_tasks: Vec<u32>,
    pub lease_nodes: Vec<u32>,
    pub preemptions: Vec<Preemption>,
    pub stats: Stats,
    /// Bumped whenever capacity is freed; shape failures from older generations are stale.
    pub generation: u32,
    pub shape_failed: Vec<Option<(u32, u32)>>,
    pub shape_diagnosis: Vec<Option<u32>>,
    pub gang_shape_failed: Vec<Option<(u32, u32)>>,
    pub preempt_failed: HashSet<(Unit, i32, usize)>,
    /// Ids of running tasks: such a task listed as queued too is not scheduled again.
    pub running_ids: HashSet<TaskId>,
    turns: BinaryHeap<Reverse<Turn>>,
}

impl<'a> Cycle<'a> {
    pub fn new(input: &'a Input) -> Cycle<'a> {
        let mut cycle = Cycle::without_queued(input);
        cycle.queued = input.queued.iter().collect();
        let n = cycle.queued.len();
        cycle.task_shape = vec![0; n];
        cycle.task_queue = vec![None; n];
        cycle.task_reason = vec![None; n];
        cycle.leased = vec![false; n];
        cycle.duplicate = vec![false; n];
        cycle.admit_queued();
        cycle
    }

    /// The nodes, queues and running tasks of `input`, and no queued task yet.
    pub fn without_queued(input: &'a Input) -> Cycle<'a> {
        let mut index = NodeIndex::new(&input.nodes);

        let mut queue_by_name = HashMap::new();
        let mut queues = Vec::new();
        for q in &input.queues {
            if queue_by_name.contains_key(q.name.as_str()) {
                continue;
            }
            queue_by_name.insert(q.name.as_str(), queues.len());
            queues.push(QueueState {
                queue: q,
                weight: sanitize_weight(q.weight),
                guarantee: Amount::of(&q.guarantee),
                alloc: Amount::default(),
                fair_share: 0.0,
                protected_fraction: protected_fraction(q, &input.config),
                units: Vec::new(),
                next: 0,
                evicted: 0,
                version: 0,
                held: input.held_queues.contains_key(&q.name),
                class_caps: class_limits::caps(q, index.total),
            });
        }

        // Running tasks hold capacity on their node and count toward their queue's share.
        let mut running = Vec::with_capacity(input.running.len());
        let mut running_ids = HashSet::with_capacity(input.running.len());
        for r in &input.running {
            let first = running_ids.insert(r.task.id);
            let node = index.by_ref.get(&(r.node.cluster.as_str(), r.node.node.as_str())).copied();
            let queue = queue_by_name.get(r.task.queue.as_str()).copied();
            let amount = Amount::task(&r.task.resources);
            if let Some(n) = node {
                // Every entry is charged, duplicates too: over-counting only makes us cautious.
                index.charge_running(n, amount, &r.task.resources.extended);
            }
            if let (Some(q), true) = (queue, first) {
                queues[q].alloc = queues[q].alloc.plus(amount);
                class_limits::charge(&mut queues[q].class_caps, &r.task, amount, true);
            }
            let evictable = first && r.task.preemptible && node.is_some() && queue.is_some();
            running.push(RunState { task: &r.task, node, queue, amount, evictable, evicted: false });
        }
        let mut running_gangs: BTreeMap<TaskId, Vec<u32>> = BTreeMap::new();
        let mut min_evictable_priority: Option<i32> = None;
        for (i, r) in running.iter().enumerate() {
            if let Some(n) = r.node {
                index.nodes[n as usize].running.push(i as u32);
            }
            if r.evictable {
                min_evictable_priority = Some(min_evictable_priority.map_or(r.task.priority, |p| p.min(r.task.priority)));
            }
            // Every member, evictable or not: a gang with a member that may not go stays whole.
            if let Some(g) = &r.task.gang {
                running_gangs.entry(g.id).or_default().push(i as u32);
            }
        }
        // Victim order: lowest priority first, then newest (highest submit_seq).
        let victim_key = |i: &u32| {
            let t = running[*i as usize].task;
            (t.priority, Reverse(t.submit_seq), Reverse(t.id))
        };
        for n in index.nodes.iter_mut() {
            n.running.sort_by_key(victim_key);
        }
        let mut victim_order: Vec<u32> = (0..running.len() as u32).filter(|i| running[*i as usize].evictable).collect();
        victim_order.sort_by_key(victim_key);
        let max_victim_gpu = victim_order.iter().map(|&r| running[r as usize].amount.gpu).max().unwrap_or(0);

        Cycle {
            input,
            config: &input.config,
            queued: Vec::new(),
            lazy: None,
            index,
            shapes: Vec::new(),
            task_shape: Vec::new(),
            task_queue: Vec::new(),
            task_reason: Vec::new(),
            leased: Vec::new(),
            duplicate: Vec::new(),
            queues,
            queue_by_name,
            gangs: Vec::new(),
            gang_shapes: HashMap::new(),
            running,
            running_gangs,
            min_evictable_priority,
            max_victim_gpu,
            victim_order,
            reasons: ReasonTable::default(),
            leases: Vec::new(),
            lease_tasks: Vec::new(),
            lease_nodes: Vec::new(),
            preemptions: Vec::new(),
            stats: Stats::default(),
            generation: 0,
            shape_failed: Vec::new(),
            shape_diagnosis: Vec::new(),
            gang_shape_failed: Vec::new(),
            preempt_failed: HashSet::new(),
            running_ids,
            turns: BinaryHeap::new(),
        }
    }

    /// Sorts queued tasks into their queues' units, with a reason for every task that
    /// cannot even be considered.
    fn admit_queued(&mut self) {
        let input = self.input;
        let mut seen = HashSet::with_capacity(input.queued.len());
        let mut shape_ids: HashMap<(&Resources, &Placement), u32> = HashMap::new();
        let mut singles: Vec<u32> = Vec::new();
        let mut gang_members: BTreeMap<TaskId, Vec<u32>> = BTreeMap::new();
        for (i, t) in input.queued.iter().enumerate() {
            if !seen.insert(t.id) {
                self.duplicate[i] = true;
                continue;
            }
            if self.running_ids.contains(&t.id) {
                self.task_reason[i] = Some(self.reasons.intern("task is already running".to_string()));
                continue;
            }
            let Some(&q) = self.queue_by_name.get(t.queue.as_str()) else {
                self.task_reason[i] = Some(self.reasons.intern(reasons::unknown_queue(&t.queue)));
                continue;
            };
            if let Some(reason) = input.held_queues.get(&t.queue) {
                self.task_reason[i] = Some(self.reasons.intern(reason.clone()));
                continue;
            }
            self.task_queue[i] = Some(q);
            let next_id = self.shapes.len() as u32;
            let s = *shape_ids.entry((&t.resources, &t.placement)).or_insert(next_id);
            if s == next_id {
                self.add_shape(t);
            }
            self.task_shape[i] = s;
            match &t.gang {
                Some(g) => gang_members.entry(g.id).or_default().push(i as u32),
                None => singles.push(i as u32),
            }
        }

        for i in singles {
            let q = self.task_queue[i as usize].unwrap_or(0);
            self.queues[q].units.push(Unit::Single(i));
        }
        for (id, members) in gang_members {
            self.admit_gang(id, members);
        }

        let queued = &input.queued;
        let gangs = &self.gangs;
        let order = |u: &Unit| -> (Reverse<i32>, u64, TaskId) {
            match u {
                Unit::Single(i) => {
                    let t = &queued[*i as usize];
                    (Reverse(t.priority), t.submit_seq, t.id)
                }
                Unit::Gang(g) => gangs[*g as usize].order,
            }
        };
        for q in self.queues.iter_mut() {
            q.units.sort_by_key(order);
        }
    }

    /// Numbers a new shape (of `t`): placement filters resolved, no failure yet.
    pub fn add_shape(&mut self, t: &'a SchedTask) -> u32 {
        self.shapes.push(Shape::new(t, &self.index));
        self.shape_failed.push(None);
        self.shape_diagnosis.push(None);
        self.shapes.len() as u32 - 1
    }

    /// The queued tasks of a unit, and their total resources.
    pub fn unit_members(&self, unit: Unit) -> (Vec<u32>, Amount) {
        match unit {
            Unit::Single(i) => (vec![i], Amount::task(&self.queued[i as usize].resources)),
            Unit::Gang(g) => {
                let gang = &self.gangs[g as usize];
                (gang.members.clone(), gang.total)
            }
        }
    }

    fn compute_fair_shares(&mut self) {
        let mut demand: Vec<Amount> = self.queues.iter().map(|q| q.alloc).collect();
        for (qi, q) in self.queues.iter().enumerate() {
            match &self.lazy {
                Some(lazy) => demand[qi] = demand[qi].plus(lazy.unit_demand(qi)),
                None => {
                    for u in &q.units {
                        let (_, a) = self.unit_members(*u);
                        demand[qi] = demand[qi].plus(a);
                    }
                }
            }
        }
        let demands: Vec<f64> = demand.iter().map(|d| self.index.share(*d)).collect();
        let weights: Vec<f64> = self.queues.iter().map(|q| q.weight).collect();
        for (q, fs) in self.queues.iter_mut().zip(water_fill(&demands, &weights)) {
            q.fair_share = fs;
        }
    }

    pub fn dominant_share(&self, q: usize) -> f64 {
        self.index.share(self.queues[q].alloc)
    }

    /// (Re)queues `q` for a turn with its current share; older turns of `q` go stale.
    pub fn push_turn(&mut self, q: usize) {
        let more = self.has_units(q);
        let qs = &mut self.queues[q];
        qs.version = qs.version.wrapping_add(1);
        if more {
            let turn = Turn::new(self.index.share(qs.alloc), qs.weight, q, qs.version);
            self.turns.push(Reverse(turn));
        }
    }

    /// Whether queue `q` may still offer a unit.
    fn has_units(&self, q: usize) -> bool {
        if self.queues[q].held {
            return false;
        }
        match &self.lazy {
            Some(lazy) => lazy.has_units(q),
            None => self.queues[q].next < self.queues[q].units.len(),
        }
    }

    /// Queue `q`'s next unit, if any.
    fn next_unit(&mut self, q: usize) -> Option<Unit> {
        if self.queues[q].held {
            return None;
        }
        if self.lazy.is_some() {
            return self.lazy_next_unit(q);
        }
        let qs = &mut self.queues[q];
        let unit = qs.units.get(qs.next).copied()?;
        qs.next += 1;
        Some(unit)
    }

    pub fn run(mut self) -> Decisions {
        let (with_cpu, with_clusters) = match &self.lazy {
            Some(lazy) => lazy.index_needs(),
            None => (
                self.task_queue.iter().zip(&self.queued).any(|(q, t)| q.is_some() && t.resources.gpu == 0),
                self.shapes.iter().any(|s| s.uses_cluster_sets()),
            ),
        };
        self.index.build(with_cpu, with_clusters);
        self.compute_fair_shares();
        for q in 0..self.queues.len() {
            self.push_turn(q);
        }

        let max_leases = self.config.max_leases_per_cycle;
        while let Some(Reverse(turn)) = self.turns.pop() {
            let q = turn.queue;
            if turn.version != self.queues[q].version || !self.has_units(q) {
                continue;
            }
            if self.leases.len() >= max_leases {
                break;
            }
            let Some(unit) = self.next_unit(q) else { continue };
            let (members, total) = self.unit_members(unit);
            self.stats.tasks_considered += members.len();
            let generation = self.generation;
            let placed = self.try_unit(q, unit, &members, total);
            if let Err(reason) = placed {
                for m in members {
                    self.task_reason[m as usize] = Some(reason);
                }
            }
            if self.lazy.is_some() {
                self.lazy_unit_done(q, placed.is_ok(), generation);
            }
            self.push_turn(q);
        }
        // Whatever is left never got a turn: the lease bound stopped the cycle.
        let limit = self.reasons.intern(reasons::lease_limit(max_leases));
        for q in 0..self.queues.len() {
            let rest: Vec<Unit> = self.queues[q].units[self.queues[q].next..].to_vec();
            for u in rest {
                for m in self.unit_members(u).0 {
                    self.task_reason[m as usize] = Some(limit);
                }
            }
        }
        self.finish()
    }

    /// Tries to lease one unit of queue `q`: limits first, then a plain placement, then
    /// preemption. Returns the reason it stays queued.
    fn try_unit(&mut self, q: usize, unit: Unit, members: &[u32], total: Amount) -> Result<(), u32> {
        let after = self.queues[q].alloc.plus(total);
        if let Some(l) = self.queues[q].queue.limit.exceeded_by(&after.to_resources()) {
            return Err(self.reasons.intern(reasons::queue_limit(&l)));
        }
        if let Some(reason) = self.class_limit_reached(q, members) {
            return Err(self.reasons.intern(reason));
        }
        if self.leases.len().saturating_add(members.len()) > self.config.max_leases_per_cycle {
            return Err(self.reasons.intern(reasons::lease_limit(self.config.max_leases_per_cycle)));
        }
        let placed = match unit {
            Unit::Single(t) => self.place_single(t),
            Unit::Gang(g) => self.place_gang(g),
        };
        match placed {
            Ok(assignments) => {
                self.apply(q, &Plan { assignments, ..Plan::default() });
                Ok(())
            }
            Err(reason) => match self.try_preempt(q, unit, members) {
                Some(plan) => {
                    self.apply(q, &plan);
                    Ok(())
                }
                None => Err(reason),
            },
        }
    }

    /// Places one task on the best node now free, skipping shapes that already failed.
    fn place_single(&mut self, t: u32) -> Result<Vec<(u32, u32)>, u32> {
        let s = self.task_shape[t as usize];
        if let Some((generation, reason)) = self.shape_failed[s as usize] {
            if generation == self.generation {
                self.stats.shapes_skipped += 1;
                return Err(reason);
            }
        }
        self.stats.placement_attempts += 1;
        let task = &self.queued[t as usize];
        let shape = &self.shapes[s as usize];
        let index = &self.index;
        let found = if task.avoid_nodes.is_empty() && task.avoid_clusters.is_empty() {
            crate::placement::best_node(index, shape, shape.amount, &|n| shape.fits_now(index, n, shape.amount))
        } else {
            let avoid = self.avoid_set(task);
            crate::placement::best_node(index, shape, shape.amount, &|n| !avoid.contains(&n) && shape.fits_now(index, n, shape.amount))
                .or_else(|| crate::placement::best_node(index, shape, shape.amount, &|n| shape.fits_now(index, n, shape.amount)))
        };
        match found {
            Some(n) => Ok(vec![(t, n)]),
            None => {
                let reason = match self.shape_diagnosis[s as usize] {
                    Some(r) => r,
                    None => {
                        let r = self.reasons.intern(crate::placement::diagnose(&self.index, &self.shapes[s as usize]));
                        self.shape_diagnosis[s as usize] = Some(r);
                        r
                    }
                };
                self.shape_failed[s as usize] = Some((self.generation, reason));
                Err(reason)
            }
        }
    }

    /// Nodes a task's earlier attempts failed on (by node, or by whole cluster).
    pub fn avoid_set(&self, task: &SchedTask) -> Vec<u32> {
        let mut out: Vec<u32> =
            task.avoid_nodes.iter().filter_map(|r| self.index.by_ref.get(&(r.cluster.as_str(), r.node.as_str())).copied()).collect();
        for c in &task.avoid_clusters {
            if let Ok(cid) = self.index.clusters.binary_search(c) {
                out.extend(self.index.schedulable.iter().copied().filter(|n| self.index.nodes[*n as usize].cluster == cid as u32));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Commits a plan: evictions first, then leases.
    ///
    /// The preemptor may land on capacity its victims free in this same cycle: the
    /// executor stops the victims (SIGTERM, then their grace period) before it starts
    /// the new pod, and the lease and the preemptions are committed as one Raft entry,
    /// so the node is never asked to hold both.
    fn apply(&mut self, q: usize, plan: &Plan) {
        if !plan.victims.is_empty() {
            for (r, reason) in &plan.victims {
                let run = &mut self.running[*r as usize];
                debug_assert!(run.evictable && !run.evicted);
                run.evicted = true;
                let (node, amount, vq, task) = (run.node, run.amount, run.queue, run.task);
                if let Some(n) = node {
                    self.index.release(n, amount, &task.resources.extended);
                }
                if let Some(vq) = vq {
                    self.queues[vq].alloc = self.queues[vq].alloc.minus(amount);
                    class_limits::charge(&mut self.queues[vq].class_caps, task, amount, false);
                    self.queues[vq].evicted += 1;
                    self.push_turn(vq);
                }
                self.preemptions.push(Preemption { task: task.id, reason: reason.clone() });
            }
            // Freed capacity may fit shapes that failed before.
            self.generation = self.generation.wrapping_add(1);
        }
        for &(t, n) in &plan.assignments {
            let task = &self.queued[t as usize];
            let amount = Amount::task(&task.resources);
            debug_assert!(!self.leased[t as usize]);
            self.index.reserve(n, amount, &task.resources.extended);
            self.queues[q].alloc = self.queues[q].alloc.plus(amount);
            class_limits::charge(&mut self.queues[q].class_caps, task, amount, true);
            self.leased[t as usize] = true;
            self.leases.push(Lease { task: task.id, node: self.index.nodes[n as usize].node.node_ref() });
            self.lease_tasks.push(t);
            self.lease_nodes.push(n);
        }
    }

    fn finish(mut self) -> Decisions {
        self.assert_no_node_overcommitted();
        let input = self.input;
        let unplaced = self.queued.iter().enumerate().filter(|(i, _)| !self.leased[*i] && !self.duplicate[*i]);
        let fallback = u32::MAX;
        let mut tasks: Vec<(TaskId, u32)> = unplaced.map(|(i, t)| (t.id, self.task_reason[i].unwrap_or(fallback))).collect();
        let mut demand = vec![Amount::default(); self.queues.len()];
        match &self.lazy {
            Some(lazy) => lazy.finish(&mut self.reasons, &self.queue_by_name, &mut tasks, &mut demand),
            None => {
                for (i, t) in self.queued.iter().enumerate() {
                    if let (Some(q), false, false) = (self.task_queue[i], self.leased[i], self.duplicate[i]) {
                        demand[q] = demand[q].plus(Amount::task(&t.resources));
                    }
                }
            }
        }
        if self.lazy.is_some() {
            for (&t, &leased) in self.queued.iter().zip(&self.leased) {
                if let (true, Some(&q)) = (leased, self.queue_by_name.get(t.queue.as_str())) {
                    demand[q] = demand[q].minus(Amount::task(&t.resources));
                }
            }
        }
        let mut table = self.reasons;
        // A task with no recorded reason would be a bug; give it a visible one rather than none.
        let not_considered = table.intern("not considered this cycle".to_string());
        let tasks = tasks.into_iter().map(|(t, r)| (t, if r == fallback { not_considered } else { r }));
        let unscheduled = reasons::unscheduled(&table, tasks, self.config.max_reasons);

        let queue_shares = input
            .queues
            .iter()
            .map(|q| {
                let qi = self.queue_by_name[q.name.as_str()];
                let qs = &self.queues[qi];
                QueueShare {
                    queue: q.name.clone(),
                    fair_share: qs.fair_share,
                    actual_share: self.index.share(qs.alloc).clamp(0.0, 1.0),
                    allocated: qs.alloc.to_resources(),
                    demand: demand[qi].to_resources(),
                }
            })
            .collect();
        Decisions { leases: self.leases, preemptions: self.preemptions, unscheduled, queue_shares, stats: self.stats }
    }

    /// Invariant 3 of DESIGN.md: no node holds more than its allocatable resources.
    /// Recounted from scratch for every node that got a lease (O(leases + their running)).
    fn assert_no_node_overcommitted(&self) {
        let mut nodes = self.lease_nodes.clone();
        nodes.sort_unstable();
        nodes.dedup();
        let mut leased: HashMap<u32, (Amount, BTreeMap<String, u64>)> = HashMap::new();
        for (&t, &n) in self.lease_tasks.iter().zip(&self.lease_nodes) {
            let t = &self.queued[t as usize];
            let e = leased.entry(n).or_default();
            e.0 = e.0.plus(Amount::task(&t.resources));
            crate::amount::ext_add(&mut e.1, &t.resources.extended);
        }
        for n in nodes {
            let ns = &self.index.nodes[n as usize];
            let (mut used, mut used_ext) = leased.remove(&n).unwrap_or_default();
            for &r in &ns.running {
                let run = &self.running[r as usize];
                if !run.evicted {
                    used = used.plus(run.amount);
                    crate::amount::ext_add(&mut used_ext, &run.task.resources.extended);
                }
            }
            assert!(
                used.fits_in(ns.cap) && crate::amount::ext_fits(&used_ext, &ns.cap_ext, &BTreeMap::new(), None),
                "node {} over-committed: {used:?} of {:?}",
                ns.node.node_ref(),
                ns.cap
            );
        }
    }
}

/// A queue's protected fraction: its own, else the cycle's default, clamped to 0..=1 (a
/// value out of range or NaN never widens what reclaim may take beyond the default rule).
fn protected_fraction(q: &Queue, config: &Config) -> f64 {
    let f = q.protected_fraction.unwrap_or(config.protected_fraction);
    if f.is_nan() {
        DEFAULT_PROTECTED_FRACTION
    } else {
        f.clamp(0.0, 1.0)
    }
}
