//! The Kubernetes backend against a fake API server (axum on 127.0.0.1:0): lists, watches
//! (driven by the test), creates and deletes, recorded for assertions. Like the real one,
//! it admits a Job whatever its pod template, and its "Job controller" runs Pod Security
//! admission on the Job's pod against the namespace's `enforce` label: a refused pod
//! becomes a `FailedCreate` event on the Job with the API server's message.

use std::collections::BTreeMap;
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
    /// Namespaces by name, with their `pod-security.kubernetes.io/enforce` level ("" if none).
    namespaces: BTreeMap<String, String>,
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
const EVENTS: &str = "events";

impl Fake {
    async fn start(collections: [(&'static str, Vec<Value>); 4]) -> (Arc<Fake>, Client) {
        let (watch, _) = broadcast::channel(1024);
        let mut collections: BTreeMap<_, _> = collections.into();
        collections.insert(EVENTS, Vec::new());
        let fake = Arc::new(Fake { state: Mutex::new(FakeState { collections, ..Default::default() }), watch });
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
    fn apply(&self, collection: &'static str, object: Value) {
        let mut state = self.state.lock().unwrap();
        self.apply_locked(&mut state, collection, object);
    }

    fn apply_locked(&self, state: &mut FakeState, collection: &'static str, mut object: Value) {
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
        "/api/v1/pods" if query.contains("installation!=") => Some(OTHER_PODS),
        "/api/v1/pods" => Some(MANAGED_PODS),
        "/api/v1/events" => Some(EVENTS),
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
            let enforce = body["metadata"]["labels"][POD_SECURITY_ENFORCE].as_str().unwrap_or_default().to_string();
            state.namespaces.insert(body["metadata"]["name"].as_str().unwrap().to_string(), enforce);
            json_response(StatusCode::CREATED, body)
        }
        (Method::POST, ["apis", "batch", "v1", "namespaces", ns, "jobs"]) => {
            if let Some((code, reason)) = state.refuse_creates {
                return status_response(code, reason, "spec.template.spec.containers[0].image: Required value");
            }
            let Some(enforce) = state.namespaces.get(*ns).cloned() else {
                return status_response(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
            };
            let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if state.collections.get(JOBS).is_some_and(|jobs| jobs.iter().any(|j| j["metadata"]["name"] == name.as_str())) {
                return status_response(409, "AlreadyExists", &format!("jobs.batch \"{name}\" already exists"));
            }
            let mut job = body.clone();
            let uid = format!("uid-{name}-{}", state.resource_version);
            job["metadata"]["uid"] = json!(uid);
            fake.apply_locked(&mut state, JOBS, job.clone());
            // The Job controller creates the pod; Pod Security admission may refuse it.
            let violations = pod_security_violations(&body["spec"]["template"]["spec"], &enforce);
            if !violations.is_empty() {
                let message = format!(
                    "Error creating: pods \"{name}-x7k2p\" is forbidden: violates PodSecurity \"{enforce}:latest\": {}",
                    violations.join(", ")
                );
                let event = json!({
                    "apiVersion": "v1", "kind": "Event", "type": "Warning", "reason": "FailedCreate", "message": message, "count": 1,
                    "metadata": {"name": format!("{name}.17a2b3c4d5e6f708"), "namespace": ns},
                    "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "namespace": ns, "name": name, "uid": uid}
                });
                fake.apply_locked(&mut state, EVENTS, event);
            }
            json_response(StatusCode::CREATED, job)
        }
        (Method::DELETE, ["apis", "batch", "v1", "namespaces", _, "jobs", name]) => json_response(
            StatusCode::OK,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": name}}),
        ),
        _ => status_response(405, "MethodNotAllowed", "not faked"),
    }
}

const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// Pod Security admission of a pod spec at `level`, as the API server words its findings
/// (the checks of the standards that Flotilla's pods touch): empty when admitted. No label
/// (or `privileged`) admits everything.
fn pod_security_violations(pod: &Value, level: &str) -> Vec<String> {
    let mut found = Vec::new();
    let containers = pod["containers"].as_array().cloned().unwrap_or_default();
    if !matches!(level, "baseline" | "restricted") {
        return found;
    }
    for c in &containers {
        if c["securityContext"]["privileged"] == json!(true) {
            found.push(format!("privileged (container {} must not set securityContext.privileged=true)", c["name"]));
        }
        if c["securityContext"]["capabilities"]["add"].as_array().is_some_and(|a| !a.is_empty()) {
            found.push(format!(
                "non-default capabilities (container {} must not include capabilities in securityContext.capabilities.add)",
                c["name"]
            ));
        }
    }
    if level != "restricted" {
        return found;
    }
    let pod_sc = &pod["securityContext"];
    let seccomp = |sc: &Value| matches!(sc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault" | "Localhost"));
    for c in &containers {
        let (name, sc) = (&c["name"], &c["securityContext"]);
        if sc["allowPrivilegeEscalation"] != json!(false) {
            found.push(format!(
                "allowPrivilegeEscalation != false (container {name} must set securityContext.allowPrivilegeEscalation=false)"
            ));
        }
        if !sc["capabilities"]["drop"].as_array().is_some_and(|d| d.contains(&json!("ALL"))) {
            found.push(format!("unrestricted capabilities (container {name} must set securityContext.capabilities.drop=[\"ALL\"])"));
        }
        if pod_sc["runAsNonRoot"] != json!(true) && sc["runAsNonRoot"] != json!(true) {
            found.push(format!("runAsNonRoot != true (pod or container {name} must set securityContext.runAsNonRoot=true)"));
        }
        if pod_sc["runAsUser"] == json!(0) || sc["runAsUser"] == json!(0) {
            found.push("runAsUser=0 (pod must not set runAsUser=0)".to_string());
        }
        if !seccomp(pod_sc) && !seccomp(sc) {
            found.push(format!("seccompProfile (pod or container {name} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"));
        }
    }
    found
}

/// The installation the tests' executor belongs to.
const INSTALLATION: &str = "0123456789abcdef";

/// Facts for the status mapping: a Ready node, no pending timeout.
fn facts(now_ms: u64, image_pull_failure_after_ms: u64) -> pods::Facts {
    pods::Facts {
        now_ms,
        image_pull_failure_after_ms,
        node_lost_after_ms: 300_000,
        pending_timeout_ms: 0,
        node: pods::NodeHealth::Ready,
        node_name: "n1".into(),
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
    backend_with(collections, settings()).await
}

async fn backend_with(collections: [(&'static str, Vec<Value>); 4], config: KubeBackendConfig) -> (Arc<Fake>, KubeBackend) {
    let (fake, client) = Fake::start(collections).await;
    let backend = KubeBackend::new(client, "eks-us-east", INSTALLATION, config);
    backend.wait_ready(Duration::from_secs(10)).await.unwrap();
    // The fake replays nothing: wait until all five watches listen before changing objects.
    for _ in 0..500 {
        if fake.watch.receiver_count() >= 5 {
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
    json!({"flotilla.io/task-id": task_id.to_string(), "flotilla.io/attempt": attempt.to_string(), "app.kubernetes.io/managed-by": "flotilla",
           "flotilla.io/installation": INSTALLATION})
}

fn job(task_id: u64, attempt: u32, conditions: Value) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": format!("flotilla-01234567-{task_id}-{attempt}"), "namespace": "flotilla-research", "labels": managed_labels(task_id, attempt)},
        "spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/hostname": "ip-10-0-1-23"}, "containers": [{"name": "task"}]}}},
        "status": {"conditions": conditions}
    })
}

fn pod(task_id: u64, attempt: u32, status: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("flotilla-01234567-{task_id}-{attempt}-x7k2p"), "namespace": "flotilla-research", "labels": managed_labels(task_id, attempt),
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
    let namespace_labels = json!({
        "app.kubernetes.io/managed-by": "flotilla",
        "pod-security.kubernetes.io/enforce": "baseline",
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/audit": "restricted"
    });
    assert_eq!(requests[1].body["metadata"], json!({"name": "flotilla-research", "labels": namespace_labels}));
    let labels = json!({
        "flotilla.io/task-id": "42", "flotilla.io/attempt": "3", "flotilla.io/queue": "research",
        "flotilla.io/task-set": "llama-sweep", "flotilla.io/gang-id": "40", "app.kubernetes.io/managed-by": "flotilla",
        "flotilla.io/installation": INSTALLATION
    });
    let expected = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "flotilla-01234567-42-3",
            "namespace": "flotilla-research",
            "labels": labels,
            "annotations": {"flotilla.io/task-name": "train-7", "flotilla.io/task-set": "llama-sweep", "flotilla.io/priority-class": "batch",
                            "flotilla.io/pending-timeout-ms": "600000"}
        },
        "spec": {
            "backoffLimit": 0,
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
            "ttlSecondsAfterFinished": 900,
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
                    "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
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
                        "volumeMounts": [{"name": "flotilla-checkpoint", "mountPath": "/flotilla/checkpoint"}],
                        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
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
    let job = serde_json::to_value(jobs::job_for_lease(&lease(), "h", &[], INSTALLATION, &config)).unwrap();
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
    assert_eq!(requests[0].path, "/apis/batch/v1/namespaces/flotilla-research/jobs/flotilla-01234567-42-3");
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
    assert_eq!(pods::attempt_status(&job, Some(&pod), &facts(created_ms + 119_000, 120_000)), AttemptStatus::Pending);
    assert!(matches!(
        pods::attempt_status(&job, Some(&pod), &facts(created_ms + 120_000, 120_000)),
        AttemptStatus::Failed { kind: FailureKind::ImagePull, .. }
    ));
    let invalid: Pod = serde_json::from_value(pod_json_waiting("InvalidImageName")).unwrap();
    assert!(matches!(
        pods::attempt_status(&job, Some(&invalid), &facts(created_ms, 120_000)),
        AttemptStatus::Failed { kind: FailureKind::ImagePull, .. }
    ));
}

fn pod_json_waiting(reason: &str) -> Value {
    pod(1, 1, waiting("Pending", reason))
}

#[test]
fn pod_reasons_that_are_not_the_tasks_fault_map_to_evicted_and_pod_deadlines_to_deadline() {
    let job: Job = serde_json::from_value(job(1, 1, json!([]))).unwrap();
    let status = |s: Value| pods::attempt_status(&job, Some(&serde_json::from_value(pod(1, 1, s)).unwrap()), &facts(0, 0));
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
    fake.delete(JOBS, "flotilla-01234567-1-1");
    fake.delete(JOBS, "flotilla-01234567-2-1");
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

fn lease_at(pod_security: &str, run_as_user: Option<i64>) -> LeasedTask {
    LeasedTask { pod_security: pod_security.into(), run_as_user, ..lease() }
}

fn pod_spec_of(task: &LeasedTask) -> Value {
    let job = serde_json::to_value(jobs::job_for_lease(task, "h", &[], INSTALLATION, &KubeBackendConfig::default())).unwrap();
    job["spec"]["template"]["spec"].clone()
}

#[test]
fn a_task_pod_meets_the_restricted_standard_unless_its_task_asks_for_baseline_or_privileged() {
    // A lease from a server older than the field (empty) and an unknown level both mean
    // restricted: never weaker than what the scheduler meant.
    for level in ["", "restricted", "lenient"] {
        let pod = pod_spec_of(&lease_at(level, None));
        assert_eq!(pod["securityContext"], json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}), "{level:?}");
        assert_eq!(pod["containers"][0]["securityContext"], json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}));
        assert_eq!(pod_security_violations(&pod, "restricted"), Vec::<String>::new(), "{level:?} meets the restricted standard");
    }
    let restricted_uid = pod_spec_of(&lease_at("restricted", Some(65532)));
    assert_eq!(restricted_uid["securityContext"]["runAsUser"], json!(65532));
    assert_eq!(pod_security_violations(&restricted_uid, "restricted"), Vec::<String>::new());

    let baseline = pod_spec_of(&lease_at("baseline", Some(0)));
    assert_eq!(baseline["securityContext"], json!({"runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}}));
    assert_eq!(baseline["containers"][0]["securityContext"], json!({"allowPrivilegeEscalation": false}));
    assert_eq!(pod_security_violations(&baseline, "baseline"), Vec::<String>::new());
    assert!(!pod_security_violations(&baseline, "restricted").is_empty(), "baseline is more than restricted admits");

    let privileged = pod_spec_of(&lease_at("privileged", None));
    assert_eq!(privileged.get("securityContext"), None);
    assert_eq!(privileged["containers"][0]["securityContext"], json!({"privileged": true}));
    assert_eq!(pod_security_violations(&privileged, "privileged"), Vec::<String>::new());
    assert!(pod_security_violations(&privileged, "baseline")[0].starts_with("privileged (container \"task\""));
}

#[tokio::test]
async fn namespaces_enforce_the_configured_level_and_a_default_task_is_admitted_under_restricted() {
    let config = KubeBackendConfig { namespace_pod_security: flotilla_model::PodSecurity::Restricted, ..settings() };
    let (fake, backend) = backend_with(empty(), config).await;
    backend.start(lease()).await.unwrap();
    let requests = fake.requests();
    let labels = &requests[1].body["metadata"]["labels"];
    assert_eq!(labels[POD_SECURITY_ENFORCE], "restricted");
    assert_eq!(
        (&labels["pod-security.kubernetes.io/warn"], &labels["pod-security.kubernetes.io/audit"]),
        (&json!("restricted"), &json!("restricted"))
    );
    // The Job is seen; its pod was admitted, so the attempt is pending, not failed.
    let events = eventually(&backend, |e| !e.is_empty()).await;
    assert_eq!(events.iter().map(|e| (e.task_id.0, e.status.clone())).collect::<Vec<_>>(), [(42, AttemptStatus::Pending)]);
    assert!(fake.state.lock().unwrap().collections[EVENTS].is_empty(), "no pod was refused");
}

#[tokio::test]
async fn a_task_pod_the_namespace_level_forbids_fails_its_attempt_once_with_the_api_servers_message() {
    // Namespaces enforce baseline (the default): a privileged task's Job is created, but
    // admission refuses its pod, and the Job controller would retry that for ever.
    let (fake, backend) = backend(empty()).await;
    backend.start(lease_at("privileged", None)).await.unwrap();
    let events = eventually(&backend, |e| e.iter().any(|e| e.status.is_terminal())).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let AttemptStatus::Failed { kind, message, .. } = &events[0].status else { panic!("{events:?}") };
    assert_eq!(*kind, FailureKind::StartFailed);
    assert!(
        message.starts_with("the API server refused the pod of Job flotilla-research/flotilla-01234567-42-3: Error creating: pods")
            && message.contains("violates PodSecurity \"baseline:latest\": privileged (container \"task\""),
        "{message}"
    );
    assert_eq!((events[0].task_id, events[0].attempt), (TaskId(42), 3));
    backend.ack_events(&events);
    assert!(backend.pending_events(10).await.unwrap().is_empty(), "reported once");
    let attempts = backend.attempts().await.unwrap();
    assert_eq!(attempts.iter().map(|a| a.phase.as_str()).collect::<Vec<_>>(), ["failed"], "the scheduler will have it stopped");
    let creates = fake.requests().iter().filter(|r| r.method == Method::POST && r.path.ends_with("/jobs")).count();
    assert_eq!(creates, 2, "one Job create before and one after creating the namespace, none retried");

    // A baseline task in the same namespace is admitted.
    backend.start(LeasedTask { task_id: 43, ..lease_at("baseline", None) }).await.unwrap();
    let events = eventually(&backend, |e| e.iter().any(|e| e.task_id == TaskId(43))).await;
    assert_eq!(events.iter().map(|e| (e.task_id.0, e.status.clone())).collect::<Vec<_>>(), [(43, AttemptStatus::Pending)]);
}
