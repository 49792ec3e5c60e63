//! The executor loop: report capacity and attempts, close the difference, report events.
//!
//! Every `sync_interval` the loop
//! 1. sends the backend's unacknowledged events with `ReportEvents`, in batches of at most
//!    `max_events_per_report`, and acknowledges them to the backend only once the scheduler
//!    has answered OK (a batch that fails is sent again next time: none is lost, and the
//!    scheduler treats a repeat as a no-op);
//! 2. calls `Sync` with the cluster's nodes and attempts, stops what the answer lists under
//!    `stop` and starts what it lists under `start`.
//!
//! Any replica answers: followers forward to the leader. On a connect error, `UNAVAILABLE`
//! or a timeout the loop moves to the next URL of `servers` and retries there at once.
//!
//! # The executor lease (invariant 2)
//! Every `SyncResponse` grants a lease of `lease_ms`, counted from when this executor *sent*
//! the Sync, on its own monotonic clock (no synchronised clocks needed; only clock rates are
//! assumed to differ by a few percent). The executor starts an attempt only while its lease
//! holds. When the lease runs out before another Sync renews it (the scheduler is
//! unreachable, or only a deposed leader answers and refuses), the executor stops every
//! attempt it runs, giving each at most `lease_expiry_grace_ms`, and reports them as `Lost`
//! (not the task's fault) once it reaches a scheduler again. The scheduler re-leases a silent
//! cluster's tasks only after `cluster_lost_after`, which it checks exceeds lease + grace + a
//! margin: by then these attempts are gone. An executor process that starts without a lease
//! (a restart) stops what it finds if its first Sync does not grant one.
//!
//! # Installation
//! `flotilla executor` first asks the scheduler which installation it is ([`register`]) and
//! builds its backend for that installation's objects only; every Sync answer names the
//! installation again, and an answer from another one is ignored like a failed Sync (no
//! lease renewal), so an executor pointed at the wrong group stops rather than acting on
//! objects it does not own.
//!
//! # Logs
//! A Sync answer may carry log requests (`SyncResponse.logs`): users waiting for an
//! attempt's output. Each is read from the backend on its own task (at most
//! [`MAX_LOG_READS`] at once) and pushed back with `PushLogs` in chunks of at most
//! [`LOG_CHUNK_BYTES`], no faster than [`LOG_BYTES_PER_SECOND`].
//!
//! Kept between iterations: the connection, the lease's deadline, and the `Lost` events not
//! yet reported (bounded). Stopping the loop and starting another on the same backend is safe:
//! the new loop has no lease, so it starts nothing until a scheduler grants one.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use flotilla_api::auth::AuthChannel;
use flotilla_api::node_to_report;
use flotilla_api::v1::executor_client::ExecutorClient;
use flotilla_api::v1::{self, ReportEventsRequest, SyncRequest};
use flotilla_model::{AttemptStatus, FailureKind, TaskId};
use futures::StreamExt;
use tokio::sync::oneshot;
use tonic::transport::Endpoint;
use tonic::{Code, Status};
use tracing::Instrument;

use crate::backend::{Attempt, AttemptEvent, AttemptPhase, ClusterBackend, LogOptions};

/// Bounds on what one sync may do, and how long it may wait.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// gRPC URLs of scheduler replicas (`http://10.0.0.1:50051`); any replica works.
    pub servers: Vec<String>,
    /// The cluster's name, as the scheduler knows it.
    pub cluster: String,
    /// Time between syncs; a non-zero `SyncResponse.sync_interval_ms` replaces it.
    pub sync_interval: Duration,
    /// Events per `ReportEvents` call.
    pub max_events_per_report: usize,
    /// `ReportEvents` calls per sync: with the batch size, the most events one sync sends.
    pub max_reports_per_sync: usize,
    /// Starts and stops run concurrently up to this many (Kubernetes API calls).
    pub max_concurrent_changes: usize,
    pub connect_timeout: Duration,
    pub rpc_timeout: Duration,
    /// Longest a single start or stop may take (the kube client retries throttling and 503s
    /// with backoff; one slow call must not stall the loop). A timed-out call is repeated
    /// when the scheduler lists it again.
    pub backend_timeout: Duration,
    /// Unique per executor process; a new value tells the scheduler the executor restarted.
    pub executor_id: String,
    /// Counters for `/healthz` and `/metrics`, shared with whoever serves them.
    pub status: Arc<crate::status::ExecutorStatus>,
    /// How to reach the scheduler (TCP, or the fault simulator's network).
    pub dial: flotilla_api::dial::Dial,
    /// This cluster's executor credential, for schedulers with authentication on.
    pub token: flotilla_api::auth::BearerToken,
    /// Progress deadlines of the attempts this process started (`crate::progress`), shared
    /// with the HTTP endpoint tasks signal to.
    pub progress: Arc<crate::progress::ProgressTracker>,
}

