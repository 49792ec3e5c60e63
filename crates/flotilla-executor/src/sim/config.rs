//! The simulated federation's clusters file (`clusters.toml`).
//!
//! One `[[cluster]]` table per simulated cluster, each with `[[cluster.pool]]` tables of
//! identical nodes (see `clusters.example.toml` at the repository root):
//!
//! ```toml
//! [[cluster]]
//! name = "eks-us-east"          # DNS-1123 label, unique
//! region = "us-east-1"
//! speed = 1.0                   # simulated time runs this many times faster (optional)
//! pending = "2s"                # how long a simulated pod stays pending (optional)
//! default_duration = "10s"      # run time of tasks without a sim duration (optional)
//! seed = 7                      # fixes the fault dice for reproducible runs (optional)
//!
//! [cluster.faults]              # per attempt probabilities, each in [0, 1] (optional)
//! failure_rate = 0.01           # exits 1 part-way through
//! oom_rate = 0.005              # OOM-killed part-way through
//! eviction_rate = 0.0           # evicted part-way through (spot reclaim, node pressure)
//!
//! [[cluster.pool]]
//! name = "h100"                 # DNS-1123 label, unique in the cluster
//! instance_type = "p5.48xlarge"
//! count = 4                     # nodes, named <cluster>-<pool>-<NN>
//! cpu = "192"                   # allocatable, Kubernetes quantities
//! memory = "1900Gi"
//! gpu = 8
//! gpu_product = "NVIDIA-H100-80GB-HBM3"   # required when gpu > 0; normalised to "H100"
//! spot = false
//! price_per_hour_usd = 98.32
//! zones = ["us-east-1a", "us-east-1b"]
//! nodes_per_rack = 2            # optional; or racks = ["r01", "r02"] (nodes split in blocks)
//! reserved_cpu = "500m"         # taken by daemon sets (optional)
//! reserved_memory = "2Gi"
//! max_pods = 110                # the kubelet's maxPods (optional; 110 as in Kubernetes)
//! labels = { "karpenter.sh/nodepool" = "h100" }
//! taints = [{ key = "dedicated", value = "training", effect = "NoSchedule" }]
//! mig = { "1g.10gb" = 7 }       # MIG slices per node, beside `gpu` whole GPUs (optional)
//! gpu_replicas = 4              # `gpu` GPUs time-sliced this many ways (optional)
//! ```
//!
//! Shared GPUs are reported as the kube backend reads a node that NVIDIA's device plugin
//! and GPU Feature Discovery set up (docs/task-file.md, "Shared GPUs"):
//!
//! - `mig`: the mixed strategy. Each profile becomes the allocatable resource
//!   `nvidia.com/mig-<profile>` with its count per node and the label
//!   `nvidia.com/mig-<profile>.count`; the node is labelled `nvidia.com/mig.strategy=mixed`.
//!   `gpu` counts the whole GPUs left unpartitioned (0 for a node whose every GPU is split);
//!   `gpu_product` is required.
//! - `gpu_replicas = R` (at least 2): time slicing with `renameByDefault`. The pool's `gpu`
//!   GPUs become `gpu * R` of `nvidia.com/gpu.shared` and no `nvidia.com/gpu`; the node is
//!   labelled `nvidia.com/gpu.replicas=R` and `nvidia.com/gpu.sharing-strategy=time-slicing`.
//!   Not with `mig`.
//!
//! Nodes of a pool are spread over its zones: with racks, whole racks go round-robin to
//! zones (a rack never spans two zones); without, nodes go round-robin.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_model::{
    is_dns1123_label, normalize_gpu_model, parse_bytes, parse_cpu_millis, quote, MigProfile, Node, Resources, Taint, Topology,
    LABEL_GPU_REPLICAS, LABEL_GPU_SHARING_STRATEGY, LABEL_MIG_STRATEGY, MAX_GPU_REPLICAS, MAX_NODE_GPUS, MIG_RESOURCE_PREFIX,
    PODS_RESOURCE, SHARED_GPU_RESOURCE,
};
use serde::Deserialize;

use crate::config::{de_duration, ConfigError};

/// Upper bound on simulated nodes in one file: the simulator is for dev mode and tests.
pub const MAX_SIM_NODES: u64 = 100_000;
/// A simulated federation: the contents of a clusters file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClustersFile {
    #[serde(rename = "cluster", default)]
    pub clusters: Vec<ClusterConfig>,
    /// Where it was read from (for error messages); empty when built in code.
    #[serde(skip)]
    pub path: PathBuf,
}

