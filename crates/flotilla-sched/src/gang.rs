//! Gangs: members that start together inside one topology domain, or not at all.
//!
//! A gang is one unit of its queue, ordered by its most urgent member. Placement looks at
//! candidate domains (one node, or every rack / zone / cluster), best fit first: the
//! domain with the fewest free GPUs that could still hold the gang, so big empty domains
//! stay free for big gangs. A gang with `sameValueOf: <label>` has instead one domain per
//! (cluster, value of that label), built from the nodes that carry the label; nodes
//! without it are never candidates. Domains whose GPU histogram shows they cannot hold the gang
//! are skipped without looking at their nodes. Inside a domain, members are placed with
//! `Cycle::plan_members`, which commits nothing unless every member fits.
//!
//! Members need not be alike: a gang of several templates (a launcher and its GPU workers)
//! has members of different resources and placement. Each member keeps its own shape, they
//! are placed largest first, the gang's shape key lists every member's shape in that order
//! (so one mix failing never skips another), and the domain bounds count the nodes and
//! GPU models any member may use.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use flotilla_model::{SchedTask, TaskId, TopologyLevel};

use crate::amount::Amount;
use crate::cycle::{Cycle, Unit};
use crate::index::level_slot;
use crate::placement::best_node;
use crate::plan::Tentative;

pub(crate) struct GangUnit {
    pub id: TaskId,
    /// Queued tasks, in placement order: largest first, then by rank.
    pub members: Vec<u32>,
    pub level: TopologyLevel,
    /// `sameValueOf`: the node label whose one value (within one cluster) is the domain.
    pub label: Option<String>,
    pub total: Amount,
    /// Gangs with the same member shapes and level fit (or fail) alike.
    pub shape: u32,
    /// Position in its queue: most urgent member's priority, earliest submit, id.
    pub order: (Reverse<i32>, u64, TaskId),
}

/// Why the queued members of gang `id` cannot be one unit, if they cannot: they disagree
/// on queue, size, roles (a gang of several templates) or domain, some are missing, or
/// their ranks are not `0..size`.
pub(crate) fn gang_problem(id: TaskId, members: &[&SchedTask]) -> Option<String> {
    let first = members.first()?;
    let g0 = first.gang.as_ref()?;
    let consistent = members.iter().all(|t| {
        t.queue == first.queue
            && t.gang.as_ref().is_some_and(|g| {
                g.size == g0.size && g.topology == g0.topology && g.same_value_of == g0.same_value_of && g.roles == g0.roles
            })
    });
    let count = members.len() as u64;
    let size = u64::from(g0.size);
    if !consistent {
        Some(format!("gang {id}: members disagree on queue, size, roles or topology"))
    } else if count < size {
        Some(format!("gang {id}: {count} of {size} members queued; waiting for the rest"))
    } else if count > size {
        Some(format!("gang {id}: {count} members queued but its size is {size}"))
    } else {
        let mut ranks: Vec<u32> = members.iter().filter_map(|t| t.gang.as_ref().map(|g| g.rank)).collect();
        ranks.sort_unstable();
        let ok = ranks.iter().enumerate().all(|(i, r)| u64::from(*r) == i as u64);
        (!ok).then(|| format!("gang {id}: ranks are not 0..{size} each once"))
    }
}

impl<'a> Cycle<'a> {
    /// Checks a gang's members agree with each other and are all queued, then adds the
    /// gang to its queue as one unit; otherwise every member gets the reason.
    pub(crate) fn admit_gang(&mut self, id: TaskId, members: Vec<u32>) {
        let tasks: Vec<&SchedTask> = members.iter().map(|m| self.queued[*m as usize]).collect();
        if let Some(r) = gang_problem(id, &tasks) {
            let r = self.reasons.intern(r);
            for m in members {
                self.task_reason[m as usize] = Some(r);
            }
            return;
        }
        let Some(q) = self.task_queue[members[0] as usize] else { return };
        let unit = self.gang_unit(id, members);
        self.queues[q].units.push(Unit::Gang(unit));
    }