impl ExecutorConfig {
    pub fn new(servers: Vec<String>, cluster: impl Into<String>) -> ExecutorConfig {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let cluster = cluster.into();
        let executor_id =
            format!("{cluster}-{}-{}-{}", std::process::id(), crate::backend::unix_now_ms(), COUNTER.fetch_add(1, Ordering::Relaxed));
        ExecutorConfig {
            servers,
            cluster,
            sync_interval: Duration::from_secs(1),
            max_events_per_report: 1000,
            max_reports_per_sync: 100,
            max_concurrent_changes: 16,
            connect_timeout: Duration::from_secs(3),
            rpc_timeout: Duration::from_secs(10),
            backend_timeout: Duration::from_secs(30),
            executor_id,
            status: Arc::default(),
            dial: flotilla_api::dial::Dial::tcp(),
            token: flotilla_api::auth::BearerToken::none(),
            progress: Arc::default(),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.servers.is_empty(), "executor {}: no scheduler servers given", self.cluster);
        anyhow::ensure!(!self.cluster.is_empty(), "executor: the cluster name is empty");
        anyhow::ensure!(
            self.max_events_per_report > 0 && self.max_reports_per_sync > 0,
            "executor {}: event batch sizes must be positive",
            self.cluster
        );
        anyhow::ensure!(self.max_concurrent_changes > 0, "executor {}: max_concurrent_changes must be positive", self.cluster);
        anyhow::ensure!(!self.sync_interval.is_zero(), "executor {}: sync_interval must be positive", self.cluster);
        Ok(())
    }
}

/// Shortest and longest sync interval the scheduler may ask for.
const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(50);
const MAX_SYNC_INTERVAL: Duration = Duration::from_secs(60);
/// Largest `SyncResponse` accepted (it is bounded by the scheduler's leases per sync).
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Most `Lost` events kept for the next report; beyond it the scheduler still learns of the
/// attempts when the cluster is marked lost or the Sync shows them missing.
const MAX_LOST_EVENTS: usize = 100_000;

/// Log reads running at once; further requests wait for the scheduler to hand them again.
pub const MAX_LOG_READS: usize = 8;
/// Largest piece of output in one `PushLogs` (the scheduler refuses more than 64 KiB).
pub const LOG_CHUNK_BYTES: usize = 32 << 10;
/// Output sent per second per read, at most: logs must not crowd out Syncs.
pub const LOG_BYTES_PER_SECOND: u64 = 1 << 20;

/// What the loop keeps about its lease between iterations.
struct Lease {
    /// The lease holds until then; `None` before the first grant.
    until: Option<Instant>,
    /// The most an attempt gets to stop once the lease expired (from the last grant).
    expiry_grace: Duration,
    /// Attempts stopped because the lease expired, to report as lost.
    lost: Vec<AttemptEvent>,
}

impl Lease {
    fn holds(&self, now: Instant) -> bool {
        Self::ignored() || self.until.is_some_and(|t| now < t)
    }

    /// When it expires, if it can.
    fn deadline(&self) -> Option<Instant> {
        self.until.filter(|_| !Self::ignored())
    }