/// One simulated cluster.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    #[serde(default)]
    pub region: String,
    /// Simulated time runs this many times faster than real time.
    #[serde(default = "default_speed")]
    pub speed: f64,
    #[serde(default = "default_pending", deserialize_with = "de_duration")]
    pub pending: Duration,
    #[serde(default = "default_duration", deserialize_with = "de_duration")]
    pub default_duration: Duration,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub faults: Faults,
    #[serde(rename = "pool", default)]
    pub pools: Vec<PoolConfig>,
}

fn default_speed() -> f64 {
    1.0
}

fn default_pending() -> Duration {
    Duration::from_secs(1)
}

fn default_duration() -> Duration {
    Duration::from_secs(10)
}

/// Injected faults: the probability that one attempt ends this way instead of running out
/// its duration. They are exclusive; their sum must be at most 1.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    #[serde(default)]
    pub failure_rate: f64,
    #[serde(default)]
    pub oom_rate: f64,
    #[serde(default)]
    pub eviction_rate: f64,
}

/// A group of identical simulated nodes.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    #[serde(default)]
    pub instance_type: String,
    pub count: u32,
    pub cpu: String,
    pub memory: String,
    #[serde(default)]
    pub gpu: u64,
    #[serde(default)]
    pub gpu_product: Option<String>,
    #[serde(default)]
    pub spot: bool,
    #[serde(default)]
    pub price_per_hour_usd: f64,
    #[serde(default)]
    pub zones: Vec<String>,
    #[serde(default)]
    pub racks: Vec<String>,
    #[serde(default)]
    pub nodes_per_rack: Option<u32>,
    #[serde(default)]
    pub reserved_cpu: Option<String>,
    #[serde(default)]
    pub reserved_memory: Option<String>,
    /// The most pods a node runs (the kubelet's `maxPods`), Flotilla's and others; reported
    /// as the node's allocatable `pods`.
    #[serde(default = "default_max_pods")]
    pub max_pods: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
    /// MIG slices per node by profile (`"1g.10gb" = 7`), as the device plugin's mixed
    /// strategy advertises them.
    #[serde(default)]
    pub mig: BTreeMap<String, u64>,
    /// Time-sliced replicas per GPU: the pool's GPUs are offered as `nvidia.com/gpu.shared`.
    #[serde(default)]
    pub gpu_replicas: Option<u64>,
}

/// The kubelet's default `maxPods`.
pub const DEFAULT_MAX_PODS: u32 = 110;

fn default_max_pods() -> u32 {
    DEFAULT_MAX_PODS
}

/// Reads and checks a clusters file. Errors name the file and the field
/// (`clusters.toml: cluster[1] "gke-europe" pool[0] "a100": memory: "lots" is not a quantity`).
pub fn load_clusters(path: impl AsRef<Path>) -> Result<ClustersFile, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError { path: path.to_path_buf(), message: format!("cannot read: {e}") })?;
    parse_clusters(&text, path)
}

/// Parses and checks the text of a clusters file; `path` is only used in errors.
pub fn parse_clusters(text: &str, path: impl AsRef<Path>) -> Result<ClustersFile, ConfigError> {
    let path = path.as_ref();
    let err = |message: String| ConfigError { path: path.to_path_buf(), message };
    let mut file: ClustersFile = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
    file.path = path.to_path_buf();
    file.validate().map_err(err)?;
    Ok(file)
}

/// The names of the clusters in a clusters file, in file order.
pub fn cluster_names(path: impl AsRef<Path>) -> Result<Vec<String>, ConfigError> {
    Ok(load_clusters(path)?.cluster_names())
}

impl ClustersFile {
    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.iter().map(|c| c.name.clone()).collect()
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The simulated nodes of cluster `name`.
    pub fn sim_nodes(&self, name: &str) -> Result<Vec<Node>, ConfigError> {
        let err = |message: String| ConfigError { path: self.path.clone(), message };
        let cluster =
            self.cluster(name).ok_or_else(|| err(format!("no cluster named {name:?} (clusters: {})", self.cluster_names().join(", "))))?;
        cluster.nodes().map_err(err)
    }

