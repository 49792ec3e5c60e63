//! Conversions between stored records and wire messages.

use flotilla_api::v1;
use flotilla_model::{
    format_bytes, format_cpu_millis, parse_bytes, parse_count, parse_cpu_millis, ClassLimit, FieldError, Permit, Queue, ResourceLimits,
    Resources, SchedTask, Subject, Verb, DEFAULT_DISRUPTION_BUDGET, MAX_BUDGET_USD_PER_DAY, MAX_CLASS_LIMITS_PER_QUEUE,
    MAX_PERMITS_PER_QUEUE,
};
use flotilla_store::cost::usd;
use flotilla_store::{State, TaskEvent, TaskRecord};

/// Longest queue owner accepted: an identity, stored with the queue on every replica.
const MAX_OWNER_BYTES: usize = 256;

/// The task as the API shows it at `now_ms` (its cost includes the running attempt so far).
pub fn task_to_proto(t: &TaskRecord, now_ms: u64) -> v1::Task {
    let (cluster, node) = t.placement();
    v1::Task {
        id: t.id.0,
        name: t.spec.name.clone(),
        index: t.spec.index,
        queue: t.spec.queue.clone(),
        task_set: t.spec.task_set.clone(),
        state: t.state.as_str().to_string(),
        attempt: t.attempt,
        cluster,
        node,
        reason: t.reason.clone(),
        priority_class: t.spec.priority_class.clone(),
        resources: Some((&t.spec.resources).into()),
        submitted_at_ms: t.submitted_ms,
        updated_at_ms: t.updated_ms,
        exit_code: t.exit_code,
        gang_id: t.spec.gang.as_ref().map_or(0, |g| g.id.0),
        image: t.spec.image.clone(),
        cost_usd: usd(t.cost_nano_usd.saturating_add(t.running_cost_nano_usd(now_ms))),
        cost_per_hour_usd: if t.state.is_active() { t.lease_cost.usd_per_hour() } else { 0.0 },
    }
}

pub fn event_to_proto(e: &TaskEvent, state: &State) -> v1::TaskEvent {
    let (task_name, task_index) = state.task(e.task).map(|t| (t.spec.name.clone(), t.spec.index)).unwrap_or_default();
    v1::TaskEvent {
        seq: e.seq,
        task_id: e.task.0,
        attempt: e.attempt,
        kind: e.kind.as_str().to_string(),
        state: e.state.as_str().to_string(),
        cluster: e.cluster.clone(),
        node: e.node.clone(),
        reason: e.reason.clone(),
        time_ms: e.time_ms,
        exit_code: e.exit_code,
        task_name,
        task_index,
        cost_usd: usd(e.cost_nano_usd),
    }
}

/// What an executor needs to run the task's current attempt.
pub fn leased_task(t: &TaskRecord) -> v1::LeasedTask {
    let s = &t.spec;
    let sim = s.sim.clone().unwrap_or_default();
    v1::LeasedTask {
        task_id: t.id.0,
        attempt: t.attempt,
        node: t.lease.as_ref().map(|l| l.node.clone()).unwrap_or_default(),
        name: s.name.clone(),
        index: s.index,
        queue: s.queue.clone(),
        task_set: s.task_set.clone(),
        image: s.image.clone(),
        command: s.command.clone(),
        args: s.args.clone(),
        env: s.env.clone().into_iter().collect(),
        requests: Some((&s.resources).into()),
        limits: Some((&s.limits).into()),
        gang_id: s.gang.as_ref().map_or(0, |g| g.id.0),
        gang_size: s.gang.as_ref().map_or(0, |g| g.size),
        gang_rank: s.gang.as_ref().map_or(0, |g| g.rank),
        checkpoint: s.checkpoint,
        max_runtime_ms: s.max_runtime_ms.unwrap_or(0),
        pending_timeout_ms: s.pending_timeout_ms.unwrap_or(flotilla_model::DEFAULT_PENDING_TIMEOUT_MS),
        termination_grace_ms: s.termination_grace_ms,
        priority_class: s.priority_class.clone(),
        sim_duration_ms: sim.duration_ms,
        sim_exit_code: sim.exit_code,
        sim_memory_peak_bytes: sim.memory_peak_bytes.unwrap_or(0),
        pod_security: s.pod_security.as_str().to_string(),
        run_as_user: s.run_as_user,
        progress_deadline_ms: s.progress_deadline_ms.unwrap_or(0),
        sim_progress: sim.progress_every_ms.map(|every_ms| v1::SimProgress { every_ms, stall_after_ms: sim.stall_after_ms.unwrap_or(0) }),
        runtime_class: s.runtime_class.clone().unwrap_or_default(),
        affinity: flotilla_api::affinity_to_proto(&s.placement.affinity),
        gang_roles: s
            .gang
            .as_ref()
            .map(|g| g.layout(&s.name).into_iter().map(|r| v1::GangRole { name: r.name, count: r.count }).collect())
            .unwrap_or_default(),
    }
}

