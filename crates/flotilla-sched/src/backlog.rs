//! The queued tasks, kept between cycles and filed so that a cycle reads only what it uses.
//!
//! [`crate::schedule`] takes every queued task in a `Vec` and sorts, groups and visits all
//! of them every cycle, so its cost grows with the backlog even when only a few thousand
//! tasks can start. A [`Backlog`] is kept by its owner (the leader) from one cycle to the
//! next and changed task by task ([`Backlog::insert`], [`Backlog::remove`]) as tasks are
//! submitted, leased, requeued or cancelled. It files each queue's tasks in *groups* of
//! one priority and one shape (resources, placement and priority class), each group in
//! submit order, and each queue's whole (complete and consistent) gangs likewise by
//! priority and member shapes. Each queue also keeps the sum of what its tasks ask for,
//! which is all that fair shares need.
//!
//! [`crate::schedule_backlog`] then visits a queue's groups lazily: it merges their heads
//! in queue order (priority, then submit order) and, once a group's head failed to start,
//! skips the whole group as long as nothing that failure depended on changed (see
//! `lazy`). A cycle thus costs about O(groups + tasks placed + nodes) instead of
//! O(queued tasks).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use flotilla_model::{Placement, Resources, SchedTask, TaskId, TopologyLevel};

use crate::amount::Amount;
use crate::gang::gang_problem;

/// Single tasks of one priority and shape, by `(submit_seq, id)`.
pub(crate) type SingleGroup = BTreeMap<(u64, TaskId), SchedTask>;
/// Whole gangs of one priority and member shapes, by `(earliest submit_seq, gang id)`.
pub(crate) type GangGroup = BTreeSet<(u64, TaskId)>;
/// A gang group: its priority, member shapes in placement order, topology level and
/// `sameValueOf` label.
pub(crate) type GangKey = (Reverse<i32>, Vec<u32>, TopologyLevel, Option<String>);

/// What files tasks in one group: resources, placement and priority class. Tasks of one
/// shape fit alike; of one class, they count against the same class limit of their queue.
pub(crate) type ShapeKey = (Resources, Placement, String);

/// Where a task is filed, so that it can be taken out again.
#[derive(Clone, Copy, Debug)]
enum Filed {
    Single { queue: u32, priority: i32, shape: u32, seq: u64 },
    Member { gang: TaskId },
}

#[derive(Debug, Default)]
pub(crate) struct QueueBacklog {
    pub singles: BTreeMap<(Reverse<i32>, u32), SingleGroup>,
    pub gangs: BTreeMap<GangKey, GangGroup>,
    /// What single tasks and filed gangs ask for: the demand fair shares are computed on.
    pub unit_demand: Amount,
    /// What every task of the queue asks for, broken gangs included.
    pub all_demand: Amount,
    tasks: usize,
}

#[derive(Debug, Default)]
pub(crate) struct GangEntry {
    /// Queued members by id, each with its shape.
    pub members: BTreeMap<TaskId, (SchedTask, u32)>,
    /// Where the gang is filed as a unit: (queue, group, position). `None` while broken.
    filed: Option<(u32, GangKey, (u64, TaskId))>,
    total: Amount,
}

/// Queued tasks filed by queue, priority and shape; see the module docs.
///
/// ```
/// use flotilla_model::*;
/// use flotilla_sched::Backlog;
/// let mut backlog = Backlog::default();
/// backlog.insert(SchedTask { id: TaskId(1), queue: "q".into(), priority: 100, preemptible: true,
///     priority_class: "default".into(), submit_seq: 1,
///     resources: Resources::new(1000, 1 << 30, 1), gang: None, placement: Placement::default(),
///     avoid_nodes: vec![], avoid_clusters: vec![] });
/// assert_eq!(backlog.len(), 1);
/// assert!(backlog.remove(TaskId(1)).is_some());
/// assert!(backlog.is_empty());
/// ```
#[derive(Debug, Default)]
pub struct Backlog {
    tasks: HashMap<TaskId, Filed>,
    queue_ids: HashMap<String, u32>,
    pub(crate) queues: Vec<QueueBacklog>,
    pub(crate) gangs: HashMap<TaskId, GangEntry>,
    /// Gangs whose queued members cannot form a unit (see `gang_problem`).
    pub(crate) broken_gangs: BTreeSet<TaskId>,
    shape_ids: HashMap<ShapeKey, u32>,
    /// Per shape id: its key and how many tasks use it; unused ids are reused.
    pub(crate) shapes: Vec<Option<(ShapeKey, usize)>>,
    free_shapes: Vec<u32>,
}

impl Backlog {
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn contains(&self, id: TaskId) -> bool {
        self.tasks.contains_key(&id)
    }

    /// Files a queued task, replacing the one with its id if there is one.
    pub fn insert(&mut self, t: SchedTask) {
        self.remove(t.id);
        let q = self.queue_id(&t.queue);
        let amount = Amount::task(&t.resources);
        let qb = &mut self.queues[q as usize];
        qb.all_demand = qb.all_demand.plus(amount);
        qb.tasks += 1;
        let shape = self.shape_id(&t);
        let id = t.id;
        match t.gang.as_ref().map(|g| g.id) {
            None => {
                let filed = Filed::Single { queue: q, priority: t.priority, shape, seq: t.submit_seq };
                let qb = &mut self.queues[q as usize];
                qb.unit_demand = qb.unit_demand.plus(amount);
                qb.singles.entry((Reverse(t.priority), shape)).or_default().insert((t.submit_seq, id), t);
                self.tasks.insert(id, filed);
            }
            Some(gang) => {
                self.unfile_gang(gang);
                self.gangs.entry(gang).or_default().members.insert(id, (t, shape));
                self.tasks.insert(id, Filed::Member { gang });
                self.file_gang(gang);
            }
        }
    }

