//! Attempt output relayed from executors to users (`Tasks.Logs`).
//!
//! Executors only dial out, so the scheduler cannot ask a cluster for a pod's log directly.
//! Instead the leader keeps the open requests here: the next `Sync` of the attempt's cluster
//! carries them (`SyncResponse.logs`), and the executor reads the output from its cluster and
//! sends it back in bounded chunks with `PushLogs`, which this broker hands to the waiting
//! caller's stream. Nothing here is replicated: a request lives as long as its caller waits
//! on this leader, and a new leader simply has none.
//!
//! Everything is bounded: open requests (in all and per cluster), the bytes of one push, the
//! bytes of one request, the chunks buffered per caller, and how long a request may wait for
//! its executor's first answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::v1;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;

/// Most open log requests on one leader.
pub const MAX_OPEN_REQUESTS: usize = 256;
/// Most open log requests per cluster.
pub const MAX_OPEN_PER_CLUSTER: usize = 32;
/// Most bytes in one `PushLogs` call.
pub const MAX_PUSH_BYTES: usize = 64 << 10;
/// Most bytes one request returns (a caller may ask for less).
pub const MAX_LOG_BYTES: u64 = 4 << 20;
/// Chunks buffered per caller: a slow reader slows its executor down, nothing else.
const CHUNKS_BUFFERED: usize = 16;
/// A request handed to an executor that has pushed nothing for this long is handed out again
/// (the executor may have restarted).
const RESEND_AFTER: Duration = Duration::from_secs(10);
/// How long a push waits for a slow caller to take a chunk before the request is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What the caller's stream receives.
pub type LogItem = Result<v1::LogChunk, Status>;

struct Open {
    cluster: String,
    request: v1::LogRequest,
    /// The first chunk names the attempt and where it ran.
    header: Option<(String, String)>,
    handed_at: Option<Instant>,
    bytes: u64,
    tx: mpsc::Sender<LogItem>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    open: HashMap<u64, Open>,
}

/// The leader's open log requests.
#[derive(Default)]
pub struct LogBroker {
    inner: Mutex<Inner>,
}

/// What a caller asks for.
pub struct LogAsk {
    pub cluster: String,
    pub node: String,
    pub task_id: u64,
    pub attempt: u32,
    pub follow: bool,
    pub tail_lines: u32,
    pub limit_bytes: u64,
}

/// Removes its request when the caller's stream is dropped (the caller went away).
pub struct LogTicket {
    broker: Arc<LogBroker>,
    pub id: u64,
}

impl Drop for LogTicket {
    fn drop(&mut self) {
        self.broker.lock().open.remove(&self.id);
    }
}

