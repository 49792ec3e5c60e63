//! Fixtures shared by the API server's own tests.

#![allow(dead_code)]

use std::time::Duration;

use flotilla_kubetest::{ApiServer, Options};
use serde_json::{json, Value};

pub async fn server() -> ApiServer {
    ApiServer::start(Options { manual_clock: true, ..Options::default() }).await
}

pub async fn bare() -> ApiServer {
    ApiServer::start(Options { manual_clock: true, ..Options::bare() }).await
}

pub fn node(name: &str, cpu: &str, gpu: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"allocatable": {"cpu": cpu, "memory": "64Gi", "nvidia.com/gpu": gpu, "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})
}

pub fn pod(namespace: &str, name: &str, labels: Value, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": "busybox"}]},
        "status": {"phase": phase}})
}

/// A Job of one pod pinned to `node`, with `spec` merged in.
pub fn job(namespace: &str, name: &str, node: &str, spec: Value) -> Value {
    let mut j = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"app": name}}, "spec": {
            "restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "task", "image": "busybox", "resources": {"requests": {"cpu": "1"}}}]}}}});
    for (k, v) in spec.as_object().cloned().unwrap_or_default() {
        j["spec"][k] = v;
    }
    j
}

pub fn namespace(name: &str, enforce: Option<&str>) -> Value {
    let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    if let Some(level) = enforce {
        ns["metadata"]["labels"] = json!({"pod-security.kubernetes.io/enforce": level});
    }
    ns
}

/// Polls `f` every 10 ms for up to 10 s.
pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1000 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not reached in 10 s: {what}");
}

pub fn condition<'a>(o: &'a Value, type_: &str) -> Option<&'a Value> {
    o["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}