    /// Makes a consistent, complete gang (see [`gang_problem`]) one unit: members in
    /// placement order, their total, and the gang's shape.
    pub(crate) fn gang_unit(&mut self, id: TaskId, mut members: Vec<u32>) -> u32 {
        let queued = &self.queued;
        let first = queued[members[0] as usize];
        let level = first.gang.as_ref().map_or(TopologyLevel::Node, |g| g.topology);
        let label = first.gang.as_ref().and_then(|g| g.same_value_of.clone());
        members.sort_by_key(|m| {
            let t = &queued[*m as usize];
            (Reverse(Amount::task(&t.resources)), t.gang.as_ref().map_or(0, |g| g.rank))
        });
        let total = members.iter().fold(Amount::default(), |a, m| a.plus(Amount::task(&queued[*m as usize].resources)));
        let priority = members.iter().map(|m| queued[*m as usize].priority).max().unwrap_or(first.priority);
        let seq = members.iter().map(|m| queued[*m as usize].submit_seq).min().unwrap_or(first.submit_seq);
        let key = (members.iter().map(|m| self.task_shape[*m as usize]).collect::<Vec<u32>>(), level, label.clone());
        let next = self.gang_shapes.len() as u32;
        let shape = *self.gang_shapes.entry(key).or_insert(next);
        if shape == next {
            self.gang_shape_failed.push(None);
        }
        self.gangs.push(GangUnit { id, members, level, label, total, shape, order: (Reverse(priority), seq, id) });
        self.gangs.len() as u32 - 1
    }

    /// Places a whole gang on free capacity, or says why not.
    pub(crate) fn place_gang(&mut self, g: u32) -> Result<Vec<(u32, u32)>, u32> {
        let shape = self.gangs[g as usize].shape as usize;
        if let Some((generation, reason)) = self.gang_shape_failed[shape] {
            if generation == self.generation {
                self.stats.shapes_skipped += self.gangs[g as usize].members.len();
                return Err(reason);
            }
        }
        self.stats.placement_attempts += 1;
        if let Some(t) = self.find_gang_domain(g) {
            return Ok(t.assignments);
        }
        let reason = self.reasons.intern(self.diagnose_gang(g));
        self.gang_shape_failed[shape] = Some((self.generation, reason));
        Err(reason)
    }

    fn find_gang_domain(&self, g: u32) -> Option<Tentative> {
        let gang = &self.gangs[g as usize];
        let index = &self.index;
        let lead = &self.shapes[self.task_shape[gang.members[0] as usize] as usize];
        // Members of a gang of several templates have shapes of their own: a node any of
        // them may use counts towards what a domain could hold.
        let mut member_shapes: Vec<u32> = gang.members.iter().map(|m| self.task_shape[*m as usize]).collect();
        member_shapes.sort_unstable();
        member_shapes.dedup();
        let shapes: Vec<&crate::placement::Shape<'_>> = member_shapes.iter().map(|s| &self.shapes[*s as usize]).collect();
        if let Some(key) = &gang.label {
            let domains = self.label_domains(key, lead);
            let mut candidates: Vec<(u64, bool, usize)> = Vec::new();
            for (d, (cluster, nodes)) in domains.iter().enumerate() {
                let free: u64 =
                    nodes.iter().filter(|&&n| shapes.iter().any(|s| s.allows(index, n))).map(|&n| index.nodes[n as usize].free().gpu).sum();
                if free < gang.total.gpu {
                    continue;
                }
                candidates.push((free, lead.preferred.is_some_and(|p| p != *cluster), d));
            }
            candidates.sort_unstable();
            return candidates.into_iter().find_map(|(_, _, d)| self.plan_members(&domains[d].1, &gang.members, None, None));
        }
        let Some(slot) = level_slot(gang.level) else {
            // One node: the index finds the tightest node with room for the whole gang's
            // total; `plan_members` then checks each member's own filters.
            let n = best_node(index, lead, gang.total, &|n| self.plan_members(&[n], &gang.members, None, None).is_some())?;
            return self.plan_members(&[n], &gang.members, None, None);
        };
        // The GPU histogram bounds how many of the members that want GPUs a domain could
        // hold: with the fewest any of them wants each, on the models any of them may use.
        // (Members without GPUs, a launcher say, are left to `plan_members`.)
        let gpu_members: Vec<&crate::placement::Shape<'_>> =
            gang.members.iter().map(|m| &self.shapes[self.task_shape[*m as usize] as usize]).filter(|s| s.amount.gpu > 0).collect();
        let gpu_each = gpu_members.iter().map(|s| s.amount.gpu).min().unwrap_or(0);
        let mut models: Vec<u32> = shapes.iter().filter(|s| s.amount.gpu > 0).flat_map(|s| s.models.iter().copied()).collect();
        models.sort_unstable();
        models.dedup();
        let mut candidates: Vec<(u64, bool, u32)> = Vec::new();
        for (d, dom) in index.domains[slot].iter().enumerate() {
            if dom.nodes.is_empty() || lead.clusters.as_ref().is_some_and(|cs| cs.binary_search(&dom.cluster).is_err()) {
                continue;
            }
            let free = match index.domain_gpu_bound(slot, d as u32, &models, gpu_each) {
                Some((fit, free)) if fit >= gpu_members.len() as u64 && free >= gang.total.gpu => free,
                Some(_) => continue,
                None => 0,
            };
            let not_preferred = lead.preferred.is_some_and(|p| p != dom.cluster);
            candidates.push((free, not_preferred, d as u32));
        }
        candidates.sort_unstable();
        candidates.into_iter().find_map(|(_, _, d)| self.plan_members(&index.domains[slot][d as usize].nodes, &gang.members, None, None))
    }

