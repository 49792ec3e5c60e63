//! `flotilla.v1.Executor`: the executors' Sync and ReportEvents.
//!
//! Sync is level-triggered. The executor reports every attempt it has; the leader compares
//! that with the committed leases of the cluster and answers with the difference: attempts
//! to start (committed leases the executor lacks) and attempts to stop (anything that is
//! not the current lease of its task: invariant 2). Only committed leases are ever sent.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::time::Instant;

use flotilla_api::{node_from_report, v1, v1::executor_server::Executor};
use flotilla_model::{AttemptStatus, FailureKind, FieldError, TaskId};
use flotilla_store::{AttemptEvent, ClusterState, Command};
use tonic::{Request, Response, Status};

use crate::auth::{audit, Caller};
use crate::capacity::ClusterReport;
use crate::convert::{invalid, leased_task};
use crate::Context;

/// Longest node name kept in an event (Kubernetes allows 253 bytes).
const MAX_NODE_NAME_BYTES: usize = flotilla_model::MAX_NODE_NAME_BYTES;

/// Most nodes one cluster may report.
const MAX_NODES_PER_CLUSTER: usize = 100_000;

/// Most bytes of attempts one Sync may list (ids, node names and phases): about 250,000
/// attempts with their node names, far more than a cluster runs, and a quarter of the
/// gRPC message limit.
const MAX_ATTEMPT_BYTES_PER_SYNC: usize = 16 << 20;

/// Bytes one reported attempt counts for against [`MAX_ATTEMPT_BYTES_PER_SYNC`].
fn attempt_bytes(a: &v1::RunningAttempt) -> usize {
    std::mem::size_of::<u64>() + std::mem::size_of::<u32>() + a.node.len() + a.phase.len()
}

/// Checks a Sync before anything of it is used: the cluster name, the node count, every
/// node's plausibility (`flotilla_model::check_nodes`: resources within per-node bounds,
/// Kubernetes' name and label lengths, unique names) and the size of the attempts list.
/// A forged or broken report is refused whole, so it never becomes capacity that work is
/// leased onto, and never registers its cluster.
fn check_sync(r: &v1::SyncRequest) -> Result<Vec<flotilla_model::Node>, Status> {
    let mut errors = Vec::new();
    flotilla_model::check_name("cluster", &r.cluster, &mut errors);
    if r.nodes.len() > MAX_NODES_PER_CLUSTER {
        errors.push(FieldError::new("nodes", format!("{} nodes exceed the limit of {MAX_NODES_PER_CLUSTER}", r.nodes.len())));
        return Err(invalid(&errors));
    }
    let attempt_bytes: usize = r.attempts.iter().map(attempt_bytes).sum();
    if attempt_bytes > MAX_ATTEMPT_BYTES_PER_SYNC {
        errors.push(FieldError::new(
            "attempts",
            format!("{} attempts of {attempt_bytes} bytes exceed the limit of {MAX_ATTEMPT_BYTES_PER_SYNC} bytes", r.attempts.len()),
        ));
    }
    let nodes: Vec<flotilla_model::Node> = r.nodes.iter().map(|n| node_from_report(&r.cluster, n)).collect();
    errors.extend(flotilla_model::check_nodes(&nodes));
    if errors.is_empty() {
        Ok(nodes)
    } else {
        Err(invalid(&errors))
    }
}

pub struct ExecutorService {
    ctx: Arc<Context>,
}

impl ExecutorService {
    pub fn new(ctx: Arc<Context>) -> Self {
        ExecutorService { ctx }
    }
}

pub fn failure_kind(s: &str) -> FailureKind {
    match s {
        "OOMKilled" => FailureKind::OomKilled,
        "Evicted" => FailureKind::Evicted,
        "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" => FailureKind::ImagePull,
        "DeadlineExceeded" => FailureKind::DeadlineExceeded,
        "Lost" => FailureKind::Lost,
        "StartFailed" => FailureKind::StartFailed,
        "Unschedulable" => FailureKind::Unschedulable,
        "NoProgress" => FailureKind::NoProgress,
        _ => FailureKind::Error,
    }
}

fn attempt_event(e: &v1::AttemptEvent) -> Result<AttemptEvent, String> {
    let status = match e.status.as_str() {
        "pending" => AttemptStatus::Pending,
        "running" => AttemptStatus::Running,
        "succeeded" => AttemptStatus::Succeeded,
        "failed" => AttemptStatus::Failed {
            kind: failure_kind(&e.failure_kind),
            exit_code: e.exit_code,
            // Kept in the task's reason and events on every replica: bounded.
            message: flotilla_model::truncate(&e.message, flotilla_model::MAX_REASON_BYTES),
        },
        other => return Err(format!("{} is not one of pending, running, succeeded, failed", flotilla_model::quote(other))),
    };
    Ok(AttemptEvent {
        task: TaskId(e.task_id),
        attempt: e.attempt,
        status,
        node: flotilla_model::truncate(&e.node, MAX_NODE_NAME_BYTES),
        time_ms: e.time_ms,
    })
}

