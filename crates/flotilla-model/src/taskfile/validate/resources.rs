//! `resources` and `limits`: quantities that parse, and limits at least their requests.

use std::collections::BTreeMap;

use crate::taskfile::{FieldError, TaskTemplate};
use crate::{gpu_sharing, quote, QuantityError, Resources, GPU_RESOURCE, PODS_RESOURCE};

/// The requests and the limits of a template.
pub(super) fn requests_and_limits(p: &str, t: &TaskTemplate, errors: &mut Vec<FieldError>) -> (Resources, Resources) {
    let resources = quantities(&format!("{p}.resources"), &t.resources, errors);
    if t.resources.is_empty() {
        errors.push(FieldError::new(format!("{p}.resources"), "is required (at least cpu or memory)"));
    }
    let limits = quantities(&format!("{p}.limits"), &t.limits, errors);
    for (field, map) in [("resources", &t.resources), ("limits", &t.limits)] {
        if map.contains_key(PODS_RESOURCE) {
            errors.push(FieldError::new(format!("{p}.{field}.{PODS_RESOURCE}"), "cannot be requested: every task is one pod"));
        }
    }
    shared_gpus(p, t, &resources, errors);
    for (key, requested, limit) in [
        ("cpu", resources.cpu_millis, limits.cpu_millis),
        ("memory", resources.memory_bytes, limits.memory_bytes),
        ("nvidia.com/gpu", resources.gpu, limits.gpu),
    ] {
        if limit > 0 && limit < requested {
            errors.push(FieldError::new(
                format!("{p}.limits.{key}"),
                format!(
                    "{} is below the request {}",
                    quote(t.limits.get(key).map_or("", String::as_str)),
                    quote(t.resources.get(key).map_or("", String::as_str))
                ),
            ));
        }
    }
    (resources, limits)
}

/// Shared GPUs (MIG slices, time-sliced replicas): names NVIDIA's device plugin could
/// advertise, and never together with whole GPUs. Kubernetes would accept the mix, but a pod
/// then holds a whole GPU and a slice of another, which is almost always a mistake in the
/// task file (and would make the task's GPU fraction for fair share ambiguous).
fn shared_gpus(p: &str, t: &TaskTemplate, resources: &Resources, errors: &mut Vec<FieldError>) {
    for (field, map) in [("resources", &t.resources), ("limits", &t.limits)] {
        for key in map.keys() {
            match gpu_sharing(key) {
                Some(Err(why)) => errors.push(FieldError::new(format!("{p}.{field}.{key}"), format!("{} {why}", quote(key)))),
                Some(Ok(_)) if field == "resources" && resources.gpu > 0 => errors.push(FieldError::new(
                    format!("{p}.{field}.{key}"),
                    format!("cannot be combined with {GPU_RESOURCE}: request whole GPUs or a shared GPU (a MIG slice or time-sliced replica), not both"),
                )),
                _ => {}
            }
        }
    }
}

fn quantities(path: &str, map: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) -> Resources {
    match Resources::from_quantities(map.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        Ok(r) => r,
        Err(e) => {
            quantity_errors(path, e, errors);
            Resources::default()
        }
    }
}

fn quantity_errors(path: &str, errs: Vec<(String, QuantityError)>, errors: &mut Vec<FieldError>) {
    for (key, e) in errs {
        errors.push(FieldError::new(format!("{path}.{key}"), e.to_string()));
    }
}