    fn ignored() -> bool {
        crate::planted::SKIP_EXECUTOR_LEASE.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs the executor loop until `shutdown` completes. Errors only on a bad configuration;
/// unreachable schedulers and cluster API failures are logged and retried.
pub async fn run(config: ExecutorConfig, backend: Arc<dyn ClusterBackend>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    let span = tracing::info_span!("executor", cluster = %config.cluster);
    async move {
        tracing::info!(servers = ?config.servers, executor_id = %config.executor_id, "executor started");
        let mut servers = Servers::new(&config);
        let mut interval = config.sync_interval;
        let mut lease = Lease { until: None, expiry_grace: Duration::ZERO, lost: Vec::new() };
        let log_reads: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let began = Instant::now();
            // A lease that runs out mid-iteration (a scheduler call hanging on a partition)
            // interrupts it: the attempts must stop on time, not after the call's timeout.
            let deadline = lease.deadline().filter(|t| *t > began);
            let mut log_requests = Vec::new();
            let iteration = async {
                report_events(&config, backend.as_ref(), &mut servers, &mut lease.lost).await;
                sync(&config, backend.as_ref(), &mut servers, &mut lease, &mut log_requests).await
            };
            tokio::select! {
                _ = &mut shutdown => break,
                asked = iteration => {
                    if let Some(asked) = asked {
                        interval = asked.clamp(MIN_SYNC_INTERVAL, MAX_SYNC_INTERVAL);
                    }
                }
                _ = sleep_until_opt(deadline) => {}
            }
            serve_logs(&config, &backend, &log_reads, log_requests);
            if !lease.holds(Instant::now()) {
                expire(&config, backend.as_ref(), &mut lease).await;
            } else {
                stop_stalled(&config, backend.as_ref(), &mut lease).await;
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(interval.saturating_sub(began.elapsed())) => {}
            }
        }
        tracing::info!("executor stopped");
        Ok(())
    }
    .instrument(span)
    .await
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Without a lease nothing runs: stops every unfinished attempt, each within the lease's
/// expiry grace, and remembers it to report as lost. Repeated every iteration until a Sync
/// grants a lease again (level-triggered: a start that raced the expiry is stopped too).
async fn expire(config: &ExecutorConfig, backend: &dyn ClusterBackend, lease: &mut Lease) {
    let attempts = match backend.attempts().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "executor lease expired but the cluster cannot be read; retrying");
            return;
        }
    };
    let unfinished: Vec<Attempt> =
        attempts.into_iter().filter(|a| matches!(a.phase, AttemptPhase::Pending | AttemptPhase::Running)).collect();
    if unfinished.is_empty() {
        return;
    }
    let since = lease.until.map(|t| Instant::now().saturating_duration_since(t));
    tracing::warn!(attempts = unfinished.len(), expired_for = ?since, grace = ?lease.expiry_grace, "executor lease expired: stopping every attempt of this cluster");
    let grace = lease.expiry_grace;
    let stopped: Vec<Option<Attempt>> = futures::stream::iter(unfinished)
        .map(|a| async move {
            let result = tokio::time::timeout(config.backend_timeout, backend.stop_within(a.task_id, a.attempt, grace)).await;
            matches!(result, Ok(Ok(()))).then_some(a)
        })
        .buffer_unordered(config.max_concurrent_changes)
        .collect()
        .await;
    let now_ms = crate::backend::unix_now_ms();
    // A deleted Job can be listed for a while (it is terminating): report each attempt once.
    let known: HashSet<(TaskId, u32)> = lease.lost.iter().map(|e| (e.task_id, e.attempt)).collect();
    for a in stopped.into_iter().flatten() {
        config.status.stopped(true);
        if lease.lost.len() >= MAX_LOST_EVENTS || known.contains(&(a.task_id, a.attempt)) {
            continue;
        }
        lease.lost.push(AttemptEvent {
            task_id: a.task_id,
            attempt: a.attempt,
            node: a.node,
            status: AttemptStatus::Failed {
                kind: FailureKind::Lost,
                exit_code: None,
                message: "stopped by its executor: the executor's lease expired (no scheduler reachable)".into(),
            },
            time_ms: now_ms,
        });
    }
}

