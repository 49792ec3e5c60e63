//! Validating one template, section by section. Each section reports its own bad fields
//! and returns what it read, so one call reports every problem of a template.

mod affinity;
mod container;
mod placement;
mod resources;
mod timing;

use std::collections::HashMap;

use super::graph::check_after_names;
use super::{FieldError, SubmitLimits, TaskTemplate};
use crate::{quote, TaskSpec};

/// True for a Kubernetes DNS-1123 label: lower-case letters, digits and '-', at most 63.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn check_name(path: &str, value: &str, errors: &mut Vec<FieldError>) {
    if !is_dns1123_label(value) {
        errors.push(FieldError::new(
            path,
            format!("{} is not a valid name (lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)", quote(value)),
        ));
    }
}

/// Parses a duration such as `30s`, `2h`, `1h30m`.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("{} is not a duration ({e}); use e.g. 30s, 5m, 2h", quote(s)))?;
    u64::try_from(d.as_millis()).map_err(|_| format!("{} is too long", quote(s)))
}

/// Validates template `p` (`tasks[i]`) and builds its spec (index and gang rank 0).
/// The spec is only meaningful when nothing was added to `errors`.
pub(in crate::taskfile) fn validate_template(
    p: &str,
    queue: &str,
    task_set: &str,
    t: &TaskTemplate,
    names: &HashMap<&str, usize>,
    limits: &SubmitLimits,
    errors: &mut Vec<FieldError>,
) -> TaskSpec {
    container::check_container(p, t, limits, errors);
    let priority_class = container::priority_class(p, t, errors);
    let (resources, limits_r) = resources::requests_and_limits(p, t, errors);
    let retry = timing::retry(p, t, errors);
    let timing = timing::durations(p, t, errors);
    let gang = placement::gang(p, t, limits, errors);
    let mut placement = placement::placement(p, t, &resources, errors);
    placement.affinity = affinity::affinity(p, t, errors);
    check_after_names(p, t, names, errors);
    let sim = timing::sim(p, t, errors);
    let (pod_security, run_as_user) = container::pod_security(p, t, errors);
    let runtime_class = container::runtime_class(p, t, errors);
    let progress_deadline_ms = timing::progress_deadline(p, t, errors);

    TaskSpec {
        name: t.name.clone(),
        queue: queue.to_string(),
        task_set: task_set.to_string(),
        index: 0,
        priority_class,
        image: t.image.clone(),
        command: t.command.clone(),
        args: t.args.clone(),
        env: t.env.clone(),
        resources,
        limits: limits_r,
        retry,
        checkpoint: t.checkpoint,
        max_runtime_ms: timing.max_runtime_ms,
        pending_timeout_ms: timing.pending_timeout_ms,
        termination_grace_ms: timing.termination_grace_ms,
        gang,
        placement,
        after: t.after.clone(),
        sim,
        pod_security,
        run_as_user,
        runtime_class,
        progress_deadline_ms,
    }
}