/// The scheduling view of a stored task. Its class is read as it is now: an operator's update
/// of a class applies to its queued and running tasks from the next cycle.
pub fn sched_task(s: &State, t: &TaskRecord, avoid_cluster_after: u32, now_ms: u64) -> SchedTask {
    // Every unfinished task's class exists (the store refuses to delete one in use); a
    // finished task is never scheduled, so the fallback is never used for a decision.
    let (priority, preemptible) = s.priority_class(&t.spec.priority_class).map_or((0, true), |c| (c.priority, c.preemptible));
    SchedTask {
        id: t.id,
        queue: t.spec.queue.clone(),
        priority,
        preemptible,
        priority_class: t.spec.priority_class.clone(),
        submit_seq: t.id.0,
        resources: t.spec.resources.clone(),
        gang: t.spec.gang.clone(),
        placement: sched_placement(&t.spec),
        avoid_nodes: t.avoid_nodes.clone(),
        avoid_clusters: t.avoid_clusters(avoid_cluster_after, now_ms),
    }
}

/// The placement the scheduler honours: the task's, and for a RuntimeClass the node label
/// that says a node offers it (so placement, and the shapes tasks are grouped by, follow it).
fn sched_placement(spec: &flotilla_model::TaskSpec) -> flotilla_model::Placement {
    let mut placement = spec.placement.clone();
    if let Some(class) = &spec.runtime_class {
        placement.node_selector.insert(flotilla_model::runtime_class_label(class), "true".into());
    }
    placement
}

fn quantities(r: &Resources) -> std::collections::HashMap<String, String> {
    r.to_quantities().into_iter().collect()
}

fn limit_quantities(l: &ResourceLimits) -> std::collections::HashMap<String, String> {
    let mut m = std::collections::HashMap::new();
    if let Some(v) = l.cpu_millis {
        m.insert("cpu".to_string(), format_cpu_millis(v));
    }
    if let Some(v) = l.memory_bytes {
        m.insert("memory".to_string(), format_bytes(v));
    }
    if let Some(v) = l.gpu {
        m.insert(flotilla_model::GPU_RESOURCE.to_string(), v.to_string());
    }
    m
}

pub fn queue_to_spec(q: &Queue) -> v1::QueueSpec {
    v1::QueueSpec {
        name: q.name.clone(),
        weight: q.weight,
        guarantee: quantities(&q.guarantee),
        limit: limit_quantities(&q.limit),
        owner: q.owner.clone(),
        disruption_budget: q.disruption_budget,
        permits: q
            .permits
            .iter()
            .map(|p| v1::QueuePermit { subject: p.subject.to_string(), verbs: p.verbs.iter().map(|v| v.as_str().to_string()).collect() })
            .collect(),
        budget_usd_per_day: q.budget_usd_per_day,
        protected_fraction: q.protected_fraction,
        priority_class_limits: q.priority_class_limits.iter().map(flotilla_api::class_limit_to_proto).collect(),
    }
}

