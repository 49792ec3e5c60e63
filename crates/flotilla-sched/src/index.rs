//! The node index: every node's free resources, kept sorted so that the tightest node
//! that fits a task is found in about O(log n).
//!
//! Nodes are numbered in (cluster, name) order, so a node's number is also the final,
//! deterministic tie-break. GPU nodes sit in one ordered set per GPU model, keyed by
//! `(free GPUs, price, free CPU, free memory, node)`: a range query from "the GPUs the
//! task needs" walks nodes from the tightest fit upwards, and the first node that passes
//! the task's filters is the best one (least GPU left over, then the cheapest). CPU-only
//! tasks use a second set keyed by `(has GPUs, free CPU, price, free memory, node)`, which
//! keeps them off GPU nodes while CPU-only nodes have room. Per-cluster copies of both
//! sets answer tasks restricted to (or preferring) some clusters without walking the
//! others. The CPU and per-cluster sets are only built when some queued task needs them.
//!
//! For gangs, nodes are also grouped into topology domains (rack, zone, cluster), each
//! with a histogram of its nodes' free GPUs per model. That bounds how many members of a
//! gang a domain could hold in O(GPUs per node), so hopeless domains are skipped without
//! looking at their nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use flotilla_model::{Node, TopologyLevel};

use crate::amount::{ext_add, ext_sub, Amount};

/// `(primary, secondary, tertiary, quaternary, node)`; see the module docs for each set.
pub(crate) type Key = (u64, u64, u64, u64, u32);

/// Where a level's domains are kept: rack, zone and cluster are slots 0, 1 and 2; a
/// single node needs no domain.
pub(crate) fn level_slot(level: TopologyLevel) -> Option<usize> {
    match level {
        TopologyLevel::Node => None,
        TopologyLevel::Rack => Some(0),
        TopologyLevel::Zone => Some(1),
        TopologyLevel::Cluster => Some(2),
    }
}

/// Histograms larger than this are not kept (nodes with thousands of GPUs do not exist;
/// if a report claims so, gangs simply skip the quick bound).
const MAX_HISTOGRAM_GPUS: u64 = 1024;

pub(crate) struct NodeState<'a> {
    pub node: &'a Node,
    pub cluster: u32,
    /// Index into [`NodeIndex::models`]; 0 is "no GPU model label".
    pub model: u32,
    /// Rack, zone and cluster domain of this node (see [`level_slot`]).
    pub domains: [u32; 3],
    pub cap: Amount,
    pub cap_ext: BTreeMap<String, u64>,
    /// Running tasks plus this cycle's leases minus this cycle's preemptions.
    pub used: Amount,
    pub used_ext: BTreeMap<String, u64>,
    /// Price in micro-dollars per hour: an integer so it can be part of a key.
    pub price_key: u64,
    pub schedulable: bool,
    pub hard_taints: bool,
    /// Running tasks on this node, in victim order (lowest priority, then newest, first).
    pub running: Vec<u32>,
}

impl NodeState<'_> {
    pub fn free(&self) -> Amount {
        self.cap.minus(self.used)
    }

    /// What the ordered sets and histograms see as free: nothing once the node runs its
    /// most pods, so searches pass over it without a look instead of finding its free CPU
    /// and then failing the pod check, node after node, on a federation full of small pods.
    fn searchable_free(&self) -> Amount {
        let f = self.free();
        if f.pods == 0 {
            Amount::default()
        } else {
            f
        }
    }

    fn gpu_key(&self, idx: u32) -> Key {
        let f = self.searchable_free();
        (f.gpu, self.price_key, f.cpu_millis, f.memory_bytes, idx)
    }

    fn cpu_key(&self, idx: u32) -> Key {
        let f = self.searchable_free();
        (u64::from(self.cap.gpu > 0), f.cpu_millis, self.price_key, f.memory_bytes, idx)
    }
}

/// A node's extended resources without `pods`, which [`Amount`] carries.
fn without_pods(mut ext: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    ext.remove(flotilla_model::PODS_RESOURCE);
    ext
}

pub(crate) struct Domain {
    pub cluster: u32,
    /// Schedulable nodes of the domain, in node order.
    pub nodes: Vec<u32>,
    /// Per GPU model present: how many schedulable nodes have each number of free GPUs.
    hist: Vec<(u32, Vec<u32>)>,
}

