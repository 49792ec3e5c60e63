//! The file format as written: YAML shapes, quantities and durations still strings.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::FieldError;
use crate::Toleration;

/// A whole task file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskFile {
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub task_set: Option<String>,
    #[serde(default)]
    pub tasks: Vec<TaskTemplate>,
}

/// One entry of `tasks:` as written. Quantities and durations stay strings until validated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskTemplate {
    pub name: String,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub priority_class: Option<String>,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, deserialize_with = "string_map")]
    pub env: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "string_map")]
    pub resources: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "string_map")]
    pub limits: BTreeMap<String, String>,
    #[serde(default)]
    pub retry: Option<RetryTemplate>,
    #[serde(default)]
    pub checkpoint: bool,
    #[serde(default)]
    pub max_runtime: Option<String>,
    #[serde(default)]
    pub pending_timeout: Option<String>,
    #[serde(default)]
    pub termination_grace: Option<String>,
    #[serde(default)]
    pub gang: Option<GangTemplate>,
    #[serde(default)]
    pub placement: Option<PlacementTemplate>,
    #[serde(default)]
    pub after: Vec<String>,
    #[serde(default)]
    pub sim: Option<SimTemplate>,
    /// `restricted` (the default), `baseline` or `privileged`. Not written when absent: the
    /// JSON of a template is what a submission's digest hashes, and templates written before
    /// this field existed must keep their digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    /// The Kubernetes RuntimeClass (`gvisor`, `kata`). Not written when absent (digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class: Option<String>,
    /// A running attempt that signals no progress for this long is stopped and retried
    /// (`FailureKind::NoProgress`); see docs/task-file.md. Not written when absent (digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<String>,
    /// Node affinity: required and preferred label expressions; see docs/task-file.md.
    /// Not written when absent (digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityTemplate>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryTemplate {
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub backoff: Option<String>,
    #[serde(default)]
    pub max_backoff: Option<String>,
    #[serde(default)]
    pub oom_memory_growth: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GangTemplate {
    /// Members of a gang of one template; 0 (unset) with `group`, whose size is the sum of
    /// its templates' counts.
    #[serde(default)]
    pub size: u32,
    #[serde(default)]
    pub topology: Option<String>,
    /// A node label key: every member on nodes with one same value of it, in one cluster.
    /// Exclusive with `topology`. Not written when absent (digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_value_of: Option<String>,
    /// A gang of several templates: every template naming this group is one gang of
    /// `count` members each. Not written when absent (digests), nor are the two below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The members' role (`FLOTILLA_GANG_ROLE`, their hostnames); default: the template's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// This template's first member leads the group (rank 0); default: the group's first template.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leader: bool,
}

/// `affinity:` as written: operators stay strings and weights any integer until validated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AffinityTemplate {
    #[serde(default)]
    pub required: Vec<RequirementTemplate>,
    #[serde(default)]
    pub preferred: Vec<PreferredTemplate>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequirementTemplate {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferredTemplate {
    pub weight: i64,
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlacementTemplate {
    #[serde(default)]
    pub gpu_model: Option<String>,
    #[serde(default)]
    pub clusters: Vec<String>,
    #[serde(default)]
    pub preferred_cluster: Option<String>,
    #[serde(default, deserialize_with = "string_map")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub spot: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimTemplate {
    #[serde(default)]
    pub duration: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub memory_peak: Option<String>,
    /// The simulated task signals progress this often (simulated time)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_every: Option<String>,
    /// ...and stops signalling this long after it started running (simulated time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_after: Option<String>,
}

/// YAML scalars in maps (`cpu: 32`, `cpu: 1.5`, `cpu: 500m`) all become strings.
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Str(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    let raw: BTreeMap<String, Scalar> = BTreeMap::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                Scalar::Str(s) => s,
                Scalar::Int(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (k, s)
        })
        .collect())
}

impl TaskFile {
    /// Parses YAML. Syntax and shape errors carry the line and column.
    pub fn from_yaml(text: &str) -> Result<TaskFile, FieldError> {
        serde_saphyr::from_str::<TaskFile>(text).map_err(|e| FieldError::new("", format!("invalid task file: {e}")))
    }
}
