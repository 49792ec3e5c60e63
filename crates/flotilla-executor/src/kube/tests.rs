//! The Kubernetes backend against a fake API server (axum on 127.0.0.1:0): lists, watches
//! (driven by the test), creates and deletes, recorded for assertions.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use flotilla_api::v1::{LeasedTask, ResourceAmounts};
use flotilla_model::{AttemptStatus, FailureKind, Resources, TaskId, Topology};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::*;

#[derive(Clone, Debug)]
struct Recorded {
    method: Method,
    path: String,
    body: Value,
}

#[derive(Default)]
struct FakeState {
    collections: BTreeMap<&'static str, Vec<Value>>,
    namespaces: HashSet<String>,
    requests: Vec<Recorded>,
    refuse_creates: Option<(u16, &'static str)>,
    resource_version: u64,
}

struct Fake {
    state: Mutex<FakeState>,
    watch: broadcast::Sender<(&'static str, String)>,
}

const NODES: &str = "nodes";
const JOBS: &str = "jobs";
const MANAGED_PODS: &str = "managed pods";
const OTHER_PODS: &str = "other pods";

impl Fake {
    async fn start(collections: [(&'static str, Vec<Value>); 4]) -> (Arc<Fake>, Client) {
        let (watch, _) = broadcast::channel(1024);
        let fake = Arc::new(Fake { state: Mutex::new(FakeState { collections: collections.into(), ..Default::default() }), watch });
        let app = axum::Router::new().fallback(handle).with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        (fake, client)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Adds or replaces an object and tells the watches.
    fn apply(&self, collection: &'static str, mut object: Value) {
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        let items = state.collections.entry(collection).or_default();
        let name = object["metadata"]["name"].clone();
        let kind = match items.iter_mut().find(|o| o["metadata"]["name"] == name) {
            Some(o) => {
                *o = object.clone();
                "MODIFIED"
            }
            None => {
                items.push(object.clone());
                "ADDED"
            }
        };
        let _ = self.watch.send((collection, json!({"type": kind, "object": object}).to_string() + "\n"));
    }

    fn delete(&self, collection: &'static str, name: &str) {
        let mut state = self.state.lock().unwrap();
        let items = state.collections.entry(collection).or_default();
        let Some(i) = items.iter().position(|o| o["metadata"]["name"] == name) else { return };
        let object = items.remove(i);
        let _ = self.watch.send((collection, json!({"type": "DELETED", "object": object}).to_string() + "\n"));
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn status_response(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code});
    Response::builder().status(code).header("content-type", "application/json").body(Body::from(body.to_string())).unwrap()
}

fn json_response(code: StatusCode, body: Value) -> Response {
    Response::builder().status(code).header("content-type", "application/json").body(Body::from(body.to_string())).unwrap()
}

async fn handle(axum::extract::State(fake): axum::extract::State<Arc<Fake>>, method: Method, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let query = percent_decode(uri.query().unwrap_or_default());
    let collection = match path.as_str() {
        "/api/v1/nodes" => Some(NODES),
        "/apis/batch/v1/jobs" => Some(JOBS),
        "/api/v1/pods" if query.contains("managed-by!=flotilla") => Some(OTHER_PODS),
        "/api/v1/pods" => Some(MANAGED_PODS),
        _ => None,
    };
    if method == Method::GET {
        let Some(collection) = collection else { return status_response(404, "NotFound", "no such collection") };
        if query.contains("watch=true") {
            let rx = fake.watch.subscribe();
            let stream = futures::stream::unfold(rx, move |mut rx| async move {
                loop {
                    match rx.recv().await {
                        Ok((c, line)) if c == collection => return Some((Ok::<_, std::io::Error>(Bytes::from(line)), rx)),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
            return Response::builder().header("content-type", "application/json").body(Body::from_stream(stream)).unwrap();
        }
        let state = fake.state.lock().unwrap();
        let items = state.collections.get(collection).cloned().unwrap_or_default();
        return json_response(
            StatusCode::OK,
            json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": state.resource_version.to_string()}, "items": items}),
        );
    }
    let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
    let mut state = fake.state.lock().unwrap();
    state.requests.push(Recorded { method: method.clone(), path: path.clone(), body: body.clone() });
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (Method::POST, ["api", "v1", "namespaces"]) => {
            state.namespaces.insert(body["metadata"]["name"].as_str().unwrap().to_string());
            json_response(StatusCode::CREATED, body)
        }
        (Method::POST, ["apis", "batch", "v1", "namespaces", ns, "jobs"]) => {
            if let Some((code, reason)) = state.refuse_creates {
                return status_response(code, reason, "spec.template.spec.containers[0].image: Required value");
            }
            if !state.namespaces.contains(*ns) {
                return status_response(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
            }
            json_response(StatusCode::CREATED, body)
        }
        (Method::DELETE, ["apis", "batch", "v1", "namespaces", _, "jobs", name]) => json_response(
            StatusCode::OK,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": name}}),
        ),
        _ => status_response(405, "MethodNotAllowed", "not faked"),
    }
}

fn settings() -> KubeBackendConfig {
    KubeBackendConfig {
        prices: [("p5.48xlarge".to_string(), 98.32), ("n2-standard-16".to_string(), 0.87)].into(),
        spot_prices: [("n2-standard-16".to_string(), 0.21)].into(),
        image_pull_failure_after: Duration::from_secs(120),
        ..Default::default()
    }
}

async fn backend(collections: [(&'static str, Vec<Value>); 4]) -> (Arc<Fake>, KubeBackend) {
    let (fake, client) = Fake::start(collections).await;
    let backend = KubeBackend::new(client, "eks-us-east", settings());
    backend.wait_ready(Duration::from_secs(10)).await.unwrap();
    // The fake replays nothing: wait until all four watches listen before changing objects.
    for _ in 0..500 {
        if fake.watch.receiver_count() >= 4 {
            return (fake, backend);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the watches did not connect");
}

fn h100_node() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "ip-10-0-1-23.ec2.internal", "labels": {
            "kubernetes.io/hostname": "ip-10-0-1-23",
            "topology.kubernetes.io/region": "us-east-1",
            "topology.kubernetes.io/zone": "us-east-1a",
            "topology.flotilla.io/rack": "pg-7",
            "node.kubernetes.io/instance-type": "p5.48xlarge",
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            "karpenter.sh/capacity-type": "on-demand"
        }},
        "spec": {"taints": [{"key": "dedicated", "value": "training", "effect": "NoSchedule"}, {"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "191450m", "memory": "2000Gi", "nvidia.com/gpu": "8", "pods": "110", "ephemeral-storage": "1Ti", "vpc.amazonaws.com/efa": "32"},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

fn gke_spot_node(name: &str, ready: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "topology.kubernetes.io/zone": "europe-west4-b",
            "node.kubernetes.io/instance-type": "n2-standard-16",
            "cloud.google.com/gke-spot": "true"
        }},
        "spec": {},
        "status": {"allocatable": {"cpu": "15890m", "memory": "57Gi", "nvidia.com/gpu": "0"}, "conditions": [{"type": "Ready", "status": ready}]}
    })
}

fn other_pod(name: &str, node: &str, cpu: &str, memory: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "kube-system"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]},
        "status": {"phase": "Running"}
    })
}

fn managed_labels(task_id: u64, attempt: u32) -> Value {
    json!({"flotilla.io/task-id": task_id.to_string(), "flotilla.io/attempt": attempt.to_string(), "app.kubernetes.io/managed-by": "flotilla"})
}

fn job(task_id: u64, attempt: u32, conditions: Value) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": format!("flotilla-{task_id}-{attempt}"), "namespace": "flotilla-research", "labels": managed_labels(task_id, attempt)},
        "spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/hostname": "ip-10-0-1-23"}, "containers": [{"name": "task"}]}}},
        "status": {"conditions": conditions}
    })
}

