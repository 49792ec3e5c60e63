//! Authentication and authorization through the real gRPC services of a one-replica server
//! started with `examples/auth.toml` (issue 12): every public RPC refuses missing and wrong
//! credentials, each subject may do only what its role and queue permits allow, and nothing
//! a refused call sent changes the state.

use std::time::Duration;

use flotilla_api::v1::{
    self, clusters_client::ClustersClient, executor_client::ExecutorClient, priority_classes_client::PriorityClassesClient,
    queues_client::QueuesClient, replicas_client::ReplicasClient, tasks_client::TasksClient,
};
use flotilla_server::{ServerConfig, ServerHandle};
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const ALICE: &str = "alice-example-token";
const BOB: &str = "bob-example-token";
const ADMIN: &str = "admin-example-token";
const LAB: &str = "onprem-lab-example-token";

struct Server {
    handle: ServerHandle,
    channel: Channel,
    _dir: tempfile::TempDir,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::single("127.0.0.1:0".parse().unwrap(), dir.path().join("replica"));
    config.http = Some("127.0.0.1:0".parse().unwrap());
    config.auth_file = Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/auth.toml"));
    let handle = flotilla_server::start(config).await.expect("server starts");
    handle.wait_for_leader(Duration::from_secs(10)).await.expect("a leader");
    let channel = Channel::from_shared(format!("http://{}", handle.local_addr)).unwrap().connect().await.expect("connect");
    let s = Server { handle, channel, _dir: dir };
    for q in ["research", "agents"] {
        QueuesClient::new(s.channel.clone())
            .create_queue(req(Some(ADMIN), v1::CreateQueueRequest { queue: Some(spec(q)) }))
            .await
            .expect("admin creates the queues");
    }
    s
}

fn spec(name: &str) -> v1::QueueSpec {
    v1::QueueSpec { name: name.into(), weight: 1.0, ..Default::default() }
}

fn req<T>(token: Option<&str>, message: T) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

fn submit(queue: &str, set: &str) -> v1::SubmitTasksRequest {
    v1::SubmitTasksRequest {
        queue: queue.into(),
        task_set: set.into(),
        tasks: vec![flotilla_api::template_to_proto(&flotilla_tests::simple_template(3))],
        client_request_id: String::new(),
    }
}

fn node(name: &str) -> v1::NodeReport {
    v1::NodeReport {
        name: name.into(),
        allocatable: Some((&flotilla_model::Resources::new(8_000, 32 << 30, 0)).into()),
        ..Default::default()
    }
}

fn sync(cluster: &str) -> v1::SyncRequest {
    v1::SyncRequest { cluster: cluster.into(), executor_id: "test".into(), nodes: vec![node("n1")], ..Default::default() }
}

fn event(task_id: u64, attempt: u32) -> v1::ReportEventsRequest {
    v1::ReportEventsRequest {
        cluster: "eks-us-east".into(),
        events: vec![v1::AttemptEvent { task_id, attempt, status: "succeeded".into(), node: "n1".into(), ..Default::default() }],
    }
}

/// What the state holds that any mutating RPC could change.
fn fingerprint(s: &Server) -> String {
    s.handle.ctx.read(|st| {
        let queues: Vec<String> = st.queues().map(|q| format!("{q:?}")).collect();
        let tasks: Vec<String> =
            st.tasks_after(flotilla_model::TaskId(0)).map(|t| format!("{}:{:?}:{}", t.id.0, t.state, t.attempt)).collect();
        let clusters: Vec<String> =
            st.clusters().map(|c| format!("{}:{:?}:{:?}", c.name, c.state, st.cluster_drain(&c.name).map(|d| d.state))).collect();
        let classes: Vec<String> = st.priority_classes().values().map(|c| format!("{c:?}")).collect();
        format!("{queues:?}|{tasks:?}|{clusters:?}|{classes:?}")
    })
}

fn ok<T>(r: Result<T, Status>) -> Result<(), Status> {
    r.map(|_| ())
}

fn urgent() -> v1::PriorityClass {
    v1::PriorityClass { name: "urgent".into(), priority: 500, preemptible: true, description: String::new() }
}

