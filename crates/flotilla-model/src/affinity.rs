//! Node affinity: which node labels a task requires (every term must hold) or prefers
//! (matching terms add their weight to a node's placement score), with the Kubernetes
//! operators `In`, `NotIn`, `Exists` and `DoesNotExist` and their semantics (a node
//! without the label satisfies `NotIn` and `DoesNotExist`).
//!
//! ```
//! use flotilla_model::{AffinityOperator, NodeAffinity, NodeRequirement};
//! let zone = NodeRequirement { key: "zone".into(), operator: AffinityOperator::In, values: vec!["a".into()] };
//! let affinity = NodeAffinity { required: vec![zone], preferred: vec![] };
//! assert!(affinity.required_match(&[("zone".to_string(), "a".to_string())].into()));
//! assert!(!affinity.required_match(&Default::default()));
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{MAX_LABEL_NAME_BYTES, MAX_LABEL_VALUE_BYTES};

/// Most required (and, separately, preferred) expressions one task may carry.
pub const MAX_AFFINITY_TERMS: usize = 16;
/// Most values one `In` / `NotIn` expression may list.
pub const MAX_AFFINITY_VALUES: usize = 16;
/// Weights of preferred terms are 1..=100, as in Kubernetes.
pub const MAX_AFFINITY_WEIGHT: u32 = 100;
/// Longest DNS-subdomain prefix of a label key (`example.com/`).
pub const MAX_LABEL_PREFIX_BYTES: usize = 253;

/// How a requirement compares a node's label with its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AffinityOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl AffinityOperator {
    pub const ALL: [AffinityOperator; 4] =
        [AffinityOperator::In, AffinityOperator::NotIn, AffinityOperator::Exists, AffinityOperator::DoesNotExist];

    pub fn as_str(self) -> &'static str {
        match self {
            AffinityOperator::In => "In",
            AffinityOperator::NotIn => "NotIn",
            AffinityOperator::Exists => "Exists",
            AffinityOperator::DoesNotExist => "DoesNotExist",
        }
    }

    pub fn parse(s: &str) -> Option<AffinityOperator> {
        AffinityOperator::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// `In` and `NotIn` compare with values (at least one); the others take none.
    pub fn takes_values(self) -> bool {
        matches!(self, AffinityOperator::In | AffinityOperator::NotIn)
    }
}

impl fmt::Display for AffinityOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One match expression on a node label (a Kubernetes `NodeSelectorRequirement`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeRequirement {
    pub key: String,
    pub operator: AffinityOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl NodeRequirement {
    /// Whether a node with these labels satisfies the expression.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            AffinityOperator::In => value.is_some_and(|v| self.values.contains(v)),
            AffinityOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            AffinityOperator::Exists => value.is_some(),
            AffinityOperator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for NodeRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator.takes_values() {
            write!(f, "{} {} ({})", self.key, self.operator, self.values.join(","))
        } else {
            write!(f, "{} {}", self.key, self.operator)
        }
    }
}

/// A preferred expression and the score a matching node gains.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PreferredRequirement {
    pub weight: u32,
    #[serde(flatten)]
    pub requirement: NodeRequirement,
}

/// A task's node affinity. Empty (the default) constrains nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeAffinity {
    /// All must hold (one Kubernetes `nodeSelectorTerm`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<NodeRequirement>,
    /// Each that holds adds its weight to the node's score.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred: Vec<PreferredRequirement>,
}

impl NodeAffinity {
    pub fn is_empty(&self) -> bool {
        self.required.is_empty() && self.preferred.is_empty()
    }

    /// Whether every required expression holds on a node with these labels.
    pub fn required_match(&self, labels: &BTreeMap<String, String>) -> bool {
        self.required.iter().all(|r| r.matches(labels))
    }

    /// The summed weights of the preferred expressions that hold (at most 16 x 100).
    pub fn preferred_score(&self, labels: &BTreeMap<String, String>) -> u32 {
        self.preferred.iter().filter(|p| p.requirement.matches(labels)).map(|p| p.weight).sum()
    }
}

/// A valid Kubernetes label key: an optional DNS-subdomain prefix (at most 253 bytes) and
/// `/`, then a name of at most 63 alphanumerics, `-`, `_`, `.`, starting and ending
/// alphanumeric.
pub fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= MAX_LABEL_PREFIX_BYTES
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    prefix_ok && !name.is_empty() && name.len() <= MAX_LABEL_NAME_BYTES && is_label_chars(name)
}

/// A valid Kubernetes label value: empty, or at most 63 of the label-name characters.
pub fn is_label_value(value: &str) -> bool {
    value.is_empty() || (value.len() <= MAX_LABEL_VALUE_BYTES && is_label_chars(value))
}

fn is_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn req(key: &str, operator: AffinityOperator, values: &[&str]) -> NodeRequirement {
        NodeRequirement { key: key.into(), operator, values: values.iter().map(|v| v.to_string()).collect() }
    }

    #[test]
    fn operators_follow_kubernetes_semantics_including_not_in_on_a_node_without_the_label() {
        let with = labels(&[("pool", "a100")]);
        let without = labels(&[]);
        assert!(req("pool", AffinityOperator::In, &["a100", "h100"]).matches(&with));
        assert!(!req("pool", AffinityOperator::In, &["a100"]).matches(&without));
        assert!(!req("pool", AffinityOperator::NotIn, &["a100"]).matches(&with));
        assert!(req("pool", AffinityOperator::NotIn, &["a100"]).matches(&without));
        assert!(req("pool", AffinityOperator::Exists, &[]).matches(&with));
        assert!(!req("pool", AffinityOperator::Exists, &[]).matches(&without));
        assert!(!req("pool", AffinityOperator::DoesNotExist, &[]).matches(&with));
        assert!(req("pool", AffinityOperator::DoesNotExist, &[]).matches(&without));
    }

    #[test]
    fn preferred_score_sums_the_weights_of_matching_terms_only() {
        let a = NodeAffinity {
            required: vec![],
            preferred: vec![
                PreferredRequirement { weight: 50, requirement: req("zone", AffinityOperator::In, &["a"]) },
                PreferredRequirement { weight: 7, requirement: req("fast", AffinityOperator::Exists, &[]) },
            ],
        };
        assert_eq!(a.preferred_score(&labels(&[("zone", "a"), ("fast", "")])), 57);
        assert_eq!(a.preferred_score(&labels(&[("zone", "b")])), 0);
    }

    #[test]
    fn label_keys_and_values_are_checked_as_kubernetes_does() {
        assert!(is_label_key("cloud.google.com/gke-nodepool"));
        assert!(is_label_key("zone"));
        assert!(!is_label_key(""));
        assert!(!is_label_key("/name"));
        assert!(!is_label_key("Example.com/name"));
        assert!(!is_label_key("a/b/c"));
        assert!(!is_label_key(&"n".repeat(64)));
        assert!(is_label_value(""));
        assert!(is_label_value("us-east-1a"));
        assert!(!is_label_value("-a"));
        assert!(!is_label_value(&"v".repeat(64)));
    }
}