fn pod(task_id: u64, attempt: u32, status: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("flotilla-{task_id}-{attempt}-x7k2p"), "namespace": "flotilla-research", "labels": managed_labels(task_id, attempt),
                     "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"nodeName": "ip-10-0-1-23.ec2.internal", "containers": [{"name": "task"}]},
        "status": status
    })
}

fn terminated(reason: &str, exit_code: i32) -> Value {
    json!({"phase": "Failed", "containerStatuses": [{"name": "task", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"reason": reason, "exitCode": exit_code, "message": "last words"}}}]})
}

fn waiting(phase: &str, reason: &str) -> Value {
    json!({"phase": phase, "containerStatuses": [{"name": "task", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": reason, "message": "pull access denied"}}}]})
}

fn lease() -> LeasedTask {
    LeasedTask {
        task_id: 42,
        attempt: 3,
        node: "ip-10-0-1-23.ec2.internal".into(),
        name: "train-7".into(),
        index: 7,
        queue: "research".into(),
        task_set: "llama-sweep".into(),
        image: "ghcr.io/acme/train:1.4".into(),
        command: vec!["python".into(), "train.py".into()],
        args: vec!["--lr=3e-4".into()],
        env: [("WANDB_PROJECT".to_string(), "sweep".to_string()), ("FLOTILLA_ATTEMPT".to_string(), "forged".to_string())].into(),
        requests: Some(ResourceAmounts { cpu_millis: 16_000, memory_bytes: 128 << 30, gpu: 8, ..Default::default() }),
        limits: Some(ResourceAmounts { memory_bytes: 160 << 30, ..Default::default() }),
        gang_id: 40,
        gang_size: 4,
        gang_rank: 2,
        checkpoint: true,
        max_runtime_ms: 7_200_500,
        termination_grace_ms: 45_000,
        priority_class: "batch".into(),
        ..Default::default()
    }
}

fn empty() -> [(&'static str, Vec<Value>); 4] {
    [(NODES, vec![h100_node()]), (JOBS, vec![]), (MANAGED_PODS, vec![]), (OTHER_PODS, vec![])]
}

#[tokio::test]
async fn a_lease_becomes_exactly_this_job_in_a_namespace_created_on_demand() {
    let (fake, backend) = backend(empty()).await;
    backend.start(lease()).await.unwrap();
    let requests = fake.requests();
    let paths: Vec<_> = requests.iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(
        paths,
        [
            "POST /apis/batch/v1/namespaces/flotilla-research/jobs",
            "POST /api/v1/namespaces",
            "POST /apis/batch/v1/namespaces/flotilla-research/jobs"
        ]
    );
    assert_eq!(requests[1].body["metadata"], json!({"name": "flotilla-research", "labels": {"app.kubernetes.io/managed-by": "flotilla"}}));
    let labels = json!({
        "flotilla.io/task-id": "42", "flotilla.io/attempt": "3", "flotilla.io/queue": "research",
        "flotilla.io/task-set": "llama-sweep", "flotilla.io/gang-id": "40", "app.kubernetes.io/managed-by": "flotilla"
    });
    let expected = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "flotilla-42-3",
            "namespace": "flotilla-research",
            "labels": labels,
            "annotations": {"flotilla.io/task-name": "train-7", "flotilla.io/task-set": "llama-sweep", "flotilla.io/priority-class": "batch"}
        },
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": 7201,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"kubernetes.io/hostname": "ip-10-0-1-23"},
                    "terminationGracePeriodSeconds": 45,
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "volumes": [{"name": "flotilla-checkpoint", "emptyDir": {}}],
                    "containers": [{
                        "name": "task",
                        "image": "ghcr.io/acme/train:1.4",
                        "command": ["python", "train.py"],
                        "args": ["--lr=3e-4"],
                        "env": [
                            {"name": "FLOTILLA_TASK_ID", "value": "42"},
                            {"name": "FLOTILLA_TASK_NAME", "value": "train-7"},
                            {"name": "FLOTILLA_TASK_INDEX", "value": "7"},
                            {"name": "FLOTILLA_ATTEMPT", "value": "3"},
                            {"name": "FLOTILLA_QUEUE", "value": "research"},
                            {"name": "FLOTILLA_TASK_SET", "value": "llama-sweep"},
                            {"name": "FLOTILLA_GANG_ID", "value": "40"},
                            {"name": "FLOTILLA_GANG_SIZE", "value": "4"},
                            {"name": "FLOTILLA_GANG_RANK", "value": "2"},
                            {"name": "FLOTILLA_CHECKPOINT_DIR", "value": "/flotilla/checkpoint"},
                            {"name": "WANDB_PROJECT", "value": "sweep"}
                        ],
                        "resources": {
                            "requests": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "8"},
                            "limits": {"memory": "160Gi", "nvidia.com/gpu": "8"}
                        },
                        "volumeMounts": [{"name": "flotilla-checkpoint", "mountPath": "/flotilla/checkpoint"}]
                    }]
                }
            }
        }
    });
    assert_eq!(requests[2].body, expected);
}

