//! A compact, `Copy` view of the resources fairness and packing reason about.
//!
//! [`Resources`] carries a map of extended resources, which makes it costly to copy in the
//! hot loop. The scheduler keeps GPU, CPU, memory and pods in an [`Amount`] and checks
//! extended resources separately (they are rare). Pods bound how many tasks a node runs
//! (the kubelet's `maxPods`); they never count in fair shares.
//!
//! Shared GPUs count in fair share by the fraction of a GPU they are, and only there:
//! `gpu_milli` is whole GPUs plus MIG slices in milli-GPUs (from the profile names, see
//! `flotilla_model::MigProfile`), `gpu_replicas` counts time-sliced replicas. A replica's
//! worth depends on the nodes that offer it, so a cycle prices every replica alike: the
//! GPUs behind all the replicas its nodes offer ÷ those replicas (`1/R` when every node
//! shares its GPUs `R` ways). The federation's GPU total is the same sum over its nodes, so
//! a queue holding every GPU, slice and replica has a share of exactly 1. Both are worked
//! out once per task or node, and a task without extended resources costs nothing more.

use std::collections::BTreeMap;

use flotilla_model::{
    format_bytes, format_cpu_millis, gpu_replicas_of, mig_milli_gpu, replicas_milli_gpu, shared_gpu_replicas, Node, Resources,
    PODS_RESOURCE,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Amount {
    pub gpu: u64,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Pods: 1 for a task, a count of tasks for what runs, the room left for a node
    /// ([`NO_POD_LIMIT`] when it reports none), 0 for queue guarantees and limits.
    pub pods: u64,
    /// Whole GPUs and MIG slices in milli-GPUs, for fair share only (placement matches
    /// `gpu` and the extended resources themselves).
    pub gpu_milli: u64,
    /// Time-sliced GPU replicas (`nvidia.com/gpu.shared`), for fair share only.
    pub gpu_replicas: u64,
}

/// The pod room of a node that reports no pod limit: more than any node could hold.
pub(crate) const NO_POD_LIMIT: u64 = 1 << 40;

impl Amount {
    /// Resources alone, without pods (a queue's guarantee).
    pub fn of(r: &Resources) -> Amount {
        let (mig_milli, gpu_replicas) =
            if r.extended.is_empty() { (0, 0) } else { (mig_milli_gpu(&r.extended), shared_gpu_replicas(&r.extended)) };
        Amount {
            gpu: r.gpu,
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            pods: 0,
            gpu_milli: r.gpu.saturating_mul(1000).saturating_add(mig_milli),
            gpu_replicas,
        }
    }

    /// What a task with requests `r` takes: its resources and one pod.
    pub fn task(r: &Resources) -> Amount {
        Amount { pods: 1, ..Amount::of(r) }
    }

    /// What node `n` offers: its schedulable resources, and room for as many pods as it
    /// reports (`allocatable.extended["pods"]`) less the pods on it that are not Flotilla's,
    /// or [`NO_POD_LIMIT`] when it reports none.
    pub fn node(n: &Node) -> Amount {
        let pods = match n.allocatable.extended.get(PODS_RESOURCE) {
            Some(max) => max.saturating_sub(n.reserved.extended.get(PODS_RESOURCE).copied().unwrap_or(0)),
            None => NO_POD_LIMIT,
        };
        Amount { pods, ..Amount::of(&n.schedulable_capacity()) }
    }

    pub fn fits_in(self, other: Amount) -> bool {
        self.gpu <= other.gpu && self.cpu_millis <= other.cpu_millis && self.memory_bytes <= other.memory_bytes && self.pods <= other.pods
    }

    pub fn plus(self, o: Amount) -> Amount {
        Amount {
            gpu: self.gpu.saturating_add(o.gpu),
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            pods: self.pods.saturating_add(o.pods),
            gpu_milli: self.gpu_milli.saturating_add(o.gpu_milli),
            gpu_replicas: self.gpu_replicas.saturating_add(o.gpu_replicas),
        }
    }

    pub fn minus(self, o: Amount) -> Amount {
        Amount {
            gpu: self.gpu.saturating_sub(o.gpu),
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(o.memory_bytes),
            pods: self.pods.saturating_sub(o.pods),
            gpu_milli: self.gpu_milli.saturating_sub(o.gpu_milli),
            gpu_replicas: self.gpu_replicas.saturating_sub(o.gpu_replicas),
        }
    }

    pub fn to_resources(self) -> Resources {
        Resources::new(self.cpu_millis, self.memory_bytes, self.gpu)
    }

    /// The largest fraction of `total` this amount takes in any one resource, GPUs counted
    /// as whole GPUs, MIG slices and time-sliced replicas at `replica_milli_gpu` each.
    /// Resources the federation does not have at all are left out, so an empty federation
    /// gives 0 and nothing divides by zero.
    pub fn dominant_share(self, total: Amount, replica_milli_gpu: f64) -> f64 {
        let gpus = |a: Amount| a.gpu_milli as f64 + a.gpu_replicas as f64 * replica_milli_gpu;
        let mut share: f64 = 0.0;
        let all_gpus = gpus(total);
        if all_gpus > 0.0 {
            share = gpus(self) / all_gpus;
        }
        for (used, all) in [(self.cpu_millis, total.cpu_millis), (self.memory_bytes, total.memory_bytes)] {
            if all > 0 {
                share = share.max(used as f64 / all as f64);
            }
        }
        share
    }

    /// "gpu=8 cpu=64 memory=1Ti", for reasons a person reads.
    pub fn describe(self, extended: &BTreeMap<String, u64>) -> String {
        let mut parts = Vec::new();
        if self.gpu > 0 {
            parts.push(format!("gpu={}", self.gpu));
        }
        if self.cpu_millis > 0 {
            parts.push(format!("cpu={}", format_cpu_millis(self.cpu_millis)));
        }
        if self.memory_bytes > 0 {
            parts.push(format!("memory={}", format_bytes(self.memory_bytes)));
        }
        for (k, v) in extended {
            if *v > 0 {
                parts.push(format!("{k}={v}"));
            }
        }
        if parts.is_empty() {
            "nothing".to_string()
        } else {
            parts.join(" ")
        }
    }
}

/// What one time-sliced replica is worth in a federation of `nodes`, in milli-GPUs: the GPUs
/// behind every replica the nodes offer (each node's replicas ÷ its `nvidia.com/gpu.replicas`)
/// ÷ those replicas. 0 when no node offers any.
pub(crate) fn replica_milli_gpu<'a>(nodes: impl Iterator<Item = (&'a Node, Amount)>) -> f64 {
    let (mut replicas, mut behind_milli) = (0u64, 0u64);
    for (n, cap) in nodes {
        if cap.gpu_replicas > 0 {
            replicas = replicas.saturating_add(cap.gpu_replicas);
            behind_milli = behind_milli.saturating_add(replicas_milli_gpu(cap.gpu_replicas, gpu_replicas_of(n)));
        }
    }
    if replicas == 0 {
        0.0
    } else {
        behind_milli as f64 / replicas as f64
    }
}