pub(crate) struct NodeIndex<'a> {
    pub nodes: Vec<NodeState<'a>>,
    pub clusters: Vec<String>,
    /// Index 0 is the empty model (CPU-only nodes, or GPU nodes without a model label).
    pub models: Vec<String>,
    pub by_ref: HashMap<(&'a str, &'a str), u32>,
    /// Schedulable capacity of every node: the denominator of every share.
    pub total: Amount,
    /// What one time-sliced GPU replica is worth in fair share, in milli-GPUs (see `amount`).
    pub replica_milli_gpu: f64,
    /// Every schedulable node, in node order.
    pub schedulable: Vec<u32>,
    pub domains: [Vec<Domain>; 3],
    gpu_sets: Vec<BTreeSet<Key>>,
    gpu_cluster_sets: Vec<BTreeSet<Key>>,
    cpu_set: BTreeSet<Key>,
    cpu_cluster_sets: Vec<BTreeSet<Key>>,
    with_cpu: bool,
    with_clusters: bool,
    hist_len: usize,
}

fn price_key(p: f64) -> u64 {
    if p.is_nan() {
        // An unreadable price is treated as the most expensive, so it never attracts work.
        u64::MAX
    } else if p <= 0.0 {
        0
    } else {
        // `as` saturates for floats, so absurd prices cannot wrap.
        (p * 1_000_000.0).round() as u64
    }
}