#[tonic::async_trait]
impl Executor for ExecutorService {
    async fn sync(&self, req: Request<v1::SyncRequest>) -> Result<Response<v1::SyncResponse>, Status> {
        let ctx = &self.ctx;
        // Checked here, where the credential arrived; a forwarded call comes from a replica.
        let caller = Caller::of(&req);
        ctx.authorizer().require_cluster(&caller, &req.get_ref().cluster)?;
        if !ctx.is_leader() {
            // Capacity reports are the leader's soft state: hand the call to the leader.
            let channel = ctx.leader_channel().ok_or_else(|| Status::unavailable("no leader elected yet"))?;
            let mut client = v1::executor_client::ExecutorClient::new(channel)
                .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(super::MAX_MESSAGE_BYTES);
            return client.sync(req.into_inner()).await;
        }
        // Fenced leadership: only a leader a majority confirmed within its lease hands out
        // executor leases; a deposed leader that has not noticed answers UNAVAILABLE and the
        // executor moves on to another replica.
        let term = ctx.fenced_term().await?;
        let r = req.into_inner();
        let nodes = check_sync(&r).inspect_err(|e| {
            tracing::warn!(cluster = %flotilla_model::truncate(&r.cluster, 63), error = %e.message(), "refused an implausible sync");
        })?;
        let cluster = r.cluster.clone();
        let _span = tracing::debug_span!("sync", cluster = %cluster).entered();
        let attempts: Vec<(TaskId, u32, String)> = r.attempts.iter().map(|a| (TaskId(a.task_id), a.attempt, a.phase.clone())).collect();
        let first_report = {
            let mut cap = ctx.capacity.lock().unwrap_or_else(|e| e.into_inner());
            let previous = cap.reports.get(&cluster).map(|p| p.executor_id.clone());
            if previous.as_ref().is_some_and(|p| *p != r.executor_id) {
                tracing::info!(cluster = %cluster, executor_id = %r.executor_id, "executor restarted");
            }
            cap.record(&cluster, ClusterReport { nodes, executor_id: r.executor_id.clone(), received: Instant::now() });
            previous.is_none()
        };
        drop(_span);
        let registered = ctx.read(|s| s.cluster(&cluster).map(|c| c.state));
        if registered != Some(ClusterState::Ready) {
            ctx.propose_decision(Command::ClusterSeen { cluster: cluster.clone(), term: Some(term) }).await.and_then(|r| match r {
                flotilla_store::CommandResult::Rejected { message, .. } => Err(Status::unavailable(message)),
                other => Ok(other),
            })?;
            tracing::info!(target: "audit", subject = %caller, action = "RegisterCluster", target = %format!("cluster/{cluster}"), result = "ok");
            tracing::info!(cluster = %cluster, "cluster ready");
        }
        if first_report {
            ctx.schedule_now.notify_one();
        }

        let max_starts = ctx.config.max_starts_per_sync;
        // One read of the state: the committed leases of this cluster against what it reported.
        let (start, stop, running_stopped, gone) = ctx.read(|s| {
            let desired: HashMap<TaskId, u32> = s.active_in(&cluster).map(|t| (t.id, t.attempt)).collect();
            let reported: HashSet<(TaskId, u32)> = attempts.iter().map(|(t, a, _)| (*t, *a)).collect();
            // Attempts a decision ended that this cluster no longer runs: their tasks may be
            // leased again (the report lists every attempt the cluster has). Usually none wait.
            let gone: Vec<(TaskId, u32)> = if s.stopping_in(&cluster).next().is_none() {
                Vec::new()
            } else {
                let unfinished: HashSet<(TaskId, u32)> = attempts
                    .iter()
                    .filter(|(_, _, phase)| !matches!(phase.as_str(), "succeeded" | "failed"))
                    .map(|(t, a, _)| (*t, *a))
                    .collect();
                s.stopping_in(&cluster).map(|t| (t.id, t.attempt)).filter(|k| !unfinished.contains(k)).collect()
            };
            let mut running_stopped = 0;
            let mut stop = Vec::new();
            for (t, a, phase) in &attempts {
                if desired.get(t) != Some(a) {
                    running_stopped += usize::from(phase == "running");
                    stop.push(v1::AttemptRef { task_id: t.0, attempt: *a });
                }
            }
            let start: Vec<v1::LeasedTask> =
                s.active_in(&cluster).filter(|t| !reported.contains(&(t.id, t.attempt))).take(max_starts).map(leased_task).collect();
            (start, stop, running_stopped, gone)
        });
        if !gone.is_empty() {
            tracing::debug!(cluster = %cluster, attempts = gone.len(), "ended attempts are gone");
            ctx.propose(Command::AttemptsGone { cluster: cluster.clone(), attempts: gone }).await?;
            ctx.schedule_now.notify_one();
        }
        if running_stopped > 0 {
            tracing::info!(cluster = %cluster, running = running_stopped, stop = stop.len(), "stopping running attempts that are not current leases");
        } else if !stop.is_empty() {
            // Mostly finished attempts being cleaned up.
            tracing::debug!(cluster = %cluster, stop = stop.len(), "cleaning up finished attempts");
        }
        // The answer grants a lease only if this replica still leads in the term it started
        // in: what it read may otherwise already be another leader's to decide.
        match ctx.replica.fence().check(&ctx.replica, Instant::now()) {
            Ok(t) if t == term => {}
            Ok(_) | Err(_) => return Err(Status::unavailable("leadership moved while answering; sync again")),
        }
        Ok(Response::new(v1::SyncResponse {
            start,
            stop,
            sync_interval_ms: ctx.config.sync_interval.as_millis() as u32,
            lease_ms: ctx.config.executor_lease().as_millis() as u32,
            lease_expiry_grace_ms: ctx.config.lease_expiry_grace().as_millis() as u32,
            installation_id: ctx.read(|s| s.installation_id().to_string()),
            logs: ctx.logs.requests_for(&cluster),
        }))
    }

