//! The status of an attempt, read from its Job, its pod and the pod's node.
//!
//! Checked in this order; the first that applies decides:
//!
//! | what Kubernetes shows                                        | status                        |
//! | ------------------------------------------------------------ | ----------------------------- |
//! | Job condition `Failed` or `FailureTarget` with reason `DeadlineExceeded`, or pod reason `DeadlineExceeded` | failed `DeadlineExceeded` |
//! | pod `Succeeded`; no pod and Job condition `Complete` or `SuccessCriteriaMet` | succeeded |
//! | pod `Failed`, reason `Evicted`, `Preempting`, `Shutdown`, `NodeShutdown`, `Terminated`, `NodeAffinity`, `UnexpectedAdmissionError`, `OutOf*`, or pod condition `DisruptionTarget` | failed `Evicted` |
//! | pod `Failed`, container terminated `OOMKilled`               | failed `OOMKilled` + exit code |
//! | pod `Failed`, container exit code non-zero                   | failed `Error` + exit code    |
//! | the pod's node (or the node the Job is pinned to) not `Ready` for `node_lost_after` (unless its zone or the whole cluster is disrupted: see `nodes::Disruption`), or deleted | failed `Lost` |
//! | pod being deleted (not by Flotilla) whose containers all stopped | failed `Evicted` (the `DisruptionTarget` reason when there is one) |
//! | no pod, Job condition `Failed`/`FailureTarget` reason `PodFailurePolicy` (our rule: the pod had `DisruptionTarget`) | failed `Evicted` |
//! | no pod, Job condition `Failed`/`FailureTarget` for another reason (`BackoffLimitExceeded`) | failed `Error` |
//! | container waiting `ErrImagePull`/`ImagePullBackOff` longer than `image_pull_failure_after`, or `InvalidImageName` at once | failed `ImagePullBackOff` |
//! | container waiting `CreateContainerConfigError`/`CreateContainerError` that long | failed `StartFailed` |
//! | pod `Running`, or `Unknown`, or being deleted with a container still running | running |
//! | pod `Pending` (or no pod) longer than the task's `pendingTimeout` since the Job was created | failed `Unschedulable`, with the scheduler's message |
//! | pod `Pending`, or no pod yet                                 | pending                       |
//!
//! A pod being deleted still counts as running while a container runs: its grace period is
//! for checkpointing, and a retry must not start beside it (invariant 2). One stuck on a node
//! that stopped answering is released by the node rule, after `node_lost_after`.

use flotilla_model::{AttemptStatus, FailureKind};
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStateWaiting, Pod};

use super::jobs::{CONTAINER_NAME, DISRUPTION_TARGET};

/// The health of the node an attempt's pod is on (or pinned to).
#[derive(Clone, Debug, PartialEq)]
pub enum NodeHealth {
    Ready,
    /// `Ready` not `True` since this time (ms since the epoch), with the condition's reason
    /// and message.
    NotReady {
        since_ms: u64,
        why: String,
    },
    /// No Node object of that name.
    Missing,
    /// Not known (no node named yet).
    Unknown,
}

/// What else [`attempt_status`] needs besides the Job and its pod.
#[derive(Clone, Debug)]
pub struct Facts {
    /// Wall-clock time, ms since the epoch.
    pub now_ms: u64,
    pub image_pull_failure_after_ms: u64,
    pub node_lost_after_ms: u64,
    /// The task's `pendingTimeout`.
    pub pending_timeout_ms: u64,
    pub node: NodeHealth,
    /// The node's name, for messages.
    pub node_name: String,
    /// Set when the node's zone or the whole cluster is disrupted ([`super::nodes::Disruption`]):
    /// a node not `Ready` there is not presumed lost, however long.
    pub node_loss_held: Option<String>,
}

