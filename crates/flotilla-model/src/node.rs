//! Nodes as the scheduler sees them: capacity, topology, GPU model, price.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Resources;

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

    #[test]
    fn gpu_product_labels_normalise_to_models() {
        assert_eq!(normalize_gpu_model("NVIDIA-H100-80GB-HBM3"), "H100");
        assert_eq!(normalize_gpu_model("NVIDIA-A10G"), "A10G");
        assert_eq!(normalize_gpu_model("nvidia-l4"), "L4");
        assert_eq!(normalize_gpu_model("Tesla-T4"), "T4");
        assert_eq!(normalize_gpu_model("custom-accel"), "custom-accel");
    }
}
