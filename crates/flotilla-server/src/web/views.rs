//! What the console and `/api/*` show, read from the state (and the leader's capacity) for one
//! caller: only the queues and tasks it may watch. Every listing is bounded.

use std::collections::BTreeMap;

use flotilla_model::{TaskId, TaskState, Verb};
use flotilla_store::cost::usd;
use flotilla_store::{EventKind, State, TaskRecord};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::services::QueueCheck;
use crate::Context;

/// Most task records one task listing looks at: a filter matching few of a million tasks
/// shows what it found among the newest ones rather than scanning the whole table under the
/// state's read lock (the CLI's paginated listing reaches the rest).
pub const MAX_SCANNED_PER_VIEW: usize = 100_000;
/// Page sizes of the task table.
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 1000;
/// Most events of one task shown on its page (the newest).
pub const MAX_TASK_EVENTS: usize = 500;
/// Most events of a task set looked at for one task page.
const MAX_EVENTS_SCANNED: usize = 100_000;

#[derive(Serialize)]
pub struct QueueView {
    pub name: String,
    pub weight: f64,
    pub fair_share: f64,
    pub actual_share: f64,
    pub tasks: BTreeMap<String, u64>,
    /// Ended attempts (the metric `flotilla_cost_usd_total`).
    pub cost_usd: f64,
    /// Today (UTC): ended attempts and running ones so far.
    pub cost_today_usd: f64,
    pub running_cost_usd: f64,
    /// 0: no budget.
    pub budget_usd_per_day: f64,
}

pub fn queues(ctx: &Context, caller: &Caller) -> Vec<QueueView> {
    let shares = ctx.shares.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut may_see = QueueCheck::new(ctx, caller, Verb::Watch);
    let now_ms = ctx.config.clock.now_ms();
    ctx.read(|s| {
        s.queues()
            .filter(|q| may_see.allows(s, &q.name))
            .map(|q| {
                let share = shares.iter().find(|x| x.queue == q.name);
                QueueView {
                    name: q.name.clone(),
                    weight: q.weight,
                    fair_share: share.map_or(0.0, |x| x.fair_share),
                    actual_share: share.map_or(0.0, |x| x.actual_share),
                    tasks: TaskState::ALL.iter().zip(s.counts(&q.name)).map(|(st, n)| (st.as_str().to_string(), n)).collect(),
                    cost_usd: usd(s.queue_cost(&q.name).total_nano_usd),
                    cost_today_usd: usd(s.queue_spent_today_nano_usd(&q.name, now_ms)),
                    running_cost_usd: usd(s.queue_running_cost_nano_usd(&q.name, now_ms)),
                    budget_usd_per_day: q.budget_usd_per_day,
                }
            })
            .collect()
    })
}

#[derive(Serialize)]
pub struct GpuModelView {
    pub model: String,
    pub nodes: u32,
    pub allocatable: u64,
    pub used: u64,
}

/// A cluster as `/api/clusters` and the clusters page show it. `state` is whatever the
/// cluster registry says (ready, lost, and any state added to it later); the page shows it
/// as it is.
#[derive(Serialize)]
pub struct ClusterView {
    pub name: String,
    pub state: String,
    pub nodes: u32,
    pub gpu_allocatable: u64,
    pub gpu_used: u64,
    pub cpu_allocatable_millis: u64,
    pub cpu_used_millis: u64,
    pub memory_allocatable_bytes: u64,
    pub memory_used_bytes: u64,
    pub active_tasks: u32,
    pub last_sync_age_ms: u64,
    pub price_per_hour_usd: f64,
    pub gpu_models: Vec<GpuModelView>,
    /// schedulable | cordoned | draining | drained
    pub drain_state: String,
    /// Flotilla tasks still holding the cluster (what a drain waits for).
    pub tasks_left: u32,
}

impl ClusterView {
    /// "ready", "ready, cordoned", "ready, draining (3 left)", "lost, drained"...
    pub fn state_text(&self) -> String {
        match self.drain_state.as_str() {
            "" | "schedulable" => self.state.clone(),
            "draining" => format!("{}, draining ({} left)", self.state, self.tasks_left),
            other => format!("{}, {other}", self.state),
        }
    }
}

