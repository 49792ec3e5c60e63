//! Where a task may run: `gang` and `placement`.

use super::{check_name, is_dns1123_label};
use crate::taskfile::{FieldError, SubmitLimits, TaskTemplate};
use crate::{is_label_key, quote, GangRef, Placement, Resources, SpotPolicy, TaskId, TopologyLevel, MAX_GANG_ROLE_BYTES};

/// The template's gang, rank 0. A template of a group (`gang.group`) gets its size, roles,
/// ranks and domain from the whole group when the submission is expanded (`taskfile::gangs`).
pub(super) fn gang(p: &str, t: &TaskTemplate, limits: &SubmitLimits, errors: &mut Vec<FieldError>) -> Option<GangRef> {
    let g = t.gang.as_ref()?;
    match &g.group {
        Some(group) => group_member(p, t, group, errors),
        None => one_template(p, t, limits, errors),
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
    Some(GangRef { id: TaskId(0), size: g.size, rank: 0, topology, same_value_of, roles: Vec::new() })
}

/// `gang: {size: N}`: one template, `size` members.
fn one_template(p: &str, t: &TaskTemplate, limits: &SubmitLimits, errors: &mut Vec<FieldError>) {
    let Some(g) = &t.gang else { return };
    if g.size < 2 {
        errors.push(FieldError::new(format!("{p}.gang.size"), format!("{} must be at least 2 (a single task needs no gang)", g.size)));
    } else if g.size > limits.max_gang_size {
        errors.push(FieldError::new(format!("{p}.gang.size"), format!("{} exceeds the limit of {}", g.size, limits.max_gang_size)));
    }
    if t.count.is_some() {
        errors.push(FieldError::new(format!("{p}.count"), "cannot be combined with gang.size (a gang's size is its count)"));
    }
    if g.role.is_some() {
        errors.push(FieldError::new(format!("{p}.gang.role"), "needs gang.group (roles name the templates of a gang of several)"));
    }
    if g.leader {
        errors.push(FieldError::new(format!("{p}.gang.leader"), "needs gang.group (it picks the leading template of a gang of several)"));
    }
}

/// `gang: {group: G, role: R}` with `count`: this template's members of gang group `G`.
fn group_member(p: &str, t: &TaskTemplate, group: &str, errors: &mut Vec<FieldError>) {
    let Some(g) = &t.gang else { return };
    check_name(&format!("{p}.gang.group"), group, errors);
    if g.size != 0 {
        errors.push(FieldError::new(
            format!("{p}.gang.size"),
            "cannot be combined with gang.group (a group's size is the sum of its templates' counts)",
        ));
    }
    let role = g.role.as_deref().unwrap_or(&t.name);
    if !is_dns1123_label(role) || role.len() > MAX_GANG_ROLE_BYTES {
        let whose = if g.role.is_some() { "" } else { " (the template's name, by default)" };
        errors.push(FieldError::new(
            format!("{p}.gang.role"),
            format!(
                "{}{whose} is not a valid role: lower-case letters, digits and '-', at most {MAX_GANG_ROLE_BYTES} characters (a member's hostname is <role>-<rank>)",
                quote(role)
            ),
        ));
    }
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
