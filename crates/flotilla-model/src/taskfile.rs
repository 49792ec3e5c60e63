//! The task-file format (YAML) and the validation every submission goes through.
//!
//! A task file names a queue, a task set and a list of task templates. A template
//! expands into one task, `count` tasks (an array task) or `gang.size` tasks (a gang).
//! Validation is all or nothing: every bad field is reported with its path
//! (`tasks[1].resources.memory: "2Gx" is not a quantity`) and nothing is accepted.
//!
//! ```
//! let file = flotilla_model::TaskFile::from_yaml(r#"
//! queue: research
//! taskSet: nightly
//! tasks:
//!   - name: agent
//!     count: 3
//!     image: ghcr.io/acme/agent:1.4.2
//!     resources: {cpu: 500m, memory: 2Gi}
//! "#).unwrap();
//! let specs = flotilla_model::expand(&file.queue.unwrap(), &file.task_set.unwrap(), &file.tasks,
//!     &flotilla_model::SubmitLimits::default()).unwrap();
//! assert_eq!(specs.len(), 3);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::{
    parse_bytes, GangRef, Placement, PodSecurity, PriorityClass, QuantityError, Resources, RetryPolicy, SimSpec, SpotPolicy, TaskId,
    TaskSpec, Toleration, TopologyLevel, MAX_ATTEMPTS_CAP, MAX_BACKOFF_MS, MAX_RUN_AS_USER,
};
use crate::{quote, truncate};

/// Longest path a [`FieldError`] keeps (a path may hold a caller's map key).
const MAX_PATH_BYTES: usize = 256;
/// Longest message a [`FieldError`] keeps.
const MAX_MESSAGE_BYTES: usize = 512;

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

/// One bad field: where it is and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    /// Both parts are bounded: a path may hold a caller's map key, a message may quote a
    /// caller's value, and the error travels back in gRPC metadata (8 KB in all).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        let (path, message) = (path.into(), message.into());
        FieldError { path: truncate(&path, MAX_PATH_BYTES), message: truncate(&message, MAX_MESSAGE_BYTES) }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every bad field of a request, one per line when displayed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&lines.join("\n"))
    }
}

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
    /// A running attempt that signals no progress for this long is stopped and retried
    /// (`FailureKind::NoProgress`); see docs/task-file.md. Not written when absent (digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<String>,
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
    pub size: u32,
    #[serde(default)]
    pub topology: Option<String>,
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

fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_') && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses a duration such as `30s`, `2h`, `1h30m`.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| format!("{} is not a duration ({e}); use e.g. 30s, 5m, 2h", quote(s)))?;
    u64::try_from(d.as_millis()).map_err(|_| format!("{} is too long", quote(s)))
}