    /// The domains of a `sameValueOf: key` gang: the schedulable nodes that carry the label
    /// (in the lead member's allowed clusters), grouped by (cluster, value), in that order.
    /// O(nodes); only such gangs pay it, and a gang shape that failed is not tried again
    /// until capacity is freed.
    pub(crate) fn label_domains(&self, key: &str, lead: &crate::placement::Shape<'_>) -> Vec<(u32, Vec<u32>)> {
        let index = &self.index;
        let mut domains: BTreeMap<(u32, &str), Vec<u32>> = BTreeMap::new();
        for &n in &index.schedulable {
            let ns = &index.nodes[n as usize];
            if lead.clusters.as_ref().is_some_and(|cs| cs.binary_search(&ns.cluster).is_err()) {
                continue;
            }
            if let Some(value) = ns.node.labels.get(key) {
                domains.entry((ns.cluster, value.as_str())).or_default().push(n);
            }
        }
        domains.into_iter().map(|((cluster, _), nodes)| (cluster, nodes)).collect()
    }

    fn diagnose_gang(&self, g: u32) -> String {
        let gang = &self.gangs[g as usize];
        for &m in &gang.members {
            let shape = &self.shapes[self.task_shape[m as usize] as usize];
            let any_node = self
                .index
                .schedulable
                .iter()
                .any(|&n| shape.allows(&self.index, n) && shape.amount.fits_in(self.index.nodes[n as usize].cap));
            if !any_node {
                return format!("gang member {}", crate::placement::diagnose(&self.index, shape));
            }
        }
        let lead = &self.shapes[self.task_shape[gang.members[0] as usize] as usize];
        let same = gang.members.iter().all(|m| self.shapes[self.task_shape[*m as usize] as usize].amount == lead.amount);
        let what = if !same {
            format!("tasks needing {} in all", gang.total.describe(&Default::default()))
        } else if lead.amount.gpu > 0 {
            lead.gpu_words(lead.amount.gpu, "")
        } else {
            format!("({})", lead.amount.describe(lead.ext))
        };
        match &gang.label {
            Some(key)
                if !self
                    .index
                    .schedulable
                    .iter()
                    .any(|&n| lead.allows(&self.index, n) && self.index.nodes[n as usize].node.labels.contains_key(key)) =>
            {
                format!("no schedulable node that matches the gang's placement has label {key} (sameValueOf)")
            }
            Some(key) => format!("no nodes sharing one value of label {key} with room for gang of {} x {what}", gang.members.len()),
            None => format!("no {} with room for gang of {} x {what}", gang.level.as_str(), gang.members.len()),
        }
    }
}