/// Stops the attempts silent for their progress deadline (grace honoured: an ordinary stop)
/// and remembers each to report as failed with `NoProgress`, like a lost one: it is never
/// started again, and the report goes out before the next Sync.
async fn stop_stalled(config: &ExecutorConfig, backend: &dyn ClusterBackend, lease: &mut Lease) {
    let overdue = config.progress.overdue(Instant::now());
    for o in overdue {
        let span = tracing::info_span!("stop", task_id = o.task_id.0, attempt = o.attempt);
        let message = o.message();
        tracing::warn!(parent: &span, deadline = ?o.deadline, "stopping an attempt that signalled no progress");
        let result = tokio::time::timeout(config.backend_timeout, backend.stop(o.task_id, o.attempt)).await;
        config.status.stopped(matches!(result, Ok(Ok(()))));
        if !matches!(result, Ok(Ok(()))) {
            tracing::warn!(parent: &span, "stop failed; reported anyway, and the scheduler stops it on its next Sync");
        }
        if lease.lost.len() >= MAX_LOST_EVENTS {
            continue;
        }
        lease.lost.push(AttemptEvent {
            task_id: o.task_id,
            attempt: o.attempt,
            node: String::new(),
            status: AttemptStatus::Failed { kind: FailureKind::NoProgress, exit_code: None, message },
            time_ms: crate::backend::unix_now_ms(),
        });
    }
}

/// An executor loop running on its own Tokio task (dev mode, tests).
pub struct ExecutorHandle {
    cluster: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts [`run`] on a new Tokio task.
pub fn spawn(config: ExecutorConfig, backend: Arc<dyn ClusterBackend>) -> ExecutorHandle {
    let (stop, stopped) = oneshot::channel::<()>();
    let cluster = config.cluster.clone();
    let task = tokio::spawn(run(config, backend, async move {
        let _ = stopped.await;
    }));
    ExecutorHandle { cluster, stop: Some(stop), task }
}

impl ExecutorHandle {
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the loop and waits for it to end.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.map_err(|e| anyhow::anyhow!("executor {} panicked: {e}", self.cluster))?
    }

    /// Kills the loop where it stands, like a crash. Nothing is lost: the backend keeps the
    /// unacknowledged events and the attempts.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// The scheduler replicas and a connection to the current one.
struct Servers {
    urls: Vec<String>,
    index: usize,
    client: Option<ExecutorClient<AuthChannel>>,
    connect_timeout: Duration,
    rpc_timeout: Duration,
    dial: flotilla_api::dial::Dial,
    token: flotilla_api::auth::BearerToken,
}

impl Servers {
    fn new(config: &ExecutorConfig) -> Servers {
        Servers {
            urls: config.servers.clone(),
            index: 0,
            client: None,
            connect_timeout: config.connect_timeout,
            rpc_timeout: config.rpc_timeout,
            dial: config.dial.clone(),
            token: config.token.clone(),
        }
    }

