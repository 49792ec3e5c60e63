//! Validating a whole submission and expanding its templates into task specs.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::gangs::{gang_groups, join_group, Groups};
use super::graph::check_dependency_graph;
use super::validate::{check_name, validate_template};
use super::{FieldError, TaskTemplate, ValidationErrors};
use crate::{quote, TaskSpec};

/// Bounds on one submission. A request over them is rejected whole with the bound named.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmitLimits {
    /// Tasks after expanding `count` and gangs.
    pub max_tasks_per_submit: u32,
    pub max_templates_per_submit: u32,
    /// Encoded size of one template (image, command, env...).
    pub max_bytes_per_task: usize,
    pub max_gang_size: u32,
}

impl Default for SubmitLimits {
    fn default() -> Self {
        SubmitLimits { max_tasks_per_submit: 10_000, max_templates_per_submit: 1_000, max_bytes_per_task: 64 * 1024, max_gang_size: 512 }
    }
}

/// Validates templates and expands them into task specs, in file order.
///
/// Checks everything that needs no server state. The server adds the checks that do
/// (the queue exists, some node is large enough).
pub fn expand(queue: &str, task_set: &str, templates: &[TaskTemplate], limits: &SubmitLimits) -> Result<Vec<TaskSpec>, ValidationErrors> {
    let mut errors = Vec::new();
    check_name("queue", queue, &mut errors);
    check_name("taskSet", task_set, &mut errors);
    if templates.is_empty() {
        errors.push(FieldError::new("tasks", "at least one task is required"));
    }
    if templates.len() > limits.max_templates_per_submit as usize {
        errors.push(FieldError::new(
            "tasks",
            format!("{} entries exceed the limit of {} per submission", templates.len(), limits.max_templates_per_submit),
        ));
        return Err(ValidationErrors(errors));
    }

    let names = unique_names(templates, &mut errors);
    let groups = gang_groups(templates, limits, &mut errors);

    let mut total_tasks: u64 = 0;
    let mut specs = Vec::new();
    for (i, t) in templates.iter().enumerate() {
        let p = format!("tasks[{i}]");
        let spec = validate_template(&p, queue, task_set, t, &names, limits, &mut errors);
        let n = match (&t.gang, t.count) {
            (Some(g), c) if g.group.is_some() => u64::from(c.unwrap_or(1)),
            (Some(g), _) => g.size as u64,
            (None, Some(c)) => c as u64,
            (None, None) => 1,
        };
        total_tasks += n;
        specs.push((spec, n));
    }
    if total_tasks > limits.max_tasks_per_submit as u64 {
        errors.push(FieldError::new(
            "tasks",
            format!("{total_tasks} tasks exceed the limit of {} per submission", limits.max_tasks_per_submit),
        ));
    }
    check_dependency_graph(templates, &names, &mut errors);
    if !errors.is_empty() {
        return Err(ValidationErrors(errors));
    }
    for members in groups.values() {
        join_group(templates, members, &mut specs);
    }
    Ok(replicate(in_task_order(templates, &groups, specs), total_tasks))
}

/// The specs in the order their tasks get ids: file order, except that a gang group's
/// templates come together, in rank order, where the group's first template is. So a gang's
/// members have consecutive ids from its leader's, as the state machine expects.
fn in_task_order(templates: &[TaskTemplate], groups: &Groups<'_>, specs: Vec<(TaskSpec, u64)>) -> Vec<(TaskSpec, u64)> {
    let mut specs: Vec<Option<(TaskSpec, u64)>> = specs.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(specs.len());
    for (i, t) in templates.iter().enumerate() {
        match t.gang.as_ref().and_then(|g| groups.get(g.group.as_deref()?)) {
            Some(members) => {
                for &m in members {
                    out.extend(specs[m].take());
                }
            }
            None => out.extend(specs[i].take()),
        }
    }
    out
}

/// Template names, each to its first position; a repeated name is an error.
fn unique_names<'a>(templates: &'a [TaskTemplate], errors: &mut Vec<FieldError>) -> HashMap<&'a str, usize> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, t) in templates.iter().enumerate() {
        if let Some(first) = names.insert(t.name.as_str(), i) {
            errors.push(FieldError::new(format!("tasks[{i}].name"), format!("{} is also the name of tasks[{first}]", quote(&t.name))));
        }
    }
    names
}

/// Each spec `n` times: an array task's copies get indexes, a gang's members ranks.
fn replicate(specs: Vec<(TaskSpec, u64)>, total_tasks: u64) -> Vec<TaskSpec> {
    let mut out = Vec::with_capacity(total_tasks as usize);
    for (spec, n) in specs {
        for k in 0..n as u32 {
            let mut s = spec.clone();
            if let Some(g) = &mut s.gang {
                // A group's template starts at its first rank in the gang.
                g.rank += k;
            } else {
                s.index = k;
            }
            out.push(s);
        }
    }
    out
}
