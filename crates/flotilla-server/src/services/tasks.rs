//! `flotilla.v1.Tasks`: submit, cancel, resume, get, list, watch.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use flotilla_api::{template_from_proto, v1, v1::tasks_server::Tasks};
use flotilla_model::{expand, quote, truncate, FieldError, TaskId, TaskState, TaskTemplate, Verb, MAX_REASON_BYTES};
use flotilla_store::{CancelTarget, Command, CommandResult, RejectKind};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::QueueCheck;
use crate::auth::{audit, Caller};
use crate::convert::{event_to_proto, invalid, task_to_proto};
use crate::{now_ms, Context};

/// Most ids one GetTasks call may ask for; most tasks one ListTasks page returns.
pub(crate) const MAX_IDS_PER_GET: usize = 10_000;
const DEFAULT_PAGE: usize = 1_000;
const MAX_PAGE: usize = 10_000;
/// Most task records one ListTasks call looks at: a filter that matches few of a million
/// tasks answers a short (even empty) page with `next_after_id` set, instead of holding
/// the state's read lock for a scan of the whole table.
const MAX_SCANNED_PER_PAGE: usize = 100_000;
/// Events sent per read of the log while a watcher catches up.
const WATCH_BATCH: usize = 1_000;
const MAX_REQUEST_ID_BYTES: usize = 128;

pub struct TasksService(pub Arc<Context>);

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TasksService {
    async fn linearize(&self, linearizable: bool) -> Result<(), Status> {
        if linearizable {
            self.0.replica.read_linearizable().await.map_err(|e| Status::unavailable(format!("linearizable read failed: {e}")))?;
        }
        Ok(())
    }

    /// Tasks no node reporting now could ever hold: accepted (clusters scale, executors
    /// reconnect) but the caller is told. Only the leader knows capacity.
    fn capacity_warnings(&self, templates: &[TaskTemplate], specs: &[flotilla_model::TaskSpec]) -> Vec<String> {
        let nodes = {
            let cap = self.0.capacity.lock().unwrap_or_else(|e| e.into_inner());
            cap.fresh_nodes(Instant::now(), self.0.config.cluster_lost_after)
        };
        if nodes.is_empty() {
            return Vec::new();
        }
        let mut warnings = Vec::new();
        for (i, t) in templates.iter().enumerate() {
            let Some(spec) = specs.iter().find(|s| s.name == t.name) else { continue };
            let fits = nodes.iter().any(|n| {
                spec.resources.fits_in(&n.schedulable_capacity())
                    && spec.placement.gpu_model.as_ref().is_none_or(|m| n.gpu_model.as_ref() == Some(m))
            });
            if !fits {
                warnings.push(format!(
                    "tasks[{i}]: needs {}{}, more than any node now reporting offers; it stays queued until such a node appears",
                    spec.resources,
                    spec.placement.gpu_model.as_ref().map(|m| format!(" on {m}")).unwrap_or_default()
                ));
            }
        }
        warnings
    }
}

/// A stable hash of a submission's body (queue, task set, templates; not the request id),
/// kept beside the request id so that a retry with another body is refused rather than
/// answered with the first call's ids. FNV-1a (64 bit) over the JSON of the parsed templates,
/// whose maps are ordered: the protobuf encoding is not stable (its maps are hash maps). Not a
/// defence against a caller forging collisions with their own earlier submission: the id is
/// theirs to reuse.
fn submission_digest(queue: &str, task_set: &str, templates: &[TaskTemplate]) -> u64 {
    let body = serde_json::to_vec(&(queue, task_set, templates)).expect("task templates serialize to JSON");
    // 0 means "unknown" in the store.
    fnv1a64(&body).max(1)
}

/// FNV-1a, 64 bit: a stable hash (the same in every build and process) of a few bytes.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::TaskEvent, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<v1::LogChunk, Status>> + Send>>;

