//! The [`ClusterBackend`] trait: what an executor needs from the cluster it runs on.
//!
//! The model is level-triggered. The executor loop asks the backend what capacity the
//! cluster has ([`ClusterBackend::nodes`]) and which attempts exist
//! ([`ClusterBackend::attempts`]), tells the scheduler, and closes the difference with
//! [`ClusterBackend::start`] and [`ClusterBackend::stop`]. Both are idempotent: starting an
//! attempt that exists and stopping one that does not are no-ops, so a restarted executor
//! can always repeat what the scheduler says.
//!
//! Status changes of attempts are read with [`ClusterBackend::pending_events`] and removed
//! with [`ClusterBackend::ack_events`] only once the scheduler has acknowledged them. The
//! backend holds its events until then, so neither an unreachable scheduler nor a stopped
//! and restarted executor loop loses one, and the loop itself buffers at most one batch.

use std::fmt;

use flotilla_api::v1::LeasedTask;
use flotilla_model::{AttemptStatus, Node, TaskId};
use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// Where an attempt is in its life, as reported in `SyncRequest.attempts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl AttemptPhase {
    /// The wire spelling (`pending | running | succeeded | failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptPhase::Pending => "pending",
            AttemptPhase::Running => "running",
            AttemptPhase::Succeeded => "succeeded",
            AttemptPhase::Failed => "failed",
        }
    }

    pub fn of(status: &AttemptStatus) -> AttemptPhase {
        match status {
            AttemptStatus::Pending => AttemptPhase::Pending,
            AttemptStatus::Running => AttemptPhase::Running,
            AttemptStatus::Succeeded => AttemptPhase::Succeeded,
            AttemptStatus::Failed { .. } => AttemptPhase::Failed,
        }
    }
}

impl fmt::Display for AttemptPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One attempt the backend has: a Job found by its labels, or a simulated pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub task_id: TaskId,
    pub attempt: u32,
    pub node: String,
    pub phase: AttemptPhase,
}

/// A status change of one attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptEvent {
    pub task_id: TaskId,
    pub attempt: u32,
    pub node: String,
    pub status: AttemptStatus,
    /// Wall-clock time of the change, milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// Why a backend call failed. Every error here is worth retrying on the next sync: a start
/// the cluster refuses for good (a bad spec) is not an error but a
/// `Failed { kind: StartFailed }` event from [`ClusterBackend::pending_events`].
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The cluster API could not be reached or answered with a server error.
    #[error("cluster {cluster}: {message}")]
    Unavailable { cluster: String, message: String },
    /// The backend's view of the cluster is not complete yet (watches still listing).
    #[error("cluster {cluster}: not ready: {message}")]
    NotReady { cluster: String, message: String },
    /// What was asked for does not exist (an attempt's output that is no longer kept).
    #[error("cluster {cluster}: {message}")]
    NotFound { cluster: String, message: String },
}

/// What part of an attempt's output [`ClusterBackend::logs`] reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep reading new output until the attempt ends.
    pub follow: bool,
    /// Only the last N lines of what exists now (0: all).
    pub tail_lines: u32,
    /// At most this many bytes in all (0: no limit of the backend's own).
    pub limit_bytes: u64,
}

/// An attempt's output, in chunks as they come.
pub type LogStream = BoxStream<'static, Result<Vec<u8>, BackendError>>;

/// What an executor needs from one cluster. See the module docs for the contract.
///
/// Methods return boxed `Send` futures so that `Arc<dyn ClusterBackend>` can be driven
/// from `tokio::spawn`ed tasks.
pub trait ClusterBackend: Send + Sync + 'static {
    /// The cluster's name, as the scheduler knows it.
    fn cluster(&self) -> &str;

    /// Every node of the cluster with its capacity, topology and price.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<Node>, BackendError>>;

    /// Every attempt that exists in the cluster, finished ones included until stopped.
    fn attempts(&self) -> BoxFuture<'_, Result<Vec<Attempt>, BackendError>>;

    /// Starts `task` on `task.node`. A no-op when the attempt already exists.
    fn start(&self, task: LeasedTask) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Stops the attempt and forgets it. A no-op when it does not exist.
    fn stop(&self, task_id: TaskId, attempt: u32) -> BoxFuture<'_, Result<(), BackendError>>;

    /// Progress signals the backend itself sees: per attempt, a counter that grows with each
    /// signal (see `crate::progress`). `None`: this backend has none (tasks signal over HTTP).
    fn progress_signals(&self) -> Option<Vec<(TaskId, u32, u64)>> {
        None
    }

    /// Stops the attempt like [`stop`](Self::stop), but gives it at most `max_grace` to
    /// checkpoint however long its own grace is: what an executor whose lease expired does,
    /// because a scheduler re-leases its work elsewhere after a bounded time. The default
    /// suits backends whose stop ends the attempt at once.
    fn stop_within(&self, task_id: TaskId, attempt: u32, max_grace: std::time::Duration) -> BoxFuture<'_, Result<(), BackendError>> {
        let _ = max_grace;
        self.stop(task_id, attempt)
    }

    /// Up to `max` status changes not yet acknowledged, oldest first. Calling it again
    /// without [`ClusterBackend::ack_events`] returns the same events (or newer versions).
    fn pending_events(&self, max: usize) -> BoxFuture<'_, Result<Vec<AttemptEvent>, BackendError>>;

    /// Forgets `events` (a prefix of what `pending_events` returned): the scheduler has them.
    /// Acknowledging the same events twice is harmless.
    fn ack_events(&self, events: &[AttemptEvent]);

    /// The output of an attempt that runs or finished recently (see `keep_finished`).
    fn logs(&self, task_id: TaskId, attempt: u32, options: LogOptions) -> BoxFuture<'_, Result<LogStream, BackendError>> {
        let _ = options;
        let cluster = self.cluster().to_string();
        Box::pin(async move {
            Err(BackendError::NotFound { cluster, message: format!("attempt {attempt} of task {task_id}: this backend keeps no output") })
        })
    }

    /// The installation whose objects this backend manages, when it labels them (the kube
    /// backend); the executor checks every Sync answer against it.
    fn installation(&self) -> Option<&str> {
        None
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
