//! Sanity checks on executor Syncs, through the real gRPC service of a one-replica server
//! (issue 12, item 6): a node report that is not plausible is refused whole with
//! INVALID_ARGUMENT naming the node and the field, and nothing of it is recorded (no
//! capacity, no cluster registration, no work); a plausible report is still accepted.

use std::time::Duration;

use flotilla_api::v1::{self, executor_client::ExecutorClient, tasks_client::TasksClient};
use flotilla_model::TaskState;
use flotilla_server::ServerHandle;
use tonic::transport::Channel;
use tonic::Code;

const QUEUE: &str = "gpus";

async fn server_with_a_gpu_task() -> (ServerHandle, Channel, tempfile::TempDir, u64) {
    let (server, channel, dir) = flotilla_tests::single_server_with_queue(QUEUE).await;
    let mut template = flotilla_tests::simple_template(1);
    template.resources.insert("nvidia.com/gpu".into(), "1".into());
    let request = v1::SubmitTasksRequest {
        queue: QUEUE.into(),
        task_set: "train".into(),
        tasks: vec![flotilla_api::template_to_proto(&template)],
        client_request_id: String::new(),
    };
    let ids = TasksClient::new(channel.clone()).submit_tasks(request).await.expect("submit").into_inner().task_ids;
    (server, channel, dir, ids[0])
}

fn gpu_node(name: &str, gpus: u64) -> v1::NodeReport {
    v1::NodeReport {
        name: name.into(),
        allocatable: Some(v1::ResourceAmounts { cpu_millis: 96_000, memory_bytes: 1 << 40, gpu: gpus, ..Default::default() }),
        gpu_model: "H100".into(),
        labels: [("kubernetes.io/hostname".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

fn sync(cluster: &str, nodes: Vec<v1::NodeReport>) -> v1::SyncRequest {
    v1::SyncRequest { cluster: cluster.into(), nodes, attempts: vec![], executor_id: "e1".into() }
}

fn nothing_recorded_for(server: &ServerHandle, cluster: &str) -> bool {
    let no_report = !server.ctx.capacity.lock().unwrap().reports.contains_key(cluster);
    no_report && server.ctx.read(|s| s.cluster(cluster).is_none())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_u64_max_or_a_billion_gpus_are_refused_get_no_work_and_a_sane_report_is_accepted() {
    let (server, channel, _dir, task) = server_with_a_gpu_task().await;
    let mut executor = ExecutorClient::new(channel);
    for (i, gpus) in [u64::MAX, 1_000_000_000].into_iter().enumerate() {
        let cluster = format!("forged-{i}");
        let refused = executor.sync(sync(&cluster, vec![gpu_node("gpu-1", gpus)])).await.expect_err("an implausible node is refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused
                .message()
                .starts_with(&format!("nodes[0].allocatable.nvidia.com/gpu: node \"gpu-1\": {gpus} GPUs exceed the limit of 4096")),
            "{}",
            refused.message()
        );
        assert!(nothing_recorded_for(&server, &cluster), "a refused Sync records no capacity and registers no cluster");
    }
    // Several schedule cycles pass: the task has nowhere to go.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(server.ctx.read(|s| s.task(flotilla_model::TaskId(task)).map(|t| t.state)), Some(TaskState::Queued));

    // A plausible report of the same shape is accepted and the task is leased onto it.
    let mut leased = Vec::new();
    for _ in 0..100 {
        let answer = executor.sync(sync("eks-us-east", vec![gpu_node("gpu-1", 8)])).await.expect("a sane report is accepted");
        leased = answer.into_inner().start;
        if !leased.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(leased.iter().map(|l| (l.task_id, l.node.as_str())).collect::<Vec<_>>(), [(task, "gpu-1")]);
    assert!(nothing_recorded_for(&server, "forged-0") && nothing_recorded_for(&server, "forged-1"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_nodes_long_labels_and_an_oversized_attempts_list_are_refused_with_short_errors() {
    let (server, channel, _dir, _task) = server_with_a_gpu_task().await;
    let mut executor = ExecutorClient::new(channel);

    let duplicate = executor.sync(sync("dup", vec![gpu_node("gpu-1", 8), gpu_node("gpu-1", 8)])).await.unwrap_err();
    assert_eq!(duplicate.code(), Code::InvalidArgument);
    assert_eq!(duplicate.message(), "nodes[1].name: \"gpu-1\" is also the name of nodes[0]");

    let mut labelled = gpu_node("gpu-1", 8);
    labelled.labels.insert("team".into(), "x".repeat(100_000));
    let long_label = executor.sync(sync("labels", vec![labelled])).await.unwrap_err();
    assert_eq!(long_label.code(), Code::InvalidArgument);
    assert!(
        long_label.message().starts_with("nodes[0].labels: node \"gpu-1\": the value of \"team\" is longer than 63"),
        "{}",
        long_label.message()
    );

    let attempt = v1::RunningAttempt { task_id: 1, attempt: 1, node: "n".repeat(253), phase: "running".into() };
    let mut many = sync("attempts", vec![gpu_node("gpu-1", 8)]);
    many.attempts = vec![attempt; 70_000];
    let too_many = executor.sync(many).await.unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(too_many.message().starts_with("attempts: 70000 attempts of"), "{}", too_many.message());
    for (status, cluster) in [(&duplicate, "dup"), (&long_label, "labels"), (&too_many, "attempts")] {
        assert!(status.message().len() < 1_000, "the error quotes only a short prefix: {} bytes", status.message().len());
        assert!(nothing_recorded_for(&server, cluster), "{cluster}");
    }
    server.shutdown().await;
}