/// The status of one attempt. `pod` is the Job's newest pod, if any.
pub fn attempt_status(job: &Job, pod: Option<&Pod>, facts: &Facts) -> AttemptStatus {
    let failed = |kind, exit_code, message: String| AttemptStatus::Failed { kind, exit_code, message };
    let job_condition = |types: &[&str]| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| types.contains(&c.type_.as_str()) && c.status == "True"))
    };
    let job_failed = job_condition(&["Failed", "FailureTarget"]);
    if let Some(c) = job_failed.filter(|c| c.reason.as_deref() == Some("DeadlineExceeded")) {
        return failed(
            FailureKind::DeadlineExceeded,
            None,
            c.message.clone().unwrap_or_else(|| "Job was active longer than its deadline".into()),
        );
    }
    let phase = pod.and_then(|p| p.status.as_ref()?.phase.as_deref()).unwrap_or("Pending");
    match (pod, phase) {
        (Some(_), "Succeeded") => return AttemptStatus::Succeeded,
        (Some(p), "Failed") => return failed_pod(p),
        _ => {}
    }
    if let Some(lost) = node_lost(facts) {
        return failed(FailureKind::Lost, None, lost);
    }
    let Some(pod) = pod else {
        if job_condition(&["Complete", "SuccessCriteriaMet"]).is_some() {
            return AttemptStatus::Succeeded;
        }
        if let Some(c) = job_failed {
            return job_failure(c);
        }
        return pending_too_long(job, None, facts).map_or(AttemptStatus::Pending, |m| failed(FailureKind::Unschedulable, None, m));
    };
    if pod.metadata.deletion_timestamp.is_some() && !container_running(pod) && phase != "Pending" {
        return failed(FailureKind::Evicted, terminated(pod).map(|t| t.exit_code), deletion_message(pod));
    }
    match phase {
        "Running" | "Unknown" => match terminated(pod) {
            // The container died; the pod phase follows shortly.
            Some(t) if t.exit_code != 0 => failed_pod(pod),
            _ => AttemptStatus::Running,
        },
        _ => {
            let age_ms = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| facts.now_ms.saturating_sub(t.0.as_millisecond().max(0) as u64))
                .unwrap_or(0);
            let persisted = age_ms >= facts.image_pull_failure_after_ms;
            if let Some(w) = waiting(pod) {
                let reason = w.reason.as_deref().unwrap_or_default();
                let message = || format!("{reason}: {}", w.message.clone().unwrap_or_default()).trim_end_matches([':', ' ']).to_string();
                match reason {
                    "InvalidImageName" | "ErrImageNeverPull" => return failed(FailureKind::ImagePull, None, message()),
                    "ErrImagePull" | "ImagePullBackOff" if persisted => return failed(FailureKind::ImagePull, None, message()),
                    "CreateContainerConfigError" | "CreateContainerError" if persisted => {
                        return failed(FailureKind::StartFailed, None, message())
                    }
                    _ => {}
                }
            }
            pending_too_long(job, Some(pod), facts).map_or(AttemptStatus::Pending, |m| failed(FailureKind::Unschedulable, None, m))
        }
    }
}

/// Why the attempt's node counts as lost, if it does.
fn node_lost(facts: &Facts) -> Option<String> {
    let name = &facts.node_name;
    match &facts.node {
        NodeHealth::Missing => Some(format!("node {name} no longer exists")),
        NodeHealth::NotReady { .. } if facts.node_loss_held.is_some() => None,
        NodeHealth::NotReady { since_ms, why } if facts.now_ms.saturating_sub(*since_ms) >= facts.node_lost_after_ms => {
            let for_s = facts.now_ms.saturating_sub(*since_ms) / 1000;
            Some(format!("node {name} not ready for {for_s}s ({why}); presumed gone").replace(" ()", ""))
        }
        _ => None,
    }
}

/// A failed (or failing) Job without a pod left to read.
fn job_failure(c: &JobCondition) -> AttemptStatus {
    let reason = c.reason.clone().unwrap_or_default();
    let message = c.message.clone().unwrap_or_default();
    let text = format!("Job failed: {reason} {message}").trim().to_string();
    // Only our pod failure policy's rule fails a Job this way: the pod was disrupted.
    let kind = if reason == "PodFailurePolicy" && message.contains(DISRUPTION_TARGET) { FailureKind::Evicted } else { FailureKind::Error };
    AttemptStatus::Failed { kind, exit_code: None, message: text }
}