/// The built-in `best-effort` class with another priority: an update every refusal must leave undone.
fn best_effort_raised() -> v1::PriorityClass {
    v1::PriorityClass { name: "best-effort".into(), priority: 7, preemptible: true, description: String::new() }
}

/// Every RPC of every public service, once, with `token`; the status of each.
async fn every_rpc(s: &Server, token: Option<&str>, task_id: u64) -> Vec<(&'static str, Result<(), Status>)> {
    let c = s.channel.clone();
    let t = token;
    let watch = async {
        let mut stream = TasksClient::new(c.clone())
            .watch(req(t, v1::WatchRequest { queue: "research".into(), task_set: "alice-set".into(), from_seq: 0 }))
            .await?
            .into_inner();
        stream.next().await.transpose().map(|_| ())
    };
    vec![
        ("CreateQueue", ok(QueuesClient::new(c.clone()).create_queue(req(t, v1::CreateQueueRequest { queue: Some(spec("new")) })).await)),
        (
            "UpdateQueue",
            ok(QueuesClient::new(c.clone()).update_queue(req(t, v1::UpdateQueueRequest { queue: Some(spec("research")) })).await),
        ),
        ("DeleteQueue", ok(QueuesClient::new(c.clone()).delete_queue(req(t, v1::DeleteQueueRequest { name: "agents".into() })).await)),
        ("GetQueue", ok(QueuesClient::new(c.clone()).get_queue(req(t, v1::GetQueueRequest { name: "research".into() })).await)),
        ("ListQueues", ok(QueuesClient::new(c.clone()).list_queues(req(t, v1::ListQueuesRequest {})).await)),
        ("SubmitTasks", ok(TasksClient::new(c.clone()).submit_tasks(req(t, submit("research", "intruder"))).await)),
        (
            "CancelTasks",
            ok(TasksClient::new(c.clone())
                .cancel_tasks(req(t, v1::CancelTasksRequest { task_ids: vec![task_id], ..Default::default() }))
                .await),
        ),
        (
            "ResumeTaskSet",
            ok(TasksClient::new(c.clone())
                .resume_task_set(req(t, v1::ResumeTaskSetRequest { queue: "research".into(), task_set: "alice-set".into() }))
                .await),
        ),
        (
            "GetTasks",
            ok(TasksClient::new(c.clone()).get_tasks(req(t, v1::GetTasksRequest { task_ids: vec![task_id], linearizable: false })).await),
        ),
        (
            "ListTasks",
            ok(TasksClient::new(c.clone())
                .list_tasks(req(t, v1::ListTasksRequest { queue: "research".into(), ..Default::default() }))
                .await),
        ),
        ("Watch", watch.await),
        ("ListClusters", ok(ClustersClient::new(c.clone()).list_clusters(req(t, v1::ListClustersRequest {})).await)),
        (
            "CordonCluster",
            ok(ClustersClient::new(c.clone()).cordon_cluster(req(t, v1::CordonClusterRequest { name: "eks-us-east".into() })).await),
        ),
        (
            "UncordonCluster",
            ok(ClustersClient::new(c.clone()).uncordon_cluster(req(t, v1::UncordonClusterRequest { name: "eks-us-east".into() })).await),
        ),
        (
            "DrainCluster",
            ok(ClustersClient::new(c.clone()).drain_cluster(req(t, v1::DrainClusterRequest { name: "eks-us-east".into() })).await),
        ),
        (
            "CreatePriorityClass",
            ok(PriorityClassesClient::new(c.clone())
                .create_priority_class(req(t, v1::CreatePriorityClassRequest { priority_class: Some(urgent()) }))
                .await),
        ),
        (
            "UpdatePriorityClass",
            ok(PriorityClassesClient::new(c.clone())
                .update_priority_class(req(t, v1::UpdatePriorityClassRequest { priority_class: Some(best_effort_raised()) }))
                .await),
        ),
        (
            "DeletePriorityClass",
            ok(PriorityClassesClient::new(c.clone())
                .delete_priority_class(req(t, v1::DeletePriorityClassRequest { name: "best-effort".into() }))
                .await),
        ),
        (
            "ListPriorityClasses",
            ok(PriorityClassesClient::new(c.clone()).list_priority_classes(req(t, v1::ListPriorityClassesRequest {})).await),
        ),
        ("Sync", ok(ExecutorClient::new(c.clone()).sync(req(t, sync("eks-us-east"))).await)),
        ("ReportEvents", ok(ExecutorClient::new(c.clone()).report_events(req(t, event(task_id, 1))).await)),
        ("ListReplicas", ok(ReplicasClient::new(c.clone()).list_replicas(req(t, v1::ListReplicasRequest {})).await)),
        (
            "AddReplica",
            ok(ReplicasClient::new(c.clone())
                .add_replica(req(t, v1::AddReplicaRequest { id: 9, url: "http://10.255.255.1:1".into() }))
                .await),
        ),
        ("RemoveReplica", ok(ReplicasClient::new(c.clone()).remove_replica(req(t, v1::RemoveReplicaRequest { id: 1 })).await)),
    ]
}

