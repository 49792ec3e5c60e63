//! Preemption: which running tasks yield so that a queued unit can start.
//!
//! Two reasons let a unit evict a preemptible running task:
//! - *urgency*: the unit's priority is higher than the victim's;
//! - *fair-share reclaim*: the unit's queue holds less than its fair share, and the
//!   victim's queue stays at or above its *protected share* after the eviction
//!   (`protected_fraction` × its fair share; the fraction is 1.0 unless the queue or
//!   `Config` sets one) and at least as close to its fair share as the unit's queue is.
//!
//! Either way a victim's queue never drops below its guarantee, never loses more tasks in
//! one cycle than its disruption budget, and the cycle never evicts more than
//! `Config::max_evictions_per_cycle`. A running gang member takes its whole gang with it.
//! Victims on a node are taken lowest priority first, then newest, and only while they
//! help (free a resource the unit still lacks); a plan is used only if the unit then fits
//! completely, so nothing is ever evicted for a unit that would still not start.

use flotilla_model::TaskId;

use crate::amount::{ext_fits, Amount};
use crate::cycle::{Cycle, Unit};
use crate::fairness::SHARE_EPSILON;
use crate::index::level_slot;
use crate::plan::{Plan, Tentative};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Urgency,
    Reclaim,
}

/// Workable gang eviction plans compared before the cheapest is taken.
const GANG_PLANS_COMPARED: usize = 8;

/// Victims that make room on one node, and what they cost.
pub(crate) struct VictimChoice {
    pub victims: Vec<(u32, Kind)>,
    pub max_priority: i32,
    pub oldest_seq: u64,
}

/// Who is asking for room.
pub(crate) struct EvictCtx {
    pub queue: usize,
    pub priority: i32,
    /// The queue is below its fair share, so it may reclaim from queues above their
    /// protected share.
    pub reclaim: bool,
    /// The preemptor queue's dominant share ÷ its fair share (below 1 when `reclaim`): a
    /// reclaim victim's queue keeps at least this ratio too, so that two queues below their
    /// fair shares (possible with a protected fraction below 1) never take turns evicting
    /// each other.
    pub share_ratio: f64,
    pub preemptor: TaskId,
}

