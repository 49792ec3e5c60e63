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
//! Nothing is kept between iterations but the connection, so stopping the loop and starting
//! another on the same backend is always safe.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::node_to_report;
use flotilla_api::v1::executor_client::ExecutorClient;
use flotilla_api::v1::{self, ReportEventsRequest, SyncRequest};
use flotilla_model::{AttemptStatus, TaskId};
use futures::StreamExt;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::Instrument;

use crate::backend::{AttemptEvent, ClusterBackend};

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

/// Runs the executor loop until `shutdown` completes. Errors only on a bad configuration;
/// unreachable schedulers and cluster API failures are logged and retried.
pub async fn run(config: ExecutorConfig, backend: Arc<dyn ClusterBackend>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.validate()?;
    let span = tracing::info_span!("executor", cluster = %config.cluster);
    async move {
        tracing::info!(servers = ?config.servers, executor_id = %config.executor_id, "executor started");
        let mut servers = Servers::new(&config);
        let mut interval = config.sync_interval;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let began = Instant::now();
            let iteration = async {
                report_events(&config, backend.as_ref(), &mut servers).await;
                sync(&config, backend.as_ref(), &mut servers).await
            };
            tokio::select! {
                _ = &mut shutdown => break,
                asked = iteration => {
                    if let Some(asked) = asked {
                        interval = asked.clamp(MIN_SYNC_INTERVAL, MAX_SYNC_INTERVAL);
                    }
                }
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
    client: Option<ExecutorClient<Channel>>,
    connect_timeout: Duration,
    rpc_timeout: Duration,
}

impl Servers {
    fn new(config: &ExecutorConfig) -> Servers {
        Servers {
            urls: config.servers.clone(),
            index: 0,
            client: None,
            connect_timeout: config.connect_timeout,
            rpc_timeout: config.rpc_timeout,
        }
    }

    async fn connect(&mut self) -> Result<ExecutorClient<Channel>, Status> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let url = &self.urls[self.index];
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Status::invalid_argument(format!("bad server URL {url:?}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.rpc_timeout);
        let channel = endpoint.connect().await.map_err(|e| Status::unavailable(format!("connecting to {url}: {e}")))?;
        let client = ExecutorClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
        tracing::info!(server = %url, "connected to scheduler");
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Calls `rpc` on the current server, moving on to the next ones while a server is
    /// unreachable; at most one try per server.
    async fn call<T, F, Fut>(&mut self, what: &str, mut rpc: F) -> Result<T, Status>
    where
        F: FnMut(ExecutorClient<Channel>) -> Fut,
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

/// Sends the backend's pending events, acknowledging each batch the scheduler accepted.
async fn report_events(config: &ExecutorConfig, backend: &dyn ClusterBackend, servers: &mut Servers) {
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
        let request = ReportEventsRequest { cluster: config.cluster.clone(), events: events.iter().map(event_to_proto).collect() };
        let result = servers.call("ReportEvents", |mut c| {
            let request = request.clone();
            async move { c.report_events(request).await }
        });
        match result.await {
            Ok(response) => {
                tracing::debug!(sent = events.len(), accepted = response.accepted, "reported events");
                backend.ack_events(&events);
                config.status.reported(events.len());
            }
            Err(status) => {
                config.status.report_failed();
                tracing::warn!(pending = events.len(), code = ?status.code(), message = status.message(), "reporting events failed; they will be sent again");
                return;
            }
        }
        if events.len() < config.max_events_per_report {
            return;
        }
    }
}

/// One `Sync`: returns the interval the scheduler asked for, if any.
async fn sync(config: &ExecutorConfig, backend: &dyn ClusterBackend, servers: &mut Servers) -> Option<Duration> {
    let (nodes, attempts) = match (backend.nodes().await, backend.attempts().await) {
        (Ok(n), Ok(a)) => (n, a),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot read the cluster; skipping this sync");
            config.status.sync_failed();
            return None;
        }
    };
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
    config.status.sync_ok();
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
    futures::stream::iter(response.start)
        .for_each_concurrent(config.max_concurrent_changes, |t| {
            let span = tracing::info_span!("start", task_id = t.task_id, attempt = t.attempt, node = %t.node, queue = %t.queue);
            async move {
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