    fn validate(&self) -> Result<(), String> {
        if self.clusters.is_empty() {
            return Err("no [[cluster]] tables".into());
        }
        let mut names = BTreeSet::new();
        let mut total_nodes = 0u64;
        for (i, c) in self.clusters.iter().enumerate() {
            let at = format!("cluster[{i}] {:?}", c.name);
            if !is_dns1123_label(&c.name) {
                return Err(format!("{at}: name: must be a DNS-1123 label (lower-case letters, digits, '-', at most 63)"));
            }
            if !names.insert(c.name.as_str()) {
                return Err(format!("{at}: name: duplicate cluster name"));
            }
            c.validate().map_err(|e| format!("{at}: {e}"))?;
            total_nodes += c.pools.iter().map(|p| u64::from(p.count)).sum::<u64>();
        }
        if total_nodes > MAX_SIM_NODES {
            return Err(format!("{total_nodes} nodes in all; the simulator takes at most {MAX_SIM_NODES}"));
        }
        Ok(())
    }
}

impl ClusterConfig {
    fn validate(&self) -> Result<(), String> {
        if !(self.speed.is_finite() && self.speed > 0.0) {
            return Err(format!("speed: {} must be a positive number", self.speed));
        }
        if self.default_duration.is_zero() {
            return Err("default_duration: must be more than zero".into());
        }
        let f = &self.faults;
        for (field, v) in [("failure_rate", f.failure_rate), ("oom_rate", f.oom_rate), ("eviction_rate", f.eviction_rate)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("faults.{field}: {v} must be between 0 and 1"));
            }
        }
        if f.failure_rate + f.oom_rate + f.eviction_rate > 1.0 {
            return Err("faults: failure_rate + oom_rate + eviction_rate must be at most 1".into());
        }
        if self.pools.is_empty() {
            return Err("no [[cluster.pool]] tables".into());
        }
        let mut names = BTreeSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            let at = format!("pool[{i}] {:?}", p.name);
            if !is_dns1123_label(&p.name) {
                return Err(format!("{at}: name: must be a DNS-1123 label"));
            }
            if !names.insert(p.name.as_str()) {
                return Err(format!("{at}: name: duplicate pool name"));
            }
            p.validate().map_err(|e| format!("{at}: {e}"))?;
        }
        Ok(())
    }

    /// The simulated nodes of this cluster, in a stable order.
    pub fn nodes(&self) -> Result<Vec<Node>, String> {
        let mut nodes = Vec::new();
        for (i, p) in self.pools.iter().enumerate() {
            p.nodes_into(self, &mut nodes).map_err(|e| format!("cluster {:?} pool[{i}] {:?}: {e}", self.name, p.name))?;
        }
        Ok(nodes)
    }
}

impl PoolConfig {
    fn validate(&self) -> Result<(), String> {
        if self.count == 0 {
            return Err("count: must be at least 1".into());
        }
        self.allocatable()?;
        self.reserved()?;
        if (self.gpu > 0 || !self.mig.is_empty()) && self.gpu_product.as_deref().is_none_or(str::is_empty) {
            return Err("gpu_product: required when gpu > 0 or with mig (e.g. \"NVIDIA-H100-80GB-HBM3\")".into());
        }
        self.validate_shared_gpus()?;
        if !(self.price_per_hour_usd.is_finite() && self.price_per_hour_usd >= 0.0) {
            return Err(format!("price_per_hour_usd: {} must be zero or more", self.price_per_hour_usd));
        }
        if self.max_pods == 0 {
            return Err("max_pods: must be at least 1".into());
        }
        if self.nodes_per_rack == Some(0) {
            return Err("nodes_per_rack: must be at least 1".into());
        }
        if !self.racks.is_empty() {
            let per_rack = self.nodes_per_rack.map_or(u64::MAX, u64::from);
            if (self.racks.len() as u64).saturating_mul(per_rack) < u64::from(self.count) {
                return Err(format!("racks: {} racks of {per_rack} nodes cannot hold count = {}", self.racks.len(), self.count));
            }
        }
        for t in &self.taints {
            if !matches!(t.effect.as_str(), "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                return Err(format!("taints: effect {:?} must be NoSchedule, PreferNoSchedule or NoExecute", t.effect));
            }
        }
        Ok(())
    }