    async fn connect(&mut self) -> Result<ExecutorClient<AuthChannel>, Status> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let url = &self.urls[self.index];
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Status::invalid_argument(format!("bad server URL {url:?}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.rpc_timeout);
        let channel = self.dial.connect(endpoint).await.map_err(|e| Status::unavailable(format!("connecting to {url}: {e}")))?;
        let client = ExecutorClient::new(self.token.channel(channel)).max_decoding_message_size(MAX_RESPONSE_BYTES);
        tracing::info!(server = %url, "connected to scheduler");
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Calls `rpc` on the current server, moving on to the next ones while a server is
    /// unreachable; at most one try per server.
    async fn call<T, F, Fut>(&mut self, what: &str, mut rpc: F) -> Result<T, Status>
    where
        F: FnMut(ExecutorClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last = Status::unavailable("no servers");
        for _ in 0..self.urls.len() {
            let result = match self.connect().await {
                Ok(client) => rpc(client).await.map(tonic::Response::into_inner),
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(status) if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled) => {
                    let from = &self.urls[self.index];
                    self.index = (self.index + 1) % self.urls.len();
                    tracing::warn!(server = %from, next = %self.urls[self.index], code = ?status.code(), message = status.message(), "{what} failed; trying the next server");
                    self.client = None;
                    last = status;
                }
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }
}

/// Sends the attempts lost to an expired lease, then the backend's pending events,
/// acknowledging each batch the scheduler accepted.
async fn report_events(config: &ExecutorConfig, backend: &dyn ClusterBackend, servers: &mut Servers, lost: &mut Vec<AttemptEvent>) {
    while !lost.is_empty() {
        let n = lost.len().min(config.max_events_per_report);
        if !send_events(config, servers, &lost[..n]).await {
            return;
        }
        tracing::info!(reported = n, "reported attempts this executor stopped (lease expired, or no progress)");
        lost.drain(..n);
    }
    for _ in 0..config.max_reports_per_sync {
        let events = match backend.pending_events(config.max_events_per_report).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read attempt events");
                return;
            }
        };
        if events.is_empty() {
            return;
        }
        if !send_events(config, servers, &events).await {
            return;
        }
        backend.ack_events(&events);
        if events.len() < config.max_events_per_report {
            return;
        }
    }
}

/// One `ReportEvents` call; true when the scheduler accepted the batch.
async fn send_events(config: &ExecutorConfig, servers: &mut Servers, events: &[AttemptEvent]) -> bool {
    let request = ReportEventsRequest { cluster: config.cluster.clone(), events: events.iter().map(event_to_proto).collect() };
    let result = servers.call("ReportEvents", |mut c| {
        let request = request.clone();
        async move { c.report_events(request).await }
    });
    match result.await {
        Ok(response) => {
            tracing::debug!(sent = events.len(), accepted = response.accepted, "reported events");
            config.status.reported(events.len());
            true
        }
        Err(status) => {
            config.status.report_failed();
            tracing::warn!(pending = events.len(), code = ?status.code(), message = status.message(), "reporting events failed; they will be sent again");
            false
        }
    }
}

/// One `Sync`: renews the lease and returns the interval the scheduler asked for, if any.
/// Log requests of the answer go to `logs`.
async fn sync(
    config: &ExecutorConfig,
    backend: &dyn ClusterBackend,
    servers: &mut Servers,
    lease: &mut Lease,
    logs: &mut Vec<v1::LogRequest>,
) -> Option<Duration> {
    let (nodes, attempts) = match (backend.nodes().await, backend.attempts().await) {
        (Ok(n), Ok(a)) => (n, a),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot read the cluster; skipping this sync");
            config.status.sync_failed();
            return None;
        }
    };
    let backend_signals = backend.progress_signals();
    config.progress.observe(&attempts, backend_signals.as_deref(), Instant::now());
    let request = SyncRequest {
        cluster: config.cluster.clone(),
        nodes: nodes.iter().map(node_to_report).collect(),
        attempts: attempts
            .iter()
            .map(|a| v1::RunningAttempt {
                task_id: a.task_id.0,
                attempt: a.attempt,
                node: a.node.clone(),
                phase: a.phase.as_str().to_string(),
            })
            .collect(),
        executor_id: config.executor_id.clone(),
    };
    let sent = Instant::now();
    let response = match servers
        .call("Sync", |mut c| {
            let request = request.clone();
            async move { c.sync(request).await }
        })
        .await
    {
        Ok(r) => r,
        Err(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "sync failed");
            config.status.sync_failed();
            return None;
        }
    };
    if let Some(mine) = backend.installation().filter(|mine| !response.installation_id.is_empty() && response.installation_id != *mine) {
        tracing::error!(
            mine,
            theirs = %flotilla_model::truncate(&response.installation_id, 32),
            "the scheduler belongs to another installation: ignoring its answer (check --server)"
        );
        config.status.sync_failed();
        return None;
    }
    config.status.sync_ok();
    *logs = response.logs;
    if response.lease_ms > 0 {
        let until = sent + Duration::from_millis(response.lease_ms.into());
        // Never shortened by a late answer to an older Sync.
        lease.until = Some(lease.until.map_or(until, |t| t.max(until)));
        lease.expiry_grace = Duration::from_millis(response.lease_expiry_grace_ms.into());
    }
    tracing::debug!(nodes = nodes.len(), attempts = attempts.len(), start = response.start.len(), stop = response.stop.len(), "synced");

