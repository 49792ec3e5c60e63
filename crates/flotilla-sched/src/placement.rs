//! Where one task may run (filters) and where it runs best (the index search).
//!
//! A task's *shape* is its resources plus its placement constraints. Tasks of one shape
//! are interchangeable for placement, so the filters are resolved once per shape
//! (GPU model and cluster names to numbers) and a shape that failed to fit is not
//! searched again until capacity is freed (see `Cycle::place_single`).
//!
//! Filters (hard): free resources, GPU model, allowed clusters, node selector, required
//! node affinity, taints, `unschedulable`, spot policy. Preferences (soft), in order: the
//! summed weights of the preferred affinity terms a node matches (highest first), tight
//! packing (least of the task's main resource left over), price per hour, the preferred
//! cluster, then (cluster, node name). `avoid_nodes` / `avoid_clusters` are softer still: such nodes are
//! used only when no other node fits.

use std::collections::BTreeMap;

use flotilla_model::{normalize_gpu_model, Placement, SchedTask, SpotPolicy};

use crate::amount::{ext_fits, Amount};
use crate::index::{Key, NodeIndex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ModelReq {
    Any,
    One(u32),
    /// The task names a GPU model no node has.
    Missing,
}

pub(crate) struct Shape<'a> {
    pub amount: Amount,
    pub ext: &'a BTreeMap<String, u64>,
    pub placement: &'a Placement,
    pub model: ModelReq,
    /// The GPU-model sets to search.
    pub models: Vec<u32>,
    /// `None`: every cluster. `Some`: the known allowed clusters, sorted (maybe none).
    pub clusters: Option<Vec<u32>>,
    pub preferred: Option<u32>,
    /// The distinct preferred-affinity scores of the nodes the filters allow, highest
    /// first; empty when the task prefers nothing (every node scores alike).
    pub affinity_levels: Vec<u32>,
}

