//! `flotilla logs` end to end on loopback: a replica, a simulated executor, and the output of
//! an attempt relayed from the executor through `Sync`/`PushLogs` to a `Tasks.Logs` stream,
//! while the attempt runs, after it finished (kept for `keep_finished`), and followed to its
//! end. Also: the installation id a group names itself with, as `Register`, `Sync` and
//! `ListReplicas` report it.

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::v1::{self, executor_client::ExecutorClient, replicas_client::ReplicasClient, tasks_client::TasksClient};
use flotilla_executor::{ExecutorConfig, SimCluster, SimOptions};
use flotilla_model::{SimTemplate, TaskTemplate};
use tonic::transport::Channel;

const CLUSTERS: &str = r#"
[[cluster]]
name = "lab"
pending = "200ms"
[[cluster.pool]]
name = "cpu"
count = 2
cpu = "16"
memory = "64Gi"
"#;

async fn read_all(client: &mut TasksClient<Channel>, req: v1::LogsRequest) -> Result<(String, Vec<v1::LogChunk>), tonic::Status> {
    let mut stream = client.logs(req).await?.into_inner();
    let mut chunks = Vec::new();
    while let Some(c) = stream.message().await? {
        chunks.push(c);
    }
    let text = chunks.iter().map(|c| String::from_utf8_lossy(&c.data).to_string()).collect();
    Ok((text, chunks))
}

async fn state_of(client: &mut TasksClient<Channel>, id: u64) -> String {
    let r = client.get_tasks(v1::GetTasksRequest { task_ids: vec![id], ..Default::default() }).await.unwrap().into_inner();
    r.tasks[0].state.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attempts_output_is_shown_while_it_runs_after_it_finished_and_followed_to_its_end() {
    let (server, channel, _dir) = flotilla_tests::single_server_with_queue("q").await;
    let file = flotilla_executor::parse_clusters(CLUSTERS, "logs-test.toml").unwrap();
    let sim = SimCluster::from_file(&file, "lab", SimOptions { seed: Some(1), ..Default::default() }).unwrap();
    let mut config = ExecutorConfig::new(vec![format!("http://{}", server.local_addr)], "lab");
    config.sync_interval = Duration::from_millis(200);
    let executor = flotilla_executor::spawn(config, Arc::new(sim));
    let mut tasks = TasksClient::new(channel.clone());

    let template = TaskTemplate {
        name: "agent".into(),
        image: "busybox".into(),
        resources: [("cpu".to_string(), "1".to_string())].into(),
        sim: Some(SimTemplate { duration: Some("4s".into()), ..Default::default() }),
        ..Default::default()
    };
    let submitted = tasks
        .submit_tasks(v1::SubmitTasksRequest {
            queue: "q".into(),
            task_set: "logs".into(),
            tasks: vec![flotilla_api::template_to_proto(&template)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = submitted.task_ids[0];

    // Not started yet, or started: either way the answer says which.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while state_of(&mut tasks, id).await != "running" {
        assert!(tokio::time::Instant::now() < deadline, "the task never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (text, chunks) = read_all(&mut tasks, v1::LogsRequest { task_id: id, ..Default::default() }).await.unwrap();
    assert!(text.contains(&format!("task {id} attempt 1 started on node lab-cpu-")), "{text}");
    assert!(!text.contains("ended:"), "still running: {text}");
    assert_eq!((chunks[0].attempt, chunks[0].cluster.as_str()), (1, "lab"), "the first chunk says where it ran");
    assert!(chunks[0].node.starts_with("lab-cpu-"));

    // Followed: the stream ends when the attempt does, with its last line.
    let followed = read_all(&mut tasks, v1::LogsRequest { task_id: id, follow: true, ..Default::default() });
    let (text, _) = tokio::time::timeout(Duration::from_secs(20), followed).await.expect("the followed stream ends").unwrap();
    assert!(text.contains("working: 2s") && text.trim_end().ends_with("flotilla-sim: ended: succeeded"), "{text}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state_of(&mut tasks, id).await != "succeeded" {
        assert!(tokio::time::Instant::now() < deadline, "the end the log showed never reached the scheduler");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Finished: still readable (kept), with tail and byte limits applied.
    let (tail, _) = read_all(&mut tasks, v1::LogsRequest { task_id: id, tail_lines: 1, ..Default::default() }).await.unwrap();
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(tail.contains("ended: succeeded"), "{tail}");
    let (cut, chunks) = read_all(&mut tasks, v1::LogsRequest { task_id: id, limit_bytes: 10, ..Default::default() }).await.unwrap();
    assert_eq!(cut.len(), 10, "{cut:?}");
    assert!(chunks.len() <= 2);

    // Bad asks name the problem.
    let missing = read_all(&mut tasks, v1::LogsRequest { task_id: 999_999, ..Default::default() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let no_attempt = read_all(&mut tasks, v1::LogsRequest { task_id: id, attempt: 7, ..Default::default() }).await.unwrap_err();
    assert_eq!(no_attempt.code(), tonic::Code::NotFound, "{no_attempt:?}");

    executor.stop().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_names_its_installation_once_and_every_executor_call_reports_the_same_id() {
    let (server, channel, _dir) = flotilla_tests::single_server_with_queue("q").await;
    let mut replicas = ReplicasClient::new(channel.clone());
    let mut id = String::new();
    for _ in 0..100 {
        id = replicas.list_replicas(v1::ListReplicasRequest {}).await.unwrap().into_inner().installation_id;
        if !id.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(flotilla_store::is_installation_id(&id), "{id:?}");
    let mut executor = ExecutorClient::new(channel.clone());
    let registered = executor
        .register(v1::RegisterRequest { cluster: "lab".into(), executor_id: "e1".into() })
        .await
        .unwrap()
        .into_inner()
        .installation_id;
    assert_eq!(registered, id);
    let sync = executor.sync(v1::SyncRequest { cluster: "lab".into(), executor_id: "e1".into(), ..Default::default() }).await;
    assert_eq!(sync.unwrap().into_inner().installation_id, id);
    // A second id is refused: the first one applied stays.
    let r = server.ctx.propose(flotilla_store::Command::SetInstallation { id: "ffffffffffffffff".into() }).await.unwrap();
    assert!(matches!(r, flotilla_store::CommandResult::Rejected { .. }), "{r:?}");
    let again = replicas.list_replicas(v1::ListReplicasRequest {}).await.unwrap().into_inner().installation_id;
    assert_eq!(again, id);
    server.shutdown().await;
}