    // Stops first: they free what the starts may need.
    futures::stream::iter(response.stop)
        .for_each_concurrent(config.max_concurrent_changes, |s| {
            let span = tracing::info_span!("stop", task_id = s.task_id, attempt = s.attempt);
            async move {
                let result = tokio::time::timeout(config.backend_timeout, backend.stop(TaskId(s.task_id), s.attempt)).await;
                config.status.stopped(matches!(result, Ok(Ok(()))));
                match result {
                    Ok(Ok(())) => tracing::debug!("stopped"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "stop failed; the scheduler will ask again"),
                    Err(_) => tracing::warn!(timeout = ?config.backend_timeout, "stop timed out; the scheduler will ask again"),
                }
            }
            .instrument(span)
        })
        .await;
    let lease: &Lease = lease;
    // An attempt this executor stopped for an expired lease is never started again: its
    // `Lost` report may be on its way, and the scheduler then leases a new attempt
    // elsewhere while this one would run.
    let expired: HashSet<(u64, u32)> = lease.lost.iter().map(|e| (e.task_id.0, e.attempt)).collect();
    let expired = &expired;
    let signals_itself = backend_signals.is_some();
    futures::stream::iter(response.start)
        .for_each_concurrent(config.max_concurrent_changes, |t| {
            let span = tracing::info_span!("start", task_id = t.task_id, attempt = t.attempt, node = %t.node, queue = %t.queue);
            async move {
                if !lease.holds(Instant::now()) {
                    tracing::warn!("not started: this executor holds no unexpired lease");
                    return;
                }
                if expired.contains(&(t.task_id, t.attempt)) {
                    tracing::info!("not started: stopped when the lease expired, reported as lost");
                    return;
                }
                let mut t = t;
                config.progress.register(&mut t, signals_itself);
                let result = tokio::time::timeout(config.backend_timeout, backend.start(t)).await;
                config.status.started(matches!(result, Ok(Ok(()))));
                match result {
                    Ok(Ok(())) => tracing::debug!("started"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "start failed; the scheduler will ask again"),
                    Err(_) => tracing::warn!(timeout = ?config.backend_timeout, "start timed out; the scheduler will ask again"),
                }
            }
            .instrument(span)
        })
        .await;
    (response.sync_interval_ms > 0).then(|| Duration::from_millis(response.sync_interval_ms.into()))
}

/// Asks the scheduler which installation it belongs to, trying every server and again every
/// sync interval until one answers. Errors when retrying cannot help: a refused credential,
/// a scheduler too old to know installations, or an id that is not one.
pub async fn register(config: &ExecutorConfig) -> anyhow::Result<String> {
    config.validate()?;
    let mut servers = Servers::new(config);
    let request = v1::RegisterRequest { cluster: config.cluster.clone(), executor_id: config.executor_id.clone() };
    loop {
        let result = servers
            .call("Register", |mut c| {
                let request = request.clone();
                async move { c.register(request).await }
            })
            .await;
        match result {
            Ok(r) => {
                let id = r.installation_id;
                anyhow::ensure!(
                    flotilla_model::is_installation_id(&id),
                    "the scheduler answered installation id {} (16 hex digits expected)",
                    flotilla_model::quote(&id)
                );
                tracing::info!(installation = %id, "registered with the scheduler");
                return Ok(id);
            }
            Err(s) if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::Unimplemented) => {
                anyhow::bail!("registering cluster {} with the scheduler: {:?}: {}", config.cluster, s.code(), s.message());
            }
            Err(s) => {
                // It cannot sync before it registers: counted as a failed sync for /healthz.
                config.status.sync_failed();
                tracing::warn!(code = ?s.code(), message = s.message(), "cannot register yet; retrying");
                tokio::time::sleep(config.sync_interval).await;
            }
        }
    }
}