    /// Any replica answers from its applied state: the id never changes once set.
    async fn register(&self, req: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        let caller = Caller::of(&req);
        self.ctx.authorizer().require_cluster(&caller, &req.get_ref().cluster)?;
        let installation_id = self.ctx.read(|s| s.installation_id().to_string());
        if installation_id.is_empty() {
            return Err(Status::unavailable("the installation has no id yet: its first leader sets it; retry"));
        }
        let r = req.get_ref();
        tracing::info!(cluster = %flotilla_model::truncate(&r.cluster, 63), executor_id = %flotilla_model::truncate(&r.executor_id, 64), "executor registered");
        Ok(Response::new(v1::RegisterResponse { installation_id }))
    }

    async fn push_logs(&self, req: Request<v1::PushLogsRequest>) -> Result<Response<v1::PushLogsResponse>, Status> {
        let caller = Caller::of(&req);
        self.ctx.authorizer().require_cluster(&caller, &req.get_ref().cluster)?;
        if !self.ctx.is_leader() {
            // Log requests live on the leader, where Syncs are answered: hand it over.
            let channel = self.ctx.leader_channel().ok_or_else(|| Status::unavailable("no leader elected yet"))?;
            let mut client = v1::executor_client::ExecutorClient::new(channel).max_encoding_message_size(super::MAX_MESSAGE_BYTES);
            return client.push_logs(req.into_inner()).await;
        }
        let r = req.into_inner();
        let more = self.ctx.logs.push(&r.cluster, r.request_id, r.data, r.eof, r.truncated, &r.error).await?;
        Ok(Response::new(v1::PushLogsResponse { more }))
    }

    async fn report_events(&self, req: Request<v1::ReportEventsRequest>) -> Result<Response<v1::ReportEventsResponse>, Status> {
        let caller = Caller::of(&req);
        self.ctx.authorizer().require_cluster(&caller, &req.get_ref().cluster)?;
        let r = req.into_inner();
        let max = self.ctx.config.max_events_per_report;
        if r.events.len() > max {
            return Err(invalid(&[FieldError::new("events", format!("{} events exceed the limit of {max} per call", r.events.len()))]));
        }
        let mut events = Vec::with_capacity(r.events.len());
        let mut errors = Vec::new();
        for (i, e) in r.events.iter().enumerate() {
            match attempt_event(e) {
                Ok(ev) => events.push(ev),
                Err(m) => errors.push(FieldError::new(format!("events[{i}].status"), m)),
            }
        }
        if !errors.is_empty() {
            return Err(invalid(&errors));
        }
        let n = events.len() as u32;
        if n > 0 && self.ctx.is_leader() {
            // A leader that cannot confirm its leadership could not commit them anyway: say
            // so at once, and the executor tries another replica.
            self.ctx.fenced_term().await?;
        }
        if n > 0 {
            let target = format!("cluster/{}", r.cluster);
            let result = self.ctx.propose_ok(Command::ReportEvents { cluster: r.cluster, events }).await;
            audit(&caller, "ReportEvents", &target, &result);
            result?;
            self.ctx.schedule_now.notify_one();
        }
        Ok(Response::new(v1::ReportEventsResponse { accepted: n }))
    }
}
