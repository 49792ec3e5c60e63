//! The status of an attempt, read from its Job and its pod.
//!
//! | what Kubernetes shows                                        | status                        |
//! | ------------------------------------------------------------ | ----------------------------- |
//! | Job condition `Failed` with reason `DeadlineExceeded`, or pod reason `DeadlineExceeded` | failed `DeadlineExceeded` |
//! | pod `Succeeded` (or no pod and Job condition `Complete`)     | succeeded                     |
//! | pod `Failed`, reason `Evicted`, a node shutdown, a kubelet admission refusal, or condition `DisruptionTarget` | failed `Evicted` |
//! | pod `Failed`, container terminated `OOMKilled`               | failed `OOMKilled` + exit code |
//! | pod `Failed`, container exit code non-zero                   | failed `Error` + exit code    |
//! | container waiting `ErrImagePull`/`ImagePullBackOff` longer than `image_pull_failure_after`, or `InvalidImageName` at once | failed `ImagePullBackOff` |
//! | container waiting `CreateContainerConfigError`/`CreateContainerError` that long | failed `StartFailed` |
//! | pod `Running` (or `Unknown`: the node lost contact)          | running                       |
//! | pod `Pending`, or no pod yet                                 | pending                       |

use flotilla_model::{AttemptStatus, FailureKind};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStateWaiting, Pod};

use super::jobs::CONTAINER_NAME;

/// The status of one attempt. `pod` is the Job's newest pod, if any; `now_ms` is wall-clock
/// time (ms since the epoch), compared with the pod's creation time for image-pull failures.
pub fn attempt_status(job: &Job, pod: Option<&Pod>, now_ms: u64, image_pull_failure_after_ms: u64) -> AttemptStatus {
    let failed = |kind, exit_code, message: String| AttemptStatus::Failed { kind, exit_code, message };
    let job_condition = |type_: &str| {
        job.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == type_ && c.status == "True"))
    };
    if let Some(c) = job_condition("Failed").filter(|c| c.reason.as_deref() == Some("DeadlineExceeded")) {
        return failed(
            FailureKind::DeadlineExceeded,
            None,
            c.message.clone().unwrap_or_else(|| "Job was active longer than its deadline".into()),
        );
    }
    let Some(pod) = pod else {
        if job_condition("Complete").is_some() {
            return AttemptStatus::Succeeded;
        }
        if let Some(c) = job_condition("Failed") {
            let reason = c.reason.clone().unwrap_or_default();
            return failed(
                FailureKind::Error,
                None,
                format!("Job failed: {reason} {}", c.message.clone().unwrap_or_default()).trim().to_string(),
            );
        }
        return AttemptStatus::Pending;
    };
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending") {
        "Succeeded" => AttemptStatus::Succeeded,
        "Failed" => failed_pod(pod),
        "Running" | "Unknown" => match terminated(pod) {
            // The container died; the pod phase follows shortly.
            Some(t) if t.exit_code != 0 => failed_pod(pod),
            _ => AttemptStatus::Running,
        },
        _ => {
            let age_ms =
                pod.metadata.creation_timestamp.as_ref().map(|t| now_ms.saturating_sub(t.0.as_millisecond().max(0) as u64)).unwrap_or(0);
            let persisted = age_ms >= image_pull_failure_after_ms;
            match waiting(pod) {
                Some(w) => {
                    let reason = w.reason.as_deref().unwrap_or_default();
                    let message =
                        || format!("{reason}: {}", w.message.clone().unwrap_or_default()).trim_end_matches([':', ' ']).to_string();
                    match reason {
                        "InvalidImageName" | "ErrImageNeverPull" => failed(FailureKind::ImagePull, None, message()),
                        "ErrImagePull" | "ImagePullBackOff" if persisted => failed(FailureKind::ImagePull, None, message()),
                        "CreateContainerConfigError" | "CreateContainerError" if persisted => {
                            failed(FailureKind::StartFailed, None, message())
                        }
                        _ => AttemptStatus::Pending,
                    }
                }
                None => AttemptStatus::Pending,
            }
        }
    }
}

fn failed_pod(pod: &Pod) -> AttemptStatus {
    let status = pod.status.as_ref();
    let reason = status.and_then(|s| s.reason.as_deref()).unwrap_or_default();
    let pod_message = status.and_then(|s| s.message.clone()).unwrap_or_default();
    let disrupted =
        status.and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "DisruptionTarget" && c.status == "True"));
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
        let message = if pod_message.is_empty() && reason.is_empty() { "DisruptionTarget".to_string() } else { with_reason(&pod_message) };
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
