//! Fixtures for the Kubernetes backend's tests, against the in-process API server of
//! `flotilla-kubetest` (real resourceVersions, watches that expire with 410, selectors,
//! paging, deletes that propagate, a Job controller, a scheduler, node lifecycle and a
//! kubelet the test drives).
//!
//! A test starts a server with [`cluster`] (every controller on, manual clock) or
//! [`seeded`] (the API alone: objects change only when the test changes them), seeds it,
//! and builds a backend on it with [`backend`]. Declared from `tests.rs` so that the
//! backend's own modules stay untouched; another test file reaches it as
//! `super::tests::support`.

use std::time::Duration;

use flotilla_api::v1::{LeasedTask, ResourceAmounts};
use serde_json::{json, Value};

pub(crate) use flotilla_kubetest::{ApiServer, DeleteOptions, Kind, Options, PodState, POD_SECURITY_ENFORCE};

use crate::backend::{AttemptEvent, ClusterBackend};
use crate::kube::{pods, KubeBackend, KubeBackendConfig};

/// The installation the tests' executor belongs to.
pub(crate) const INSTALLATION: &str = "0123456789abcdef";

/// The cluster the backend's tests name.
pub(crate) const CLUSTER: &str = "eks-us-east";
/// The namespace of queue `research` (the leases' queue).
pub(crate) const NAMESPACE: &str = "flotilla-research";

/// A server with every controller on and a manual clock, holding `objects`.
pub(crate) async fn cluster(objects: Vec<Value>) -> ApiServer {
    start(Options { manual_clock: true, ..Options::default() }, objects).await
}

/// A server that only stores and serves (no controller, no kubelet), holding `objects`:
/// for tests that set Jobs and pods by hand.
pub(crate) async fn seeded(objects: Vec<Value>) -> ApiServer {
    start(Options { manual_clock: true, ..Options::bare() }, objects).await
}

pub(crate) async fn start(options: Options, objects: Vec<Value>) -> ApiServer {
    let server = ApiServer::start(options).await;
    for o in objects {
        server.apply(o);
    }
    server
}

/// A backend with [`settings`] on `server`, its watches listed.
pub(crate) async fn backend(server: &ApiServer) -> KubeBackend {
    backend_with(server, settings()).await
}

pub(crate) async fn backend_with(server: &ApiServer, config: KubeBackendConfig) -> KubeBackend {
    let backend = KubeBackend::new(server.client(), CLUSTER, INSTALLATION, config);
    backend.wait_ready(Duration::from_secs(10)).await.unwrap();
    backend
}

/// Polls the backend's pending events until `done` holds (at most 5 s).
pub(crate) async fn eventually(backend: &KubeBackend, done: impl Fn(&[AttemptEvent]) -> bool) -> Vec<AttemptEvent> {
    for _ in 0..500 {
        let events = backend.pending_events(10).await.unwrap();
        if done(&events) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5 s");
}

/// The name of the newest pod the Job controller made for attempt `attempt` of `task_id`.
pub(crate) fn pod_of(server: &ApiServer, task_id: u64, attempt: u32) -> String {
    let pods = server.pods_of_job(NAMESPACE, &job_of(task_id, attempt));
    pods.last().and_then(|p| p["metadata"]["name"].as_str()).expect("the Job has a pod").to_string()
}

/// The name of the Job of attempt `attempt` of `task_id` (this installation's).
pub(crate) fn job_of(task_id: u64, attempt: u32) -> String {
    crate::kube::jobs::job_name(INSTALLATION, flotilla_model::TaskId(task_id), attempt)
}

/// Facts for the status mapping: a Ready node, no pending timeout.
pub(crate) fn facts(now_ms: u64, image_pull_failure_after_ms: u64) -> pods::Facts {
    pods::Facts {
        now_ms,
        image_pull_failure_after_ms,
        node_lost_after_ms: 300_000,
        pending_timeout_ms: 0,
        node: pods::NodeHealth::Ready,
        node_name: "n1".into(),
        node_loss_held: None,
    }
}

/// `h100_node` without the disk-pressure taint: a node the scheduler binds task pods to.
pub(crate) fn healthy_h100_node() -> Value {
    let mut n = h100_node();
    n["spec"]["taints"] = json!([{"key": "dedicated", "value": "training", "effect": "NoSchedule"}]);
    n
}

pub(crate) fn settings() -> KubeBackendConfig {
    KubeBackendConfig {
        prices: [("p5.48xlarge".to_string(), 98.32), ("n2-standard-16".to_string(), 0.87)].into(),
        spot_prices: [("n2-standard-16".to_string(), 0.21)].into(),
        image_pull_failure_after: Duration::from_secs(120),
        ..Default::default()
    }
}

pub(crate) fn h100_node() -> Value {
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

pub(crate) fn gke_spot_node(name: &str, ready: &str) -> Value {
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

pub(crate) fn other_pod(name: &str, node: &str, cpu: &str, memory: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "kube-system"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]},
        "status": {"phase": "Running"}
    })
}

pub(crate) fn managed_labels(task_id: u64, attempt: u32) -> Value {
    json!({"flotilla.io/task-id": task_id.to_string(), "flotilla.io/attempt": attempt.to_string(), "app.kubernetes.io/managed-by": "flotilla",
           "flotilla.io/installation": INSTALLATION})
}

pub(crate) fn job(task_id: u64, attempt: u32, conditions: Value) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_of(task_id, attempt), "namespace": "flotilla-research", "labels": managed_labels(task_id, attempt)},
        "spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/hostname": "ip-10-0-1-23"}, "containers": [{"name": "task"}]}}},
        "status": {"conditions": conditions}
    })
}

pub(crate) fn pod(task_id: u64, attempt: u32, status: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{}-x7k2p", job_of(task_id, attempt)), "namespace": "flotilla-research", "labels": managed_labels(task_id, attempt),
                     "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"nodeName": "ip-10-0-1-23.ec2.internal", "containers": [{"name": "task"}]},
        "status": status
    })
}

pub(crate) fn terminated(reason: &str, exit_code: i32) -> Value {
    json!({"phase": "Failed", "containerStatuses": [{"name": "task", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"reason": reason, "exitCode": exit_code, "message": "last words"}}}]})
}

pub(crate) fn waiting(phase: &str, reason: &str) -> Value {
    json!({"phase": phase, "containerStatuses": [{"name": "task", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": reason, "message": "pull access denied"}}}]})
}

pub(crate) fn lease() -> LeasedTask {
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

pub(crate) fn lease_at(pod_security: &str, run_as_user: Option<i64>) -> LeasedTask {
    LeasedTask { pod_security: pod_security.into(), run_as_user, ..lease() }
}