/// The message for an attempt pending longer than its task's `pendingTimeout` (counted
/// from the Job's creation: a pod never created counts too), if it is.
fn pending_too_long(job: &Job, pod: Option<&Pod>, facts: &Facts) -> Option<String> {
    let created_ms = job.metadata.creation_timestamp.as_ref()?.0.as_millisecond().max(0) as u64;
    let pending_ms = facts.now_ms.saturating_sub(created_ms);
    if facts.pending_timeout_ms == 0 || pending_ms < facts.pending_timeout_ms {
        return None;
    }
    let why = pod.and_then(pending_reason).unwrap_or_else(|| "no pod was created".to_string());
    Some(format!("pending for {}s (pendingTimeout {}s): {why}", pending_ms / 1000, facts.pending_timeout_ms / 1000))
}

/// What keeps a pod pending, in Kubernetes' words: the scheduler's `PodScheduled` message
/// ("0/4 nodes are available: ..."), else the container's waiting reason.
fn pending_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let unscheduled = status.conditions.as_ref().and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled" && c.status == "False"));
    if let Some(c) = unscheduled {
        return Some(format!("{}: {}", c.reason.clone().unwrap_or_else(|| "Unschedulable".into()), c.message.clone().unwrap_or_default()));
    }
    let w = waiting(pod)?;
    Some(
        format!("{}: {}", w.reason.clone().unwrap_or_default(), w.message.clone().unwrap_or_default())
            .trim_end_matches([':', ' '])
            .to_string(),
    )
}

/// True while the task container (or any container) has not terminated.
fn container_running(pod: &Pod) -> bool {
    let Some(statuses) = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()) else { return false };
    statuses.iter().any(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_none() && s.running.is_some()))
}

/// Why a pod is being deleted: its `DisruptionTarget` condition when Kubernetes set one.
fn deletion_message(pod: &Pod) -> String {
    let disruption = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == DISRUPTION_TARGET && c.status == "True"));
    match disruption {
        Some(c) => format!("{DISRUPTION_TARGET}: {} {}", c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default())
            .trim()
            .to_string(),
        None => "the pod was deleted outside Flotilla".to_string(),
    }
}

fn failed_pod(pod: &Pod) -> AttemptStatus {
    let status = pod.status.as_ref();
    let reason = status.and_then(|s| s.reason.as_deref()).unwrap_or_default();
    let pod_message = status.and_then(|s| s.message.clone()).unwrap_or_default();
    let disrupted =
        status.and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == DISRUPTION_TARGET && c.status == "True"));
    let failed = |kind, exit_code, message: String| AttemptStatus::Failed { kind, exit_code, message };
    let with_reason = |m: &str| if m.is_empty() { reason.to_string() } else { format!("{reason}: {m}") };
    if reason == "DeadlineExceeded" {
        return failed(FailureKind::DeadlineExceeded, None, with_reason(&pod_message));
    }
    // Not the task's fault: the node's kubelet, a node shutdown or a preemption took it away.
    let evicted = matches!(
        reason,
        "Evicted" | "Preempting" | "Shutdown" | "NodeShutdown" | "Terminated" | "NodeAffinity" | "UnexpectedAdmissionError"
    ) || reason.starts_with("OutOf");
    if evicted || disrupted {
        // An eviction through the API or the taint manager sets no pod reason, only the condition.
        let message = if pod_message.is_empty() && reason.is_empty() { deletion_message(pod) } else { with_reason(&pod_message) };
        return failed(FailureKind::Evicted, terminated(pod).map(|t| t.exit_code), message);
    }
    if let Some(t) = terminated(pod) {
        let detail = t.message.clone().unwrap_or_default();
        if t.reason.as_deref() == Some("OOMKilled") {
            return failed(
                FailureKind::OomKilled,
                Some(t.exit_code),
                format!("OOMKilled (exit code {}) {detail}", t.exit_code).trim().to_string(),
            );
        }
        let what = t.reason.clone().unwrap_or_else(|| "Error".into());
        return failed(FailureKind::Error, Some(t.exit_code), format!("{what} (exit code {}) {detail}", t.exit_code).trim().to_string());
    }
    if let Some(w) = waiting(pod).filter(|w| matches!(w.reason.as_deref(), Some("ErrImagePull" | "ImagePullBackOff" | "InvalidImageName")))
    {
        return failed(FailureKind::ImagePull, None, w.message.clone().or_else(|| w.reason.clone()).unwrap_or_default());
    }
    failed(FailureKind::Error, None, if pod_message.is_empty() { "pod failed".to_string() } else { with_reason(&pod_message) })
}

