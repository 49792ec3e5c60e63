//! The kubelet: what a node's agent does to its pods. The test drives it per pod (running,
//! succeeded, failed, waiting, evicted, log lines); on its own it only ends deleted pods
//! whose grace period is over, and only on a Ready node whose heartbeats go on.

use serde_json::{json, Value};

use crate::controllers::kubelet_alive;
use crate::kinds::Kind;
use crate::state::State;
use crate::util::{is_deleting, is_terminal, rfc3339, set_condition, str_at};

/// The state each container is given, by container name.
type ContainerState<'a> = Box<dyn Fn(&str) -> Value + 'a>;

/// A pod state the test sets through the kubelet.
#[derive(Clone, Debug, PartialEq)]
pub enum PodState {
    /// Every container running and ready.
    Running,
    /// Every container exited 0.
    Succeeded,
    /// The task container exited with this code (`reason` Error).
    Failed { exit_code: i32 },
    /// The task container was OOM-killed (exit code 137).
    OomKilled,
    /// Containers waiting, e.g. `ImagePullBackOff` / `ErrImagePull` with the puller's message.
    Waiting { reason: String, message: String },
    /// Evicted by the kubelet (node pressure): phase Failed, reason Evicted, DisruptionTarget.
    Evicted { message: String },
}

/// Why the kubelet could not act.
#[derive(Clone, Debug, PartialEq)]
pub enum KubeletError {
    NoSuchPod(String),
    /// The pod is not bound to a node yet.
    NotScheduled(String),
    /// The pod's node is not Ready or stopped posting status: its kubelet cannot report.
    NodeDown(String),
}

impl std::fmt::Display for KubeletError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeletError::NoSuchPod(p) => write!(f, "no pod {p}"),
            KubeletError::NotScheduled(p) => write!(f, "pod {p} is not bound to a node"),
            KubeletError::NodeDown(n) => write!(f, "node {n} is not Ready or stopped posting status"),
        }
    }
}

impl std::error::Error for KubeletError {}

/// Sets `pod`'s status as its kubelet would report `to`.
pub fn set_pod_state(state: &mut State, namespace: &str, name: &str, to: &PodState, now_ms: u64) -> Result<(), KubeletError> {
    let pod = state.get(Kind::Pod, namespace, name).ok_or_else(|| KubeletError::NoSuchPod(format!("{namespace}/{name}")))?;
    let node = str_at(&pod, &["spec", "nodeName"]).unwrap_or_default().to_string();
    if node.is_empty() {
        return Err(KubeletError::NotScheduled(format!("{namespace}/{name}")));
    }
    if !kubelet_alive(state, &node) {
        return Err(KubeletError::NodeDown(node));
    }
    let mut p = (*pod).clone();
    apply_state(&mut p, to, now_ms);
    state.store.put(Kind::Pod, p);
    Ok(())
}

fn apply_state(p: &mut Value, to: &PodState, now_ms: u64) {
    let now = rfc3339(now_ms);
    let started = p["status"]["startTime"].as_str().map(str::to_string).unwrap_or_else(|| now.clone());
    p["status"]["startTime"] = json!(started);
    p["status"]["hostIP"] = json!("10.0.0.1");
    p["status"]["podIP"] = json!("10.1.0.1");
    let containers: Vec<(String, String)> = p["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c["name"].as_str().unwrap_or_default().to_string(), c["image"].as_str().unwrap_or_default().to_string()))
        .collect();
    let first = containers.first().map(|c| c.0.clone()).unwrap_or_default();
    let terminated = |exit_code: i32, reason: &str| json!({"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": now}});
    let (phase, ready, container_state): (&str, bool, ContainerState) = match to {
        PodState::Running => ("Running", true, Box::new(|_| json!({"running": {"startedAt": started}}))),
        PodState::Succeeded => ("Succeeded", false, Box::new(|_| terminated(0, "Completed"))),
        PodState::Failed { exit_code } => {
            let code = *exit_code;
            let first = first.clone();
            ("Failed", false, Box::new(move |c| if c == first { terminated(code, "Error") } else { terminated(0, "Completed") }))
        }
        PodState::OomKilled => {
            let first = first.clone();
            ("Failed", false, Box::new(move |c| if c == first { terminated(137, "OOMKilled") } else { terminated(0, "Completed") }))
        }
        PodState::Waiting { reason, message } => {
            let w = json!({"waiting": {"reason": reason, "message": message}});
            ("Pending", false, Box::new(move |_| w.clone()))
        }
        PodState::Evicted { message } => {
            p["status"]["reason"] = json!("Evicted");
            p["status"]["message"] = json!(message);
            set_condition(p, "DisruptionTarget", "True", "TerminationByKubelet", message, &now);
            ("Failed", false, Box::new(|_| terminated(137, "ContainerStatusUnknown")))
        }
    };
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(name, image)| {
            let restarts = p["status"]["containerStatuses"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["name"] == name.as_str()))
                .and_then(|c| c["restartCount"].as_u64())
                .unwrap_or(0);
            json!({"name": name, "image": image, "imageID": format!("{image}@sha256:0"), "ready": ready, "started": ready,
                "restartCount": restarts, "state": container_state(name)})
        })
        .collect();
    p["status"]["phase"] = json!(phase);
    p["status"]["containerStatuses"] = json!(statuses);
    let (ready_status, ready_reason) = match phase {
        "Running" => ("True", ""),
        "Succeeded" | "Failed" => ("False", "PodCompleted"),
        _ => ("False", "ContainersNotReady"),
    };
    set_condition(p, "PodScheduled", "True", "", "", &now);
    set_condition(p, "Initialized", "True", "", "", &now);
    set_condition(p, "ContainersReady", ready_status, ready_reason, "", &now);
    set_condition(p, "Ready", ready_status, ready_reason, "", &now);
}

/// Ends deleted pods whose grace period is over, on nodes whose kubelet is alive: the
/// containers are killed (exit 137, phase Failed unless already terminal) and the pod is
/// removed (once its finalizers are gone).
pub fn end_deleted_pods(state: &mut State, now_ms: u64) {
    let due: Vec<_> = state
        .store
        .objects(Kind::Pod)
        .values()
        .filter(|p| is_deleting(p) && p["metadata"]["deletionGracePeriodSeconds"].as_u64().unwrap_or(0) > 0)
        .filter(|p| State::grace_deadline_ms(p) <= now_ms)
        .filter(|p| p["spec"]["nodeName"].as_str().is_some_and(|n| kubelet_alive(state, n)))
        .cloned()
        .collect();
    for pod in due {
        let mut p = (*pod).clone();
        if !is_terminal(&p) {
            apply_state(&mut p, &PodState::Failed { exit_code: 137 }, now_ms);
        }
        p["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        state.write(Kind::Pod, p);
    }
}