impl LogBroker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a request; the receiver gets its chunks. RESOURCE_EXHAUSTED over the bounds.
    pub fn open(&self, ask: LogAsk) -> Result<(u64, mpsc::Receiver<LogItem>), Status> {
        let mut inner = self.lock();
        if inner.open.len() >= MAX_OPEN_REQUESTS {
            return Err(Status::resource_exhausted(format!("{MAX_OPEN_REQUESTS} log requests are open; try again later")));
        }
        if inner.open.values().filter(|o| o.cluster == ask.cluster).count() >= MAX_OPEN_PER_CLUSTER {
            return Err(Status::resource_exhausted(format!(
                "{MAX_OPEN_PER_CLUSTER} log requests are open for cluster {}; try again later",
                ask.cluster
            )));
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let limit_bytes = if ask.limit_bytes == 0 { MAX_LOG_BYTES } else { ask.limit_bytes.min(MAX_LOG_BYTES) };
        let request = v1::LogRequest {
            request_id: id,
            task_id: ask.task_id,
            attempt: ask.attempt,
            follow: ask.follow,
            tail_lines: ask.tail_lines,
            limit_bytes,
        };
        let (tx, rx) = mpsc::channel(CHUNKS_BUFFERED);
        let open = Open { cluster: ask.cluster, request, header: Some((ask.node, String::new())), handed_at: None, bytes: 0, tx };
        inner.open.insert(id, open);
        Ok((id, rx))
    }

    /// A guard that closes request `id` when dropped.
    pub fn ticket(self: &Arc<Self>, id: u64) -> LogTicket {
        LogTicket { broker: self.clone(), id }
    }

    /// The requests `cluster`'s executor should serve now: new ones, and ones it was given
    /// long ago without answering.
    pub fn requests_for(&self, cluster: &str) -> Vec<v1::LogRequest> {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut out = Vec::new();
        for o in inner.open.values_mut().filter(|o| o.cluster == cluster) {
            if o.handed_at.is_none_or(|t| now.duration_since(t) >= RESEND_AFTER) {
                o.handed_at = Some(now);
                out.push(o.request);
            }
        }
        out.sort_by_key(|r| r.request_id);
        out
    }

    /// A chunk from `cluster`'s executor. `Ok(false)`: nobody wants more (the caller left,
    /// the request ended or never existed here); the executor stops reading.
    pub async fn push(&self, cluster: &str, id: u64, data: Vec<u8>, eof: bool, truncated: bool, error: &str) -> Result<bool, Status> {
        if data.len() > MAX_PUSH_BYTES {
            return Err(Status::invalid_argument(format!("data: {} bytes exceed the limit of {MAX_PUSH_BYTES} per push", data.len())));
        }
        let (tx, chunk, done) = {
            let mut inner = self.lock();
            let Some(o) = inner.open.get_mut(&id) else { return Ok(false) };
            if o.cluster != cluster {
                return Err(Status::permission_denied(format!("log request {id} is not for cluster {cluster}")));
            }
            o.handed_at = Some(Instant::now());
            let room = o.request.limit_bytes.saturating_sub(o.bytes);
            let cut = data.len() as u64 > room;
            let mut data = data;
            data.truncate(room as usize);
            o.bytes += data.len() as u64;
            let (cluster, node) = o.header.take().map(|(node, _)| (o.cluster.clone(), node)).unwrap_or_default();
            let attempt = if cluster.is_empty() { 0 } else { o.request.attempt };
            let done = eof || cut || !error.is_empty();
            let chunk: LogItem = if error.is_empty() {
                Ok(v1::LogChunk { data, attempt, cluster, node, truncated: truncated || cut })
            } else {
                Err(Status::failed_precondition(flotilla_model::truncate(error, flotilla_model::MAX_REASON_BYTES)))
            };
            (o.tx.clone(), chunk, done)
        };
        let delivered = match tx.send_timeout(chunk, SEND_TIMEOUT).await {
            Ok(()) => true,
            Err(_) => false, // the caller left, or reads too slowly to keep
        };
        if done || !delivered {
            self.lock().open.remove(&id);
        }
        Ok(delivered && !done)
    }

    /// The number of open requests (a metric and for tests).
    pub fn open_count(&self) -> usize {
        self.lock().open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(cluster: &str) -> LogAsk {
        LogAsk { cluster: cluster.into(), node: "n1".into(), task_id: 7, attempt: 2, follow: false, tail_lines: 0, limit_bytes: 10 }
    }

    #[tokio::test]
    async fn a_request_goes_to_its_clusters_sync_once_and_its_chunks_to_the_caller_in_order() {
        let broker = LogBroker::default();
        let (id, mut rx) = broker.open(ask("a")).unwrap();
        assert!(broker.requests_for("b").is_empty(), "another cluster is not asked");
        let handed = broker.requests_for("a");
        assert_eq!(handed.len(), 1);
        assert_eq!((handed[0].request_id, handed[0].task_id, handed[0].attempt, handed[0].limit_bytes), (id, 7, 2, 10));
        assert!(broker.requests_for("a").is_empty(), "handed once until it goes unanswered");

        assert!(broker.push("a", id, b"hello ".to_vec(), false, false, "").await.unwrap());
        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!((first.data.as_slice(), first.attempt, first.cluster.as_str(), first.node.as_str()), (&b"hello "[..], 2, "a", "n1"));
        // The byte limit (10) cuts the output and ends the request.
        assert!(!broker.push("a", id, b"world!".to_vec(), false, false, "").await.unwrap());
        let second = rx.recv().await.unwrap().unwrap();
        assert_eq!((second.data.as_slice(), second.truncated, second.cluster.as_str()), (&b"worl"[..], true, ""));
        assert_eq!(broker.open_count(), 0);
        assert!(!broker.push("a", id, b"late".to_vec(), false, false, "").await.unwrap(), "an ended request wants no more");
    }

    #[tokio::test]
    async fn pushes_for_another_cluster_or_too_large_are_refused_and_a_caller_that_left_ends_the_request() {
        let broker = LogBroker::default();
        let (id, rx) = broker.open(ask("a")).unwrap();
        let wrong = broker.push("b", id, b"x".to_vec(), false, false, "").await.unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::PermissionDenied);
        let big = broker.push("a", id, vec![b'x'; MAX_PUSH_BYTES + 1], false, false, "").await.unwrap_err();
        assert_eq!(big.code(), tonic::Code::InvalidArgument);
        drop(rx);
        assert!(!broker.push("a", id, b"x".to_vec(), false, false, "").await.unwrap());
        assert_eq!(broker.open_count(), 0);
    }

    #[tokio::test]
    async fn an_executor_error_reaches_the_caller_and_a_dropped_ticket_closes_the_request() {
        let broker = Arc::new(LogBroker::default());
        let (id, mut rx) = broker.open(ask("a")).unwrap();
        assert!(!broker.push("a", id, Vec::new(), true, false, "Job flotilla-x-7-2 is gone").await.unwrap());
        let e = rx.recv().await.unwrap().unwrap_err();
        assert!(e.message().contains("is gone"), "{e}");
        let (id, _rx) = broker.open(ask("a")).unwrap();
        drop(broker.ticket(id));
        assert_eq!(broker.open_count(), 0);
    }

    #[test]
    fn open_requests_are_bounded_per_cluster() {
        let broker = LogBroker::default();
        let held: Vec<_> = (0..MAX_OPEN_PER_CLUSTER).map(|_| broker.open(ask("a")).unwrap()).collect();
        assert_eq!(broker.open(ask("a")).unwrap_err().code(), tonic::Code::ResourceExhausted);
        assert!(broker.open(ask("b")).is_ok(), "other clusters keep their own room");
        drop(held);
    }
}