#[test]
fn checkpoints_use_a_per_task_directory_of_the_configured_claim() {
    let config = KubeBackendConfig { checkpoint_claim: Some("flotilla-checkpoints".into()), ..Default::default() };
    let job = serde_json::to_value(jobs::job_for_lease(&lease(), "h", &[], &config)).unwrap();
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"], json!([{"name": "flotilla-checkpoint", "persistentVolumeClaim": {"claimName": "flotilla-checkpoints"}}]));
    assert_eq!(
        pod["containers"][0]["volumeMounts"],
        json!([{"name": "flotilla-checkpoint", "mountPath": "/flotilla/checkpoint", "subPath": "llama-sweep/42"}])
    );
}

#[tokio::test]
async fn starting_an_existing_attempt_sends_nothing_and_stop_deletes_in_the_background() {
    let mut collections = empty();
    collections[1].1.push(job(42, 3, json!([])));
    let (fake, backend) = backend(collections).await;
    backend.start(lease()).await.unwrap();
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    backend.stop(TaskId(42), 3).await.unwrap();
    backend.stop(TaskId(42), 9).await.unwrap();
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, Method::DELETE);
    assert_eq!(requests[0].path, "/apis/batch/v1/namespaces/flotilla-research/jobs/flotilla-42-3");
    assert_eq!(requests[0].body, json!({"propagationPolicy": "Background"}));
}