    /// Takes a task out (it was leased, cancelled or is no longer schedulable).
    pub fn remove(&mut self, id: TaskId) -> Option<SchedTask> {
        let task = match self.tasks.remove(&id)? {
            Filed::Single { queue, priority, shape, seq } => {
                let qb = &mut self.queues[queue as usize];
                let key = (Reverse(priority), shape);
                let group = qb.singles.get_mut(&key)?;
                let t = group.remove(&(seq, id))?;
                if group.is_empty() {
                    qb.singles.remove(&key);
                }
                qb.unit_demand = qb.unit_demand.minus(Amount::task(&t.resources));
                self.release_shape(shape);
                t
            }
            Filed::Member { gang } => {
                self.unfile_gang(gang);
                let entry = self.gangs.get_mut(&gang)?;
                let (t, shape) = entry.members.remove(&id)?;
                if entry.members.is_empty() {
                    self.gangs.remove(&gang);
                    self.broken_gangs.remove(&gang);
                } else {
                    self.file_gang(gang);
                }
                self.release_shape(shape);
                t
            }
        };
        if let Some(&q) = self.queue_ids.get(task.queue.as_str()) {
            let qb = &mut self.queues[q as usize];
            qb.all_demand = qb.all_demand.minus(Amount::task(&task.resources));
            qb.tasks -= 1;
        }
        Some(task)
    }

    pub(crate) fn queue(&self, name: &str) -> Option<&QueueBacklog> {
        self.queue_ids.get(name).map(|q| &self.queues[*q as usize])
    }

    fn queue_id(&mut self, name: &str) -> u32 {
        if let Some(q) = self.queue_ids.get(name) {
            return *q;
        }
        let q = self.queues.len() as u32;
        self.queue_ids.insert(name.to_string(), q);
        self.queues.push(QueueBacklog::default());
        q
    }

    fn shape_id(&mut self, t: &SchedTask) -> u32 {
        let key = (t.resources.clone(), t.placement.clone(), t.priority_class.clone());
        if let Some(&s) = self.shape_ids.get(&key) {
            if let Some((_, n)) = &mut self.shapes[s as usize] {
                *n += 1;
            }
            return s;
        }
        let s = match self.free_shapes.pop() {
            Some(s) => s,
            None => {
                self.shapes.push(None);
                self.shapes.len() as u32 - 1
            }
        };
        self.shapes[s as usize] = Some((key.clone(), 1));
        self.shape_ids.insert(key, s);
        s
    }

    fn release_shape(&mut self, s: u32) {
        let Some((key, n)) = &mut self.shapes[s as usize] else { return };
        *n -= 1;
        if *n == 0 {
            self.shape_ids.remove(key);
            self.shapes[s as usize] = None;
            self.free_shapes.push(s);
        }
    }

    /// Takes a gang's unit out of its queue's groups (before its members change).
    fn unfile_gang(&mut self, gang: TaskId) {
        let Some(entry) = self.gangs.get_mut(&gang) else { return };
        self.broken_gangs.remove(&gang);
        let Some((q, key, pos)) = entry.filed.take() else { return };
        let qb = &mut self.queues[q as usize];
        if let Some(group) = qb.gangs.get_mut(&key) {
            group.remove(&pos);
            if group.is_empty() {
                qb.gangs.remove(&key);
            }
        }
        qb.unit_demand = qb.unit_demand.minus(entry.total);
    }

    /// Files a gang as one unit of its queue when its members make one, else marks it broken.
    fn file_gang(&mut self, gang: TaskId) {
        let Some(entry) = self.gangs.get_mut(&gang) else { return };
        let tasks: Vec<&SchedTask> = entry.members.values().map(|(t, _)| t).collect();
        if gang_problem(gang, &tasks).is_some() {
            self.broken_gangs.insert(gang);
            return;
        }
        let first = tasks[0];
        let level = first.gang.as_ref().map_or(TopologyLevel::Node, |g| g.topology);
        // Placement order, as `Cycle::gang_unit` puts them: largest first, then by rank.
        let mut order: Vec<&(SchedTask, u32)> = entry.members.values().collect();
        order.sort_by_key(|(t, _)| (Reverse(Amount::task(&t.resources)), t.gang.as_ref().map_or(0, |g| g.rank)));
        let shapes: Vec<u32> = order.iter().map(|(_, s)| *s).collect();
        let priority = tasks.iter().map(|t| t.priority).max().unwrap_or(first.priority);
        let seq = tasks.iter().map(|t| t.submit_seq).min().unwrap_or(first.submit_seq);
        let total = tasks.iter().fold(Amount::default(), |a, t| a.plus(Amount::task(&t.resources)));
        let q = self.queue_ids[first.queue.as_str()];
        let key: GangKey = (Reverse(priority), shapes, level, first.gang.as_ref().and_then(|g| g.same_value_of.clone()));
        entry.filed = Some((q, key.clone(), (seq, gang)));
        entry.total = total;
        let qb = &mut self.queues[q as usize];
        qb.gangs.entry(key).or_default().insert((seq, gang));
        qb.unit_demand = qb.unit_demand.plus(total);
    }
}