fn quantity_errors(path: &str, errs: Vec<(String, QuantityError)>, errors: &mut Vec<FieldError>) {
    for (key, e) in errs {
        errors.push(FieldError::new(format!("{path}.{key}"), e.to_string()));
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

    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, t) in templates.iter().enumerate() {
        if let Some(first) = names.insert(t.name.as_str(), i) {
            errors.push(FieldError::new(format!("tasks[{i}].name"), format!("{} is also the name of tasks[{first}]", quote(&t.name))));
        }
    }

    let mut total_tasks: u64 = 0;
    let mut specs = Vec::new();
    for (i, t) in templates.iter().enumerate() {
        let p = format!("tasks[{i}]");
        let before = errors.len();
        let spec = validate_template(&p, queue, task_set, t, &names, limits, &mut errors);
        let n = match (&t.gang, t.count) {
            (Some(g), _) => g.size as u64,
            (None, Some(c)) => c as u64,
            (None, None) => 1,
        };
        total_tasks += n;
        if errors.len() == before {
            if let Some(spec) = spec {
                specs.push((spec, n));
            }
        }
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

    let mut out = Vec::with_capacity(total_tasks as usize);
    for (spec, n) in specs {
        for k in 0..n as u32 {
            let mut s = spec.clone();
            if let Some(g) = &mut s.gang {
                g.rank = k;
            } else {
                s.index = k;
            }
            out.push(s);
        }
    }
    Ok(out)
}

fn validate_template(
    p: &str,
    queue: &str,
    task_set: &str,
    t: &TaskTemplate,
    names: &HashMap<&str, usize>,
    limits: &SubmitLimits,
    errors: &mut Vec<FieldError>,
) -> Option<TaskSpec> {
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
    let priority_class = t.priority_class.clone().unwrap_or_else(|| "default".to_string());
    if PriorityClass::lookup(&priority_class).is_none() {
        let known: Vec<String> = PriorityClass::builtin().into_iter().map(|c| c.name).collect();
        errors.push(FieldError::new(
            format!("{p}.priorityClass"),
            format!("unknown priority class {} (known: {})", quote(&priority_class), known.join(", ")),
        ));
    }
    if let Some(0) = t.count {
        errors.push(FieldError::new(format!("{p}.count"), "must be at least 1"));
    }

    let resources = match Resources::from_quantities(t.resources.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        Ok(r) => r,
        Err(e) => {
            quantity_errors(&format!("{p}.resources"), e, errors);
            Resources::default()
        }
    };
    if t.resources.is_empty() {
        errors.push(FieldError::new(format!("{p}.resources"), "is required (at least cpu or memory)"));
    }
    let limits_r = match Resources::from_quantities(t.limits.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        Ok(r) => r,
        Err(e) => {
            quantity_errors(&format!("{p}.limits"), e, errors);
            Resources::default()
        }
    };
    for (key, requested, limit) in [
        ("cpu", resources.cpu_millis, limits_r.cpu_millis),
        ("memory", resources.memory_bytes, limits_r.memory_bytes),
        ("nvidia.com/gpu", resources.gpu, limits_r.gpu),
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

    let mut retry = RetryPolicy::default();
    if let Some(r) = &t.retry {
        if let Some(n) = r.max_attempts {
            if n == 0 || n > MAX_ATTEMPTS_CAP {
                errors.push(FieldError::new(format!("{p}.retry.maxAttempts"), format!("{n} must be between 1 and {MAX_ATTEMPTS_CAP}")));
            }
            retry.max_attempts = n;
        }
        if let Some(b) = &r.backoff {
            match parse_duration_ms(b) {
                Ok(ms) => retry.backoff_ms = ms.min(MAX_BACKOFF_MS),
                Err(e) => errors.push(FieldError::new(format!("{p}.retry.backoff"), e)),
            }
        }
        if let Some(b) = &r.max_backoff {
            match parse_duration_ms(b) {
                Ok(ms) => retry.max_backoff_ms = ms.min(MAX_BACKOFF_MS),
                Err(e) => errors.push(FieldError::new(format!("{p}.retry.maxBackoff"), e)),
            }
        }
        if let Some(g) = r.oom_memory_growth {
            if !(g > 1.0 && g <= 4.0) {
                errors.push(FieldError::new(format!("{p}.retry.oomMemoryGrowth"), format!("{g} must be above 1 and at most 4")));
            }
            retry.oom_memory_growth = Some(g);
        }
    }

    let max_runtime_ms = t.max_runtime.as_ref().and_then(|s| match parse_duration_ms(s) {
        Ok(0) => {
            errors.push(FieldError::new(format!("{p}.maxRuntime"), "must be longer than zero"));
            None
        }
        Ok(ms) => Some(ms),
        Err(e) => {
            errors.push(FieldError::new(format!("{p}.maxRuntime"), e));
            None
        }
    });
    let pending_timeout_ms = t.pending_timeout.as_ref().and_then(|s| match parse_duration_ms(s) {
        Ok(ms) if ms < 1_000 => {
            errors.push(FieldError::new(format!("{p}.pendingTimeout"), format!("{} must be at least 1s", quote(s))));
            None
        }
        Ok(ms) => Some(ms),
        Err(e) => {
            errors.push(FieldError::new(format!("{p}.pendingTimeout"), e));
            None
        }
    });
    let termination_grace_ms = match &t.termination_grace {
        Some(s) => parse_duration_ms(s).unwrap_or_else(|e| {
            errors.push(FieldError::new(format!("{p}.terminationGrace"), e));
            0
        }),
        None => crate::task::DEFAULT_TERMINATION_GRACE_MS,
    };

    let gang = match &t.gang {
        None => None,
        Some(g) => {
            if g.size < 2 {
                errors.push(FieldError::new(
                    format!("{p}.gang.size"),
                    format!("{} must be at least 2 (a single task needs no gang)", g.size),
                ));
            } else if g.size > limits.max_gang_size {
                errors.push(FieldError::new(format!("{p}.gang.size"), format!("{} exceeds the limit of {}", g.size, limits.max_gang_size)));
            }
            if t.count.is_some() {
                errors.push(FieldError::new(format!("{p}.count"), "cannot be combined with gang (a gang's size is its count)"));
            }
            let topology = match g.topology.as_deref() {
                None => TopologyLevel::Cluster,
                Some(s) => TopologyLevel::parse(s).unwrap_or_else(|| {
                    errors.push(FieldError::new(
                        format!("{p}.gang.topology"),
                        format!("{} is not one of node, rack, zone, cluster", quote(s)),
                    ));
                    TopologyLevel::Cluster
                }),
            };
            Some(GangRef { id: TaskId(0), size: g.size, rank: 0, topology })
        }
    };

    let mut placement = Placement::default();
    if let Some(pl) = &t.placement {
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
    }

    for (j, dep) in t.after.iter().enumerate() {
        if !names.contains_key(dep.as_str()) {
            errors.push(FieldError::new(format!("{p}.after[{j}]"), format!("{} is not the name of a task in this file", quote(dep))));
        } else if dep == &t.name {
            errors.push(FieldError::new(format!("{p}.after[{j}]"), "a task cannot wait for itself"));
        }
    }

    let sim = t.sim.as_ref().map(|s| SimSpec {
        duration_ms: s.duration.as_ref().map_or(0, |d| {
            parse_duration_ms(d).unwrap_or_else(|e| {
                errors.push(FieldError::new(format!("{p}.sim.duration"), e));
                0
            })
        }),
        exit_code: s.exit_code,
        memory_peak_bytes: s.memory_peak.as_ref().and_then(|m| match parse_bytes(m) {
            Ok(b) => Some(b),
            Err(e) => {
                errors.push(FieldError::new(format!("{p}.sim.memoryPeak"), e.to_string()));
                None
            }
        }),
        progress_every_ms: sim_duration(p, "progressEvery", s.progress_every.as_deref(), errors),
        stall_after_ms: sim_duration(p, "stallAfter", s.stall_after.as_deref(), errors),
    });
    let progress_deadline_ms = progress_deadline(p, t.progress_deadline.as_deref(), errors);

    let (pod_security, run_as_user) = validate_pod_security(p, t, errors);

    Some(TaskSpec {
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
        max_runtime_ms,
        pending_timeout_ms,
        termination_grace_ms,
        gang,
        placement,
        after: t.after.clone(),
        sim,
        pod_security,
        run_as_user,
        progress_deadline_ms,
    })
}

/// Shortest and longest `progressDeadline`: shorter would stop tasks for a slow call,
/// longer is no deadline for an agent.
pub const MIN_PROGRESS_DEADLINE_MS: u64 = 5_000;
pub const MAX_PROGRESS_DEADLINE_MS: u64 = 7 * 24 * 3600 * 1000;

fn progress_deadline(p: &str, s: Option<&str>, errors: &mut Vec<FieldError>) -> Option<u64> {
    let s = s?;
    match parse_duration_ms(s) {
        Ok(ms) if (MIN_PROGRESS_DEADLINE_MS..=MAX_PROGRESS_DEADLINE_MS).contains(&ms) => Some(ms),
        Ok(_) => {
            errors.push(FieldError::new(format!("{p}.progressDeadline"), format!("{} must be between 5s and 7d", quote(s))));
            None
        }
        Err(e) => {
            errors.push(FieldError::new(format!("{p}.progressDeadline"), e));
            None
        }
    }
}

/// `sim.progressEvery` / `sim.stallAfter`: a duration longer than zero.
fn sim_duration(p: &str, field: &str, s: Option<&str>, errors: &mut Vec<FieldError>) -> Option<u64> {
    let s = s?;
    match parse_duration_ms(s) {
        Ok(0) => {
            errors.push(FieldError::new(format!("{p}.sim.{field}"), "must be longer than zero"));
            None
        }
        Ok(ms) => Some(ms),
        Err(e) => {
            errors.push(FieldError::new(format!("{p}.sim.{field}"), e));
            None
        }
    }
}

/// `podSecurity` and `runAsUser`: a known level, and a UID Kubernetes accepts that the level
/// allows (restricted forbids UID 0: its pods must run as non-root).
fn validate_pod_security(p: &str, t: &TaskTemplate, errors: &mut Vec<FieldError>) -> (PodSecurity, Option<i64>) {
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
}

/// Rejects `after` cycles, naming the tasks on the cycle.
fn check_dependency_graph(templates: &[TaskTemplate], names: &HashMap<&str, usize>, errors: &mut Vec<FieldError>) {
    use petgraph::graphmap::DiGraphMap;
    let mut graph: DiGraphMap<usize, ()> = DiGraphMap::new();
    for (i, t) in templates.iter().enumerate() {
        graph.add_node(i);
        for dep in &t.after {
            if let Some(&j) = names.get(dep.as_str()) {
                if j != i {
                    graph.add_edge(j, i, ());
                }
            }
        }
    }
    if let Err(cycle) = petgraph::algo::toposort(&graph, None) {
        let start = cycle.node_id();
        let members: Vec<String> = petgraph::algo::tarjan_scc(&graph)
            .into_iter()
            .find(|scc| scc.contains(&start))
            .unwrap_or_else(|| vec![start])
            .into_iter()
            .map(|i| templates[i].name.clone())
            .collect();
        errors.push(FieldError::new(format!("tasks[{start}].after"), format!("dependency cycle between {}", members.join(", "))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str) -> TaskTemplate {
        TaskTemplate {
            name: name.into(),
            image: "busybox:1.36".into(),
            resources: [("cpu".to_string(), "1".to_string())].into(),
            ..Default::default()
        }
    }

    fn errors_of(templates: &[TaskTemplate]) -> Vec<String> {
        expand("q", "s", templates, &SubmitLimits::default()).unwrap_err().0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn progress_deadline_is_a_duration_between_5s_and_7d_and_sim_progress_fields_are_positive_durations() {
        let with = |deadline: &str| TaskTemplate { progress_deadline: Some(deadline.into()), ..template("a") };
        let ok = expand("q", "s", &[with("10m")], &SubmitLimits::default()).unwrap();
        assert_eq!(ok[0].progress_deadline_ms, Some(600_000));
        assert_eq!(expand("q", "s", &[template("a")], &SubmitLimits::default()).unwrap()[0].progress_deadline_ms, None);
        for (bad, problem) in [("4s", "between 5s and 7d"), ("8d", "between 5s and 7d"), ("soon", "not a duration")] {
            let errors = errors_of(&[with(bad)]);
            assert!(errors.iter().any(|e| e.contains("tasks[0].progressDeadline") && e.contains(problem)), "{bad}: {errors:?}");
        }
        let sim = SimTemplate { progress_every: Some("0s".into()), stall_after: Some("x".into()), ..Default::default() };
        let errors = errors_of(&[TaskTemplate { sim: Some(sim), ..template("a") }]);
        assert!(errors.iter().any(|e| e.contains("sim.progressEvery") && e.contains("longer than zero")), "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("sim.stallAfter")), "{errors:?}");
    }

    #[test]
    fn issue_example_file_parses_and_expands() {
        let text = r#"
queue: research
taskSet: nightly-eval
tasks:
  - name: agent
    count: 200
    priorityClass: default
    image: ghcr.io/acme/agent:1.4.2
    command: [python, -m, agent]
    env: {MODEL: large}
    resources: {cpu: 500m, memory: 2Gi}
    limits: {memory: 4Gi}
    retry: {maxAttempts: 3, backoff: 30s}
    checkpoint: true
    maxRuntime: 2h
    sim: {duration: 20s}
  - name: train
    gang: {size: 8, topology: rack}
    image: ghcr.io/acme/train:2.0
    resources: {cpu: 32, memory: 256Gi, nvidia.com/gpu: 8}
    placement: {gpuModel: H100, spot: never}
    after: [agent]
"#;
        let f = TaskFile::from_yaml(text).unwrap();
        let specs = expand("research", "nightly-eval", &f.tasks, &SubmitLimits::default()).unwrap();
        assert_eq!(specs.len(), 208);
        assert_eq!(specs[199].index, 199);
        assert_eq!(specs[0].resources, Resources::new(500, 2 << 30, 0));
        assert_eq!(specs[0].retry.backoff_ms, 30_000);
        assert_eq!(specs[0].max_runtime_ms, Some(7_200_000));
        assert_eq!(specs[0].sim.as_ref().unwrap().duration_ms, 20_000);
        let train = &specs[207];
        assert_eq!(train.resources, Resources::new(32_000, 256 << 30, 8));
        assert_eq!(train.gang.as_ref().unwrap().rank, 7);
        assert_eq!(train.gang.as_ref().unwrap().topology, TopologyLevel::Rack);
        assert_eq!(train.placement.spot, SpotPolicy::Never);
        assert_eq!(train.after, vec!["agent".to_string()]);
    }

    #[test]
    fn malformed_yaml_reports_line_and_column() {
        let err = TaskFile::from_yaml("queue: a\ntasks:\n  - name: x\n    resources: {cpu: [1\n").unwrap_err();
        assert!(err.message.contains("line"), "{}", err.message);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = TaskFile::from_yaml("queue: a\ntasks:\n  - name: x\n    imagee: busybox\n").unwrap_err();
        assert!(err.message.contains("imagee"), "{}", err.message);
    }

    #[test]
    fn bad_quantity_names_its_path() {
        let mut t = template("a");
        t.resources.insert("memory".into(), "2Gx".into());
        assert_eq!(errors_of(&[template("ok"), t]), vec!["tasks[1].resources.memory: \"2Gx\" is not a quantity"]);
    }

    #[test]
    fn limits_below_requests_are_rejected() {
        let mut t = template("a");
        t.resources.insert("memory".into(), "4Gi".into());
        t.limits.insert("memory".into(), "2Gi".into());
        assert_eq!(errors_of(&[t]), vec!["tasks[0].limits.memory: \"2Gi\" is below the request \"4Gi\""]);
    }

    #[test]
    fn gang_rules_are_enforced() {
        let mut small = template("a");
        small.gang = Some(GangTemplate { size: 1, topology: None });
        let mut counted = template("b");
        counted.gang = Some(GangTemplate { size: 4, topology: Some("galaxy".into()) });
        counted.count = Some(2);
        let errs = errors_of(&[small, counted]);
        assert!(errs.iter().any(|e| e.starts_with("tasks[0].gang.size: 1 must be at least 2")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("tasks[1].count: cannot be combined with gang")), "{errs:?}");
        assert!(errs.iter().any(|e| e.starts_with("tasks[1].gang.topology")), "{errs:?}");
    }

    #[test]
    fn unknown_and_cyclic_dependencies_are_rejected() {
        let mut a = template("a");
        a.after = vec!["nope".into()];
        assert_eq!(errors_of(&[a]), vec!["tasks[0].after[0]: \"nope\" is not the name of a task in this file"]);
        let mut a = template("a");
        a.after = vec!["b".into()];
        let mut b = template("b");
        b.after = vec!["a".into()];
        let errs = errors_of(&[a, b]);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("dependency cycle between"), "{errs:?}");
    }

    #[test]
    fn a_dependency_on_a_task_defined_later_in_the_file_is_valid_and_kept() {
        let mut report = template("report");
        report.after = vec!["train".into()];
        let specs = expand("q", "s", &[report, template("train")], &SubmitLimits::default()).unwrap();
        assert_eq!(
            specs.iter().map(|s| (s.name.as_str(), s.after.clone())).collect::<Vec<_>>(),
            vec![("report", vec!["train".to_string()]), ("train", vec![])]
        );
    }

    #[test]
    fn names_must_be_dns_labels() {
        assert!(is_dns1123_label("agent-7"));
        assert!(!is_dns1123_label("Agent"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        let errs = errors_of(&[template("Bad_Name")]);
        assert!(errs[0].starts_with("tasks[0].name: \"Bad_Name\" is not a valid name"), "{errs:?}");
    }

    #[test]
    fn size_limits_reject_the_whole_request() {
        let mut t = template("a");
        t.count = Some(10_001);
        assert_eq!(errors_of(&[t]), vec!["tasks: 10001 tasks exceed the limit of 10000 per submission"]);
    }

    #[test]
    fn pod_security_defaults_to_restricted_and_reads_baseline_privileged_and_a_uid() {
        let f = TaskFile::from_yaml(
            "tasks:\n  - {name: a, image: i, resources: {cpu: 1}}\n  - {name: b, image: i, resources: {cpu: 1}, podSecurity: baseline, runAsUser: 0}\n  - {name: c, image: i, resources: {cpu: 1}, podSecurity: privileged}\n  - {name: d, image: i, resources: {cpu: 1}, runAsUser: 65532}\n",
        )
        .unwrap();
        let specs = expand("q", "s", &f.tasks, &SubmitLimits::default()).unwrap();
        let got: Vec<_> = specs.iter().map(|s| (s.pod_security, s.run_as_user)).collect();
        assert_eq!(
            got,
            [
                (PodSecurity::Restricted, None),
                (PodSecurity::Baseline, Some(0)),
                (PodSecurity::Privileged, None),
                (PodSecurity::Restricted, Some(65532))
            ]
        );
    }

    #[test]
    fn bad_pod_security_values_name_the_field_and_quote_only_a_prefix() {
        let mut level = template("a");
        level.pod_security = Some("root".repeat(1000));
        let mut negative = template("b");
        negative.run_as_user = Some(-1);
        let mut too_large = template("c");
        too_large.run_as_user = Some(i64::from(i32::MAX) + 1);
        let mut root = template("d");
        root.run_as_user = Some(0);
        let errs = errors_of(&[level, negative, too_large, root]);
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(
            errs[0].starts_with("tasks[0].podSecurity: \"rootroot") && errs[0].contains("(4000 bytes) is not one of restricted"),
            "{errs:?}"
        );
        assert!(errs[0].len() < 200, "the error quotes a short prefix: {}", errs[0]);
        assert_eq!(errs[1], "tasks[1].runAsUser: -1 must be between 0 and 2147483647");
        assert_eq!(errs[2], "tasks[2].runAsUser: 2147483648 must be between 0 and 2147483647");
        assert!(errs[3].starts_with("tasks[3].runAsUser: 0 is root, which podSecurity restricted forbids"), "{errs:?}");
    }

    #[test]
    fn specs_and_templates_without_pod_security_serialize_as_before_it_existed() {
        // Stored entries, snapshots and request digests were written without these fields.
        let spec = expand("q", "s", &[template("a")], &SubmitLimits::default()).unwrap().remove(0);
        let json = serde_json::to_value(&spec).unwrap();
        assert!(json.get("pod_security").is_none() && json.get("run_as_user").is_none(), "{json}");
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("pod_security");
        assert_eq!(serde_json::from_value::<TaskSpec>(old).unwrap(), spec, "an old spec reads as restricted");
        let template_json = serde_json::to_value(template("a")).unwrap();
        assert!(template_json.get("podSecurity").is_none() && template_json.get("runAsUser").is_none(), "{template_json}");
        let mut baseline = spec.clone();
        baseline.pod_security = PodSecurity::Baseline;
        let round: TaskSpec = serde_json::from_str(&serde_json::to_string(&baseline).unwrap()).unwrap();
        assert_eq!(round.pod_security, PodSecurity::Baseline);
    }

    #[test]
    fn numbers_in_resource_maps_read_as_quantities() {
        let f =
            TaskFile::from_yaml("tasks:\n  - name: x\n    image: i\n    resources: {cpu: 1.5, memory: 1024, nvidia.com/gpu: 2}\n").unwrap();
        let specs = expand("q", "s", &f.tasks, &SubmitLimits::default()).unwrap();
        assert_eq!(specs[0].resources, Resources::new(1500, 1024, 2));
    }
}
