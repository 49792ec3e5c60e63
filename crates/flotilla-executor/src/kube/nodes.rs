//! Kubernetes Nodes as Flotilla nodes, and the resources other pods hold on them.

use std::collections::BTreeMap;

use flotilla_model::{
    normalize_gpu_model, parse_bytes, parse_count, parse_cpu_millis, QuantityError, Resources, Taint, Topology, GPU_RESOURCE, PODS_RESOURCE,
};
use k8s_openapi::api::core::v1::{Node as K8sNode, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::config::KubeBackendConfig;

pub const LABEL_REGION: &str = "topology.kubernetes.io/region";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
pub const LABEL_INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
pub const LABEL_GPU_PRODUCT: &str = "nvidia.com/gpu.product";
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";

/// Taints that mean a node is being drained or removed: `kubectl drain`/cordon, Karpenter's
/// disruption, the cluster autoscaler's scale-down.
pub const DRAIN_TAINTS: [&str; 3] = ["node.kubernetes.io/unschedulable", "karpenter.sh/disrupted", "ToBeDeletedByClusterAutoscaler"];

/// Labels that mark spot (preemptible) capacity, with the value that means spot.
const SPOT_LABELS: [(&str, &str); 4] = [
    ("karpenter.sh/capacity-type", "spot"),
    ("eks.amazonaws.com/capacityType", "SPOT"),
    ("cloud.google.com/gke-spot", "true"),
    ("cloud.google.com/gke-preemptible", "true"),
];

/// A Kubernetes Node as the scheduler's node of `cluster`; `None` for a node without a name.
///
/// Allocatable CPU, memory, `nvidia.com/gpu`, `pods` (the most pods the kubelet runs) and
/// other `domain/name` resources come from `status.allocatable`. A node whose `Ready` condition is not `True`, a cordoned one, and
/// one being drained (a taint of [`DRAIN_TAINTS`]) is reported as unschedulable: nothing new
/// is leased onto it and its capacity is not offered.
///
/// Shared GPUs come as the device plugin advertises them: MIG slices (mixed strategy) as
/// `nvidia.com/mig-<profile>` and time-sliced replicas (`renameByDefault: true`) as
/// `nvidia.com/gpu.shared`, with GPU Feature Discovery's labels (`nvidia.com/gpu.replicas`
/// prices a replica in fair share). When the plugin advertises slices or replicas as
/// `nvidia.com/gpu` instead (MIG's single strategy, whose product label reads
/// `...-MIG-1g.10gb`; time slicing without renaming, whose product label ends in `-SHARED`),
/// they are not whole GPUs and a Job could not ask for them by their own name: the node
/// reports no GPUs, so no task expecting a whole GPU lands on a slice (docs/task-file.md,
/// "Shared GPUs").
pub fn node_from_k8s(cluster: &str, node: &K8sNode, config: &KubeBackendConfig) -> Option<flotilla_model::Node> {
    let name = node.metadata.name.clone()?;
    let labels: BTreeMap<String, String> = node.metadata.labels.clone().unwrap_or_default();
    let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
    let status = node.status.as_ref();
    let allocatable_list = status.and_then(|s| s.allocatable.as_ref());
    let mut allocatable = allocatable_list.map(resources_of).unwrap_or_default();
    // The kubelet's maxPods: Flotilla leases no more pods than it will run.
    if let Some(Quantity(pods)) = allocatable_list.and_then(|a| a.get(PODS_RESOURCE)) {
        if let Ok(max) = parse_count(pods).or_else(|e| if matches!(e, QuantityError::NotPositive(_)) { Ok(0) } else { Err(e) }) {
            allocatable.extended.insert(PODS_RESOURCE.to_string(), max);
        }
    }
    let instance_type =
        labels.get(LABEL_INSTANCE_TYPE).or_else(|| labels.get("beta.kubernetes.io/instance-type")).cloned().unwrap_or_default();
    let spot = SPOT_LABELS.iter().any(|(k, v)| labels.get(*k).is_some_and(|l| l == v));
    if labels.get(LABEL_GPU_PRODUCT).is_some_and(|p| gpus_are_shared(p)) {
        allocatable.gpu = 0;
    }
    let gpu_model = labels.get(LABEL_GPU_PRODUCT).filter(|p| !p.is_empty() && allocatable.gpu > 0).map(|p| normalize_gpu_model(p));
    let spec = node.spec.as_ref();
    let taints = spec
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter().map(|t| Taint { key: t.key.clone(), value: t.value.clone().unwrap_or_default(), effect: t.effect.clone() }).collect()
        })
        .unwrap_or_default();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false)
        || spec.and_then(|s| s.taints.as_ref()).is_some_and(|ts| ts.iter().any(|t| DRAIN_TAINTS.contains(&t.key.as_str())));
    Some(flotilla_model::Node {
        cluster: cluster.to_string(),
        name,
        allocatable,
        reserved: Resources::default(),
        topology: Topology { region: label(LABEL_REGION), zone: label(LABEL_ZONE), rack: label(&config.rack_label) },
        gpu_model,
        price_per_hour_usd: config.price_per_hour_usd(&instance_type, spot),
        instance_type,
        spot,
        labels,
        taints,
        unschedulable: cordoned || !ready,
    })
}