impl<'a> NodeIndex<'a> {
    /// Numbers the nodes and their domains. Later duplicates of a (cluster, node) pair are
    /// dropped: a node is reported once.
    pub fn new(input_nodes: &'a [Node]) -> NodeIndex<'a> {
        let mut order: Vec<&'a Node> = input_nodes.iter().collect();
        // Stable sort keeps the first of duplicates first; `dedup_by` then drops the rest.
        order.sort_by(|a, b| (&a.cluster, &a.name).cmp(&(&b.cluster, &b.name)));
        order.dedup_by(|b, a| a.cluster == b.cluster && a.name == b.name);

        let clusters: Vec<String> = order.iter().map(|n| n.cluster.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let mut models: Vec<String> = vec![String::new()];
        models.extend(order.iter().filter_map(|n| n.gpu_model.clone()).filter(|m| !m.is_empty()).collect::<BTreeSet<_>>());

        // Domain names: an unlabelled rack or zone makes the node a domain of its own, so a
        // gang asking for "one rack" is never spread over nodes whose placement is unknown.
        let domain_name = |n: &Node, i: usize, slot: usize| -> (String, String, String, usize) {
            match slot {
                0 if !n.topology.rack.is_empty() => (n.cluster.clone(), n.topology.zone.clone(), n.topology.rack.clone(), usize::MAX),
                1 if !n.topology.zone.is_empty() => (n.cluster.clone(), n.topology.zone.clone(), String::new(), usize::MAX),
                2 => (n.cluster.clone(), String::new(), String::new(), usize::MAX),
                _ => (n.cluster.clone(), String::new(), String::new(), i),
            }
        };
        let mut domain_ids: [BTreeMap<(String, String, String, usize), u32>; 3] = Default::default();
        for (i, n) in order.iter().enumerate() {
            for (slot, ids) in domain_ids.iter_mut().enumerate() {
                ids.entry(domain_name(n, i, slot)).or_insert(0);
            }
        }
        for ids in domain_ids.iter_mut() {
            for (i, v) in ids.values_mut().enumerate() {
                *v = i as u32;
            }
        }

        let mut nodes = Vec::with_capacity(order.len());
        let mut by_ref = HashMap::with_capacity(order.len());
        let mut total = Amount::default();
        for (i, n) in order.iter().enumerate() {
            let cap_r = n.schedulable_capacity();
            let cap = Amount::node(n);
            total = total.plus(cap);
            let cluster = clusters.binary_search(&n.cluster).unwrap_or(0) as u32;
            let model = match &n.gpu_model {
                Some(m) if !m.is_empty() => models.binary_search_by(|x| x.as_str().cmp(m.as_str())).unwrap_or(0) as u32,
                _ => 0,
            };
            let mut domains = [0u32; 3];
            for (slot, d) in domains.iter_mut().enumerate() {
                *d = domain_ids[slot].get(&domain_name(n, i, slot)).copied().unwrap_or(0);
            }
            by_ref.insert((n.cluster.as_str(), n.name.as_str()), i as u32);
            nodes.push(NodeState {
                node: n,
                cluster,
                model,
                domains,
                cap,
                cap_ext: without_pods(cap_r.extended),
                used: Amount::default(),
                used_ext: BTreeMap::new(),
                price_key: price_key(n.price_per_hour_usd),
                schedulable: !n.unschedulable,
                hard_taints: n.taints.iter().any(|t| t.effect != "PreferNoSchedule"),
                running: Vec::new(),
            });
        }
        // `models` was sorted with "" first (BTreeSet order puts "" first too).
        debug_assert!(models.windows(2).all(|w| w[0] < w[1]));

        let mut domains: [Vec<Domain>; 3] = Default::default();
        for (slot, ids) in domain_ids.iter().enumerate() {
            domains[slot] = (0..ids.len()).map(|_| Domain { cluster: 0, nodes: Vec::new(), hist: Vec::new() }).collect();
        }
        let mut schedulable = Vec::new();
        for (i, ns) in nodes.iter().enumerate() {
            for slot in 0..3 {
                let d = &mut domains[slot][ns.domains[slot] as usize];
                d.cluster = ns.cluster;
                if ns.schedulable {
                    d.nodes.push(i as u32);
                }
            }
            if ns.schedulable {
                schedulable.push(i as u32);
            }
        }
        let replica_milli_gpu = crate::amount::replica_milli_gpu(nodes.iter().map(|ns| (ns.node, ns.cap)));
        let max_gpu = nodes.iter().map(|n| n.cap.gpu).max().unwrap_or(0);
        let hist_len = if max_gpu <= MAX_HISTOGRAM_GPUS { max_gpu as usize + 1 } else { 0 };

        NodeIndex {
            nodes,
            clusters,
            models,
            by_ref,
            total,
            replica_milli_gpu,
            schedulable,
            domains,
            gpu_sets: Vec::new(),
            gpu_cluster_sets: Vec::new(),
            cpu_set: BTreeSet::new(),
            cpu_cluster_sets: Vec::new(),
            with_cpu: false,
            with_clusters: false,
            hist_len,
        }
    }

    /// Counts a running task against its node before the sets are built.
    pub fn charge_running(&mut self, idx: u32, amount: Amount, ext: &BTreeMap<String, u64>) {
        let n = &mut self.nodes[idx as usize];
        n.used = n.used.plus(amount);
        ext_add(&mut n.used_ext, ext);
    }

    /// Builds the sorted sets and histograms from the nodes' current usage.
    pub fn build(&mut self, with_cpu: bool, with_clusters: bool) {
        self.with_cpu = with_cpu;
        self.with_clusters = with_clusters;
        let m = self.models.len();
        self.gpu_sets = (0..m).map(|_| BTreeSet::new()).collect();
        if with_clusters {
            self.gpu_cluster_sets = (0..m * self.clusters.len()).map(|_| BTreeSet::new()).collect();
            if with_cpu {
                self.cpu_cluster_sets = (0..self.clusters.len()).map(|_| BTreeSet::new()).collect();
            }
        }
        for i in 0..self.nodes.len() {
            self.insert_keys(i as u32);
            self.hist_update(i as u32, true);
        }
    }

    /// `a`'s dominant share of the federation (see [`Amount::dominant_share`]).
    pub fn share(&self, a: Amount) -> f64 {
        a.dominant_share(self.total, self.replica_milli_gpu)
    }

    pub fn model_count(&self) -> usize {
        self.models.len()
    }

    fn insert_keys(&mut self, idx: u32) {
        let n = &self.nodes[idx as usize];
        if !n.schedulable {
            return;
        }
        let (model, cluster) = (n.model as usize, n.cluster as usize);
        if n.cap.gpu > 0 {
            let k = n.gpu_key(idx);
            self.gpu_sets[model].insert(k);
            if self.with_clusters {
                self.gpu_cluster_sets[cluster * self.models.len() + model].insert(k);
            }
        }
        if self.with_cpu {
            let k = n.cpu_key(idx);
            self.cpu_set.insert(k);
            if self.with_clusters {
                self.cpu_cluster_sets[cluster].insert(k);
            }
        }
    }

    fn remove_keys(&mut self, idx: u32) {
        let n = &self.nodes[idx as usize];
        if !n.schedulable {
            return;
        }
        let (model, cluster) = (n.model as usize, n.cluster as usize);
        if n.cap.gpu > 0 {
            let k = n.gpu_key(idx);
            let removed = self.gpu_sets[model].remove(&k);
            debug_assert!(removed, "node {idx} missing from its GPU set");
            if self.with_clusters {
                self.gpu_cluster_sets[cluster * self.models.len() + model].remove(&k);
            }
        }
        if self.with_cpu {
            let k = n.cpu_key(idx);
            self.cpu_set.remove(&k);
            if self.with_clusters {
                self.cpu_cluster_sets[cluster].remove(&k);
            }
        }
    }

    fn hist_update(&mut self, idx: u32, add: bool) {
        if self.hist_len == 0 {
            return;
        }
        let n = &self.nodes[idx as usize];
        if !n.schedulable || n.cap.gpu == 0 {
            return;
        }
        let (model, bucket, domains) = (n.model, n.searchable_free().gpu as usize, n.domains);
        let len = self.hist_len;
        for (slot, d) in domains.iter().enumerate() {
            let dom = &mut self.domains[slot][*d as usize];
            let pos = match dom.hist.iter().position(|(m, _)| *m == model) {
                Some(p) => p,
                None => {
                    dom.hist.push((model, vec![0; len]));
                    dom.hist.len() - 1
                }
            };
            let c = &mut dom.hist[pos].1[bucket.min(len - 1)];
            if add {
                *c += 1;
            } else {
                debug_assert!(*c > 0);
                *c = c.saturating_sub(1);
            }
        }
    }

    /// Changes a node's usage, keeping sets and histograms in step.
    fn update(&mut self, idx: u32, f: impl FnOnce(&mut NodeState<'a>)) {
        self.remove_keys(idx);
        self.hist_update(idx, false);
        f(&mut self.nodes[idx as usize]);
        self.insert_keys(idx);
        self.hist_update(idx, true);
    }

    pub fn reserve(&mut self, idx: u32, amount: Amount, ext: &BTreeMap<String, u64>) {
        self.update(idx, |n| {
            n.used = n.used.plus(amount);
            ext_add(&mut n.used_ext, ext);
        });
    }

    pub fn release(&mut self, idx: u32, amount: Amount, ext: &BTreeMap<String, u64>) {
        self.update(idx, |n| {
            n.used = n.used.minus(amount);
            ext_sub(&mut n.used_ext, ext);
        });
    }

    /// The GPU sets to search: one per allowed model, per allowed cluster when restricted.
    pub fn gpu_sets<'s>(&'s self, models: &'s [u32], clusters: Option<&'s [u32]>) -> Vec<&'s BTreeSet<Key>> {
        match clusters {
            Some(cs) if self.with_clusters => cs
                .iter()
                .flat_map(|c| models.iter().map(move |m| &self.gpu_cluster_sets[*c as usize * self.models.len() + *m as usize]))
                .collect(),
            _ => models.iter().map(|m| &self.gpu_sets[*m as usize]).collect(),
        }
    }

    /// The CPU sets to search, or none when they were not built.
    pub fn cpu_sets<'s>(&'s self, clusters: Option<&'s [u32]>) -> Vec<&'s BTreeSet<Key>> {
        if !self.with_cpu {
            return Vec::new();
        }
        match clusters {
            Some(cs) if self.with_clusters => cs.iter().map(|c| &self.cpu_cluster_sets[*c as usize]).collect(),
            _ => vec![&self.cpu_set],
        }
    }

    pub fn has_cluster_sets(&self) -> bool {
        self.with_clusters
    }

    /// An upper bound on how many members needing `gpu_each` GPUs fit in the domain's
    /// nodes of the given models (by GPUs alone), and the domain's free GPUs. `None`
    /// when no histogram is kept.
    pub fn domain_gpu_bound(&self, slot: usize, domain: u32, models: &[u32], gpu_each: u64) -> Option<(u64, u64)> {
        if self.hist_len == 0 || gpu_each == 0 {
            return None;
        }
        let dom = &self.domains[slot][domain as usize];
        let (mut members, mut free) = (0u64, 0u64);
        for (m, h) in &dom.hist {
            if !models.contains(m) {
                continue;
            }
            for (v, count) in h.iter().enumerate() {
                let v = v as u64;
                members = members.saturating_add((v / gpu_each).saturating_mul(u64::from(*count)));
                free = free.saturating_add(v.saturating_mul(u64::from(*count)));
            }
        }
        Some((members, free))
    }
}