/// How long a log request waits for its executor's first answer (executors sync about
/// every second; a silent one is down or partitioned).
const FIRST_LOG_CHUNK_WAIT: Duration = Duration::from_secs(30);

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn submit_tasks(&self, req: Request<v1::SubmitTasksRequest>) -> Result<Response<v1::SubmitTasksResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let target = format!("queue/{}/{}", truncate(&r.queue, 64), truncate(&r.task_set, 64));
        let result = self.submit(&caller, r).await;
        audit(&caller, "SubmitTasks", &target, &result);
        result
    }

    async fn cancel_tasks(&self, req: Request<v1::CancelTasksRequest>) -> Result<Response<v1::CancelTasksResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let target = if r.task_ids.is_empty() {
            format!("queue/{}/{}", truncate(&r.queue, 64), truncate(&r.task_set, 64))
        } else {
            format!("tasks/{} ids from {}", r.task_ids.len(), r.task_ids[0])
        };
        let result = self.cancel(&caller, r).await;
        audit(&caller, "CancelTasks", &target, &result);
        result
    }

    async fn resume_task_set(&self, req: Request<v1::ResumeTaskSetRequest>) -> Result<Response<v1::ResumeTaskSetResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let target = format!("queue/{}/{}", truncate(&r.queue, 64), truncate(&r.task_set, 64));
        let result = async {
            self.0.require_on_queue(&caller, &r.queue, Verb::Submit)?;
            self.0.propose_ok(Command::Resume { queue: r.queue, task_set: r.task_set }).await?;
            self.0.schedule_now.notify_one();
            Ok(Response::new(v1::ResumeTaskSetResponse {}))
        }
        .await;
        audit(&caller, "ResumeTaskSet", &target, &result);
        result
    }

    async fn get_tasks(&self, req: Request<v1::GetTasksRequest>) -> Result<Response<v1::GetTasksResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        if r.task_ids.len() > MAX_IDS_PER_GET {
            return Err(invalid(&[FieldError::new("taskIds", format!("at most {MAX_IDS_PER_GET} per call"))]));
        }
        self.linearize(r.linearizable).await?;
        // A task in a queue the caller may not watch is answered as if it did not exist.
        let mut may_see = QueueCheck::new(&self.0, &caller, Verb::Watch);
        let now_ms = self.0.config.clock.now_ms();
        let (tasks, missing): (Vec<_>, Vec<_>) = self.0.read(|s| {
            let found: Vec<_> = r
                .task_ids
                .iter()
                .map(|id| (id, s.task(TaskId(*id)).filter(|t| may_see.allows(s, &t.spec.queue)).map(|t| task_to_proto(t, now_ms))))
                .collect();
            found.into_iter().partition(|(_, t)| t.is_some())
        });
        if !missing.is_empty() {
            let ids: Vec<String> = missing.iter().take(20).map(|(id, _)| id.to_string()).collect();
            let more = if missing.len() > 20 { format!(" and {} more", missing.len() - 20) } else { String::new() };
            return Err(Status::not_found(format!("no task with id {}{more}", ids.join(", "))));
        }
        Ok(Response::new(v1::GetTasksResponse { tasks: tasks.into_iter().filter_map(|(_, t)| t).collect() }))
    }

    async fn list_tasks(&self, req: Request<v1::ListTasksRequest>) -> Result<Response<v1::ListTasksResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let state = if r.state.is_empty() {
            None
        } else {
            Some(TaskState::parse(&r.state).ok_or_else(|| {
                invalid(&[FieldError::new(
                    "state",
                    format!("{} is not one of queued, leased, pending, running, succeeded, failed, cancelled", quote(&r.state)),
                )])
            })?)
        };
        if !r.task_set.is_empty() && r.queue.is_empty() {
            return Err(invalid(&[FieldError::new("queue", "is required with taskSet")]));
        }
        if !r.queue.is_empty() {
            self.0.require_on_queue(&caller, &r.queue, Verb::Watch)?;
        }
        self.linearize(r.linearizable).await?;
        let page = if r.limit == 0 { DEFAULT_PAGE } else { (r.limit as usize).min(MAX_PAGE) };
        // Without a queue, the listing holds only tasks of queues the caller may watch.
        let mut may_see = QueueCheck::new(&self.0, &caller, Verb::Watch);
        let now_ms = self.0.config.clock.now_ms();
        let (tasks, next, set_cost) = self.0.read(|s| {
            let mut matches = |t: &&flotilla_store::TaskRecord| {
                may_see.allows(s, &t.spec.queue)
                    && (r.queue.is_empty() || t.spec.queue == r.queue)
                    && (r.task_set.is_empty() || t.spec.task_set == r.task_set)
                    && state.is_none_or(|st| t.state == st)
            };
            let mut out = Vec::new();
            let mut next = 0;
            let mut scanned = 0usize;
            // False once the page is full or the scan bound is reached: `next` then says
            // where the next call goes on (after the last task returned or looked at).
            let mut visit = |t: &flotilla_store::TaskRecord| {
                if out.len() == page {
                    next = out.last().map_or(0, |l: &v1::Task| l.id);
                    return false;
                }
                if scanned == MAX_SCANNED_PER_PAGE {
                    next = t.id.0.saturating_sub(1).max(r.after_id);
                    return false;
                }
                scanned += 1;
                if matches(&t) {
                    out.push(task_to_proto(t, now_ms));
                }
                true
            };
            if !r.task_set.is_empty() {
                if let Some(set) = s.task_set(&r.queue, &r.task_set) {
                    // Ids are appended in increasing order: the page starts by a binary search.
                    let start = set.tasks.partition_point(|id| id.0 <= r.after_id);
                    for id in &set.tasks[start..] {
                        if let Some(t) = s.task(*id) {
                            if !visit(t) {
                                break;
                            }
                        }
                    }
                }
            } else {
                for t in s.tasks_after(TaskId(r.after_id)) {
                    if !visit(t) {
                        break;
                    }
                }
            }
            let set_cost = (!r.task_set.is_empty()).then(|| crate::cost::task_set_cost(s, &r.queue, &r.task_set, now_ms)).flatten();
            (out, next, set_cost)
        });
        let (ended, all) = set_cost.unwrap_or_default();
        Ok(Response::new(v1::ListTasksResponse {
            tasks,
            next_after_id: next,
            task_set_cost_usd: flotilla_store::cost::usd(all),
            task_set_ended_cost_usd: flotilla_store::cost::usd(ended),
        }))
    }

    type WatchStream = EventStream;

    async fn watch(&self, req: Request<v1::WatchRequest>) -> Result<Response<EventStream>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        self.0.require_on_queue(&caller, &r.queue, Verb::Watch)?;
        if !self.0.read(|s| s.task_set(&r.queue, &r.task_set).is_some()) {
            return Err(Status::not_found(format!("task set {}/{} does not exist", quote(&r.queue), quote(&r.task_set))));
        }
        let (tx, rx) = mpsc::channel(WATCH_BATCH);
        let ctx = self.0.clone();
        let mut applied = ctx.replica.applied();
        tokio::spawn(async move {
            let mut next = r.from_seq.max(1);
            loop {
                // Checked again before every batch: a permit taken away (or an auth file
                // edited) ends a stream already open, within one wake-up.
                if let Err(denied) = ctx.require_on_queue(&caller, &r.queue, Verb::Watch) {
                    let _ = tx.send(Err(denied)).await;
                    return;
                }
                let batch: Vec<v1::TaskEvent> = ctx.read(|s| {
                    s.task_set(&r.queue, &r.task_set)
                        .map(|set| set.events_from(next.max(set.first_seq()), WATCH_BATCH).iter().map(|e| event_to_proto(e, s)).collect())
                        .unwrap_or_default()
                });
                let full = batch.len() == WATCH_BATCH;
                for e in batch {
                    next = e.seq + 1;
                    if tx.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    // Also wake now and then, in case a change was missed between read and wait.
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type LogsStream = LogStream;

    async fn logs(&self, req: Request<v1::LogsRequest>) -> Result<Response<LogStream>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ctx = &self.0;
        let (attempt, cluster, node) = {
            let mut may_see = QueueCheck::new(ctx, &caller, Verb::Watch);
            ctx.read(|s| {
                let t = s.task(TaskId(r.task_id)).filter(|t| may_see.allows(s, &t.spec.queue))?;
                let attempt = if r.attempt == 0 { t.attempt } else { r.attempt };
                Some((attempt, attempt_placement(s, t, attempt)))
            })
            .map(|(attempt, (cluster, node))| (attempt, cluster, node))
            .ok_or_else(|| Status::not_found(format!("no task with id {}", r.task_id)))?
        };
        if attempt == 0 {
            return Err(Status::failed_precondition(format!("task {} has not started yet", r.task_id)));
        }
        if cluster.is_empty() {
            return Err(Status::not_found(format!("attempt {attempt} of task {}: where it ran is no longer known", r.task_id)));
        }
        if !ctx.is_leader() {
            // Log requests are served where executors sync: the leader. Authorised here.
            let channel = ctx.leader_channel().ok_or_else(|| Status::unavailable("no leader elected yet"))?;
            let mut client = v1::tasks_client::TasksClient::new(channel).max_decoding_message_size(super::MAX_MESSAGE_BYTES);
            let forwarded = v1::LogsRequest { attempt, ..r };
            let stream = client.logs(forwarded).await?.into_inner();
            return Ok(Response::new(Box::pin(stream)));
        }
        let ask = crate::logs::LogAsk {
            cluster,
            node,
            task_id: r.task_id,
            attempt,
            follow: r.follow,
            tail_lines: r.tail_lines,
            limit_bytes: r.limit_bytes,
        };
        let (id, rx) = ctx.logs.open(ask)?;
        let ticket = ctx.logs.ticket(id);
        let stream = futures::stream::unfold((rx, ticket, true), |(mut rx, ticket, first)| async move {
            let next = if first {
                match tokio::time::timeout(FIRST_LOG_CHUNK_WAIT, rx.recv()).await {
                    Ok(item) => item,
                    Err(_) => Some(Err(Status::deadline_exceeded(format!(
                        "the attempt's executor did not answer within {}s (is its cluster connected?)",
                        FIRST_LOG_CHUNK_WAIT.as_secs()
                    )))),
                }
            } else {
                rx.recv().await
            };
            let item = next?;
            let end = item.is_err();
            // After an error the stream ends: an empty receiver stops the next turn.
            let rx = if end { mpsc::channel(1).1 } else { rx };
            Some((item, (rx, ticket, false)))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// `tasks[i].priorityClass` for each template naming a class the federation does not have
/// (operators define them: `flotilla priority-class list`). Applying checks again.
fn unknown_priority_classes(s: &flotilla_store::State, templates: &[TaskTemplate]) -> Vec<FieldError> {
    let known = || s.priority_classes().keys().take(16).cloned().collect::<Vec<_>>().join(", ");
    templates
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let name = t.priority_class.as_deref().unwrap_or(flotilla_model::DEFAULT_PRIORITY_CLASS);
            s.priority_class(name).is_none().then(|| {
                FieldError::new(format!("tasks[{i}].priorityClass"), format!("unknown priority class {} (known: {})", quote(name), known()))
            })
        })
        .collect()
}

/// (cluster, node) where `attempt` of `t` ran: the task's record for its latest attempt,
/// its task set's events for earlier ones (empty once they were trimmed).
fn attempt_placement(s: &flotilla_store::State, t: &flotilla_store::TaskRecord, attempt: u32) -> (String, String) {
    if attempt == t.attempt {
        return t.placement();
    }
    s.task_set(&t.spec.queue, &t.spec.task_set)
        .and_then(|set| set.events.iter().rev().find(|e| e.task == t.id && e.attempt == attempt && !e.cluster.is_empty()))
        .map(|e| (e.cluster.clone(), e.node.clone()))
        .unwrap_or_default()
}

impl TasksService {
    async fn submit(&self, caller: &Caller, r: v1::SubmitTasksRequest) -> Result<Response<v1::SubmitTasksResponse>, Status> {
        self.0.require_on_queue(caller, &r.queue, Verb::Submit)?;
        let limits = &self.0.config.submit_limits;
        if r.tasks.len() > limits.max_templates_per_submit as usize {
            return Err(invalid(&[FieldError::new(
                "tasks",
                format!("{} entries exceed the limit of {} per submission", r.tasks.len(), limits.max_templates_per_submit),
            )]));
        }
        if r.client_request_id.len() > MAX_REQUEST_ID_BYTES {
            return Err(invalid(&[FieldError::new("clientRequestId", format!("is longer than {MAX_REQUEST_ID_BYTES} bytes"))]));
        }
        let templates: Vec<TaskTemplate> = r.tasks.iter().map(template_from_proto).collect();
        let specs = match expand(&r.queue, &r.task_set, &templates, limits) {
            Ok(s) => s,
            Err(e) => {
                self.0.metrics.rejected_requests_total.with_label_values(&["invalid"]).inc();
                return Err(invalid(&e.0));
            }
        };
        // A follower may not have applied a queue created a moment ago on another replica:
        // only the leader's view is final here, and applying the entry checks again.
        if self.0.is_leader() && !self.0.read(|s| s.queue(&r.queue).is_some()) {
            self.0.metrics.rejected_requests_total.with_label_values(&["unknown_queue"]).inc();
            return Err(invalid(&[FieldError::new(
                "queue",
                format!("{:?} does not exist (create it with `flotilla queue create {}`)", r.queue, r.queue),
            )]));
        }
        if self.0.is_leader() {
            let errors = self.0.read(|s| unknown_priority_classes(s, &templates));
            if !errors.is_empty() {
                self.0.metrics.rejected_requests_total.with_label_values(&["invalid"]).inc();
                return Err(invalid(&errors));
            }
        }
        let warnings = self.capacity_warnings(&templates, &specs);
        let client_request_id = if r.client_request_id.is_empty() {
            // No dedupe without a caller-chosen id; still unique so nothing collides.
            format!("auto-{}-{}-{}", self.0.config.id, now_ms(), REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed))
        } else {
            r.client_request_id
        };
        let n = specs.len();
        let body_digest = submission_digest(&r.queue, &r.task_set, &templates);
        let command = Command::Submit { client_request_id, queue: r.queue.clone(), task_set: r.task_set.clone(), specs, body_digest };
        let result = self.0.propose(command).await?;
        let task_ids = match result {
            CommandResult::Submitted { task_ids } => task_ids,
            // Every refusal of a validated submission is about its input (e.g. the queue was
            // deleted meanwhile): bad input for the caller.
            CommandResult::Rejected { kind: RejectKind::AlreadyExists, message } => {
                self.0.metrics.rejected_requests_total.with_label_values(&["request_id_reused"]).inc();
                return Err(Status::already_exists(message));
            }
            CommandResult::Rejected { message, .. } => {
                self.0.metrics.rejected_requests_total.with_label_values(&["rejected"]).inc();
                return Err(Status::invalid_argument(message));
            }
            other => return Err(Status::internal(format!("unexpected result of submit: {other:?}"))),
        };
        self.0.metrics.submitted_tasks_total.inc_by(n as u64);
        self.0.schedule_now.notify_one();
        tracing::info!(queue = %r.queue, task_set = %r.task_set, tasks = n, "submitted");
        Ok(Response::new(v1::SubmitTasksResponse { task_ids: task_ids.iter().map(|t| t.0).collect(), warnings }))
    }

    async fn cancel(&self, caller: &Caller, r: v1::CancelTasksRequest) -> Result<Response<v1::CancelTasksResponse>, Status> {
        let target = match (r.task_ids.is_empty(), r.queue.is_empty() || r.task_set.is_empty()) {
            (false, true) => {
                if r.task_ids.len() > MAX_IDS_PER_GET {
                    return Err(invalid(&[FieldError::new("taskIds", format!("at most {MAX_IDS_PER_GET} per call"))]));
                }
                self.require_cancel_ids(caller, &r.task_ids)?;
                CancelTarget::Tasks(r.task_ids.iter().map(|i| TaskId(*i)).collect())
            }
            (true, false) => {
                self.0.require_on_queue(caller, &r.queue, Verb::Cancel)?;
                CancelTarget::TaskSet { queue: r.queue, task_set: r.task_set }
            }
            _ => return Err(Status::invalid_argument("give either task ids or both queue and task set")),
        };
        // Copied into every task it cancels and every event: bounded before it is logged.
        let reason = if r.reason.is_empty() { "cancelled by user".to_string() } else { truncate(&r.reason, MAX_REASON_BYTES) };
        match self.0.propose_ok(Command::Cancel { target, reason }).await? {
            CommandResult::Count(n) => Ok(Response::new(v1::CancelTasksResponse { cancelled: n as u32 })),
            other => Err(Status::internal(format!("unexpected result of cancel: {other:?}"))),
        }
    }

    /// Every task must be in a queue the caller may cancel in; one it may not even see is
    /// reported as missing, as GetTasks would.
    fn require_cancel_ids(&self, caller: &Caller, ids: &[u64]) -> Result<(), Status> {
        let mut may_see = QueueCheck::new(&self.0, caller, Verb::Watch);
        let mut may_cancel = QueueCheck::new(&self.0, caller, Verb::Cancel);
        self.0.read(|s| {
            for id in ids {
                let Some(t) = s.task(TaskId(*id)) else { continue };
                if !may_see.allows(s, &t.spec.queue) {
                    return Err(Status::not_found(format!("no task with id {id}")));
                }
                if !may_cancel.allows(s, &t.spec.queue) {
                    return Err(crate::auth::denied(caller, &t.spec.queue, Verb::Cancel));
                }
            }
            Ok(())
        })
    }
}
