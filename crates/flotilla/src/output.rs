//! Tables and JSON for the CLI's output.

use std::io::Write;

use flotilla_api::v1;
use flotilla_model::{format_bytes, format_cpu_millis};
use serde_json::{json, Value};

/// Writes `text` to standard output. A reader that went away (`flotilla get | head`) got
/// what it wanted: the process ends quietly with success rather than panicking as
/// `println!` does on a broken pipe.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// Prints rows as columns aligned under their headers.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    table_part(headers, rows, true);
}

/// Like [`table`]; the header only when `header` (later pages of a streamed listing are
/// aligned on their own).
pub fn table_part(headers: &[&str], rows: &[Vec<String>], header: bool) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    // One write for the whole table: a line at a time costs a system call per task.
    let mut text = String::new();
    let mut line = |cells: &[String]| {
        let parts: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{:<w$}", c, w = widths.get(i).copied().unwrap_or(0))).collect();
        text.push_str(parts.join("  ").trim_end());
        text.push('\n');
    };
    if header {
        line(&headers.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>());
    }
    for row in rows {
        line(row);
    }
    emit(&text);
}

pub fn task_json(t: &v1::Task) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "index": t.index,
        "queue": t.queue,
        "taskSet": t.task_set,
        "state": t.state,
        "attempt": t.attempt,
        "cluster": t.cluster,
        "node": t.node,
        "reason": t.reason,
        "exitCode": t.exit_code,
        "priorityClass": t.priority_class,
        "gangId": if t.gang_id == 0 { Value::Null } else { json!(t.gang_id) },
        "submittedAtMs": t.submitted_at_ms,
        "costUsd": t.cost_usd,
        "costPerHourUsd": t.cost_per_hour_usd,
    })
}

pub fn task_row(t: &v1::Task) -> Vec<String> {
    let place = if t.cluster.is_empty() { String::new() } else { format!("{}/{}", t.cluster, t.node) };
    vec![
        t.id.to_string(),
        t.queue.clone(),
        t.task_set.clone(),
        format!("{}[{}]", t.name, t.index),
        t.state.clone(),
        t.attempt.to_string(),
        place,
        dollars(t.cost_usd),
        t.reason.clone(),
    ]
}

pub const TASK_HEADERS: [&str; 9] = ["id", "queue", "task set", "name", "state", "attempt", "cluster/node", "cost", "reason"];

pub use flotilla_server::cost::dollars;

fn amounts_json(r: &Option<v1::ResourceAmounts>) -> Value {
    let r = r.clone().unwrap_or_default();
    json!({ "cpu": r.cpu_millis as f64 / 1000.0, "memory": r.memory_bytes, "gpu": r.gpu })
}

pub fn cluster_json(c: &v1::Cluster) -> Value {
    json!({
        "name": c.name,
        "state": c.state,
        "nodes": c.nodes,
        "allocatable": amounts_json(&c.allocatable),
        "used": amounts_json(&c.used),
        "activeTasks": c.active_tasks,
        "gpuModels": c.gpu_models,
        "lastSyncAgeMs": c.last_sync_age_ms,
        "pricePerHourUsd": c.price_per_hour_usd,
        "gpuCapacity": c.gpu_capacity.iter().map(|g| json!({"model": g.model, "nodes": g.nodes, "allocatable": g.allocatable, "used": g.used})).collect::<Vec<_>>(),
        "cordoned": c.cordoned,
        "draining": c.draining,
        "drainState": c.drain_state,
        "tasksLeft": c.tasks_left,
    })
}

pub fn cluster_row(c: &v1::Cluster) -> Vec<String> {
    let a = c.allocatable.clone().unwrap_or_default();
    let u = c.used.clone().unwrap_or_default();
    vec![
        c.name.clone(),
        cluster_state_text(c),
        c.nodes.to_string(),
        format!("{}/{}", u.gpu, a.gpu),
        format!("{}/{}", format_cpu_millis(u.cpu_millis), format_cpu_millis(a.cpu_millis)),
        format!("{}/{}", format_bytes(u.memory_bytes), format_bytes(a.memory_bytes)),
        c.active_tasks.to_string(),
        c.gpu_models.join(","),
        format!("{:.1}s", c.last_sync_age_ms as f64 / 1000.0),
    ]
}