/// True when GPU Feature Discovery's product label says the node's `nvidia.com/gpu` are MIG
/// slices (single strategy: `NVIDIA-A100-SXM4-40GB-MIG-1g.5gb`) or shared replicas
/// (`NVIDIA-A100-SXM4-40GB-SHARED`).
fn gpus_are_shared(product: &str) -> bool {
    product.contains("-MIG-") || product.ends_with("-SHARED")
}

/// A resource list (`{cpu: "7910m", memory: "31Gi", nvidia.com/gpu: "8"}`) as resources.
/// Unreadable entries and resources Flotilla does not schedule (pods, ephemeral storage,
/// huge pages) are left out.
pub fn resources_of(list: &BTreeMap<String, Quantity>) -> Resources {
    // "0" is a valid amount here (a node with its GPUs unhealthy), unlike in task specs.
    let zero_ok = |r: Result<u64, QuantityError>| match r {
        Ok(v) => Some(v),
        Err(QuantityError::NotPositive(_)) => Some(0),
        Err(_) => None,
    };
    let mut r = Resources::default();
    for (name, Quantity(q)) in list {
        match name.as_str() {
            "cpu" => r.cpu_millis = zero_ok(parse_cpu_millis(q)).unwrap_or(0),
            "memory" => r.memory_bytes = zero_ok(parse_bytes(q)).unwrap_or(0),
            GPU_RESOURCE => r.gpu = zero_ok(parse_count(q)).unwrap_or(0),
            other if other.contains('/') && !other.starts_with("kubernetes.io/") => {
                if let Some(v) = zero_ok(parse_count(q)).filter(|v| *v > 0) {
                    r.extended.insert(other.to_string(), v);
                }
            }
            _ => {}
        }
    }
    r
}

/// What a pod holds on its node: the sum of its containers' requests, at least its largest
/// init container's, plus the pod overhead (the scheduler's own formula).
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else { return Resources::default() };
    let requests = |c: &k8s_openapi::api::core::v1::Container| {
        c.resources.as_ref().and_then(|r| r.requests.as_ref()).map(resources_of).unwrap_or_default()
    };
    let mut total = Resources::default();
    for c in &spec.containers {
        total.add(&requests(c));
    }
    for c in spec.init_containers.iter().flatten() {
        let init = requests(c);
        total.cpu_millis = total.cpu_millis.max(init.cpu_millis);
        total.memory_bytes = total.memory_bytes.max(init.memory_bytes);
        total.gpu = total.gpu.max(init.gpu);
    }
    if let Some(overhead) = spec.overhead.as_ref() {
        total.add(&resources_of(overhead));
    }
    total
}

/// Keeps only what [`pod_requests`] and the node sum need: less memory for the cache of
/// every other pod in the cluster.
pub fn strip_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.labels = None;
    pod.metadata.owner_references = None;
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = None;
        spec.affinity = None;
        spec.tolerations = None;
        for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
            c.env = None;
            c.env_from = None;
            c.command = None;
            c.args = None;
            c.volume_mounts = None;
            c.liveness_probe = None;
            c.readiness_probe = None;
            c.startup_probe = None;
        }
    }
    if let Some(status) = pod.status.as_mut() {
        status.conditions = None;
        status.container_statuses = None;
        status.init_container_statuses = None;
    }
}

