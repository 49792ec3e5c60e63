//! Bounds on what a caller controls, through the real gRPC services of a one-replica server
//! (issue 12, item 6): stored text is cut, errors quote only a short prefix of a bad value,
//! undecodable requests are the caller's error, and a reused request id with another body
//! is refused.

use bytes::{Buf, BufMut, Bytes};
use flotilla_api::v1::{self, queues_client::QueuesClient, tasks_client::TasksClient};
use flotilla_server::ServerHandle;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

const QUEUE: &str = "bounds";
/// gRPC's usual limit on response metadata; a status message must fit well inside it.
const METADATA_LIMIT_BYTES: usize = 8 * 1024;

async fn server() -> (ServerHandle, Channel, tempfile::TempDir) {
    flotilla_tests::single_server_with_queue(QUEUE).await
}

fn submit_request(task_set: &str, count: u32, request_id: &str) -> v1::SubmitTasksRequest {
    v1::SubmitTasksRequest {
        queue: QUEUE.into(),
        task_set: task_set.into(),
        tasks: vec![flotilla_api::template_to_proto(&flotilla_tests::simple_template(count))],
        client_request_id: request_id.into(),
    }
}

fn assert_short_invalid_argument(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().len() < METADATA_LIMIT_BYTES / 2, "the error is {} bytes long", status.message().len());
    assert!(status.message().contains(field), "the error names {field}: {}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mib_cancel_reason_is_stored_cut_to_a_few_kib_on_every_task() {
    let (server, channel, _dir) = server().await;
    let mut tasks = TasksClient::new(channel);
    tasks.submit_tasks(submit_request("big-reason", 1_000, "big-reason")).await.expect("submit");
    let reason = "r".repeat(1024 * 1024);
    let cancelled = tasks
        .cancel_tasks(v1::CancelTasksRequest { queue: QUEUE.into(), task_set: "big-reason".into(), reason, ..Default::default() })
        .await
        .expect("cancel")
        .into_inner()
        .cancelled;
    assert_eq!(cancelled, 1_000);
    let (longest_reason, longest_event, marked) = server.ctx.read(|s| {
        let set = s.task_set(QUEUE, "big-reason").expect("the task set");
        let reasons: Vec<&str> = set.tasks.iter().map(|id| s.task(*id).expect("task").reason.as_str()).collect();
        let events = set.events_from(set.first_seq(), usize::MAX);
        (
            reasons.iter().map(|r| r.len()).max().unwrap_or(0),
            events.iter().map(|e| e.reason.len()).max().unwrap_or(0),
            reasons.iter().all(|r| r.ends_with('…')),
        )
    });
    assert!(longest_reason <= 8 * 1024, "a task keeps a {longest_reason}-byte reason");
    assert!(longest_event <= 8 * 1024, "an event keeps a {longest_event}-byte reason");
    assert!(marked, "every cut reason is marked as cut");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_kb_bad_name_gives_a_short_invalid_argument_naming_the_field() {
    let (server, channel, _dir) = server().await;
    let long = "X".repeat(10 * 1024);
    let queue = QueuesClient::new(channel.clone())
        .create_queue(v1::CreateQueueRequest { queue: Some(v1::QueueSpec { name: long.clone(), weight: 1.0, ..Default::default() }) })
        .await
        .expect_err("a bad queue name is refused");
    assert_short_invalid_argument(&queue, "name");

    let mut tasks = TasksClient::new(channel);
    let mut bad = submit_request(&long, 1, "");
    bad.tasks[0].env.insert(long.clone(), "v".into());
    bad.tasks[0].image = format!("image with spaces {long}");
    let submit = tasks.submit_tasks(bad).await.expect_err("bad names are refused");
    assert_short_invalid_argument(&submit, "taskSet");
    assert_short_invalid_argument(&submit, "tasks[0].image");

    // Many bad templates: the message stays short however many fields are wrong.
    let mut many = submit_request("many", 1, "");
    many.tasks = (0..1_000).map(|i| v1::TaskTemplate { name: format!("{long}{i}"), ..many.tasks[0].clone() }).collect();
    let many = tasks.submit_tasks(many).await.expect_err("bad names are refused");
    assert_short_invalid_argument(&many, "tasks[0].name");
    server.shutdown().await;
}

/// Sends bytes as they are: a request no generated client would build.
#[derive(Clone, Default)]
struct RawCodec;

struct Raw;

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_string_field_is_invalid_argument_not_internal() {
    let (server, channel, _dir) = server().await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    // SubmitTasksRequest { queue (field 1, length-delimited) = [0xff, 0xfe] }: not UTF-8.
    let body = Bytes::from_static(&[0x0a, 0x02, 0xff, 0xfe]);
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/flotilla.v1.Tasks/SubmitTasks");
    let status = grpc.unary(tonic::Request::new(body), path, RawCodec).await.expect_err("undecodable request is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("UTF-8"), "the error says what is wrong: {}", status.message());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_reused_with_another_body_is_refused_and_a_true_retry_gets_the_same_ids() {
    let (server, channel, _dir) = server().await;
    let mut tasks = TasksClient::new(channel);
    let first = tasks.submit_tasks(submit_request("retry", 3, "req-1")).await.expect("submit").into_inner().task_ids;
    let retry = tasks.submit_tasks(submit_request("retry", 3, "req-1")).await.expect("retry").into_inner().task_ids;
    assert_eq!(first, retry, "a retry of the same body gets the first call's ids");
    let other = tasks.submit_tasks(submit_request("retry", 4, "req-1")).await.expect_err("another body under the same id is refused");
    assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");
    assert!(other.message().contains("client_request_id") && other.message().contains("req-1"), "{}", other.message());
    assert_eq!(server.ctx.read(|s| s.task_count()), 3, "the refused submission added nothing");
    server.shutdown().await;
}