#[tokio::test]
async fn a_refused_job_is_reported_as_a_start_failure() {
    let (fake, backend) = backend(empty()).await;
    fake.state.lock().unwrap().refuse_creates = Some((422, "Invalid"));
    backend.start(lease()).await.unwrap();
    let events = backend.pending_events(10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert!(
        matches!(&events[0].status, AttemptStatus::Failed { kind: FailureKind::StartFailed, message, .. } if message.contains("Required value"))
    );
    backend.ack_events(&events);
    assert!(backend.pending_events(10).await.unwrap().is_empty());
    // A server error is not final: the scheduler will send the lease again.
    fake.state.lock().unwrap().refuse_creates = Some((500, "InternalError"));
    assert!(backend.start(lease()).await.is_err());
    assert!(backend.pending_events(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn nodes_report_capacity_topology_spot_price_and_what_other_pods_hold() {
    let collections = [
        (NODES, vec![h100_node(), gke_spot_node("gke-spot-1", "True"), gke_spot_node("gke-spot-2", "False")]),
        (JOBS, vec![]),
        (MANAGED_PODS, vec![]),
        (
            OTHER_PODS,
            vec![
                other_pod("dcgm", "ip-10-0-1-23.ec2.internal", "500m", "1Gi"),
                other_pod("cni", "ip-10-0-1-23.ec2.internal", "250m", "512Mi"),
            ],
        ),
    ];
    let (_fake, backend) = backend(collections).await;
    let nodes = backend.nodes().await.unwrap();
    assert_eq!(nodes.len(), 3);
    let h100 = &nodes[2];
    assert_eq!(h100.name, "ip-10-0-1-23.ec2.internal");
    assert_eq!(h100.cluster, "eks-us-east");
    let mut allocatable = Resources::new(191_450, 2000 << 30, 8);
    allocatable.extended.insert("vpc.amazonaws.com/efa".into(), 32);
    assert_eq!(h100.allocatable, allocatable);
    assert_eq!(h100.reserved, Resources::new(750, (1 << 30) + (512 << 20), 0));
    assert_eq!(h100.topology, Topology { region: "us-east-1".into(), zone: "us-east-1a".into(), rack: "pg-7".into() });
    assert_eq!(h100.gpu_model.as_deref(), Some("H100"));
    assert_eq!(h100.instance_type, "p5.48xlarge");
    assert!(!h100.spot && !h100.unschedulable);
    assert_eq!(h100.price_per_hour_usd, 98.32);
    assert_eq!(h100.taints.len(), 2);
    let spot = &nodes[0];
    assert!(spot.spot);
    assert_eq!(spot.gpu_model, None);
    assert_eq!(spot.allocatable.gpu, 0);
    assert_eq!(spot.price_per_hour_usd, 0.21);
    assert!(!spot.unschedulable);
    assert!(nodes[1].unschedulable, "a NotReady node takes no leases");
}

/// The status each pod shows, through the whole backend: watches, event diff, ack.
#[tokio::test]
async fn pod_statuses_become_events_once_each() {
    let cases: Vec<(u64, Value, Option<Value>)> = vec![
        (1, json!([]), Some(json!({"phase": "Succeeded"}))),
        (2, json!([]), Some(terminated("OOMKilled", 137))),
        (3, json!([]), Some(json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}))),
        (4, json!([]), Some(waiting("Pending", "ImagePullBackOff"))),
        (
            5,
            json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]),
            None,
        ),
        (6, json!([]), Some(terminated("Error", 3))),
        (7, json!([]), Some(json!({"phase": "Running"}))),
        (8, json!([]), None),
    ];
    let mut collections = empty();
    for (id, conditions, status) in &cases {
        collections[1].1.push(job(*id, 1, conditions.clone()));
        if let Some(s) = status {
            collections[2].1.push(pod(*id, 1, s.clone()));
        }
    }
    let (_fake, backend) = backend(collections).await;
    let events = backend.pending_events(100).await.unwrap();
    let got: Vec<(u64, AttemptStatus)> = events.iter().map(|e| (e.task_id.0, e.status.clone())).collect();
    let failed = |kind, exit_code, message: &str| AttemptStatus::Failed { kind, exit_code, message: message.into() };
    assert_eq!(
        got,
        [
            (1, AttemptStatus::Succeeded),
            (2, failed(FailureKind::OomKilled, Some(137), "OOMKilled (exit code 137) last words")),
            (3, failed(FailureKind::Evicted, None, "Evicted: The node was low on resource: memory.")),
            (4, failed(FailureKind::ImagePull, None, "ImagePullBackOff: pull access denied")),
            (5, failed(FailureKind::DeadlineExceeded, None, "Job was active longer than specified deadline")),
            (6, failed(FailureKind::Error, Some(3), "Error (exit code 3) last words")),
            (7, AttemptStatus::Running),
            (8, AttemptStatus::Pending),
        ]
    );
    assert_eq!(events[1].node, "ip-10-0-1-23.ec2.internal");
    // `time_ms` is when the status was read, so it may tick between reads; the rest must not.
    let without_time = |es: &[crate::backend::AttemptEvent]| -> Vec<_> {
        es.iter().map(|e| (e.task_id, e.attempt, e.node.clone(), e.status.clone())).collect()
    };
    let again = backend.pending_events(100).await.unwrap();
    assert_eq!(without_time(&again), without_time(&events), "unacknowledged events are offered again");
    backend.ack_events(&events);
    assert!(backend.pending_events(100).await.unwrap().is_empty());
    let phases: Vec<_> = backend.attempts().await.unwrap().iter().map(|a| a.phase.as_str()).collect();
    assert_eq!(phases, ["succeeded", "failed", "failed", "failed", "failed", "failed", "running", "pending"]);
}