/// True for a pod that still holds its node's resources (not finished).
pub fn pod_is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Whether a node's `Ready` condition is `True`.
pub fn is_ready(node: &K8sNode) -> bool {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The fraction of a zone's nodes not `Ready` at which its nodes are no longer presumed
/// lost: Kubernetes' own `--unhealthy-zone-threshold` default.
pub const UNHEALTHY_ZONE_FRACTION: f64 = 0.55;

/// Where so many nodes stopped being `Ready` at once that the control plane, or the network
/// between it and the nodes, is the likelier fault than the nodes themselves. Kubernetes'
/// node lifecycle controller stops evicting in the same cases: when no node of the cluster
/// is `Ready`, and (in clusters of at most 50 nodes; larger ones only slow down) in a zone
/// where more than 2 nodes and at least [`UNHEALTHY_ZONE_FRACTION`] of them, but not all, are
/// not `Ready` (a zone with none `Ready` while others have some is a zone outage).
/// Nodes there are not presumed lost however long they stay not `Ready`: their pods may be
/// running still, and a second copy of a task must not start beside them (invariant 2).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Disruption {
    /// No node of the cluster is `Ready`.
    pub whole_cluster: bool,
    /// Zones (`topology.kubernetes.io/zone`, empty for nodes without it) in partial disruption.
    pub zones: BTreeMap<String, (usize, usize)>,
}

impl Disruption {
    pub fn of<'a>(nodes: impl IntoIterator<Item = &'a K8sNode>) -> Disruption {
        // (not ready, all) per zone
        let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for node in nodes {
            let zone = node.metadata.labels.as_ref().and_then(|l| l.get(LABEL_ZONE)).cloned().unwrap_or_default();
            let c = counts.entry(zone).or_default();
            c.0 += usize::from(!is_ready(node));
            c.1 += 1;
        }
        let whole_cluster = !counts.is_empty() && counts.values().all(|(not_ready, all)| not_ready == all);
        // A zone with no node Ready while others have some is a zone outage, which
        // Kubernetes evicts from at its normal rate: not a disruption here either.
        counts.retain(|_, &mut (not_ready, all)| {
            not_ready > 2 && not_ready < all && not_ready as f64 >= UNHEALTHY_ZONE_FRACTION * all as f64
        });
        Disruption { whole_cluster, zones: counts }
    }

    /// Why nodes of `zone` are not presumed lost now, if they are not.
    pub fn holds(&self, zone: &str) -> Option<String> {
        if self.whole_cluster {
            return Some("no node of the cluster is Ready".into());
        }
        let (not_ready, all) = self.zones.get(zone)?;
        Some(format!("{not_ready} of {all} nodes of zone {zone:?} are not Ready"))
    }

    pub fn is_normal(&self) -> bool {
        !self.whole_cluster && self.zones.is_empty()
    }
}

#[cfg(test)]
mod disruption_tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, zone: &str, ready: bool) -> K8sNode {
        K8sNode {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(LABEL_ZONE.to_string(), zone.to_string())].into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "Unknown" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_few_nodes_down_are_normal_and_their_loss_is_presumed() {
        let nodes = [node("a", "z1", false), node("b", "z1", false), node("c", "z1", true), node("d", "z2", true)];
        let d = Disruption::of(&nodes);
        assert!(d.is_normal());
        assert_eq!(d.holds("z1"), None);
    }

    #[test]
    fn no_node_ready_holds_every_zone() {
        let nodes = [node("a", "z1", false), node("b", "z2", false)];
        let d = Disruption::of(&nodes);
        assert!(d.whole_cluster);
        assert_eq!(d.holds("z1").as_deref(), Some("no node of the cluster is Ready"));
        assert!(d.holds("elsewhere").is_some());
    }

    #[test]
    fn a_zone_mostly_not_ready_holds_that_zone_only() {
        let mut nodes: Vec<K8sNode> = (0..4).map(|i| node(&format!("a{i}"), "z1", i == 0)).collect();
        nodes.push(node("b", "z2", true));
        nodes.push(node("c", "z2", false));
        let d = Disruption::of(&nodes);
        assert!(!d.whole_cluster);
        assert_eq!(d.holds("z1").as_deref(), Some("3 of 4 nodes of zone \"z1\" are not Ready"));
        // One node of two in z2 is below Kubernetes' "more than 2" floor: presumed lost.
        assert_eq!(d.holds("z2"), None);
    }

    #[test]
    fn a_whole_zone_down_while_another_is_ready_is_a_zone_outage() {
        // Kubernetes evicts from a fully disrupted zone when other zones are healthy.
        let nodes = [node("a", "z1", false), node("b", "z1", false), node("c", "z1", false), node("d", "z2", true)];
        assert!(Disruption::of(&nodes).is_normal());
    }
}