impl Cycle<'_> {
    /// A plan that evicts running tasks so the unit fits, or `None`.
    pub(crate) fn try_preempt(&mut self, q: usize, unit: Unit, members: &[u32]) -> Option<Plan> {
        if self.preemptions.len() >= self.config.max_evictions_per_cycle {
            return None;
        }
        let priority = members.iter().map(|m| self.queued[*m as usize].priority).max()?;
        let reclaim = self.dominant_share(q) + SHARE_EPSILON < self.queues[q].fair_share;
        let urgent = self.min_evictable_priority.is_some_and(|p| p < priority);
        if !reclaim && !urgent {
            return None;
        }
        // Units of one shape, priority and queue fare alike: remember failures.
        let key_unit = match unit {
            Unit::Single(t) => Unit::Single(self.task_shape[t as usize]),
            Unit::Gang(g) => Unit::Gang(self.gangs[g as usize].shape),
        };
        if self.preempt_failed.contains(&(key_unit, priority, q)) {
            return None;
        }
        self.stats.placement_attempts += 1;
        let preemptor = match unit {
            Unit::Single(t) => self.queued[t as usize].id,
            Unit::Gang(g) => self.gangs[g as usize].id,
        };
        let share_ratio = if reclaim { self.dominant_share(q) / self.queues[q].fair_share } else { 0.0 };
        let ctx = EvictCtx { queue: q, priority, reclaim, share_ratio, preemptor };
        let tent = match unit {
            Unit::Single(t) => self.plan_single_evicting(t, &ctx),
            Unit::Gang(g) => self.plan_gang_evicting(g, &ctx),
        };
        let Some(tent) = tent else {
            self.preempt_failed.insert((key_unit, priority, q));
            return None;
        };
        debug_assert!(tent.assignments.len() == members.len());
        Some(self.describe_plan(tent, &ctx))
    }

    /// The cheapest domain (lowest victim priority, then fewest victims) for a gang,
    /// among the most promising ones: domains are tried most free GPUs first, and the
    /// search stops after [`GANG_PLANS_COMPARED`] workable plans. Looking at every rack of
    /// a large federation for every gang would cost far more than the small gain in
    /// victims; the bound keeps one preemption attempt near O(nodes in a few domains).
    fn plan_gang_evicting(&self, g: u32, ctx: &EvictCtx) -> Option<Tentative> {
        let gang = &self.gangs[g as usize];
        let lead = &self.shapes[self.task_shape[gang.members[0] as usize] as usize];
        let index = &self.index;
        let slot = level_slot(gang.level);
        // A `sameValueOf` gang's domains are its label's values (see `label_domains`).
        let label_domains = gang.label.as_deref().map(|key| self.label_domains(key, lead));
        // (free GPUs, domain or node)
        let mut candidates: Vec<(u64, u32)> = match (&label_domains, slot) {
            (Some(domains), _) => domains
                .iter()
                .enumerate()
                .map(|(d, (_, nodes))| {
                    let free: u64 = nodes.iter().filter(|&&n| lead.allows(index, n)).map(|&n| index.nodes[n as usize].free().gpu).sum();
                    (free, d as u32)
                })
                .collect(),
            (None, None) => index
                .schedulable
                .iter()
                .filter(|&&n| lead.allows(index, n) && gang.total.fits_in(index.nodes[n as usize].cap))
                .map(|&n| (index.nodes[n as usize].free().gpu, n))
                .collect(),
            (None, Some(slot)) => index.domains[slot]
                .iter()
                .enumerate()
                .filter(|(_, dom)| !dom.nodes.is_empty() && lead.clusters.as_ref().is_none_or(|cs| cs.binary_search(&dom.cluster).is_ok()))
                .map(|(d, _)| (index.domain_gpu_bound(slot, d as u32, &lead.models, 1).map_or(0, |(_, free)| free), d as u32))
                .collect(),
        };
        candidates.sort_unstable_by_key(|&(free, d)| (std::cmp::Reverse(free), d));
        // Too few evictions left to free the GPUs the gang lacks even in the best domain?
        let lacking = gang.total.gpu.saturating_sub(candidates.first().map_or(0, |c| c.0));
        if lacking > 0 {
            let left = self.config.max_evictions_per_cycle.saturating_sub(self.preemptions.len()) as u64;
            if self.max_victim_gpu == 0 || lacking.div_ceil(self.max_victim_gpu) > left {
                return None;
            }
        }
        let mut best: Option<Tentative> = None;
        let mut workable = 0usize;
        for (_, d) in candidates {
            let nodes = match (&label_domains, slot) {
                (Some(domains), _) => &domains[d as usize].1[..],
                (None, None) => std::slice::from_ref(&index.schedulable[index.schedulable.binary_search(&d).unwrap_or(0)]),
                (None, Some(slot)) => &index.domains[slot][d as usize].nodes[..],
            };
            let bound = best.as_ref().map(|b| b.cost());
            if let Some(t) = self.plan_members(nodes, &gang.members, Some(ctx), bound) {
                if best.as_ref().is_none_or(|b| t.cost() < b.cost()) {
                    best = Some(t);
                }
            }
            if best.is_some() {
                workable += 1;
                if workable >= GANG_PLANS_COMPARED {
                    break;
                }
            }
        }
        best
    }

    /// Victims on node `n` that make room for `need`, in victim order.
    pub(crate) fn choose_victims(&self, n: u32, need: Amount, ctx: &EvictCtx, tent: &Tentative) -> Option<VictimChoice> {
        let mut avail = tent.free_on(&self.index, n);
        let mut scratch = Tentative::default();
        let mut choice = VictimChoice { victims: Vec::new(), max_priority: i32::MIN, oldest_seq: u64::MAX };
        let mut group: Vec<u32> = Vec::new();
        for &r in &self.index.nodes[n as usize].running {
            if need.fits_in(avail) {
                break;
            }
            let run = &self.running[r as usize];
            if !run.evictable || run.evicted || tent.is_victim(r) || scratch.is_victim(r) {
                continue;
            }
            let lacking = need.minus(avail);
            let helps = (lacking.gpu > 0 && run.amount.gpu > 0)
                || (lacking.cpu_millis > 0 && run.amount.cpu_millis > 0)
                || (lacking.memory_bytes > 0 && run.amount.memory_bytes > 0);
            if !helps {
                continue;
            }
            group.clear();
            if !self.victim_group(r, &mut group) {
                continue;
            }
            let Some(kind) = self.victim_kind(&group, ctx, tent, &scratch) else { continue };
            let start = choice.victims.len();
            choice.victims.extend(group.iter().map(|g| (*g, kind)));
            // The scratch plan only feeds the budget and share checks of later candidates.
            scratch.add_victims(self, &choice.victims[start..]);
            for &g in &group {
                let member = &self.running[g as usize];
                if member.node == Some(n) {
                    avail = avail.plus(member.amount);
                }
                choice.max_priority = choice.max_priority.max(member.task.priority);
                choice.oldest_seq = choice.oldest_seq.min(member.task.submit_seq);
            }
        }
        need.fits_in(avail).then_some(choice)
    }

    /// A single task's cheapest room: running tasks are visited in global victim order
    /// (lowest priority, then newest), and the first node where the task fits after
    /// evicting victims from that node, in the same order, wins. Each node is looked at
    /// once; nodes the task avoids are used only if no other node works.
    fn plan_single_evicting(&self, t: u32, ctx: &EvictCtx) -> Option<Tentative> {
        let task = &self.queued[t as usize];
        let shape = &self.shapes[self.task_shape[t as usize] as usize];
        let need = shape.amount;
        let avoid = if task.avoid_nodes.is_empty() && task.avoid_clusters.is_empty() { Vec::new() } else { self.avoid_set(task) };
        let mut visited = vec![false; self.index.nodes.len()];
        let mut fallback: Option<Tentative> = None;
        for &r in &self.victim_order {
            let run = &self.running[r as usize];
            if run.task.priority >= ctx.priority && !ctx.reclaim {
                // Sorted by priority: no later task is an urgency victim either.
                break;
            }
            let Some(n) = run.node else { continue };
            if run.evicted || std::mem::replace(&mut visited[n as usize], true) {
                continue;
            }
            let ns = &self.index.nodes[n as usize];
            if !need.fits_in(ns.cap) || !ext_fits(shape.ext, &ns.cap_ext, &ns.used_ext, None) || !shape.allows(&self.index, n) {
                continue;
            }
            let empty = Tentative::default();
            let Some(choice) = self.choose_victims(n, need, ctx, &empty) else { continue };
            let mut tent = Tentative::default();
            tent.add_victims(self, &choice.victims);
            tent.add_member(t, n, need, shape.ext);
            if avoid.binary_search(&n).is_err() {
                return Some(tent);
            }
            fallback = fallback.or(Some(tent));
        }
        fallback
    }

    /// Fills `group` with the running tasks that go if `r` goes: its whole gang. False
    /// when some member may not go (evicting the rest would leave a partial gang).
    fn victim_group(&self, r: u32, group: &mut Vec<u32>) -> bool {
        let run = &self.running[r as usize];
        let Some(g) = &run.task.gang else {
            group.push(r);
            return true;
        };
        let Some(members) = self.running_gangs.get(&g.id) else { return false };
        for &m in members {
            let mr = &self.running[m as usize];
            if mr.evicted {
                continue;
            }
            if !mr.evictable {
                return false;
            }
            group.push(m);
        }
        true
    }

    /// Why `group` may be evicted for `ctx`, if it may: bounds, guarantees and shares.
    fn victim_kind(&self, group: &[u32], ctx: &EvictCtx, tent: &Tentative, scratch: &Tentative) -> Option<Kind> {
        let planned = tent.victims.len() + scratch.victims.len() + group.len();
        if self.preemptions.len().saturating_add(planned) > self.config.max_evictions_per_cycle {
            return None;
        }
        let mut reclaim = ctx.reclaim;
        let mut max_priority = i32::MIN;
        // Whether queue `q` may lose `amount` in `count` more tasks; clears `reclaim` when
        // the loss would take it below its fair share (or it is the preemptor's queue).
        let mut queue_may_lose = |q: usize, amount: Amount, count: u32| -> bool {
            let qs = &self.queues[q];
            let (a1, c1) = tent.removed_from(q);
            let (a2, c2) = scratch.removed_from(q);
            if u64::from(qs.evicted) + u64::from(c1) + u64::from(c2) + u64::from(count) > u64::from(qs.queue.disruption_budget) {
                return false;
            }
            let after = qs.alloc.minus(a1).minus(a2).minus(amount);
            if !qs.guarantee.fits_in(after) {
                return false;
            }
            let share = self.index.share(after) + SHARE_EPSILON;
            if q == ctx.queue || share < qs.protected_fraction * qs.fair_share || share < ctx.share_ratio * qs.fair_share {
                reclaim = false;
            }
            true
        };
        if let [only] = group {
            // The common case, without building a per-queue table.
            let run = &self.running[*only as usize];
            max_priority = run.task.priority;
            if !queue_may_lose(run.queue?, run.amount, 1) {
                return None;
            }
        } else {
            let mut per_queue: Vec<(usize, Amount, u32)> = Vec::new();
            for &g in group {
                let run = &self.running[g as usize];
                let q = run.queue?;
                max_priority = max_priority.max(run.task.priority);
                match per_queue.iter_mut().find(|(x, _, _)| *x == q) {
                    Some(e) => {
                        e.1 = e.1.plus(run.amount);
                        e.2 += 1;
                    }
                    None => per_queue.push((q, run.amount, 1)),
                }
            }
            for (q, amount, count) in per_queue {
                if !queue_may_lose(q, amount, count) {
                    return None;
                }
            }
        }
        if max_priority < ctx.priority {
            Some(Kind::Urgency)
        } else if reclaim {
            Some(Kind::Reclaim)
        } else {
            None
        }
    }

    fn describe_plan(&self, tent: Tentative, ctx: &EvictCtx) -> Plan {
        let queue = &self.queues[ctx.queue].queue.name;
        let victims = tent
            .victims
            .iter()
            .map(|&(r, kind)| {
                let run = &self.running[r as usize];
                let mut reason = match kind {
                    Kind::Urgency => {
                        format!(
                            "preempted by task {} of queue {queue} (priority {} over {})",
                            ctx.preemptor, ctx.priority, run.task.priority
                        )
                    }
                    Kind::Reclaim => {
                        let vq = run.queue.map(|q| self.queues[q].queue.name.as_str()).unwrap_or("");
                        format!("preempted so queue {queue} can reach its fair share (queue {vq} is above its protected share)")
                    }
                };
                if let Some(g) = &run.task.gang {
                    reason.push_str(&format!("; gang {} stops whole", g.id));
                }
                (r, reason)
            })
            .collect();
        Plan { assignments: tent.assignments, victims }
    }
}