/// "ready", "ready, cordoned", "ready, draining (3 left)", "lost, drained".
pub fn cluster_state_text(c: &v1::Cluster) -> String {
    match c.drain_state.as_str() {
        "" | "schedulable" => c.state.clone(),
        "draining" => format!("{}, draining ({} left)", c.state, c.tasks_left),
        other => format!("{}, {other}", c.state),
    }
}

pub const CLUSTER_HEADERS: [&str; 9] =
    ["cluster", "state", "nodes", "gpu used", "cpu used", "memory used", "tasks", "gpu models", "last sync"];

pub fn queue_json(q: &v1::Queue) -> Value {
    let spec = q.spec.clone().unwrap_or_default();
    let status = q.status.clone().unwrap_or_default();
    json!({
        "name": spec.name,
        "weight": spec.weight,
        "guarantee": spec.guarantee,
        "limit": spec.limit,
        "owner": spec.owner,
        "disruptionBudget": spec.disruption_budget,
        "protectedFraction": spec.protected_fraction,
        "priorityClassLimits": class_limits_text(&spec),
        "permits": spec.permits.iter().map(|p| format!("{}={}", p.subject, p.verbs.join(","))).collect::<Vec<_>>(),
        "tasks": status.tasks_by_state,
        "fairShare": status.fair_share,
        "actualShare": status.actual_share,
        "budgetUsdPerDay": spec.budget_usd_per_day,
        "costUsd": status.cost_usd,
        "costTodayUsd": status.cost_today_usd,
        "runningCostUsd": status.running_cost_usd,
    })
}

/// A queue's per-class limits in the form `--class-limit` takes: `urgent:gpu=10%`.
fn class_limits_text(spec: &v1::QueueSpec) -> Vec<String> {
    spec.priority_class_limits
        .iter()
        .map(|l| match flotilla_api::class_limit_from_proto("", l) {
            Ok(l) => l.to_string(),
            Err(e) => format!("{}:{} ({e})", l.priority_class, l.resource),
        })
        .collect()
}

pub fn queue_row(q: &v1::Queue) -> Vec<String> {
    let spec = q.spec.clone().unwrap_or_default();
    let status = q.status.clone().unwrap_or_default();
    let count = |s: &str| status.tasks_by_state.get(s).copied().unwrap_or(0).to_string();
    let mut limit: Vec<String> = spec.limit.iter().map(|(k, v)| format!("{k}={v}")).collect();
    limit.sort();
    limit.extend(class_limits_text(&spec));
    vec![
        spec.name,
        spec.weight.to_string(),
        format!("{:.1}%", status.fair_share * 100.0),
        format!("{:.1}%", status.actual_share * 100.0),
        count("queued"),
        count("running"),
        count("succeeded"),
        count("failed"),
        dollars(status.cost_usd),
        if spec.budget_usd_per_day > 0.0 {
            format!("{}/{}", dollars(status.cost_today_usd), dollars(spec.budget_usd_per_day))
        } else {
            dollars(status.cost_today_usd)
        },
        limit.join(","),
    ]
}

/// COST: the queue's ended attempts (the `flotilla_cost_usd_total` metric); TODAY: its UTC
/// day's spend with running attempts so far, over its daily budget when it has one. LIMIT:
/// the queue's limits, then its per-class limits (`urgent:gpu=10%`).
pub const QUEUE_HEADERS: [&str; 11] =
    ["queue", "weight", "fair share", "actual share", "queued", "running", "succeeded", "failed", "cost", "today", "limit"];

pub fn event_line(e: &v1::TaskEvent) -> String {
    let place = if e.cluster.is_empty() { String::new() } else { format!(" on {}/{}", e.cluster, e.node) };
    let reason = if e.reason.is_empty() { String::new() } else { format!(": {}", e.reason) };
    if e.task_id == 0 {
        return format!("#{} task set {}{}", e.seq, e.kind, reason);
    }
    format!("#{} task {} {}[{}] attempt {} {}{}{}", e.seq, e.task_id, e.task_name, e.task_index, e.attempt, e.kind, place, reason)
}
