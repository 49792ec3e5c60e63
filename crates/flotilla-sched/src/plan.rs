//! Tentative placement of several tasks at once (a gang, or a task that needs victims),
//! checked in full before anything is committed: all or nothing.

use std::collections::BTreeMap;

use crate::amount::{ext_add, ext_fits, Amount};
use crate::cycle::Cycle;
use crate::index::NodeIndex;
use crate::preempt::{EvictCtx, Kind};

/// What a unit's placement commits: victims to stop (with the reason each is told) and
/// `(queued task, node)` leases.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub assignments: Vec<(u32, u32)>,
    pub victims: Vec<(u32, String)>,
}

#[derive(Clone, Debug)]
struct NodeDelta {
    node: u32,
    /// Resources the plan's members take on the node.
    extra: Amount,
    ext_extra: BTreeMap<String, u64>,
    /// Resources the plan's victims give back on the node.
    freed: Amount,
    members: u32,
}

/// A plan being built: nothing in the cycle changes until it is applied.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tentative {
    deltas: Vec<NodeDelta>,
    pub assignments: Vec<(u32, u32)>,
    pub victims: Vec<(u32, Kind)>,
    /// Per victim queue: resources and number of tasks this plan takes from it.
    pub queue_removed: Vec<(usize, Amount, u32)>,
    max_victim_priority: Option<i32>,
}

impl Tentative {
    fn delta(&self, n: u32) -> Option<&NodeDelta> {
        self.deltas.iter().find(|d| d.node == n)
    }

    fn delta_mut(&mut self, n: u32) -> &mut NodeDelta {
        let pos = match self.deltas.iter().position(|d| d.node == n) {
            Some(p) => p,
            None => {
                self.deltas.push(NodeDelta {
                    node: n,
                    extra: Amount::default(),
                    ext_extra: BTreeMap::new(),
                    freed: Amount::default(),
                    members: 0,
                });
                self.deltas.len() - 1
            }
        };
        &mut self.deltas[pos]
    }

    /// Free resources on `n` as if the plan were applied.
    pub fn free_on(&self, index: &NodeIndex<'_>, n: u32) -> Amount {
        let ns = &index.nodes[n as usize];
        match self.delta(n) {
            None => ns.free(),
            Some(d) => ns.cap.minus(ns.used.minus(d.freed).plus(d.extra)),
        }
    }

    /// Room for `need` on `n`. Extended resources freed by victims are not counted:
    /// preempting for them is not supported, which errs on the side of not evicting.
    pub fn fits(&self, index: &NodeIndex<'_>, n: u32, need: Amount, ext: &BTreeMap<String, u64>) -> bool {
        let ns = &index.nodes[n as usize];
        need.fits_in(self.free_on(index, n)) && ext_fits(ext, &ns.cap_ext, &ns.used_ext, self.delta(n).map(|d| &d.ext_extra))
    }

    fn has_members(&self, n: u32) -> bool {
        self.delta(n).is_some_and(|d| d.members > 0)
    }

    pub fn is_victim(&self, r: u32) -> bool {
        self.victims.iter().any(|(v, _)| *v == r)
    }

    pub fn removed_from(&self, q: usize) -> (Amount, u32) {
        self.queue_removed.iter().find(|(x, _, _)| *x == q).map_or((Amount::default(), 0), |(_, a, c)| (*a, *c))
    }

    /// (highest victim priority, victims): the preemption cost plans are compared by.
    pub fn cost(&self) -> (i32, usize) {
        (self.max_victim_priority.unwrap_or(i32::MIN), self.victims.len())
    }

    pub(crate) fn add_member(&mut self, t: u32, n: u32, need: Amount, ext: &BTreeMap<String, u64>) {
        let d = self.delta_mut(n);
        d.extra = d.extra.plus(need);
        ext_add(&mut d.ext_extra, ext);
        d.members += 1;
        self.assignments.push((t, n));
    }