pub fn clusters(ctx: &Context) -> Vec<ClusterView> {
    crate::services::clusters_list(ctx)
        .into_iter()
        .map(|c| {
            let a = c.allocatable.unwrap_or_default();
            let u = c.used.unwrap_or_default();
            ClusterView {
                name: c.name,
                state: c.state,
                nodes: c.nodes,
                gpu_allocatable: a.gpu,
                gpu_used: u.gpu,
                cpu_allocatable_millis: a.cpu_millis,
                cpu_used_millis: u.cpu_millis,
                memory_allocatable_bytes: a.memory_bytes,
                memory_used_bytes: u.memory_bytes,
                active_tasks: c.active_tasks,
                last_sync_age_ms: c.last_sync_age_ms,
                price_per_hour_usd: c.price_per_hour_usd,
                gpu_models: c
                    .gpu_capacity
                    .into_iter()
                    .map(|g| GpuModelView { model: g.model, nodes: g.nodes, allocatable: g.allocatable, used: g.used })
                    .collect(),
                drain_state: c.drain_state,
                tasks_left: c.tasks_left,
            }
        })
        .collect()
}

/// The task table's filters and page, from GET parameters (the filter form, `/api/tasks`).
/// Empty values mean "any". `before` pages to older tasks (ids below it).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct TaskQuery {
    pub queue: Option<String>,
    pub task_set: Option<String>,
    pub state: Option<String>,
    pub cluster: Option<String>,
    pub limit: Option<usize>,
    pub before: Option<u64>,
}

impl TaskQuery {
    fn some(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|x| !x.is_empty())
    }

    pub fn page_size(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
    }
}

#[derive(Serialize)]
pub struct TaskView {
    pub id: u64,
    pub name: String,
    pub index: u32,
    pub queue: String,
    pub task_set: String,
    pub state: String,
    pub attempt: u32,
    pub cluster: String,
    pub node: String,
    pub reason: String,
    pub cost_usd: f64,
    pub updated_ms: u64,
}

fn task_view(t: &TaskRecord, now_ms: u64) -> TaskView {
    let (cluster, node) = t.placement();
    TaskView {
        id: t.id.0,
        name: t.spec.name.clone(),
        index: t.spec.index,
        queue: t.spec.queue.clone(),
        task_set: t.spec.task_set.clone(),
        state: t.state.as_str().into(),
        attempt: t.attempt,
        cluster,
        node,
        reason: t.reason.clone(),
        cost_usd: usd(t.cost_nano_usd.saturating_add(t.running_cost_nano_usd(now_ms))),
        updated_ms: t.updated_ms,
    }
}

/// A page of tasks, newest first, and the id to pass as `before` for the next (older) page
/// (`None` when nothing older matched within the scan bound).
pub fn tasks(ctx: &Context, caller: &Caller, q: &TaskQuery) -> (Vec<TaskView>, Option<u64>) {
    let limit = q.page_size();
    let state = TaskQuery::some(&q.state).and_then(TaskState::parse);
    let (queue, set, cluster) = (TaskQuery::some(&q.queue), TaskQuery::some(&q.task_set), TaskQuery::some(&q.cluster));
    let mut may_see = QueueCheck::new(ctx, caller, Verb::Watch);
    let now_ms = ctx.config.clock.now_ms();
    let before = TaskId(q.before.unwrap_or(u64::MAX));
    ctx.read(|s| {
        let mut matching = s
            .tasks()
            .rev()
            .skip_while(|t| t.id >= before)
            .take(MAX_SCANNED_PER_VIEW)
            .filter(|t| {
                queue.is_none_or(|x| x == t.spec.queue)
                    && set.is_none_or(|x| x == t.spec.task_set)
                    && state.is_none_or(|st| st == t.state)
                    && cluster.is_none_or(|c| t.placement().0 == c)
                    && may_see.allows(s, &t.spec.queue)
            })
            .take(limit + 1);
        let page: Vec<TaskView> = matching.by_ref().take(limit).map(|t| task_view(t, now_ms)).collect();
        let more = matching.next().is_some();
        let next = if more { page.last().map(|t| t.id) } else { None };
        (page, next)
    })
}

