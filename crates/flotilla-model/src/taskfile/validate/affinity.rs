//! `affinity`: required and preferred node-label expressions.

use crate::taskfile::format::{AffinityTemplate, PreferredTemplate, RequirementTemplate};
use crate::taskfile::{FieldError, TaskTemplate};
use crate::{
    is_label_key, is_label_value, quote, AffinityOperator, NodeAffinity, NodeRequirement, PreferredRequirement, MAX_AFFINITY_TERMS,
    MAX_AFFINITY_VALUES, MAX_AFFINITY_WEIGHT,
};

pub(super) fn affinity(p: &str, t: &TaskTemplate, errors: &mut Vec<FieldError>) -> NodeAffinity {
    let Some(a) = &t.affinity else { return NodeAffinity::default() };
    check_affinity(&format!("{p}.affinity"), a, errors)
}

fn check_affinity(p: &str, a: &AffinityTemplate, errors: &mut Vec<FieldError>) -> NodeAffinity {
    let mut out = NodeAffinity::default();
    for (name, len) in [("required", a.required.len()), ("preferred", a.preferred.len())] {
        if len > MAX_AFFINITY_TERMS {
            errors.push(FieldError::new(format!("{p}.{name}"), format!("{len} expressions exceed the limit of {MAX_AFFINITY_TERMS}")));
            return out;
        }
    }
    for (i, r) in a.required.iter().enumerate() {
        let RequirementTemplate { key, operator, values } = r;
        if let Some(req) = requirement(&format!("{p}.required[{i}]"), key, operator, values, errors) {
            out.required.push(req);
        }
    }
    for (i, r) in a.preferred.iter().enumerate() {
        let PreferredTemplate { weight, key, operator, values } = r;
        let path = format!("{p}.preferred[{i}]");
        let weight_ok = (1..=i64::from(MAX_AFFINITY_WEIGHT)).contains(weight);
        if !weight_ok {
            errors.push(FieldError::new(format!("{path}.weight"), format!("{weight} is not between 1 and {MAX_AFFINITY_WEIGHT}")));
        }
        if let Some(requirement) = requirement(&path, key, operator, values, errors) {
            if weight_ok {
                out.preferred.push(PreferredRequirement { weight: *weight as u32, requirement });
            }
        }
    }
    out
}

/// One expression at `p`: a valid label key, a known operator, and values as it needs them.
fn requirement(p: &str, key: &str, operator: &str, values: &[String], errors: &mut Vec<FieldError>) -> Option<NodeRequirement> {
    let before = errors.len();
    if !is_label_key(key) {
        errors.push(FieldError::new(format!("{p}.key"), format!("{} is not a valid label key", quote(key))));
    }
    let op = AffinityOperator::parse(operator);
    if op.is_none() {
        errors.push(FieldError::new(format!("{p}.operator"), format!("{} is not one of In, NotIn, Exists, DoesNotExist", quote(operator))));
    }
    if values.len() > MAX_AFFINITY_VALUES {
        errors.push(FieldError::new(format!("{p}.values"), format!("{} values exceed the limit of {MAX_AFFINITY_VALUES}", values.len())));
    } else if let Some(bad) = values.iter().find(|v| !is_label_value(v)) {
        errors.push(FieldError::new(format!("{p}.values"), format!("{} is not a valid label value", quote(bad))));
    }
    match op {
        Some(o) if o.takes_values() && values.is_empty() => {
            errors.push(FieldError::new(format!("{p}.values"), format!("{o} needs at least one value")));
        }
        Some(o) if !o.takes_values() && !values.is_empty() => {
            errors.push(FieldError::new(format!("{p}.values"), format!("{o} takes no values")));
        }
        _ => {}
    }
    let operator = op?;
    (errors.len() == before).then(|| NodeRequirement { key: key.to_string(), operator, values: values.to_vec() })
}