    fn validate_shared_gpus(&self) -> Result<(), String> {
        for (profile, count) in &self.mig {
            if MigProfile::parse(profile).is_none() {
                return Err(format!("mig: {} is not a MIG profile (e.g. \"1g.10gb\", \"3g.40gb\", \"1g.10gb+me\")", quote(profile)));
            }
            if !(1..=MAX_NODE_GPUS * 7).contains(count) {
                return Err(format!("mig.{profile}: {count} slices must be between 1 and {}", MAX_NODE_GPUS * 7));
            }
        }
        if let Some(r) = self.gpu_replicas {
            if !(2..=MAX_GPU_REPLICAS).contains(&r) {
                return Err(format!("gpu_replicas: {r} must be between 2 and {MAX_GPU_REPLICAS}"));
            }
            if self.gpu == 0 {
                return Err("gpu_replicas: needs gpu > 0 (the GPUs that are time-sliced)".into());
            }
            if !self.mig.is_empty() {
                return Err("gpu_replicas: cannot be combined with mig".into());
            }
        }
        Ok(())
    }

    fn allocatable(&self) -> Result<Resources, String> {
        let cpu = parse_cpu_millis(&self.cpu).map_err(|e| format!("cpu: {e}"))?;
        let memory = parse_bytes(&self.memory).map_err(|e| format!("memory: {e}"))?;
        let mut r = Resources::new(cpu, memory, self.gpu);
        r.extended.insert(PODS_RESOURCE.to_string(), u64::from(self.max_pods));
        for (profile, count) in &self.mig {
            r.extended.insert(format!("{MIG_RESOURCE_PREFIX}{profile}"), *count);
        }
        if let Some(replicas) = self.gpu_replicas {
            r.gpu = 0;
            r.extended.insert(SHARED_GPU_RESOURCE.to_string(), self.gpu.saturating_mul(replicas));
        }
        Ok(r)
    }

    /// The labels GPU Feature Discovery sets on a node of this pool.
    fn gpu_labels(&self, labels: &mut BTreeMap<String, String>) {
        let Some(product) = self.gpu_product.as_ref().filter(|_| self.gpu > 0 || !self.mig.is_empty()) else { return };
        labels.insert("nvidia.com/gpu.product".to_string(), product.clone());
        labels.insert("nvidia.com/gpu.count".to_string(), self.gpu.to_string());
        if !self.mig.is_empty() {
            labels.insert(LABEL_MIG_STRATEGY.to_string(), "mixed".to_string());
            for (profile, count) in &self.mig {
                labels.insert(format!("{MIG_RESOURCE_PREFIX}{profile}.count"), count.to_string());
            }
        }
        if let Some(replicas) = self.gpu_replicas {
            labels.insert(LABEL_GPU_REPLICAS.to_string(), replicas.to_string());
            labels.insert(LABEL_GPU_SHARING_STRATEGY.to_string(), "time-slicing".to_string());
        }
    }

    fn reserved(&self) -> Result<Resources, String> {
        let cpu = self.reserved_cpu.as_deref().map(parse_cpu_millis).transpose().map_err(|e| format!("reserved_cpu: {e}"))?;
        let memory = self.reserved_memory.as_deref().map(parse_bytes).transpose().map_err(|e| format!("reserved_memory: {e}"))?;
        Ok(Resources::new(cpu.unwrap_or(0), memory.unwrap_or(0), 0))
    }