/// Validates a queue spec; errors name the field.
pub fn queue_from_spec(spec: &v1::QueueSpec) -> Result<Queue, Vec<FieldError>> {
    let mut errors = Vec::new();
    flotilla_model::check_name("name", &spec.name, &mut errors);
    if !(spec.weight.is_finite() && spec.weight >= 0.0) {
        errors.push(FieldError::new("weight", format!("{} must be a number >= 0", spec.weight)));
    }
    if spec.owner.len() > MAX_OWNER_BYTES {
        errors.push(FieldError::new("owner", format!("is {} bytes, more than the limit of {MAX_OWNER_BYTES}", spec.owner.len())));
    }
    let mut guarantee = Resources::default();
    let mut keys: Vec<_> = spec.guarantee.iter().collect();
    keys.sort();
    for (k, v) in keys {
        let r = match k.as_str() {
            "cpu" => parse_cpu_millis(v).map(|x| guarantee.cpu_millis = x),
            "memory" => parse_bytes(v).map(|x| guarantee.memory_bytes = x),
            "gpu" | flotilla_model::GPU_RESOURCE => parse_count(v).map(|x| guarantee.gpu = x),
            _ => {
                errors.push(FieldError::new(format!("guarantee.{k}"), "unknown resource (use cpu, memory or nvidia.com/gpu)"));
                Ok(())
            }
        };
        if let Err(e) = r {
            errors.push(FieldError::new(format!("guarantee.{k}"), e.to_string()));
        }
    }
    let mut limit = ResourceLimits::default();
    let mut keys: Vec<_> = spec.limit.iter().collect();
    keys.sort();
    for (k, v) in keys {
        let r = match k.as_str() {
            "cpu" => parse_cpu_millis(v).map(|x| limit.cpu_millis = Some(x)),
            "memory" => parse_bytes(v).map(|x| limit.memory_bytes = Some(x)),
            "gpu" | flotilla_model::GPU_RESOURCE => parse_count(v).map(|x| limit.gpu = Some(x)),
            _ => {
                errors.push(FieldError::new(format!("limit.{k}"), "unknown resource (use cpu, memory or nvidia.com/gpu)"));
                Ok(())
            }
        };
        if let Err(e) = r {
            errors.push(FieldError::new(format!("limit.{k}"), e.to_string()));
        }
    }
    for (name, g, l) in [
        ("cpu", guarantee.cpu_millis, limit.cpu_millis),
        ("memory", guarantee.memory_bytes, limit.memory_bytes),
        ("nvidia.com/gpu", guarantee.gpu, limit.gpu),
    ] {
        if let Some(l) = l {
            if g > l {
                errors.push(FieldError::new(format!("guarantee.{name}"), "is above the queue's limit"));
            }
        }
    }
    if !(spec.budget_usd_per_day.is_finite() && (0.0..=MAX_BUDGET_USD_PER_DAY).contains(&spec.budget_usd_per_day)) {
        errors.push(FieldError::new(
            "budget_usd_per_day",
            format!("{} must be a number of dollars from 0 (no budget) to {MAX_BUDGET_USD_PER_DAY}", spec.budget_usd_per_day),
        ));
    }
    let permits = permits_from_proto(&spec.permits, &mut errors);
    if let Some(f) = spec.protected_fraction.filter(|f| !flotilla_model::is_protected_fraction(*f)) {
        errors.push(FieldError::new("protectedFraction", format!("{f} must be between 0 and 1")));
    }
    let priority_class_limits = class_limits_from_proto(&spec.priority_class_limits, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Queue {
        name: spec.name.clone(),
        weight: spec.weight,
        guarantee,
        limit,
        owner: spec.owner.clone(),
        disruption_budget: if spec.disruption_budget == 0 { DEFAULT_DISRUPTION_BUDGET } else { spec.disruption_budget },
        permits,
        budget_usd_per_day: spec.budget_usd_per_day,
        protected_fraction: spec.protected_fraction,
        priority_class_limits,
    })
}

/// A queue's per-class limits, every problem named (`priorityClassLimits[i].field`); a list
/// over the bound is refused before any entry is read.
fn class_limits_from_proto(limits: &[v1::PriorityClassLimit], errors: &mut Vec<FieldError>) -> Vec<ClassLimit> {
    const PATH: &str = "priorityClassLimits";
    if limits.len() > MAX_CLASS_LIMITS_PER_QUEUE {
        errors.push(FieldError::new(PATH, format!("{} limits exceed the most a queue holds, {MAX_CLASS_LIMITS_PER_QUEUE}", limits.len())));
        return Vec::new();
    }
    let mut out = Vec::with_capacity(limits.len());
    for (i, l) in limits.iter().enumerate() {
        match flotilla_api::class_limit_from_proto(&format!("{PATH}[{i}]"), l) {
            Ok(l) => out.push(l),
            Err(e) => errors.push(e),
        }
    }
    // Paths index the request's list: checked together only when every entry was read.
    if out.len() == limits.len() {
        flotilla_model::check_class_limits(PATH, &out, errors);
    }
    out
}

fn permits_from_proto(permits: &[v1::QueuePermit], errors: &mut Vec<FieldError>) -> Vec<Permit> {
    if permits.len() > MAX_PERMITS_PER_QUEUE {
        errors.push(FieldError::new("permits", format!("{} permits exceed the limit of {MAX_PERMITS_PER_QUEUE}", permits.len())));
        return Vec::new();
    }
    let mut out = Vec::with_capacity(permits.len());
    for (i, p) in permits.iter().enumerate() {
        let subject = Subject::parse(&p.subject).map_err(|e| errors.push(FieldError::new(format!("permits[{i}].subject"), e)));
        if p.verbs.len() > Verb::ALL.len() {
            errors.push(FieldError::new(format!("permits[{i}].verbs"), "lists more verbs than there are"));
            continue;
        }
        let verbs = p.verbs.iter().map(|v| Verb::parse(v)).collect::<Result<_, _>>();
        let verbs = verbs.map_err(|e| errors.push(FieldError::new(format!("permits[{i}].verbs"), e)));
        if let (Ok(subject), Ok(verbs)) = (subject, verbs) {
            out.push(Permit { subject, verbs });
        }
    }
    flotilla_model::check_permits("permits", &out, errors);
    out
}

