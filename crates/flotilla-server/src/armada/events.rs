//! `api.Event`: a job set's events, from `flotilla.v1.Tasks.Watch`.
//!
//! One Flotilla event becomes one or two Armada messages (a task's `submitted` is Armada's
//! submitted then queued; a retry, preemption or requeue also says the job is queued
//! again). Message `k` of the event numbered `seq` has the id `"<seq>-<k>"`, so a stream
//! resumed with `from_message_id` starts right after the last message the client saw.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::armada::api::{
    self as armada, event_message::Events, Cause, EventMessage, EventStreamMessage, JobCancelledEvent, JobFailedEvent,
    JobLeaseReturnedEvent, JobLeasedEvent, JobPendingEvent, JobPreemptedEvent, JobQueuedEvent, JobRunningEvent, JobSetRequest,
    JobSubmittedEvent, JobSucceededEvent,
};
use flotilla_api::v1::{self, tasks_server::Tasks};
use flotilla_model::{quote, FieldError, Verb};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::as_v1;
use crate::auth::Caller;
use crate::convert::invalid;
use crate::services::tasks::TasksService;
use crate::Context;

/// Messages buffered per stream before the sender waits for the client.
const STREAM_BUFFER: usize = 1_000;
/// Longest message id accepted (two decimal numbers and a dash).
const MAX_MESSAGE_ID_BYTES: usize = 48;

pub struct EventService(pub Arc<Context>);

/// Where a stream resumes: at event `seq`, after its message `k` when given.
#[derive(Debug, PartialEq)]
struct ResumePoint {
    seq: u64,
    after: Option<usize>,
}

