//! Gangs of several templates (`gang.group`): a launcher and its workers, a leader and its
//! followers, each template with its own image and resources, placed and restarted as one
//! gang.
//!
//! Every template naming one group is one role of one gang with `count` members. The gang's
//! size is the sum of the counts; its members are ranked role by role, the leading template
//! (`gang.leader: true`, else the group's first template in the file) first, then the others
//! in file order, so rank 0 is the leader. Its domain is the `topology` or `sameValueOf` its
//! templates state (they must agree), its members share one priority class, and none of them
//! may wait (`after`) for another member of the same gang.

use std::collections::BTreeMap;

use super::{FieldError, SubmitLimits, TaskTemplate};
use crate::{quote, GangRole, TaskSpec, DEFAULT_PRIORITY_CLASS, MAX_GANG_ROLES};

/// The templates of each group, in rank order (the leader's first), by group name.
pub(super) type Groups<'a> = BTreeMap<&'a str, Vec<usize>>;

fn group_of(t: &TaskTemplate) -> Option<&str> {
    t.gang.as_ref()?.group.as_deref()
}

/// The role a template's members have: `gang.role`, else the template's name.
fn role_of(t: &TaskTemplate) -> &str {
    t.gang.as_ref().and_then(|g| g.role.as_deref()).unwrap_or(&t.name)
}

fn count_of(t: &TaskTemplate) -> u64 {
    u64::from(t.count.unwrap_or(1))
}

/// Groups the templates that name a `gang.group` and checks each group as a whole.
pub(super) fn gang_groups<'a>(templates: &'a [TaskTemplate], limits: &SubmitLimits, errors: &mut Vec<FieldError>) -> Groups<'a> {
    let mut groups: Groups<'a> = BTreeMap::new();
    for (i, t) in templates.iter().enumerate() {
        if let Some(group) = group_of(t) {
            groups.entry(group).or_default().push(i);
        }
    }
    for (group, members) in &mut groups {
        check_group(group, templates, members, limits, errors);
        // The leading template first; the others keep their file order.
        if let Some(lead) = members.iter().position(|&i| templates[i].gang.as_ref().is_some_and(|g| g.leader)) {
            let leader = members.remove(lead);
            members.insert(0, leader);
        }
    }
    groups
}

fn check_group(group: &str, templates: &[TaskTemplate], members: &[usize], limits: &SubmitLimits, errors: &mut Vec<FieldError>) {
    let first = members[0];
    let size: u64 = members.iter().map(|&i| count_of(&templates[i])).sum();
    let at = format!("tasks[{first}].gang.group");
    if size < 2 {
        errors.push(FieldError::new(&at, format!("gang group {} has {size} member; a gang needs at least 2", quote(group))));
    } else if size > u64::from(limits.max_gang_size) {
        errors.push(FieldError::new(
            &at,
            format!("gang group {} has {size} members, over the limit of {}", quote(group), limits.max_gang_size),
        ));
    }
    if members.len() > MAX_GANG_ROLES {
        errors.push(FieldError::new(
            &at,
            format!("gang group {} has {} templates, over the limit of {MAX_GANG_ROLES}", quote(group), members.len()),
        ));
    }
    let mut leader: Option<usize> = None;
    let mut roles: BTreeMap<&str, usize> = BTreeMap::new();
    let mut domain: Option<usize> = None;
    for &i in members {
        let t = &templates[i];
        let Some(g) = &t.gang else { continue };
        if g.leader {
            match leader {
                Some(l) => errors.push(FieldError::new(
                    format!("tasks[{i}].gang.leader"),
                    format!("tasks[{l}] already leads gang group {}; a gang has one leading template", quote(group)),
                )),
                None => leader = Some(i),
            }
        }
        if let Some(other) = roles.insert(role_of(t), i) {
            errors.push(FieldError::new(
                format!("tasks[{i}].gang.role"),
                format!(
                    "{} is also the role of tasks[{other}] in gang group {}; give each template its own role",
                    quote(role_of(t)),
                    quote(group)
                ),
            ));
        }
        if g.topology.is_some() || g.same_value_of.is_some() {
            match domain {
                Some(d) => check_same_domain(group, templates, d, i, errors),
                None => domain = Some(i),
            }
        }
        let class = t.priority_class.as_deref().unwrap_or(DEFAULT_PRIORITY_CLASS);
        let first_class = templates[first].priority_class.as_deref().unwrap_or(DEFAULT_PRIORITY_CLASS);
        if class != first_class {
            errors.push(FieldError::new(
                format!("tasks[{i}].priorityClass"),
                format!(
                    "{} differs from tasks[{first}].priorityClass {} of gang group {}; every member of a gang has one priority class",
                    quote(class),
                    quote(first_class),
                    quote(group)
                ),
            ));
        }
        for (j, dep) in t.after.iter().enumerate() {
            if members.iter().any(|&m| templates[m].name == *dep && m != i) {
                errors.push(FieldError::new(
                    format!("tasks[{i}].after[{j}]"),
                    format!(
                        "{} is in the same gang group {}; members of one gang start together and cannot wait for each other",
                        quote(dep),
                        quote(group)
                    ),
                ));
            }
        }
    }
}