/// Most bad fields one error lists, and its longest message: the status travels back in
/// gRPC metadata (8 KB in all, or the client sees RESOURCE_EXHAUSTED instead of the error).
const MAX_ERRORS_LISTED: usize = 8;
const MAX_ERROR_BYTES: usize = 2048;

pub fn invalid(errors: &[FieldError]) -> tonic::Status {
    let mut lines: Vec<String> = errors.iter().take(MAX_ERRORS_LISTED).map(|e| e.to_string()).collect();
    if errors.len() > MAX_ERRORS_LISTED {
        lines.push(format!("… and {} more", errors.len() - MAX_ERRORS_LISTED));
    }
    tonic::Status::invalid_argument(flotilla_model::truncate(&lines.join("\n"), MAX_ERROR_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_keeps_its_class_limits_through_the_wire_and_bad_ones_are_refused_naming_the_field() {
        use v1::priority_class_limit::Max;
        let limit = |class: &str, resource: &str, max: Max| v1::PriorityClassLimit {
            priority_class: class.into(),
            resource: resource.into(),
            max: Some(max),
        };
        let spec = v1::QueueSpec {
            name: "q".into(),
            weight: 1.0,
            priority_class_limits: vec![
                limit("urgent", "nvidia.com/gpu", Max::PoolFraction(0.1)),
                limit("batch", "memory", Max::Amount("256Gi".into())),
            ],
            ..Default::default()
        };
        let queue = queue_from_spec(&spec).unwrap();
        let texts: Vec<String> = queue.priority_class_limits.iter().map(|l| l.to_string()).collect();
        assert_eq!(texts, ["urgent:gpu=10%", "batch:memory=256Gi"]);
        let back = queue_to_spec(&queue).priority_class_limits;
        assert_eq!(back[0], limit("urgent", "gpu", Max::PoolFraction(0.1)));
        assert_eq!(back[1], limit("batch", "memory", Max::Amount("256Gi".into())));

        let bad = vec![
            limit("urgent", "disk", Max::Amount("1".into())),
            limit("urgent", "gpu", Max::Amount("x".repeat(5000))),
            limit("urgent", "gpu", Max::PoolFraction(0.0)),
            v1::PriorityClassLimit { priority_class: "u".into(), resource: "cpu".into(), max: None },
        ];
        let errors = queue_from_spec(&v1::QueueSpec { priority_class_limits: bad, ..spec.clone() }).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["priorityClassLimits[0].resource", "priorityClassLimits[1].amount", "priorityClassLimits[3]"]);
        assert!(errors[1].message.len() < 200, "a long bad value is quoted by a prefix: {}", errors[1].message);
        let fraction = vec![limit("urgent", "gpu", Max::PoolFraction(1.5))];
        let errors = queue_from_spec(&v1::QueueSpec { priority_class_limits: fraction, ..spec.clone() }).unwrap_err();
        assert_eq!(errors[0].path, "priorityClassLimits[0].poolFraction");
        let many = vec![limit("urgent", "gpu", Max::PoolFraction(0.5)); flotilla_model::MAX_CLASS_LIMITS_PER_QUEUE + 1];
        let errors = queue_from_spec(&v1::QueueSpec { priority_class_limits: many, ..spec }).unwrap_err();
        assert_eq!(errors.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["priorityClassLimits"]);
    }

    #[test]
    fn a_queue_keeps_its_protected_fraction_through_the_wire_and_one_out_of_range_is_refused_naming_the_field() {
        let spec = v1::QueueSpec { name: "q".into(), weight: 1.0, protected_fraction: Some(0.5), ..Default::default() };
        let queue = queue_from_spec(&spec).unwrap();
        assert_eq!(queue.protected_fraction, Some(0.5));
        assert_eq!(queue_to_spec(&queue).protected_fraction, Some(0.5));
        let unset = queue_from_spec(&v1::QueueSpec { protected_fraction: None, ..spec.clone() }).unwrap();
        assert_eq!(unset.protected_fraction, None, "unset means the server's default");
        for bad in [-0.1, 1.5, f64::NAN] {
            let errors = queue_from_spec(&v1::QueueSpec { protected_fraction: Some(bad), ..spec.clone() }).unwrap_err();
            assert_eq!(errors.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["protectedFraction"], "{bad}");
        }
    }
}
