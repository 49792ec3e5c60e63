//! The HTTP port of a replica: metrics, health, readiness and the web view.

use std::time::Duration;

use flotilla_api::v1::{queues_client::QueuesClient, tasks_client::TasksClient};
use flotilla_api::v1::{CreateQueueRequest, QueueSpec, SubmitTasksRequest, TaskTemplate};
use flotilla_server::ServerConfig;

/// (status code, body) of a GET without credentials.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = flotilla_tests::http_get(addr, path, "").await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_readiness_and_web_view_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::single("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    config.http = Some("127.0.0.1:0".parse().unwrap());
    let server = flotilla_server::start(config).await.unwrap();
    let http = server.http_addr.unwrap();
    assert_eq!(get(http, "/healthz").await.0, 200, "alive before anything else");
    server.wait_for_leader(Duration::from_secs(20)).await.unwrap();
    let (code, body) = get(http, "/readyz").await;
    assert_eq!(code, 200, "ready once a leader is known: {body}");
    assert!(body.contains("leader is replica 1"), "{body}");

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.local_addr)).unwrap().connect().await.unwrap();
    let spec = QueueSpec { name: "research".into(), weight: 3.0, ..Default::default() };
    QueuesClient::new(channel.clone()).create_queue(CreateQueueRequest { queue: Some(spec) }).await.unwrap();
    let template = TaskTemplate {
        name: "agent".into(),
        count: Some(3),
        image: "busybox".into(),
        resources: [("cpu".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    let req = SubmitTasksRequest { queue: "research".into(), task_set: "s".into(), tasks: vec![template], client_request_id: "r1".into() };
    TasksClient::new(channel).submit_tasks(req).await.unwrap();

    let (code, metrics) = get(http, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "flotilla_raft_term",
        "flotilla_raft_is_leader 1",
        "flotilla_raft_commit_index",
        "flotilla_raft_apply_lag",
        "flotilla_tasks{queue=\"research\",state=\"queued\"} 3",
        "flotilla_submitted_tasks_total 3",
        "flotilla_schedule_cycle_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name:?}:\n{metrics}");
    }

    let (code, page) = get(http, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("<h1>Flotilla</h1>") && page.contains("research"), "{page}");
    let (code, queues) = get(http, "/api/queues").await;
    assert_eq!(code, 200);
    let queues: serde_json::Value = serde_json::from_str(&queues).unwrap();
    assert_eq!(queues[0]["name"], "research");
    assert_eq!(queues[0]["tasks"]["queued"], 3);
    let (_, tasks) = get(http, "/api/tasks?state=queued&limit=2").await;
    let tasks: serde_json::Value = serde_json::from_str(&tasks).unwrap();
    assert_eq!(tasks.as_array().unwrap().len(), 2, "the limit is honoured");

    server.shutdown().await;
}