async fn alice_task(s: &Server) -> u64 {
    let ids =
        TasksClient::new(s.channel.clone()).submit_tasks(req(Some(ALICE), submit("research", "alice-set"))).await.expect("alice submits");
    ids.into_inner().task_ids[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_rpc_refuses_missing_wrong_and_garbage_credentials_and_changes_nothing() {
    let s = server().await;
    let task = alice_task(&s).await;
    let before = fingerprint(&s);
    for token in [None, Some("alice-example-token-but-wrong"), Some("a.b.c"), Some("")] {
        let results = every_rpc(&s, token, task).await;
        assert_eq!(results.len(), 24, "every RPC of Queues, Tasks, Clusters, PriorityClasses, Executor and Replicas");
        for (rpc, r) in results {
            let e = r.expect_err(rpc);
            assert_eq!(e.code(), Code::Unauthenticated, "{rpc} with {token:?}: {e:?}");
            assert!(!e.message().contains("alice"), "{rpc}: the answer does not say whether the identity exists");
        }
    }
    assert_eq!(fingerprint(&s), before, "nothing changed");
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_of_the_wrong_subject_is_permission_denied_naming_the_permission_and_changes_nothing() {
    let s = server().await;
    let task = alice_task(&s).await;
    let before = fingerprint(&s);
    // bob: a user with permits on `agents` only; the lab executor: a credential for another cluster.
    for token in [BOB, LAB] {
        for (rpc, r) in every_rpc(&s, Some(token), task).await {
            let allowed = match (token, rpc) {
                // Any user may see the clusters; bob may list queues (he sees only `agents`).
                (BOB, "ListClusters" | "ListQueues" | "ListPriorityClasses") => true,
                _ => false,
            };
            if allowed {
                r.unwrap_or_else(|e| panic!("{rpc} as {token}: {e:?}"));
                continue;
            }
            let e = r.expect_err(rpc);
            // A task bob may not see is answered as missing, as if it did not exist.
            let expected = if token == BOB && matches!(rpc, "GetTasks" | "CancelTasks") { Code::NotFound } else { Code::PermissionDenied };
            assert_eq!(e.code(), expected, "{rpc} as {token}: {e:?}");
            if expected == Code::PermissionDenied {
                assert!(
                    e.message().contains("permission") || e.message().contains("role") || e.message().contains("credential"),
                    "{rpc} as {token} names what is needed: {}",
                    e.message()
                );
            }
        }
    }
    assert_eq!(fingerprint(&s), before, "nothing changed");
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_submits_to_research_but_not_agents_and_bob_can_neither_see_nor_cancel_her_tasks() {
    let s = server().await;
    let mut as_tasks = TasksClient::new(s.channel.clone());
    let task = alice_task(&s).await;
    let e = as_tasks.submit_tasks(req(Some(ALICE), submit("agents", "x"))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("`submit` permission on queue \"agents\""), "{}", e.message());
    as_tasks.submit_tasks(req(Some(BOB), submit("agents", "bob-set"))).await.expect("bob submits to agents");

    // Bob's listings hold only his own queue's tasks, and alice's are invisible to him.
    let all = as_tasks.list_tasks(req(Some(BOB), v1::ListTasksRequest::default())).await.unwrap().into_inner().tasks;
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|t| t.queue == "agents"), "bob sees only agents: {all:?}");
    let admin_all = as_tasks.list_tasks(req(Some(ADMIN), v1::ListTasksRequest::default())).await.unwrap().into_inner().tasks;
    assert_eq!(admin_all.len(), 6, "the admin sees every queue");
    let e = as_tasks.get_tasks(req(Some(BOB), v1::GetTasksRequest { task_ids: vec![task], linearizable: false })).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = as_tasks
        .cancel_tasks(req(
            Some(BOB),
            v1::CancelTasksRequest { queue: "research".into(), task_set: "alice-set".into(), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let queues = QueuesClient::new(s.channel.clone()).list_queues(req(Some(BOB), v1::ListQueuesRequest {})).await.unwrap().into_inner();
    let names: Vec<String> = queues.queues.iter().filter_map(|q| q.spec.as_ref().map(|s| s.name.clone())).collect();
    assert_eq!(names, ["agents"]);
    assert!(s.handle.ctx.read(|st| st.task(flotilla_model::TaskId(task)).is_some_and(|t| t.state == flotilla_model::TaskState::Queued)));

    // Alice may cancel her own.
    let n = as_tasks
        .cancel_tasks(req(Some(ALICE), v1::CancelTasksRequest { task_ids: vec![task], ..Default::default() }))
        .await
        .expect("alice cancels")
        .into_inner()
        .cancelled;
    assert_eq!(n, 1);
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_creates_queues_and_changes_membership() {
    let s = server().await;
    let mut queues = QueuesClient::new(s.channel.clone());
    for who in [ALICE, BOB, LAB] {
        let e = queues.create_queue(req(Some(who), v1::CreateQueueRequest { queue: Some(spec("mine")) })).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who}");
        assert!(e.message().contains("cluster admin role") || e.message().contains("only Sync"), "{}", e.message());
        let e = ReplicasClient::new(s.channel.clone())
            .add_replica(req(Some(who), v1::AddReplicaRequest { id: 2, url: "http://127.0.0.1:1".into() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who}");
    }
    assert_eq!(s.handle.ctx.read(|st| st.queues().count()), 2);
    queues.create_queue(req(Some(ADMIN), v1::CreateQueueRequest { queue: Some(spec("mine")) })).await.expect("admin creates");
    let members = ReplicasClient::new(s.channel.clone()).list_replicas(req(Some(ADMIN), v1::ListReplicasRequest {})).await.unwrap();
    assert_eq!(members.into_inner().replicas.len(), 1, "the admin reads the membership; the refused adds changed nothing");
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_credential_syncs_and_reports_only_for_its_own_cluster() {
    let s = server().await;
    let mut exec = ExecutorClient::new(s.channel.clone());
    let e = exec.sync(req(Some(LAB), sync("eks-us-east"))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("may not act for cluster \"eks-us-east\""), "{}", e.message());
    assert!(s.handle.ctx.read(|st| st.cluster("eks-us-east").is_none()), "no caller registers a cluster it holds no credential for");
    // Not even an admin poses as an executor.
    assert_eq!(exec.sync(req(Some(ADMIN), sync("onprem-lab"))).await.unwrap_err().code(), Code::PermissionDenied);
    // The first Sync with the cluster's own credential registers it.
    exec.sync(req(Some(LAB), sync("onprem-lab"))).await.expect("the lab executor syncs");
    assert!(s.handle.ctx.read(|st| st.cluster("onprem-lab").is_some()));
    let mut report = event(1, 1);
    report.cluster = "onprem-lab".into();
    exec.report_events(req(Some(LAB), report)).await.expect("reports for its own cluster are accepted");
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_set_on_a_queue_are_enforced_and_a_queue_admin_may_change_them() {
    let s = server().await;
    let mut queues = QueuesClient::new(s.channel.clone());
    let mut shared = spec("shared");
    shared.permits = vec![
        v1::QueuePermit { subject: "group:research".into(), verbs: vec!["watch".into()] },
        v1::QueuePermit { subject: "user:bob".into(), verbs: vec!["admin".into()] },
    ];
    queues.create_queue(req(Some(ADMIN), v1::CreateQueueRequest { queue: Some(shared.clone()) })).await.expect("create");
    let mut tasks = TasksClient::new(s.channel.clone());
    // alice, through her group, may watch but not submit.
    tasks.list_tasks(req(Some(ALICE), v1::ListTasksRequest { queue: "shared".into(), ..Default::default() })).await.expect("alice watches");
    assert_eq!(tasks.submit_tasks(req(Some(ALICE), submit("shared", "a"))).await.unwrap_err().code(), Code::PermissionDenied);
    // bob administers the queue: he submits, and grants alice submit.
    tasks.submit_tasks(req(Some(BOB), submit("shared", "b"))).await.expect("admin on the queue implies submit");
    shared.permits[0].verbs = vec!["watch".into(), "submit".into()];
    queues.update_queue(req(Some(BOB), v1::UpdateQueueRequest { queue: Some(shared.clone()) })).await.expect("a queue admin updates it");
    tasks.submit_tasks(req(Some(ALICE), submit("shared", "a"))).await.expect("alice may submit now");
    // alice may not change the permits, nor delete the queue.
    let e = queues.update_queue(req(Some(ALICE), v1::UpdateQueueRequest { queue: Some(shared.clone()) })).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        queues.delete_queue(req(Some(ALICE), v1::DeleteQueueRequest { name: "shared".into() })).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // Bad permits are the caller's error, naming the field.
    shared.permits.push(v1::QueuePermit { subject: "everyone".into(), verbs: vec!["submit".into()] });
    let e = queues.update_queue(req(Some(ADMIN), v1::UpdateQueueRequest { queue: Some(shared) })).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("permits[2].subject"), "{}", e.message());
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_auth_refuses_a_non_loopback_address_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::single("0.0.0.0:0".parse().unwrap(), dir.path().join("replica"));
    let e = flotilla_server::start(config.clone()).await.err().expect("refused");
    assert!(e.to_string().contains("without authentication") && e.to_string().contains("--insecure"), "{e}");
    config.insecure = true;
    let server = flotilla_server::start(config).await.expect("--insecure serves");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_and_api_need_a_token_and_show_only_what_the_caller_may_watch() {
    let s = server().await;
    alice_task(&s).await;
    let http = s.handle.http_addr.unwrap();
    for path in ["/", "/api/queues", "/api/tasks", "/api/clusters"] {
        let (code, head, _) = flotilla_tests::http_get(http, path, "").await;
        assert_eq!(code, 401, "{path} without a token");
        assert!(head.to_ascii_lowercase().contains("www-authenticate: basic"), "a browser is asked for the token: {head}");
        assert_eq!(flotilla_tests::http_get(http, path, "Authorization: Bearer wrong\r\n").await.0, 401, "{path} with a wrong token");
    }
    assert_eq!(flotilla_tests::http_get(http, "/healthz", "").await.0, 200, "probes stay open");
    assert_eq!(flotilla_tests::http_get(http, "/metrics", "").await.0, 200, "metrics stay open without --protect-metrics");
    assert_eq!(flotilla_tests::http_get(http, "/api/tasks", &format!("Authorization: Bearer {LAB}\r\n")).await.0, 403);

    let (code, _, body) = flotilla_tests::http_get(http, "/api/tasks", &format!("Authorization: Bearer {BOB}\r\n")).await;
    assert_eq!(code, 200);
    assert_eq!(body.trim(), "[]", "bob sees none of alice's tasks");
    let (_, _, queues) = flotilla_tests::http_get(http, "/api/queues", &format!("Authorization: Bearer {BOB}\r\n")).await;
    assert!(queues.contains("agents") && !queues.contains("research"), "{queues}");
    // The browser's Basic prompt: any user name, the token as password.
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{ALICE}"));
    let (code, _, body) = flotilla_tests::http_get(http, "/api/tasks", &format!("Authorization: Basic {basic}\r\n")).await;
    assert_eq!(code, 200);
    assert_eq!(body.matches("\"queue\":\"research\"").count(), 3, "alice sees her three tasks: {body}");
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_ends_when_its_permit_is_taken_away() {
    let s = server().await;
    let mut shared = spec("shared");
    shared.permits = vec![v1::QueuePermit { subject: "user:bob".into(), verbs: vec!["submit".into(), "watch".into()] }];
    let mut queues = QueuesClient::new(s.channel.clone());
    queues.create_queue(req(Some(ADMIN), v1::CreateQueueRequest { queue: Some(shared.clone()) })).await.expect("create");
    TasksClient::new(s.channel.clone()).submit_tasks(req(Some(BOB), submit("shared", "w"))).await.expect("bob submits");
    let mut stream = TasksClient::new(s.channel.clone())
        .watch(req(Some(BOB), v1::WatchRequest { queue: "shared".into(), task_set: "w".into(), from_seq: 0 }))
        .await
        .expect("bob watches")
        .into_inner();
    assert!(stream.next().await.expect("an event").is_ok(), "bob sees the submission");
    shared.permits.clear();
    queues.update_queue(req(Some(ADMIN), v1::UpdateQueueRequest { queue: Some(shared) })).await.expect("the admin takes the permit away");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
    .expect("the stream ends within a wake-up");
    assert_eq!(ended.map(|e| e.code()), Some(Code::PermissionDenied), "the open stream is cut with the reason");
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_cluster_admin_cordons_uncordons_and_drains_and_refusals_change_nothing() {
    let s = server().await;
    ExecutorClient::new(s.channel.clone()).sync(req(Some(LAB), sync("onprem-lab"))).await.expect("the lab registers");
    let mut clusters = flotilla_api::v1::clusters_client::ClustersClient::new(s.channel.clone());
    let name = || "onprem-lab".to_string();
    for who in [Some(ALICE), Some(BOB), Some(LAB), None] {
        let codes = [
            clusters.cordon_cluster(req(who, v1::CordonClusterRequest { name: name() })).await.map(|_| ()).unwrap_err().code(),
            clusters.uncordon_cluster(req(who, v1::UncordonClusterRequest { name: name() })).await.map(|_| ()).unwrap_err().code(),
            clusters.drain_cluster(req(who, v1::DrainClusterRequest { name: name() })).await.map(|_| ()).unwrap_err().code(),
        ];
        let expected = if who.is_none() { Code::Unauthenticated } else { Code::PermissionDenied };
        assert_eq!(codes, [expected; 3], "{who:?}");
    }
    assert!(!s.handle.ctx.read(|st| st.is_cordoned("onprem-lab")), "the refused calls changed nothing");
    let drained = clusters.drain_cluster(req(Some(ADMIN), v1::DrainClusterRequest { name: name() })).await.expect("the admin drains");
    assert_eq!(drained.into_inner().cluster.expect("the cluster").drain_state, "drained", "nothing runs there");
    let e = clusters.cordon_cluster(req(Some(ADMIN), v1::CordonClusterRequest { name: "nowhere".into() })).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    let e = clusters.drain_cluster(req(Some(ADMIN), v1::DrainClusterRequest { name: String::new() })).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().starts_with("name:"), "{}", e.message());
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_creates_updates_and_deletes_priority_classes_and_every_user_lists_them() {
    let s = server().await;
    let mut classes = PriorityClassesClient::new(s.channel.clone());
    for who in [ALICE, BOB] {
        let e = classes
            .create_priority_class(req(Some(who), v1::CreatePriorityClassRequest { priority_class: Some(urgent()) }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who}");
        assert!(e.message().contains("cluster admin role"), "{}", e.message());
        let e =
            classes.delete_priority_class(req(Some(who), v1::DeletePriorityClassRequest { name: "best-effort".into() })).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{who}");
        let listed = classes.list_priority_classes(req(Some(who), v1::ListPriorityClassesRequest {})).await.expect("a user lists");
        assert_eq!(listed.into_inner().priority_classes.len(), 3, "{who} sees the built-ins; nothing was created");
    }
    let e = classes.list_priority_classes(req(None, v1::ListPriorityClassesRequest {})).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    classes
        .create_priority_class(req(Some(ADMIN), v1::CreatePriorityClassRequest { priority_class: Some(urgent()) }))
        .await
        .expect("the admin creates");
    assert!(s.handle.ctx.read(|st| st.priority_class("urgent").is_some()));
    s.handle.shutdown().await;
}
