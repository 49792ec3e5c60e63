//! Nodes as the scheduler sees them: capacity, topology, GPU model, price.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    quote, FieldError, Resources, GPU_RESOURCE, MAX_NODE_CPU_MILLIS, MAX_NODE_EXTENDED_AMOUNT, MAX_NODE_EXTENDED_RESOURCES, MAX_NODE_GPUS,
    MAX_NODE_MEMORY_BYTES,
};

/// Longest node name Kubernetes allows (a DNS subdomain).
pub const MAX_NODE_NAME_BYTES: usize = 253;
/// Longest label key Kubernetes allows: a DNS-subdomain prefix (253), '/', a name (63).
pub const MAX_LABEL_KEY_BYTES: usize = 253 + 1 + 63;
/// Longest name part of a label key (after the '/').
pub const MAX_LABEL_NAME_BYTES: usize = 63;
/// Longest label value Kubernetes allows (also the bound on region, zone, rack, GPU model
/// and instance type, which are read from labels).
pub const MAX_LABEL_VALUE_BYTES: usize = 63;
/// Most labels one node may report. Kubernetes sets no count; node-feature-discovery puts a
/// few hundred on a node, so this leaves room while keeping one node's report bounded.
pub const MAX_LABELS_PER_NODE: usize = 1_024;
/// Most taints one node may report (real nodes carry a handful).
pub const MAX_TAINTS_PER_NODE: usize = 64;

/// Identifies a node across the federation: names are unique only within a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeRef {
    pub cluster: String,
    pub node: String,
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.cluster, self.node)
    }
}

/// Where a node sits. Empty strings mean "not labelled".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Topology {
    pub region: String,
    pub zone: String,
    /// Rack, block or any switch-level grouping (a configurable label on real clusters).
    pub rack: String,
}