    pub(crate) fn add_victims(&mut self, cycle: &Cycle<'_>, group: &[(u32, Kind)]) {
        for &(r, kind) in group {
            let run = &cycle.running[r as usize];
            if let Some(n) = run.node {
                let d = self.delta_mut(n);
                d.freed = d.freed.plus(run.amount);
            }
            if let Some(q) = run.queue {
                match self.queue_removed.iter_mut().find(|(x, _, _)| *x == q) {
                    Some(e) => {
                        e.1 = e.1.plus(run.amount);
                        e.2 += 1;
                    }
                    None => self.queue_removed.push((q, run.amount, 1)),
                }
            }
            let p = run.task.priority;
            self.max_victim_priority = Some(self.max_victim_priority.map_or(p, |m| m.max(p)));
            self.victims.push((r, kind));
        }
    }
}

impl Cycle<'_> {
    /// Places every member on `nodes` (one topology domain), or returns `None`.
    ///
    /// Members go one by one, largest first, each to the node that matches most of the
    /// member's preferred affinity, then keeps the gang together (nodes already holding
    /// members first), then packs tightest, then is
    /// cheapest. With `evict`, a member that fits nowhere may take the node whose
    /// victims cost least (lowest priority, then fewest); plans that already cost at
    /// least `bound` are abandoned, since an earlier, cheaper one exists.
    pub(crate) fn plan_members(
        &self,
        nodes: &[u32],
        members: &[u32],
        evict: Option<&EvictCtx>,
        bound: Option<(i32, usize)>,
    ) -> Option<Tentative> {
        let index = &self.index;
        let mut tent = Tentative::default();
        for &m in members {
            let task = &self.queued[m as usize];
            let shape = &self.shapes[self.task_shape[m as usize] as usize];
            let need = shape.amount;
            let avoid = if task.avoid_nodes.is_empty() && task.avoid_clusters.is_empty() { Vec::new() } else { self.avoid_set(task) };
            // Lower is better: not avoided, most preferred-affinity weight, next to members.
            type Score = (bool, std::cmp::Reverse<u32>, bool, u64, u64, u64, u64, u32);
            let mut best: Option<Score> = None;
            for &n in nodes {
                if !tent.fits(index, n, need, shape.ext) || !shape.allows(index, n) {
                    continue;
                }
                let free = tent.free_on(index, n).minus(need);
                let price = index.nodes[n as usize].price_key;
                let score = (
                    avoid.binary_search(&n).is_ok(),
                    std::cmp::Reverse(shape.affinity_score(index, n)),
                    !tent.has_members(n),
                    free.gpu,
                    price,
                    free.cpu_millis,
                    free.memory_bytes,
                    n,
                );
                if best.is_none_or(|b| score < b) {
                    best = Some(score);
                }
            }
            if let Some(b) = best {
                tent.add_member(m, b.7, need, shape.ext);
                continue;
            }
            let ctx = evict?;
            // Cheapest victims first: not on an avoided node, lowest priority, fewest, newest.
            type EvictScore = (bool, i32, usize, std::cmp::Reverse<u64>, u32);
            let mut best_evict: Option<(EvictScore, Vec<(u32, Kind)>)> = None;
            for &n in nodes {
                let ns = &index.nodes[n as usize];
                if !need.fits_in(ns.cap) || !ext_fits(shape.ext, &ns.cap_ext, &ns.used_ext, tent.delta(n).map(|d| &d.ext_extra)) {
                    continue;
                }
                if !shape.allows(index, n) {
                    continue;
                }
                if let Some(choice) = self.choose_victims(n, need, ctx, &tent) {
                    let score = (
                        avoid.binary_search(&n).is_ok(),
                        choice.max_priority,
                        choice.victims.len(),
                        std::cmp::Reverse(choice.oldest_seq),
                        n,
                    );
                    if best_evict.as_ref().is_none_or(|(b, _)| score < *b) {
                        best_evict = Some((score, choice.victims));
                    }
                }
            }
            let (score, group) = best_evict?;
            tent.add_victims(self, &group);
            tent.add_member(m, score.4, need, shape.ext);
            if bound.is_some_and(|b| tent.cost() >= b) {
                return None;
            }
        }
        Some(tent)
    }
}