/// The task container's status (or the first one's), terminated state.
fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    task_container_status(pod)?.state.as_ref()?.terminated.as_ref()
}

fn waiting(pod: &Pod) -> Option<&ContainerStateWaiting> {
    task_container_status(pod)?.state.as_ref()?.waiting.as_ref()
}

fn task_container_status(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find(|c| c.name == CONTAINER_NAME).or_else(|| statuses.first())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const CREATED_MS: u64 = 1_735_689_600_000; // 2025-01-01T00:00:00Z, every object's creation time
    const MINUTE: u64 = 60_000;

    fn job(conditions: Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "flotilla-01234567-1-1", "creationTimestamp": "2025-01-01T00:00:00Z"},
            "status": {"conditions": conditions}
        }))
        .unwrap()
    }

    fn pod(status: Value, deleting: bool) -> Pod {
        let mut p = json!({"metadata": {"name": "p", "creationTimestamp": "2025-01-01T00:00:00Z"}, "spec": {"containers": [], "nodeName": "n1"}, "status": status});
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:05:00Z");
        }
        serde_json::from_value(p).unwrap()
    }

    fn facts(minutes: u64, node: NodeHealth) -> Facts {
        Facts {
            now_ms: CREATED_MS + minutes * MINUTE,
            image_pull_failure_after_ms: 2 * MINUTE,
            node_lost_after_ms: 5 * MINUTE,
            pending_timeout_ms: 10 * MINUTE,
            node,
            node_name: "n1".into(),
            node_loss_held: None,
        }
    }

    fn kind(s: &AttemptStatus) -> Option<FailureKind> {
        match s {
            AttemptStatus::Failed { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    fn message(s: &AttemptStatus) -> String {
        match s {
            AttemptStatus::Failed { message, .. } => message.clone(),
            other => format!("{other:?}"),
        }
    }

    fn running() -> Value {
        json!({"phase": "Running", "containerStatuses": [{"name": "task", "image": "i", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]})
    }

    fn not_ready_since(minutes_ago_of: u64) -> NodeHealth {
        NodeHealth::NotReady {
            since_ms: CREATED_MS + minutes_ago_of * MINUTE,
            why: "NodeStatusUnknown: Kubelet stopped posting node status.".into(),
        }
    }

    #[test]
    fn a_node_not_ready_in_a_disrupted_zone_is_never_presumed_lost_but_a_deleted_one_is() {
        let (job, pod) = (job(json!([])), pod(running(), false));
        let held = |node| Facts { node_loss_held: Some("3 of 4 nodes of zone \"z1\" are not Ready".into()), ..facts(60, node) };
        assert_eq!(attempt_status(&job, Some(&pod), &held(not_ready_since(0))), AttemptStatus::Running, "an hour not Ready");
        assert_eq!(kind(&attempt_status(&job, Some(&pod), &held(NodeHealth::Missing))), Some(FailureKind::Lost));
    }

    #[test]
    fn a_running_pod_on_a_node_not_ready_for_node_lost_after_is_lost_and_not_before() {
        let (job, pod) = (job(json!([])), pod(running(), false));
        assert_eq!(attempt_status(&job, Some(&pod), &facts(4, not_ready_since(0))), AttemptStatus::Running, "4 of 5 minutes");
        let lost = attempt_status(&job, Some(&pod), &facts(5, not_ready_since(0)));
        assert_eq!(kind(&lost), Some(FailureKind::Lost));
        assert!(
            message(&lost).contains("node n1 not ready for 300s (NodeStatusUnknown: Kubelet stopped posting node status.)"),
            "{lost:?}"
        );
        assert!(!FailureKind::Lost.counts_against_attempts());
        let gone = attempt_status(&job, Some(&pod), &facts(0, NodeHealth::Missing));
        assert_eq!((kind(&gone), message(&gone)), (Some(FailureKind::Lost), "node n1 no longer exists".to_string()));
        // A pod that finished before its node went away keeps its result.
        let done = pod_with_phase("Succeeded");
        assert_eq!(attempt_status(&job, Some(&done), &facts(9, not_ready_since(0))), AttemptStatus::Succeeded);
    }

    fn pod_with_phase(phase: &str) -> Pod {
        pod(json!({"phase": phase}), false)
    }

    #[test]
    fn a_pod_being_deleted_runs_until_its_containers_stop_then_is_evicted_with_the_disruption_reason() {
        let job = job(json!([]));
        let evicting = running();
        let deleting = pod(evicting, true);
        assert_eq!(
            attempt_status(&job, Some(&deleting), &facts(1, NodeHealth::Ready)),
            AttemptStatus::Running,
            "still in its grace period"
        );
        let stopped = pod(
            json!({"phase": "Running",
                   "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager", "message": "Taint manager: deleting due to NoExecute taint"}],
                   "containerStatuses": [{"name": "task", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 143}}}]}),
            true,
        );
        let s = attempt_status(&job, Some(&stopped), &facts(1, NodeHealth::Ready));
        assert_eq!(kind(&s), Some(FailureKind::Evicted));
        assert!(message(&s).starts_with("DisruptionTarget: DeletionByTaintManager Taint manager"), "{s:?}");
    }

    #[test]
    fn a_pod_failed_by_the_eviction_api_says_which_disruption_it_was() {
        // What a kubelet leaves after `POST pods/eviction` (seen on a real API server): no pod
        // reason, only the condition the API server set, and the container killed.
        let evicted = pod(
            json!({"phase": "Failed",
                   "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}],
                   "containerStatuses": [{"name": "task", "image": "i", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 137}}}]}),
            false,
        );
        let s = attempt_status(&job(json!([])), Some(&evicted), &facts(1, NodeHealth::Ready));
        assert_eq!(
            (kind(&s), message(&s).as_str()),
            (Some(FailureKind::Evicted), "DisruptionTarget: EvictionByEvictionAPI Eviction API: evicting")
        );
    }

    #[test]
    fn job_conditions_without_a_pod_map_evictions_to_evicted_and_other_failures_to_error() {
        let policy = job(json!([{"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy",
            "message": "Pod ns/p has condition DisruptionTarget matching FailJob rule at index 0"}]));
        assert_eq!(kind(&attempt_status(&policy, None, &facts(1, NodeHealth::Ready))), Some(FailureKind::Evicted));
        let backoff = job(
            json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]),
        );
        let s = attempt_status(&backoff, None, &facts(1, NodeHealth::Ready));
        assert_eq!(
            (kind(&s), message(&s)),
            (Some(FailureKind::Error), "Job failed: BackoffLimitExceeded Job has reached the specified backoff limit".into())
        );
        let deadline = job(json!([{"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded"}]));
        assert_eq!(
            kind(&attempt_status(&deadline, Some(&pod(running(), false)), &facts(1, NodeHealth::Ready))),
            Some(FailureKind::DeadlineExceeded)
        );
        for done in ["Complete", "SuccessCriteriaMet"] {
            let j = job(json!([{"type": done, "status": "True"}]));
            assert_eq!(attempt_status(&j, None, &facts(1, NodeHealth::Ready)), AttemptStatus::Succeeded, "{done}");
        }
    }

    #[test]
    fn a_pod_pending_past_its_pending_timeout_is_unschedulable_with_the_schedulers_message() {
        let job = job(json!([]));
        let unschedulable = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]}),
            false,
        );
        assert_eq!(attempt_status(&job, Some(&unschedulable), &facts(9, NodeHealth::Ready)), AttemptStatus::Pending);
        let s = attempt_status(&job, Some(&unschedulable), &facts(10, NodeHealth::Ready));
        assert_eq!(kind(&s), Some(FailureKind::Unschedulable));
        assert_eq!(
            message(&s),
            "pending for 600s (pendingTimeout 600s): Unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."
        );
        assert!(!FailureKind::Unschedulable.counts_against_attempts());
        let no_pod = attempt_status(&job, None, &facts(11, NodeHealth::Ready));
        assert!(message(&no_pod).ends_with("no pod was created"), "{no_pod:?}");
        let mut no_timeout = facts(60, NodeHealth::Ready);
        no_timeout.pending_timeout_ms = 0;
        assert_eq!(attempt_status(&job, Some(&unschedulable), &no_timeout), AttemptStatus::Pending, "0 turns the timeout off");
    }
}