/// A Kubernetes taint: tasks must tolerate it to land on the node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Taint {
    pub key: String,
    #[serde(default)]
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`. Only `PreferNoSchedule` is soft.
    pub effect: String,
}

/// A task's tolerance of a taint, matched the way Kubernetes matches it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Toleration {
    pub key: String,
    /// `Equal` (the default) or `Exists`.
    #[serde(default = "default_operator")]
    pub operator: String,
    #[serde(default)]
    pub value: String,
    /// Empty tolerates every effect.
    #[serde(default)]
    pub effect: String,
}

fn default_operator() -> String {
    "Equal".to_string()
}

impl Toleration {
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != taint.effect {
            return false;
        }
        if self.key.is_empty() {
            return self.operator == "Exists";
        }
        if self.key != taint.key {
            return false;
        }
        match self.operator.as_str() {
            "Exists" => true,
            _ => self.value == taint.value,
        }
    }
}

/// One node of one cluster, as reported by its executor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub cluster: String,
    pub name: String,
    pub allocatable: Resources,
    /// Resources taken by pods Flotilla does not manage (daemon sets, other workloads).
    #[serde(default)]
    pub reserved: Resources,
    pub topology: Topology,
    /// `nvidia.com/gpu.product`, normalised (e.g. "H100"); `None` for CPU-only nodes.
    #[serde(default)]
    pub gpu_model: Option<String>,
    #[serde(default)]
    pub instance_type: String,
    #[serde(default)]
    pub spot: bool,
    #[serde(default)]
    pub price_per_hour_usd: f64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
    #[serde(default)]
    pub unschedulable: bool,
}

impl Node {
    pub fn node_ref(&self) -> NodeRef {
        NodeRef { cluster: self.cluster.clone(), node: self.name.clone() }
    }

    /// What Flotilla may place here before counting its own running tasks.
    pub fn schedulable_capacity(&self) -> Resources {
        self.allocatable.minus(&self.reserved)
    }

    /// True when `tolerations` cover every hard taint of the node.
    pub fn tolerated_by(&self, tolerations: &[Toleration]) -> bool {
        self.taints.iter().filter(|t| t.effect != "PreferNoSchedule").all(|t| tolerations.iter().any(|tol| tol.tolerates(t)))
    }
}

/// Checks that a cluster's node reports are plausible: unique names Kubernetes would
/// accept, labels and taints within Kubernetes' lengths and Flotilla's counts, and
/// resources within the per-node bounds. Every error names the node (`nodes[3]`, a short
/// prefix of its name) and the field. An empty result means the report may be used.
pub fn check_nodes(nodes: &[Node]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        let p = format!("nodes[{i}]");
        if n.name.is_empty() || n.name.len() > MAX_NODE_NAME_BYTES {
            errors.push(FieldError::new(format!("{p}.name"), format!("{} must be 1 to {MAX_NODE_NAME_BYTES} bytes", quote(&n.name))));
        } else if let Some(first) = seen.insert(n.name.as_str(), i) {
            errors.push(FieldError::new(format!("{p}.name"), format!("{} is also the name of nodes[{first}]", quote(&n.name))));
        }
        let node = quote(&n.name);
        check_resources(&format!("{p}.allocatable"), &node, &n.allocatable, &mut errors);
        check_resources(&format!("{p}.reserved"), &node, &n.reserved, &mut errors);
        let values = [
            ("region", n.topology.region.as_str()),
            ("zone", n.topology.zone.as_str()),
            ("rack", n.topology.rack.as_str()),
            ("gpuModel", n.gpu_model.as_deref().unwrap_or_default()),
            ("instanceType", n.instance_type.as_str()),
        ];
        for (field, value) in values {
            if value.len() > MAX_LABEL_VALUE_BYTES {
                errors.push(FieldError::new(
                    format!("{p}.{field}"),
                    format!("node {node}: {} is longer than {MAX_LABEL_VALUE_BYTES} bytes", quote(value)),
                ));
            }
        }
        check_labels(&p, &node, n, &mut errors);
    }
    errors
}

fn check_resources(path: &str, node: &str, r: &Resources, errors: &mut Vec<FieldError>) {
    let amounts = [
        ("cpu", r.cpu_millis, MAX_NODE_CPU_MILLIS, "millicores"),
        ("memory", r.memory_bytes, MAX_NODE_MEMORY_BYTES, "bytes"),
        (GPU_RESOURCE, r.gpu, MAX_NODE_GPUS, "GPUs"),
    ];
    let extended = r.extended.iter().take(MAX_NODE_EXTENDED_RESOURCES).map(|(k, v)| (k.as_str(), *v, MAX_NODE_EXTENDED_AMOUNT, "units"));
    for (field, value, max, unit) in amounts.into_iter().chain(extended) {
        if field.is_empty() || field.len() > MAX_LABEL_KEY_BYTES {
            errors.push(FieldError::new(format!("{path}.extended"), format!("node {node}: {} is not a resource name", quote(field))));
        } else if value > max {
            errors.push(FieldError::new(
                format!("{path}.{field}"),
                format!("node {node}: {value} {unit} exceed the limit of {max} per node"),
            ));
        }
    }
    if r.extended.len() > MAX_NODE_EXTENDED_RESOURCES {
        errors.push(FieldError::new(
            format!("{path}.extended"),
            format!("node {node}: {} resources exceed the limit of {MAX_NODE_EXTENDED_RESOURCES} per node", r.extended.len()),
        ));
    }
}

fn check_labels(p: &str, node: &str, n: &Node, errors: &mut Vec<FieldError>) {
    if n.labels.len() > MAX_LABELS_PER_NODE {
        errors.push(FieldError::new(
            format!("{p}.labels"),
            format!("node {node}: {} labels exceed the limit of {MAX_LABELS_PER_NODE} per node", n.labels.len()),
        ));
    } else {
        for (key, value) in &n.labels {
            if !is_label_key_length(key) {
                errors.push(FieldError::new(
                    format!("{p}.labels"),
                    format!("node {node}: key {} is not a valid label key length", quote(key)),
                ));
            } else if value.len() > MAX_LABEL_VALUE_BYTES {
                errors.push(FieldError::new(
                    format!("{p}.labels"),
                    format!("node {node}: the value of {} is longer than {MAX_LABEL_VALUE_BYTES} bytes", quote(key)),
                ));
            }
        }
    }
    if n.taints.len() > MAX_TAINTS_PER_NODE {
        errors.push(FieldError::new(
            format!("{p}.taints"),
            format!("node {node}: {} taints exceed the limit of {MAX_TAINTS_PER_NODE} per node", n.taints.len()),
        ));
        return;
    }
    for (j, t) in n.taints.iter().enumerate() {
        let bad = !is_label_key_length(&t.key) || t.value.len() > MAX_LABEL_VALUE_BYTES;
        let effect_ok = matches!(t.effect.as_str(), "NoSchedule" | "PreferNoSchedule" | "NoExecute");
        if bad || !effect_ok {
            errors.push(FieldError::new(
                format!("{p}.taints[{j}]"),
                format!("node {node}: {}={}:{} is not a valid taint", quote(&t.key), quote(&t.value), quote(&t.effect)),
            ));
        }
    }
}

/// A label key's lengths as Kubernetes bounds them: non-empty, an optional prefix of at
/// most 253 bytes, a name part of at most 63.
fn is_label_key_length(key: &str) -> bool {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    !name.is_empty() && name.len() <= MAX_LABEL_NAME_BYTES && prefix.len() <= MAX_NODE_NAME_BYTES && key.len() <= MAX_LABEL_KEY_BYTES
}

/// Normalises a GPU product label (`NVIDIA-H100-80GB-HBM3`) to a short model (`H100`).
///
/// Users write `gpuModel: H100`; clusters label nodes with the long product name.
pub fn normalize_gpu_model(product: &str) -> String {
    let upper = product.to_ascii_uppercase();
    for known in ["GH200", "H200", "H100", "H20", "B200", "B100", "A100", "A10G", "A10", "L40S", "L40", "L4", "T4", "V100", "A30", "A40"] {
        if upper.split(['-', '_', ' ']).any(|part| part == known) {
            return known.to_string();
        }
    }
    product.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerations_match_like_kubernetes() {
        let taint = Taint { key: "nvidia.com/gpu".into(), value: "present".into(), effect: "NoSchedule".into() };
        let exists = Toleration { key: "nvidia.com/gpu".into(), operator: "Exists".into(), value: String::new(), effect: String::new() };
        let equal_wrong = Toleration { key: "nvidia.com/gpu".into(), operator: "Equal".into(), value: "x".into(), effect: String::new() };
        let wildcard = Toleration { key: String::new(), operator: "Exists".into(), value: String::new(), effect: String::new() };
        assert!(exists.tolerates(&taint));
        assert!(!equal_wrong.tolerates(&taint));
        assert!(wildcard.tolerates(&taint));
    }

    fn node(name: &str) -> Node {
        Node {
            cluster: "eks".into(),
            name: name.into(),
            allocatable: Resources::new(192_000, 2 << 40, 8),
            reserved: Resources::new(500, 1 << 30, 0),
            topology: Topology { region: "us-east-1".into(), zone: "us-east-1a".into(), rack: "r1".into() },
            gpu_model: Some("H100".into()),
            instance_type: "p5.48xlarge".into(),
            spot: false,
            price_per_hour_usd: 98.32,
            labels: [("kubernetes.io/hostname".to_string(), name.to_string())].into(),
            taints: vec![Taint { key: "nvidia.com/gpu".into(), value: "present".into(), effect: "NoSchedule".into() }],
            unschedulable: false,
        }
    }

    #[test]
    fn a_plausible_report_passes_the_node_checks() {
        let nodes: Vec<Node> = (0..3).map(|i| node(&format!("gpu-{i}"))).collect();
        assert_eq!(check_nodes(&nodes), vec![]);
    }

    #[test]
    fn implausible_node_reports_are_refused_naming_the_node_and_field() {
        let mut huge_gpus = node("gpu-0");
        huge_gpus.allocatable.gpu = u64::MAX;
        let mut billion = node("gpu-1");
        billion.allocatable.gpu = 1_000_000_000;
        let mut memory = node("gpu-2");
        memory.allocatable.memory_bytes = MAX_NODE_MEMORY_BYTES + 1;
        let mut cpu = node("gpu-3");
        cpu.reserved.cpu_millis = MAX_NODE_CPU_MILLIS + 1;
        let mut storage = node("gpu-4");
        storage.allocatable.extended.insert("ephemeral-storage".into(), u64::MAX);
        let duplicate = node("gpu-0");
        let mut long_name = node(&"n".repeat(300));
        long_name.labels.clear();
        let mut labels = node("gpu-7");
        labels.labels.insert("a".repeat(64), "v".into());
        labels.labels.insert("ok".into(), "v".repeat(64));
        let mut many = node("gpu-8");
        many.labels = (0..=MAX_LABELS_PER_NODE).map(|i| (format!("l{i}"), String::new())).collect();
        many.taints = vec![Taint { key: "k".into(), value: String::new(), effect: "Sometimes".into() }];
        let errs: Vec<String> = check_nodes(&[huge_gpus, billion, memory, cpu, storage, duplicate, long_name, labels, many])
            .iter()
            .map(|e| e.to_string())
            .collect();
        let expected_starts = [
            "nodes[0].allocatable.nvidia.com/gpu: node \"gpu-0\": 18446744073709551615 GPUs exceed the limit of 4096 per node",
            "nodes[1].allocatable.nvidia.com/gpu: node \"gpu-1\": 1000000000 GPUs exceed the limit of 4096 per node",
            "nodes[2].allocatable.memory: node \"gpu-2\"",
            "nodes[3].reserved.cpu: node \"gpu-3\"",
            "nodes[4].allocatable.ephemeral-storage: node \"gpu-4\"",
            "nodes[5].name: \"gpu-0\" is also the name of nodes[0]",
            "nodes[6].name: \"nnnn",
            "nodes[7].labels: node \"gpu-7\": key \"aaaa",
            "nodes[7].labels: node \"gpu-7\": the value of \"ok\" is longer than 63 bytes",
            "nodes[8].labels: node \"gpu-8\": 1025 labels exceed the limit of 1024 per node",
            "nodes[8].taints[0]: node \"gpu-8\"",
        ];
        assert_eq!(errs.len(), expected_starts.len(), "{errs:#?}");
        for (e, start) in errs.iter().zip(expected_starts) {
            assert!(e.starts_with(start), "{e:?} should start with {start:?}");
            assert!(e.len() < 400, "an error quotes only a short prefix: {e}");
        }
    }

    #[test]
    fn gpu_product_labels_normalise_to_models() {
        assert_eq!(normalize_gpu_model("NVIDIA-H100-80GB-HBM3"), "H100");
        assert_eq!(normalize_gpu_model("NVIDIA-A10G"), "A10G");
        assert_eq!(normalize_gpu_model("nvidia-l4"), "L4");
        assert_eq!(normalize_gpu_model("Tesla-T4"), "T4");
        assert_eq!(normalize_gpu_model("custom-accel"), "custom-accel");
    }
}