#[test]
fn image_pull_errors_fail_only_once_they_persist() {
    let job: Job = serde_json::from_value(job(1, 1, json!([]))).unwrap();
    let pod: Pod = serde_json::from_value(pod(1, 1, waiting("Pending", "ErrImagePull"))).unwrap();
    let created_ms = 1_735_689_600_000; // 2025-01-01T00:00:00Z
    assert_eq!(pods::attempt_status(&job, Some(&pod), created_ms + 119_000, 120_000), AttemptStatus::Pending);
    assert!(matches!(
        pods::attempt_status(&job, Some(&pod), created_ms + 120_000, 120_000),
        AttemptStatus::Failed { kind: FailureKind::ImagePull, .. }
    ));
    let invalid: Pod = serde_json::from_value(pod_json_waiting("InvalidImageName")).unwrap();
    assert!(matches!(
        pods::attempt_status(&job, Some(&invalid), created_ms, 120_000),
        AttemptStatus::Failed { kind: FailureKind::ImagePull, .. }
    ));
}

fn pod_json_waiting(reason: &str) -> Value {
    pod(1, 1, waiting("Pending", reason))
}

#[test]
fn pod_reasons_that_are_not_the_tasks_fault_map_to_evicted_and_pod_deadlines_to_deadline() {
    let job: Job = serde_json::from_value(job(1, 1, json!([]))).unwrap();
    let status = |s: Value| pods::attempt_status(&job, Some(&serde_json::from_value(pod(1, 1, s)).unwrap()), 0, 0);
    let kind = |s: AttemptStatus| match s {
        AttemptStatus::Failed { kind, .. } => Some(kind),
        _ => None,
    };
    let preempted = json!({"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True"}], "containerStatuses": terminated("Error", 143)["containerStatuses"]});
    assert_eq!(kind(status(preempted)), Some(FailureKind::Evicted));
    assert_eq!(kind(status(json!({"phase": "Failed", "reason": "Shutdown"}))), Some(FailureKind::Evicted));
    assert_eq!(kind(status(json!({"phase": "Failed", "reason": "DeadlineExceeded"}))), Some(FailureKind::DeadlineExceeded));
    // A zero exit in a failed pod is still a failure, never a success.
    assert_eq!(kind(status(json!({"phase": "Failed"}))), Some(FailureKind::Error));
}

