//! The container and its identity: name, size, image, env, priority class, count, Pod Security.

use std::collections::BTreeMap;

use super::check_name;
use crate::taskfile::{FieldError, SubmitLimits, TaskTemplate};
use crate::{quote, PodSecurity, DEFAULT_PRIORITY_CLASS, MAX_RUN_AS_USER};

/// Name, encoded size, image, env names and count.
pub(super) fn check_container(p: &str, t: &TaskTemplate, limits: &SubmitLimits, errors: &mut Vec<FieldError>) {
    check_name(&format!("{p}.name"), &t.name, errors);
    let encoded = serde_json_len(t);
    if encoded > limits.max_bytes_per_task {
        errors.push(FieldError::new(p, format!("{encoded} bytes exceed the limit of {} bytes per task", limits.max_bytes_per_task)));
    }
    if t.image.trim().is_empty() {
        errors.push(FieldError::new(format!("{p}.image"), "is required"));
    } else if t.image.chars().any(char::is_whitespace) {
        errors.push(FieldError::new(format!("{p}.image"), format!("{} must not contain whitespace", quote(&t.image))));
    }
    for key in t.env.keys() {
        if !is_env_name(key) || key.starts_with("FLOTILLA_") {
            errors.push(FieldError::new(
                format!("{p}.env.{key}"),
                "is not a valid environment variable name (letters, digits, '_'; FLOTILLA_ is reserved)",
            ));
        }
    }
    if let Some(0) = t.count {
        errors.push(FieldError::new(format!("{p}.count"), "must be at least 1"));
    }
}

/// The class the template names (`default` when it names none). Whether it exists is the
/// server's to check: operators define classes.
pub(super) fn priority_class(p: &str, t: &TaskTemplate, errors: &mut Vec<FieldError>) -> String {
    let priority_class = t.priority_class.clone().unwrap_or_else(|| DEFAULT_PRIORITY_CLASS.to_string());
    check_name(&format!("{p}.priorityClass"), &priority_class, errors);
    priority_class
}

/// `podSecurity` and `runAsUser`: a known level, and a UID Kubernetes accepts that the level
/// allows (restricted forbids UID 0: its pods must run as non-root).
pub(super) fn pod_security(p: &str, t: &TaskTemplate, errors: &mut Vec<FieldError>) -> (PodSecurity, Option<i64>) {
    let level = match t.pod_security.as_deref() {
        None => PodSecurity::default(),
        Some(s) => PodSecurity::parse(s).unwrap_or_else(|| {
            errors
                .push(FieldError::new(format!("{p}.podSecurity"), format!("{} is not one of restricted, baseline, privileged", quote(s))));
            PodSecurity::default()
        }),
    };
    if let Some(uid) = t.run_as_user {
        if !(0..=MAX_RUN_AS_USER).contains(&uid) {
            errors.push(FieldError::new(format!("{p}.runAsUser"), format!("{uid} must be between 0 and {MAX_RUN_AS_USER}")));
        } else if uid == 0 && level == PodSecurity::Restricted {
            errors.push(FieldError::new(
                format!("{p}.runAsUser"),
                "0 is root, which podSecurity restricted forbids (use a non-zero UID, or podSecurity: baseline)",
            ));
        }
    }
    (level, t.run_as_user)
}

/// `runtimeClass`: a DNS-1123 label, as Kubernetes RuntimeClass names and label keys allow.
pub(super) fn runtime_class(p: &str, t: &TaskTemplate, errors: &mut Vec<FieldError>) -> Option<String> {
    let name = t.runtime_class.as_ref()?;
    check_name(&format!("{p}.runtimeClass"), name, errors);
    Some(name.clone())
}

fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_') && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn serde_json_len(t: &TaskTemplate) -> usize {
    // A cheap, stable size estimate without pulling in a serializer: the sum of the strings.
    let maps = |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    t.name.len()
        + t.image.len()
        + t.command.iter().map(String::len).sum::<usize>()
        + t.args.iter().map(String::len).sum::<usize>()
        + maps(&t.env)
        + maps(&t.resources)
        + maps(&t.limits)
        + t.after.iter().map(String::len).sum::<usize>()
        + t.pod_security.as_ref().map_or(0, String::len)
        + t.runtime_class.as_ref().map_or(0, String::len)
        + t.affinity.as_ref().map_or(0, affinity_len)
}

fn affinity_len(a: &crate::taskfile::format::AffinityTemplate) -> usize {
    let term = |k: &String, o: &String, v: &Vec<String>| k.len() + o.len() + v.iter().map(String::len).sum::<usize>();
    a.required.iter().map(|r| term(&r.key, &r.operator, &r.values)).sum::<usize>()
        + a.preferred.iter().map(|r| term(&r.key, &r.operator, &r.values)).sum::<usize>()
}