/// Adds extended resources of `r` into `into`.
pub(crate) fn ext_add(into: &mut BTreeMap<String, u64>, r: &BTreeMap<String, u64>) {
    for (k, v) in r {
        if *v > 0 {
            let e = into.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }
}

pub(crate) fn ext_sub(from: &mut BTreeMap<String, u64>, r: &BTreeMap<String, u64>) {
    for (k, v) in r {
        if let Some(e) = from.get_mut(k) {
            *e = e.saturating_sub(*v);
        }
    }
    from.retain(|_, v| *v > 0);
}

/// True when `need` fits in `cap - used - extra` for every extended resource.
pub(crate) fn ext_fits(
    need: &BTreeMap<String, u64>,
    cap: &BTreeMap<String, u64>,
    used: &BTreeMap<String, u64>,
    extra: Option<&BTreeMap<String, u64>>,
) -> bool {
    need.iter().all(|(k, v)| {
        if *v == 0 {
            return true;
        }
        let c = cap.get(k).copied().unwrap_or(0);
        let u = used.get(k).copied().unwrap_or(0).saturating_add(extra.and_then(|e| e.get(k).copied()).unwrap_or(0));
        c.saturating_sub(u) >= *v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dominant_share_ignores_resources_the_federation_lacks() {
        let total = Amount { cpu_millis: 1000, ..Amount::default() };
        let used = Amount { gpu: 4, cpu_millis: 250, memory_bytes: 7, pods: 3, gpu_milli: 4000, gpu_replicas: 2 };
        assert_eq!(used.dominant_share(total, 250.0), 0.25);
        assert_eq!(used.dominant_share(Amount::default(), 0.0), 0.0);
    }

    #[test]
    fn a_task_is_one_pod_and_a_node_without_a_pod_limit_has_room_for_any() {
        let mut node = Node {
            cluster: "c".into(),
            name: "n".into(),
            allocatable: Resources::new(4000, 1 << 30, 0),
            reserved: Resources::default(),
            topology: Default::default(),
            gpu_model: None,
            instance_type: String::new(),
            spot: false,
            price_per_hour_usd: 0.0,
            labels: Default::default(),
            taints: Vec::new(),
            unschedulable: false,
        };
        assert_eq!(Amount::node(&node).pods, NO_POD_LIMIT);
        node.allocatable.extended.insert(PODS_RESOURCE.into(), 5);
        node.reserved.extended.insert(PODS_RESOURCE.into(), 3);
        let task = Amount::task(&Resources::new(100, 1 << 20, 0));
        assert_eq!(task.pods, 1);
        assert!(task.plus(task).fits_in(Amount::node(&node)), "5 pods, 3 of them others': room for 2");
        assert!(!task.plus(task).plus(task).fits_in(Amount::node(&node)), "a third pod does not fit in two");
        node.reserved.extended.insert(PODS_RESOURCE.into(), 5);
        assert_eq!(Amount::node(&node).pods, 0, "others' pods fill the node");
        assert_eq!(Amount::of(&node.allocatable).pods, 0, "a guarantee or limit holds no pods");
    }

    #[test]
    fn extended_resources_fit_only_with_room_left() {
        let need: BTreeMap<String, u64> = [("x".to_string(), 2)].into();
        let cap: BTreeMap<String, u64> = [("x".to_string(), 3)].into();
        let used: BTreeMap<String, u64> = [("x".to_string(), 1)].into();
        assert!(ext_fits(&need, &cap, &used, None));
        assert!(!ext_fits(&need, &cap, &used, Some(&used)));
        assert!(!ext_fits(&need, &BTreeMap::new(), &BTreeMap::new(), None));
    }
}
