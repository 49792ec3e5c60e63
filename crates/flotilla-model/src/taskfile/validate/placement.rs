//! Where a task may run: `gang` and `placement`.

use crate::taskfile::{FieldError, SubmitLimits, TaskTemplate};
use crate::{is_label_key, quote, GangRef, Placement, Resources, SpotPolicy, TaskId, TopologyLevel};

pub(super) fn gang(p: &str, t: &TaskTemplate, limits: &SubmitLimits, errors: &mut Vec<FieldError>) -> Option<GangRef> {
    let g = t.gang.as_ref()?;
    if g.size < 2 {
        errors.push(FieldError::new(format!("{p}.gang.size"), format!("{} must be at least 2 (a single task needs no gang)", g.size)));
    } else if g.size > limits.max_gang_size {
        errors.push(FieldError::new(format!("{p}.gang.size"), format!("{} exceeds the limit of {}", g.size, limits.max_gang_size)));
    }
    if t.count.is_some() {
        errors.push(FieldError::new(format!("{p}.count"), "cannot be combined with gang (a gang's size is its count)"));
    }
    let same_value_of = g.same_value_of.clone();
    if let Some(key) = &same_value_of {
        if g.topology.is_some() {
            errors.push(FieldError::new(
                format!("{p}.gang.sameValueOf"),
                format!("cannot be combined with {p}.gang.topology (a gang's domain is one or the other)"),
            ));
        }
        if !is_label_key(key) {
            errors.push(FieldError::new(format!("{p}.gang.sameValueOf"), format!("{} is not a valid label key", quote(key))));
        }
    }
    let topology = match g.topology.as_deref() {
        // A label domain lies within one cluster.
        None => TopologyLevel::Cluster,
        Some(s) => TopologyLevel::parse(s).unwrap_or_else(|| {
            errors.push(FieldError::new(format!("{p}.gang.topology"), format!("{} is not one of node, rack, zone, cluster", quote(s))));
            TopologyLevel::Cluster
        }),
    };
    Some(GangRef { id: TaskId(0), size: g.size, rank: 0, topology, same_value_of })
}

pub(super) fn placement(p: &str, t: &TaskTemplate, resources: &Resources, errors: &mut Vec<FieldError>) -> Placement {
    let mut placement = Placement::default();
    let Some(pl) = &t.placement else { return placement };
    placement.gpu_model = pl.gpu_model.clone().filter(|s| !s.is_empty());
    placement.allowed_clusters = pl.clusters.clone();
    placement.preferred_cluster = pl.preferred_cluster.clone();
    placement.node_selector = pl.node_selector.clone();
    placement.tolerations = pl.tolerations.clone();
    if let Some(s) = &pl.spot {
        placement.spot = SpotPolicy::parse(s).unwrap_or_else(|| {
            errors.push(FieldError::new(format!("{p}.placement.spot"), format!("{} is not one of allowed, required, never", quote(s))));
            SpotPolicy::Allowed
        });
    }
    if placement.gpu_model.is_some() && resources.gpu == 0 {
        errors.push(FieldError::new(format!("{p}.placement.gpuModel"), "needs a GPU request in resources (nvidia.com/gpu)"));
    }
    placement
}