/// Templates `d` and `i` of one group both state a domain: it must be the same one.
fn check_same_domain(group: &str, templates: &[TaskTemplate], d: usize, i: usize, errors: &mut Vec<FieldError>) {
    let (Some(a), Some(b)) = (&templates[d].gang, &templates[i].gang) else { return };
    let field = if a.topology != b.topology {
        "topology"
    } else if a.same_value_of != b.same_value_of {
        "sameValueOf"
    } else {
        return;
    };
    let show = |g: &super::GangTemplate| {
        let v = if field == "topology" { &g.topology } else { &g.same_value_of };
        v.as_deref().map_or_else(|| "unset".to_string(), quote)
    };
    errors.push(FieldError::new(
        format!("tasks[{i}].gang.{field}"),
        format!(
            "{} differs from tasks[{d}].gang.{field} {} of gang group {}; its templates share one domain",
            show(b),
            show(a),
            quote(group)
        ),
    ));
}

/// Makes the validated specs of one group (`specs[i]` for template `i`, with their counts)
/// one gang: every member gets the group's size, roles in rank order, domain and the union
/// of its templates' `after`; each template's first member its first rank.
pub(super) fn join_group(templates: &[TaskTemplate], members: &[usize], specs: &mut [(TaskSpec, u64)]) {
    let roles: Vec<GangRole> =
        members.iter().map(|&i| GangRole { name: role_of(&templates[i]).to_string(), count: specs[i].1 as u32 }).collect();
    let size: u32 = roles.iter().map(|r| r.count).sum();
    // The domain its templates state (they agree), else the default one.
    let domain = members
        .iter()
        .find(|&&i| templates[i].gang.as_ref().is_some_and(|g| g.topology.is_some() || g.same_value_of.is_some()))
        .and_then(|&i| specs[i].0.gang.as_ref())
        .map(|g| (g.topology, g.same_value_of.clone()));
    let mut after: Vec<String> = Vec::new();
    for &i in members {
        for dep in &templates[i].after {
            if !after.contains(dep) {
                after.push(dep.clone());
            }
        }
    }
    let mut rank = 0u32;
    for &i in members {
        let (spec, count) = &mut specs[i];
        if let Some(g) = &mut spec.gang {
            g.size = size;
            g.rank = rank;
            g.roles.clone_from(&roles);
            if let Some((topology, same_value_of)) = &domain {
                g.topology = *topology;
                g.same_value_of.clone_from(same_value_of);
            }
        }
        spec.after.clone_from(&after);
        rank += *count as u32;
    }
}