impl<'a> Shape<'a> {
    pub fn new(task: &'a SchedTask, index: &NodeIndex<'_>) -> Shape<'a> {
        let p = &task.placement;
        let model = match &p.gpu_model {
            None => ModelReq::Any,
            Some(m) => {
                let find = |name: &str| index.models.iter().skip(1).position(|x| x == name).map(|i| i as u32 + 1);
                match find(m).or_else(|| find(&normalize_gpu_model(m))) {
                    Some(i) => ModelReq::One(i),
                    None => ModelReq::Missing,
                }
            }
        };
        let models = match model {
            ModelReq::Any => (0..index.model_count() as u32).collect(),
            ModelReq::One(m) => vec![m],
            ModelReq::Missing => Vec::new(),
        };
        let clusters = (!p.allowed_clusters.is_empty()).then(|| {
            let mut ids: Vec<u32> =
                p.allowed_clusters.iter().filter_map(|c| index.clusters.binary_search(c).ok().map(|i| i as u32)).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        });
        let preferred = p.preferred_cluster.as_ref().and_then(|c| index.clusters.binary_search(c).ok().map(|i| i as u32));
        let mut shape = Shape {
            amount: Amount::task(&task.resources),
            ext: &task.resources.extended,
            placement: p,
            model,
            models,
            clusters,
            preferred,
            affinity_levels: Vec::new(),
        };
        if !p.affinity.preferred.is_empty() {
            // Node labels do not change within a cycle, so the scores a search can meet are
            // known up front; `best_node` searches them best first. O(nodes) once per shape.
            let mut levels: Vec<u32> =
                index.schedulable.iter().filter(|&&n| shape.allows(index, n)).map(|&n| shape.affinity_score(index, n)).collect();
            levels.sort_unstable_by(|a, b| b.cmp(a));
            levels.dedup();
            shape.affinity_levels = levels;
        }
        shape
    }

    /// The summed weights of the preferred affinity terms node `idx` matches.
    pub fn affinity_score(&self, index: &NodeIndex<'_>, idx: u32) -> u32 {
        if self.placement.affinity.preferred.is_empty() {
            return 0;
        }
        self.placement.affinity.preferred_score(&index.nodes[idx as usize].node.labels)
    }

    pub fn uses_cluster_sets(&self) -> bool {
        self.clusters.is_some() || self.preferred.is_some()
    }

    /// The hard filters that do not depend on free resources.
    pub fn allows(&self, index: &NodeIndex<'_>, idx: u32) -> bool {
        let n = &index.nodes[idx as usize];
        if !n.schedulable {
            return false;
        }
        match self.model {
            ModelReq::Any => {}
            ModelReq::One(m) if n.model == m => {}
            _ => return false,
        }
        if let Some(cs) = &self.clusters {
            if cs.binary_search(&n.cluster).is_err() {
                return false;
            }
        }
        match self.placement.spot {
            SpotPolicy::Allowed => {}
            SpotPolicy::Required if n.node.spot => {}
            SpotPolicy::Never if !n.node.spot => {}
            _ => return false,
        }
        if !self.placement.node_selector.iter().all(|(k, v)| n.node.labels.get(k) == Some(v)) {
            return false;
        }
        if !self.placement.affinity.required_match(&n.node.labels) {
            return false;
        }
        !n.hard_taints || n.node.tolerated_by(&self.placement.tolerations)
    }

    /// Filters plus room: could the task start on this node now?
    pub fn fits_now(&self, index: &NodeIndex<'_>, idx: u32, need: Amount) -> bool {
        let n = &index.nodes[idx as usize];
        need.fits_in(n.free()) && ext_fits(self.ext, &n.cap_ext, &n.used_ext, None) && self.allows(index, idx)
    }

    /// "8 H100 GPUs" (or with `adjective`, "8 free H100 GPUs") for this shape.
    pub fn gpu_words(&self, gpu: u64, adjective: &str) -> String {
        let model = self.placement.gpu_model.as_deref().map(|m| format!("{m} ")).unwrap_or_default();
        format!("{gpu} {adjective}{model}GPU{}", if gpu == 1 { "" } else { "s" })
    }

    /// The constraints a person would check first when nothing matches.
    pub fn describe_constraints(&self) -> String {
        let p = self.placement;
        let mut parts = Vec::new();
        if let Some(m) = &p.gpu_model {
            parts.push(format!("gpu model {m}"));
        }
        if !p.allowed_clusters.is_empty() {
            parts.push(format!("clusters {}", p.allowed_clusters.join(",")));
        }
        if !p.node_selector.is_empty() {
            let sel: Vec<String> = p.node_selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parts.push(format!("node selector {}", sel.join(",")));
        }
        if !p.affinity.required.is_empty() {
            let terms: Vec<String> = p.affinity.required.iter().map(|r| r.to_string()).collect();
            parts.push(format!("node affinity {}", terms.join(", ")));
        }
        match p.spot {
            SpotPolicy::Allowed => {}
            SpotPolicy::Required => parts.push("spot required".to_string()),
            SpotPolicy::Never => parts.push("no spot".to_string()),
        }
        if parts.is_empty() {
            "its tolerations (or every node is unschedulable)".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// The best node for `need`: among the nodes that pass `accept`, those with the highest
/// preferred-affinity score, and among them the lowest key (see [`best_node_by_key`]).
///
/// A task with preferred terms is searched once per score level, best level first, so a
/// better-matching node always wins over a tighter one, and a preference never makes a
/// task unplaceable (the last level takes any node the filters allow).
pub(crate) fn best_node(index: &NodeIndex<'_>, shape: &Shape<'_>, need: Amount, accept: &dyn Fn(u32) -> bool) -> Option<u32> {
    if shape.affinity_levels.len() <= 1 {
        return best_node_by_key(index, shape, need, accept);
    }
    shape
        .affinity_levels
        .iter()
        .find_map(|&level| best_node_by_key(index, shape, need, &|n| shape.affinity_score(index, n) == level && accept(n)))
}

/// The best node for `need` among the shape's sets: the lowest key that passes `accept`.
///
/// Keys are ordered best-first (see `index`), so each set's walk stops at its first
/// acceptable node, and a walk stops early once it passes the best key found so far.
fn best_node_by_key(index: &NodeIndex<'_>, shape: &Shape<'_>, need: Amount, accept: &dyn Fn(u32) -> bool) -> Option<u32> {
    let clusters = shape.clusters.as_deref();
    let best = if need.gpu > 0 {
        let mut best: Option<Key> = None;
        for set in index.gpu_sets(&shape.models, clusters) {
            for k in set.range((need.gpu, 0, 0, 0, 0)..) {
                if best.is_some_and(|b| *k >= b) {
                    break;
                }
                if k.2 >= need.cpu_millis && k.3 >= need.memory_bytes && accept(k.4) {
                    best = Some(*k);
                    break;
                }
            }
        }
        best
    } else {
        let mut best: Option<Key> = None;
        for set in index.cpu_sets(clusters) {
            for has_gpu in 0..=1u64 {
                for k in set.range((has_gpu, need.cpu_millis, 0, 0, 0)..=(has_gpu, u64::MAX, u64::MAX, u64::MAX, u32::MAX)) {
                    if best.is_some_and(|b| *k >= b) {
                        break;
                    }
                    if k.3 >= need.memory_bytes && accept(k.4) {
                        best = Some(*k);
                        break;
                    }
                }
            }
        }
        best
    }?;
    // The preferred cluster wins among nodes that pack equally tightly at the same price.
    if let Some(pref) = shape.preferred {
        if index.nodes[best.4 as usize].cluster != pref && index.has_cluster_sets() {
            let pref_list = [pref];
            let (sets, lo, hi) = if need.gpu > 0 {
                (index.gpu_sets(&shape.models, Some(&pref_list)), (best.0, best.1, 0, 0, 0), (best.0, best.1, u64::MAX, u64::MAX, u32::MAX))
            } else {
                (index.cpu_sets(Some(&pref_list)), (best.0, best.1, best.2, 0, 0), (best.0, best.1, best.2, u64::MAX, u32::MAX))
            };
            let mut alt: Option<Key> = None;
            for set in sets {
                for k in set.range(lo..=hi) {
                    if alt.is_some_and(|a| *k >= a) {
                        break;
                    }
                    let fits = if need.gpu > 0 { k.2 >= need.cpu_millis && k.3 >= need.memory_bytes } else { k.3 >= need.memory_bytes };
                    if fits && accept(k.4) {
                        alt = Some(*k);
                        break;
                    }
                }
            }
            if let Some(a) = alt {
                return Some(a.4);
            }
        }
    }
    Some(best.4)
}

/// Why no node takes a task of this shape: the constraint nothing matches, a task larger
/// than any matching node, or (most often) no matching node with that much free now.
pub(crate) fn diagnose(index: &NodeIndex<'_>, shape: &Shape<'_>) -> String {
    if shape.model == ModelReq::Missing {
        return format!("no node has gpu model {}", shape.placement.gpu_model.as_deref().unwrap_or(""));
    }
    if shape.clusters.as_ref().is_some_and(|c| c.is_empty()) {
        return format!("none of the allowed clusters ({}) is in the federation", shape.placement.allowed_clusters.join(","));
    }
    let (mut matching, mut big_enough, mut gpu_free, mut affinity_excluded, mut pods_full) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let affinity = &shape.placement.affinity;
    for &i in &index.schedulable {
        if !shape.allows(index, i) {
            if !affinity.required.is_empty() && !affinity.required_match(&index.nodes[i as usize].node.labels) {
                affinity_excluded += 1;
            }
            continue;
        }
        matching += 1;
        let n = &index.nodes[i as usize];
        if shape.amount.fits_in(n.cap) && ext_fits(shape.ext, &n.cap_ext, &BTreeMap::new(), None) {
            big_enough += 1;
            if n.free().gpu >= shape.amount.gpu {
                gpu_free += 1;
            }
            if n.free().pods == 0 {
                pods_full += 1;
            }
        }
    }
    let mut reason = diagnose_matching(shape, matching, big_enough, gpu_free);
    if pods_full > 0 {
        reason = format!("{reason} ({pods_full} of the {big_enough} nodes large enough run their most pods)");
    }
    if affinity_excluded == 0 || matching == 0 {
        return reason;
    }
    format!("{reason} (node affinity excluded {affinity_excluded} of {} schedulable nodes)", index.schedulable.len())
}

fn diagnose_matching(shape: &Shape<'_>, matching: usize, big_enough: usize, gpu_free: usize) -> String {
    let need = shape.amount.describe(shape.ext);
    if matching == 0 {
        return format!("no schedulable node matches {}", shape.describe_constraints());
    }
    if big_enough == 0 {
        let model = shape.placement.gpu_model.as_deref().map(|m| format!("{m} ")).unwrap_or_default();
        return format!("needs {need}: larger than any {model}node");
    }
    if shape.amount.gpu > 0 && gpu_free == 0 {
        return format!("no node with {}", shape.gpu_words(shape.amount.gpu, "free "));
    }
    format!("no node with {need} free")
}
