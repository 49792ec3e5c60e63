//! Kubernetes Nodes as Flotilla nodes, and the resources other pods hold on them.

use std::collections::BTreeMap;

use flotilla_model::{
    normalize_gpu_model, parse_bytes, parse_count, parse_cpu_millis, QuantityError, Resources, Taint, Topology, GPU_RESOURCE,
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
/// Allocatable CPU, memory, `nvidia.com/gpu` and other `domain/name` resources come from
/// `status.allocatable`. A node whose `Ready` condition is not `True`, a cordoned one, and
/// one being drained (a taint of [`DRAIN_TAINTS`]) is reported as unschedulable: nothing new
/// is leased onto it and its capacity is not offered.
pub fn node_from_k8s(cluster: &str, node: &K8sNode, config: &KubeBackendConfig) -> Option<flotilla_model::Node> {
    let name = node.metadata.name.clone()?;
    let labels: BTreeMap<String, String> = node.metadata.labels.clone().unwrap_or_default();
    let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
    let status = node.status.as_ref();
    let allocatable = status.and_then(|s| s.allocatable.as_ref()).map(resources_of).unwrap_or_default();
    let instance_type =
        labels.get(LABEL_INSTANCE_TYPE).or_else(|| labels.get("beta.kubernetes.io/instance-type")).cloned().unwrap_or_default();
    let spot = SPOT_LABELS.iter().any(|(k, v)| labels.get(*k).is_some_and(|l| l == v));
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