#[tokio::test]
async fn status_changes_are_reported_as_they_happen_and_vanished_jobs_as_lost() {
    let mut collections = empty();
    collections[1].1.extend([job(1, 1, json!([])), job(2, 1, json!([]))]);
    collections[2].1.push(pod(1, 1, json!({"phase": "Pending"})));
    let (fake, backend) = backend(collections).await;
    let first = backend.pending_events(10).await.unwrap();
    assert_eq!(first.iter().map(|e| e.status.clone()).collect::<Vec<_>>(), [AttemptStatus::Pending, AttemptStatus::Pending]);
    backend.ack_events(&first);

    fake.apply(MANAGED_PODS, pod(1, 1, json!({"phase": "Running"})));
    let running = eventually(&backend, |e| !e.is_empty()).await;
    assert_eq!(running.iter().map(|e| (e.task_id.0, e.status.clone())).collect::<Vec<_>>(), [(1, AttemptStatus::Running)]);
    backend.ack_events(&running);

    // Deleted by us: no event. Deleted by someone else: lost.
    backend.stop(TaskId(1), 1).await.unwrap();
    fake.delete(JOBS, "flotilla-1-1");
    fake.delete(JOBS, "flotilla-2-1");
    let lost = eventually(&backend, |e| !e.is_empty()).await;
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].task_id, TaskId(2));
    assert!(matches!(lost[0].status, AttemptStatus::Failed { kind: FailureKind::Lost, .. }));
    backend.ack_events(&lost);
    assert!(backend.pending_events(10).await.unwrap().is_empty());
    assert!(backend.attempts().await.unwrap().is_empty());
}

async fn eventually(backend: &KubeBackend, done: impl Fn(&[AttemptEvent]) -> bool) -> Vec<AttemptEvent> {
    for _ in 0..500 {
        let events = backend.pending_events(10).await.unwrap();
        if done(&events) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5 s");
}