fn resume_point(id: &str) -> Result<ResumePoint, Status> {
    if id.is_empty() {
        return Ok(ResumePoint { seq: 1, after: None });
    }
    let parsed = (id.len() <= MAX_MESSAGE_ID_BYTES)
        .then(|| id.split_once('-'))
        .flatten()
        .and_then(|(seq, k)| Some(ResumePoint { seq: seq.parse().ok()?, after: Some(k.parse().ok()?) }));
    parsed.ok_or_else(|| {
        invalid(&[FieldError::new("from_message_id", format!("{} is not a message id of this server (\"<seq>-<n>\")", quote(id)))])
    })
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// Armada's cause of a failure, read from Flotilla's reason.
fn cause_of(reason: &str) -> Cause {
    let r = reason.to_ascii_lowercase();
    if r.contains("oom") {
        Cause::Oom
    } else if r.contains("evict") {
        Cause::Evicted
    } else if r.contains("deadline") || r.contains("maxruntime") {
        Cause::DeadlineExceeded
    } else {
        Cause::Error
    }
}

/// The Armada messages of one Flotilla event of `queue`/`job_set`, in order. Flotilla's
/// `paused` and `resumed` (a task set's circuit breaker) have no Armada message.
pub fn messages_of(e: &v1::TaskEvent, queue: &str, job_set: &str) -> Vec<Events> {
    let (job_id, created) = (e.task_id.to_string(), Some(timestamp(e.time_ms)));
    // Every Armada job event starts with the same four fields.
    macro_rules! job_event {
        ($variant:ident, $message:ident { $($field:ident: $value:expr),* $(,)? }) => {{
            // Some messages have no fields beyond the four.
            #[allow(clippy::needless_update)]
            let message = $message {
                job_id: job_id.clone(),
                job_set_id: job_set.to_string(),
                queue: queue.to_string(),
                created,
                $($field: $value,)*
                ..Default::default()
            };
            Events::$variant(message)
        }};
    }
    let (cluster_id, node_name, reason) = (|| e.cluster.clone(), || e.node.clone(), || e.reason.clone());
    let queued = || job_event!(Queued, JobQueuedEvent {});
    let returned = |run_attempted| {
        job_event!(LeaseReturned, JobLeaseReturnedEvent { cluster_id: cluster_id(), reason: reason(), run_attempted: run_attempted })
    };
    match e.kind.as_str() {
        "submitted" => {
            let job = armada::Job { id: job_id.clone(), job_set_id: job_set.into(), queue: queue.into(), created, ..Default::default() };
            vec![job_event!(Submitted, JobSubmittedEvent { job: Some(job) }), queued()]
        }
        "leased" => vec![job_event!(Leased, JobLeasedEvent { cluster_id: cluster_id() })],
        "pending" => vec![job_event!(Pending, JobPendingEvent { cluster_id: cluster_id() })],
        "running" => vec![job_event!(Running, JobRunningEvent { cluster_id: cluster_id(), node_name: node_name() })],
        "succeeded" => vec![job_event!(Succeeded, JobSucceededEvent { cluster_id: cluster_id(), node_name: node_name() })],
        "failed" => vec![job_event!(
            Failed,
            JobFailedEvent {
                cluster_id: cluster_id(),
                node_name: node_name(),
                reason: reason(),
                exit_codes: e.exit_code.map(|c| ("main".to_string(), c)).into_iter().collect(),
                cause: cause_of(&e.reason) as i32,
            }
        )],
        "retrying" => vec![returned(true), queued()],
        "requeued" => vec![returned(false), queued()],
        "preempted" => vec![job_event!(Preempted, JobPreemptedEvent { cluster_id: cluster_id(), reason: reason() }), queued()],
        "cancelled" => vec![job_event!(Cancelled, JobCancelledEvent { reason: reason() })],
        _ => Vec::new(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<EventStreamMessage, Status>> + Send>>;

/// Sends the Armada messages of `r`'s job set from `from` on; without `r.watch`, up to and
/// including event `end` (the newest when the call came).
async fn pump(
    ctx: Arc<Context>,
    caller: Caller,
    r: JobSetRequest,
    from: ResumePoint,
    end: Option<u64>,
    tx: mpsc::Sender<Result<EventStreamMessage, Status>>,
) {
    if !wait_for_job_set(&ctx, &r, &tx).await {
        return;
    }
    let watch = v1::WatchRequest { queue: r.queue.clone(), task_set: r.id.clone(), from_seq: from.seq };
    let mut events = match TasksService(ctx).watch(as_v1(&caller, watch)).await {
        Ok(s) => s.into_inner(),
        Err(s) => {
            let _ = tx.send(Err(s)).await;
            return;
        }
    };
    while let Some(item) = events.next().await {
        let e = match item {
            Ok(e) => e,
            Err(s) => {
                let _ = tx.send(Err(s)).await;
                return;
            }
        };
        for (k, m) in messages_of(&e, &r.queue, &r.id).into_iter().enumerate() {
            if e.seq == from.seq && from.after.is_some_and(|after| k <= after) {
                continue;
            }
            let message = EventStreamMessage { id: format!("{}-{k}", e.seq), message: Some(EventMessage { events: Some(m) }) };
            if tx.send(Ok(message)).await.is_err() {
                return;
            }
        }
        if end.is_some_and(|end| e.seq >= end) {
            return;
        }
    }
}

/// Waits until the job set exists (a watcher may start before the first submission);
/// false when the client went away.
async fn wait_for_job_set(ctx: &Context, r: &JobSetRequest, tx: &mpsc::Sender<Result<EventStreamMessage, Status>>) -> bool {
    let mut applied = ctx.replica.applied();
    loop {
        if ctx.read(|s| s.task_set(&r.queue, &r.id).is_some()) {
            return true;
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return false },
            _ = tx.closed() => return false,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

#[tonic::async_trait]
impl armada::event_server::Event for EventService {
    type GetJobSetEventsStream = EventStream;

    async fn get_job_set_events(&self, req: Request<JobSetRequest>) -> Result<Response<EventStream>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let from = resume_point(&r.from_message_id)?;
        // Checked before saying whether the job set exists.
        self.0.require_on_queue(&caller, &r.queue, Verb::Watch)?;
        let newest = self.0.read(|s| s.task_set(&r.queue, &r.id).map(|set| set.next_seq.saturating_sub(1)));
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        match newest {
            None if r.error_if_missing => {
                return Err(Status::not_found(format!("job set {}/{} does not exist", quote(&r.queue), quote(&r.id))));
            }
            // Nothing to replay and nothing to wait for.
            None if !r.watch => return Ok(Response::new(Box::pin(ReceiverStream::new(rx)))),
            Some(newest) if !r.watch && from.seq > newest => return Ok(Response::new(Box::pin(ReceiverStream::new(rx)))),
            _ => {}
        }
        let end = if r.watch { None } else { newest };
        tokio::spawn(pump(self.0.clone(), caller, r, from, end, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn health(&self, _req: Request<()>) -> Result<Response<armada::HealthCheckResponse>, Status> {
        Ok(Response::new(super::health(&self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, kind: &str) -> v1::TaskEvent {
        v1::TaskEvent {
            seq,
            task_id: 7,
            kind: kind.into(),
            cluster: "c1".into(),
            node: "n1".into(),
            reason: "OOMKilled".into(),
            time_ms: 1_500,
            exit_code: Some(137),
            ..Default::default()
        }
    }

    fn names(e: &v1::TaskEvent) -> Vec<&'static str> {
        messages_of(e, "q", "s")
            .iter()
            .map(|m| match m {
                Events::Submitted(_) => "submitted",
                Events::Queued(_) => "queued",
                Events::Leased(_) => "leased",
                Events::LeaseReturned(_) => "lease_returned",
                Events::Pending(_) => "pending",
                Events::Running(_) => "running",
                Events::Failed(_) => "failed",
                Events::Succeeded(_) => "succeeded",
                Events::Cancelled(_) => "cancelled",
                Events::Preempted(_) => "preempted",
            })
            .collect()
    }

    #[test]
    fn each_flotilla_event_kind_becomes_its_armada_messages() {
        assert_eq!(names(&event(1, "submitted")), ["submitted", "queued"]);
        assert_eq!(names(&event(2, "leased")), ["leased"]);
        assert_eq!(names(&event(3, "retrying")), ["lease_returned", "queued"]);
        assert_eq!(names(&event(4, "preempted")), ["preempted", "queued"]);
        assert_eq!(names(&event(5, "cancelled")), ["cancelled"]);
        assert!(names(&event(6, "paused")).is_empty());
    }

    #[test]
    fn a_failure_keeps_its_reason_exit_code_and_cause() {
        let messages = messages_of(&event(9, "failed"), "q", "s");
        let [Events::Failed(f)] = messages.as_slice() else { panic!("one failed message: {messages:?}") };
        assert_eq!((f.job_id.as_str(), f.reason.as_str(), f.exit_codes["main"], f.cause), ("7", "OOMKilled", 137, Cause::Oom as i32));
        assert_eq!(f.created, Some(prost_types::Timestamp { seconds: 1, nanos: 500_000_000 }));
    }

    #[test]
    fn message_ids_resume_after_the_message_they_name_and_bad_ones_are_refused() {
        assert_eq!(resume_point("").unwrap(), ResumePoint { seq: 1, after: None });
        assert_eq!(resume_point("12-1").unwrap(), ResumePoint { seq: 12, after: Some(1) });
        let e = resume_point("01HXYZ").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("from_message_id: "), "{}", e.message());
    }
}