    fn nodes_into(&self, cluster: &ClusterConfig, out: &mut Vec<Node>) -> Result<(), String> {
        let allocatable = self.allocatable()?;
        let reserved = self.reserved()?;
        let count = self.count as usize;
        let nodes_per_rack = match (self.nodes_per_rack, self.racks.len()) {
            (Some(n), _) => Some(n as usize),
            (None, 0) => None,
            (None, racks) => Some(count.div_ceil(racks)),
        };
        let width = if count >= 100 { 3 } else { 2 };
        for i in 0..count {
            let rack_index = nodes_per_rack.map(|n| i / n);
            let zone_index = rack_index.unwrap_or(i);
            let zone = if self.zones.is_empty() { String::new() } else { self.zones[zone_index % self.zones.len()].clone() };
            let rack = match rack_index {
                None => String::new(),
                Some(r) if !self.racks.is_empty() => self.racks[r].clone(),
                Some(r) => format!("{}-{}-rack-{:02}", cluster.name, self.name, r + 1),
            };
            let name = format!("{}-{}-{:0width$}", cluster.name, self.name, i + 1);
            let gpu_model = self.gpu_product.as_deref().filter(|_| allocatable.gpu > 0).map(normalize_gpu_model);
            let mut labels = BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), name.clone()),
                ("node.kubernetes.io/instance-type".to_string(), self.instance_type.clone()),
                ("topology.kubernetes.io/region".to_string(), cluster.region.clone()),
                ("topology.kubernetes.io/zone".to_string(), zone.clone()),
                ("flotilla.io/pool".to_string(), self.name.clone()),
                ("karpenter.sh/capacity-type".to_string(), if self.spot { "spot" } else { "on-demand" }.to_string()),
            ]);
            if !rack.is_empty() {
                labels.insert(crate::kube::DEFAULT_RACK_LABEL.to_string(), rack.clone());
            }
            self.gpu_labels(&mut labels);
            labels.retain(|_, v| !v.is_empty());
            labels.extend(self.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            out.push(Node {
                cluster: cluster.name.clone(),
                name,
                allocatable: allocatable.clone(),
                reserved: reserved.clone(),
                topology: Topology { region: cluster.region.clone(), zone, rack },
                gpu_model,
                instance_type: self.instance_type.clone(),
                spot: self.spot,
                price_per_hour_usd: self.price_per_hour_usd,
                labels,
                taints: self.taints.clone(),
                unschedulable: false,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
[[cluster]]
name = "a"
region = "r1"
[[cluster.pool]]
name = "gpu"
instance_type = "p5.48xlarge"
count = 5
cpu = "192"
memory = "2Ti"
gpu = 8
gpu_product = "NVIDIA-H100-80GB-HBM3"
price_per_hour_usd = 98.0
zones = ["r1a", "r1b"]
nodes_per_rack = 2
"#;

    #[test]
    fn pools_expand_to_nodes_with_racks_inside_one_zone() {
        let file = parse_clusters(SMALL, "c.toml").unwrap();
        let nodes = file.sim_nodes("a").unwrap();
        assert_eq!(nodes.len(), 5);
        assert_eq!(nodes[0].name, "a-gpu-01");
        assert_eq!(nodes[0].gpu_model.as_deref(), Some("H100"));
        let mut allocatable = Resources::new(192_000, 2 << 40, 8);
        allocatable.extended.insert(PODS_RESOURCE.into(), u64::from(DEFAULT_MAX_PODS));
        assert_eq!(nodes[0].allocatable, allocatable, "pods: the kubelet's default maxPods");
        let placement: Vec<(&str, &str)> = nodes.iter().map(|n| (n.topology.zone.as_str(), n.topology.rack.as_str())).collect();
        assert_eq!(
            placement,
            [
                ("r1a", "a-gpu-rack-01"),
                ("r1a", "a-gpu-rack-01"),
                ("r1b", "a-gpu-rack-02"),
                ("r1b", "a-gpu-rack-02"),
                ("r1a", "a-gpu-rack-03")
            ]
        );
        assert_eq!(nodes[4].labels["topology.flotilla.io/rack"], "a-gpu-rack-03");
        assert_eq!(nodes[4].labels["kubernetes.io/hostname"], "a-gpu-05");
    }

    #[test]
    fn bad_fields_are_named_with_the_file() {
        let bad = SMALL.replace("memory = \"2Ti\"", "memory = \"lots\"");
        let e = parse_clusters(&bad, "c.toml").unwrap_err().to_string();
        assert_eq!(e, "c.toml: cluster[0] \"a\": pool[0] \"gpu\": memory: \"lots\" is not a quantity");
        let bad = SMALL.replace("region = \"r1\"", "region = \"r1\"\n[cluster.faults]\noom_rate = 1.5");
        let e = parse_clusters(&bad, "c.toml").unwrap_err().to_string();
        assert!(e.contains("faults.oom_rate: 1.5 must be between 0 and 1"), "{e}");
        let bad = SMALL.replace("gpu_product", "gpu_prodct");
        let e = parse_clusters(&bad, "c.toml").unwrap_err().to_string();
        assert!(e.starts_with("c.toml: ") && e.contains("gpu_prodct"), "{e}");
        let missing = load_clusters("/nonexistent/clusters.toml").unwrap_err().to_string();
        assert!(missing.starts_with("/nonexistent/clusters.toml: cannot read"), "{missing}");
    }

    #[test]
    fn mig_and_time_sliced_pools_report_what_the_kube_backend_reads_from_such_nodes() {
        let text = SMALL.replace("gpu = 8\n", "gpu = 1\nmig = { \"1g.10gb\" = 7, \"3g.40gb\" = 2 }\n");
        let nodes = parse_clusters(&text, "c.toml").unwrap().sim_nodes("a").unwrap();
        let n = &nodes[0];
        assert_eq!(n.allocatable.gpu, 1, "the unpartitioned GPU");
        assert_eq!(n.allocatable.extended.get("nvidia.com/mig-1g.10gb"), Some(&7));
        assert_eq!(n.allocatable.extended.get("nvidia.com/mig-3g.40gb"), Some(&2));
        assert_eq!(n.labels.get(LABEL_MIG_STRATEGY).map(String::as_str), Some("mixed"));
        assert_eq!(n.labels.get("nvidia.com/mig-1g.10gb.count").map(String::as_str), Some("7"));
        assert_eq!(n.gpu_model.as_deref(), Some("H100"));

        let text = SMALL.replace("gpu = 8\n", "gpu = 2\ngpu_replicas = 4\n");
        let nodes = parse_clusters(&text, "c.toml").unwrap().sim_nodes("a").unwrap();
        let n = &nodes[0];
        assert_eq!(n.allocatable.gpu, 0, "time-sliced GPUs are not whole GPUs");
        assert_eq!(n.allocatable.extended.get(SHARED_GPU_RESOURCE), Some(&8));
        assert_eq!(flotilla_model::gpu_replicas_of(n), 4);
        assert_eq!(n.labels.get(LABEL_GPU_SHARING_STRATEGY).map(String::as_str), Some("time-slicing"));
        assert_eq!(n.gpu_model, None);
        assert_eq!(flotilla_model::check_nodes(&nodes), vec![]);
    }

    #[test]
    fn bad_shared_gpu_pools_are_refused_naming_the_field() {
        for (edit, want) in [
            ("gpu = 8\nmig = { \"0g.10gb\" = 7 }\n", "pool[0] \"gpu\": mig: \"0g.10gb\" is not a MIG profile"),
            ("gpu = 8\nmig = { \"1g.10gb\" = 0 }\n", "pool[0] \"gpu\": mig.1g.10gb: 0 slices must be between 1 and"),
            ("gpu = 8\ngpu_replicas = 1\n", "pool[0] \"gpu\": gpu_replicas: 1 must be between 2 and 1024"),
            ("gpu = 0\ngpu_replicas = 4\n", "pool[0] \"gpu\": gpu_replicas: needs gpu > 0"),
            ("gpu = 8\ngpu_replicas = 4\nmig = { \"1g.10gb\" = 7 }\n", "pool[0] \"gpu\": gpu_replicas: cannot be combined with mig"),
        ] {
            let e = parse_clusters(&SMALL.replace("gpu = 8\n", edit), "c.toml").unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn the_example_federation_loads_and_stays_light() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clusters.example.toml");
        let file = load_clusters(&path).unwrap();
        assert_eq!(file.cluster_names(), ["eks-us-east", "gke-europe", "onprem-lab"]);
        let mut total = 0;
        let mut cpu_only = 0;
        for name in file.cluster_names() {
            let nodes = file.sim_nodes(&name).unwrap();
            assert!(nodes.iter().all(|n| n.cluster == name && n.price_per_hour_usd > 0.0 && !n.topology.zone.is_empty()));
            cpu_only += nodes.iter().filter(|n| n.gpu_model.is_none()).count();
            total += nodes.len();
        }
        assert!((40..=80).contains(&total), "{total} nodes");
        assert!(cpu_only > 0);
        let onprem = file.sim_nodes("onprem-lab").unwrap();
        assert!(onprem.iter().filter(|n| n.gpu_model.as_deref() == Some("H100")).all(|n| !n.topology.rack.is_empty()));
        assert!(onprem.iter().any(|n| n.allocatable.extended.contains_key("nvidia.com/mig-1g.10gb")), "the example shows MIG slices");
        assert!(onprem.iter().any(|n| n.allocatable.extended.contains_key(SHARED_GPU_RESOURCE)), "and time-sliced GPUs");
    }
}