/// One attempt of a task, put together from its events.
#[derive(Serialize, Default)]
pub struct AttemptView {
    pub attempt: u32,
    pub cluster: String,
    pub node: String,
    pub leased_ms: u64,
    pub running_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    /// The event that ended it (succeeded, failed, retrying, preempted, requeued, cancelled).
    pub outcome: String,
    pub reason: String,
    pub cost_usd: f64,
}

#[derive(Serialize)]
pub struct EventView {
    pub seq: u64,
    pub attempt: u32,
    pub kind: String,
    pub cluster: String,
    pub node: String,
    pub reason: String,
    pub time_ms: u64,
    pub cost_usd: f64,
}

#[derive(Serialize)]
pub struct TaskDetail {
    pub task: TaskView,
    pub image: String,
    pub priority_class: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpu: u64,
    pub submitted_ms: u64,
    pub exit_code: Option<i32>,
    pub cost_per_hour_usd: f64,
    pub attempts: Vec<AttemptView>,
    /// The newest events of the task, oldest first; `events_cut` when older ones are left out.
    pub events: Vec<EventView>,
    pub events_cut: bool,
}

/// The task page's data; `None` when the task does not exist or the caller may not watch
/// its queue (the same answer, so ids reveal nothing).
pub fn task_detail(ctx: &Context, caller: &Caller, id: u64) -> Option<TaskDetail> {
    let mut may_see = QueueCheck::new(ctx, caller, Verb::Watch);
    let now_ms = ctx.config.clock.now_ms();
    ctx.read(|s| {
        let t = s.task(TaskId(id)).filter(|t| may_see.allows(s, &t.spec.queue))?;
        let (events, events_cut) = task_events(s, t);
        Some(TaskDetail {
            task: task_view(t, now_ms),
            image: t.spec.image.clone(),
            priority_class: t.spec.priority_class.clone(),
            cpu_millis: t.spec.resources.cpu_millis,
            memory_bytes: t.spec.resources.memory_bytes,
            gpu: t.spec.resources.gpu,
            submitted_ms: t.submitted_ms,
            exit_code: t.exit_code,
            cost_per_hour_usd: if t.state.is_active() { t.lease_cost.usd_per_hour() } else { 0.0 },
            attempts: attempts(&events),
            events,
            events_cut,
        })
    })
}

fn task_events(s: &State, t: &TaskRecord) -> (Vec<EventView>, bool) {
    let Some(set) = s.task_set(&t.spec.queue, &t.spec.task_set) else { return (Vec::new(), false) };
    let mut newest: Vec<EventView> = set
        .events
        .iter()
        .rev()
        .take(MAX_EVENTS_SCANNED)
        .filter(|e| e.task == t.id)
        .take(MAX_TASK_EVENTS + 1)
        .map(|e| EventView {
            seq: e.seq,
            attempt: e.attempt,
            kind: e.kind.as_str().into(),
            cluster: e.cluster.clone(),
            node: e.node.clone(),
            reason: e.reason.clone(),
            time_ms: e.time_ms,
            cost_usd: usd(e.cost_nano_usd),
        })
        .collect();
    let cut = newest.len() > MAX_TASK_EVENTS;
    newest.truncate(MAX_TASK_EVENTS);
    newest.reverse();
    (newest, cut)
}

/// Attempts from the events: each starts with `leased` and ends with the event that took the
/// task out of the active states.
fn attempts(events: &[EventView]) -> Vec<AttemptView> {
    let mut out: Vec<AttemptView> = Vec::new();
    for e in events {
        if e.attempt == 0 {
            continue;
        }
        if e.kind == EventKind::Leased.as_str() || out.last().is_none_or(|a| a.attempt != e.attempt) {
            out.push(AttemptView {
                attempt: e.attempt,
                cluster: e.cluster.clone(),
                node: e.node.clone(),
                leased_ms: e.time_ms,
                ..Default::default()
            });
        }
        let Some(a) = out.last_mut() else { continue };
        match e.kind.as_str() {
            "running" => a.running_ms = Some(e.time_ms),
            "leased" | "pending" => {}
            other => {
                a.ended_ms = Some(e.time_ms);
                a.outcome = other.to_string();
                a.reason.clone_from(&e.reason);
                a.cost_usd = e.cost_usd;
            }
        }
    }
    out
}