/// Starts a read for each log request not being served yet, up to [`MAX_LOG_READS`].
fn serve_logs(config: &ExecutorConfig, backend: &Arc<dyn ClusterBackend>, reads: &Arc<Mutex<HashSet<u64>>>, requests: Vec<v1::LogRequest>) {
    for request in requests {
        {
            let mut running = reads.lock().unwrap_or_else(|e| e.into_inner());
            if running.len() >= MAX_LOG_READS || !running.insert(request.request_id) {
                continue;
            }
        }
        let (config, backend, reads) = (config.clone(), backend.clone(), reads.clone());
        let span = tracing::debug_span!("logs", request_id = request.request_id, task_id = request.task_id, attempt = request.attempt);
        tokio::spawn(
            async move {
                let id = request.request_id;
                read_and_push(&config, backend.as_ref(), request).await;
                reads.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            }
            .instrument(span),
        );
    }
}

/// Reads one attempt's output and pushes it until it ends, the scheduler wants no more, or
/// the scheduler cannot be reached (the request is handed out again later).
async fn read_and_push(config: &ExecutorConfig, backend: &dyn ClusterBackend, request: v1::LogRequest) {
    let mut servers = Servers::new(config);
    let push = |data: Vec<u8>, eof: bool, error: String| v1::PushLogsRequest {
        cluster: config.cluster.clone(),
        request_id: request.request_id,
        data,
        eof,
        error,
        truncated: false,
    };
    let options = LogOptions { follow: request.follow, tail_lines: request.tail_lines, limit_bytes: request.limit_bytes };
    let stream = backend.logs(TaskId(request.task_id), request.attempt, options).await;
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => {
            send_push(&mut servers, push(Vec::new(), true, e.to_string())).await;
            return;
        }
    };
    let started = Instant::now();
    let mut sent: u64 = 0;
    while let Some(item) = stream.next().await {
        let data = match item {
            Ok(data) => data,
            Err(e) => {
                send_push(&mut servers, push(Vec::new(), true, e.to_string())).await;
                return;
            }
        };
        for chunk in data.chunks(LOG_CHUNK_BYTES) {
            // The rate bound: never ahead of LOG_BYTES_PER_SECOND since the read began.
            let due = Duration::from_secs_f64(sent as f64 / LOG_BYTES_PER_SECOND as f64);
            tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
            sent += chunk.len() as u64;
            if !send_push(&mut servers, push(chunk.to_vec(), false, String::new())).await {
                return;
            }
        }
    }
    send_push(&mut servers, push(Vec::new(), true, String::new())).await;
}

/// One `PushLogs`; true when the scheduler wants more.
async fn send_push(servers: &mut Servers, request: v1::PushLogsRequest) -> bool {
    let result = servers
        .call("PushLogs", |mut c| {
            let request = request.clone();
            async move { c.push_logs(request).await }
        })
        .await;
    match result {
        Ok(r) => r.more,
        Err(s) => {
            tracing::warn!(code = ?s.code(), message = s.message(), "pushing log output failed; stopping this read");
            false
        }
    }
}

/// An event as the wire message.
pub fn event_to_proto(e: &AttemptEvent) -> v1::AttemptEvent {
    let (status, failure_kind, exit_code, message) = match &e.status {
        AttemptStatus::Pending => ("pending", "", None, ""),
        AttemptStatus::Running => ("running", "", None, ""),
        AttemptStatus::Succeeded => ("succeeded", "", None, ""),
        AttemptStatus::Failed { kind, exit_code, message } => ("failed", kind.as_str(), *exit_code, message.as_str()),
    };
    v1::AttemptEvent {
        task_id: e.task_id.0,
        attempt: e.attempt,
        status: status.to_string(),
        failure_kind: failure_kind.to_string(),
        exit_code,
        message: message.to_string(),
        node: e.node.clone(),
        time_ms: e.time_ms,
    }
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
