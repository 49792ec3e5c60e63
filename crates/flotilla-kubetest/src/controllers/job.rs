//! The Job controller, in what Flotilla depends on: one pod at a time from the template
//! (`parallelism`/`completions` of 1), `backoffLimit`, `podFailurePolicy`,
//! `activeDeadlineSeconds`, pod tracking with the `batch.kubernetes.io/job-tracking`
//! finalizer, and the conditions of Kubernetes 1.31+: `FailureTarget` then `Failed`, and
//! `SuccessCriteriaMet` then `Complete`, the terminal one only once no pod is left
//! terminating.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::controllers::{record_event, Note};
use crate::kinds::Kind;
use crate::state::{DeleteOptions, Origin, State};
use crate::store::key_of;
use crate::util::{
    condition, has_condition, is_deleting, is_terminal, name_of, name_suffix, namespace_of, parse_rfc3339, rfc3339, set_condition, str_at,
    uid_of,
};

pub const LABEL_JOB_NAME: &str = "batch.kubernetes.io/job-name";
pub const LABEL_CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// The first delay before a failed pod is replaced; it doubles per failure up to the cap.
const BACKOFF_BASE_MS: u64 = 10_000;
const BACKOFF_MAX_MS: u64 = 360_000;

pub fn run(state: &mut State, now_ms: u64) {
    let mut pods_by_job: HashMap<String, Vec<Arc<Value>>> = HashMap::new();
    for pod in state.store.objects(Kind::Pod).values() {
        if let Some(uid) = controller_uid(pod) {
            pods_by_job.entry(uid.to_string()).or_default().push(pod.clone());
        }
    }
    let jobs: Vec<Arc<Value>> = state.store.objects(Kind::Job).values().cloned().collect();
    for job in &jobs {
        if is_deleting(job) || job["spec"]["suspend"] == true {
            continue;
        }
        let pods = pods_by_job.get(uid_of(job)).cloned().unwrap_or_default();
        sync_job(state, job, &pods, now_ms);
    }
    let live: std::collections::HashSet<&str> = jobs.iter().map(|j| uid_of(j)).collect();
    state.counted_pods.retain(|uid, _| live.contains(uid.as_str()));
    state.next_pod_create_ms.retain(|uid, _| live.contains(uid.as_str()));
    release_tracked_pods(state);
}

fn controller_uid(pod: &Value) -> Option<&str> {
    pod["metadata"]["ownerReferences"].as_array()?.iter().find(|r| r["controller"] == true && r["kind"] == "Job")?["uid"].as_str()
}

fn finished(job: &Value) -> bool {
    has_condition(job, "Complete") || has_condition(job, "Failed")
}

fn sync_job(state: &mut State, job: &Value, pods: &[Arc<Value>], now_ms: u64) {
    if finished(job) {
        expire_finished(state, job, now_ms);
        return;
    }
    let uid = uid_of(job).to_string();
    let mut j = job.clone();
    let now = rfc3339(now_ms);
    if j["status"]["startTime"].is_null() {
        j["status"]["startTime"] = json!(now);
    }
    let (mut succeeded, mut failed) = (j["status"]["succeeded"].as_u64().unwrap_or(0), j["status"]["failed"].as_u64().unwrap_or(0));
    let mut failure_target = condition(&j, "FailureTarget").filter(|c| c["status"] == "True").map(reason_message);
    for pod in pods {
        let gone_unfinished = is_deleting(pod) && pod["metadata"]["deletionGracePeriodSeconds"] == 0 && !is_terminal(pod);
        if !(is_terminal(pod) || gone_unfinished) || !state.counted_pods.entry(uid.clone()).or_default().insert(uid_of(pod).to_string()) {
            continue;
        }
        if crate::util::phase(pod) == "Succeeded" {
            succeeded += 1;
            continue;
        }
        match pod_failure_policy_action(job, pod) {
            // Not counted, and replaced without a backoff.
            Some((action, _)) if action == "Ignore" => continue,
            Some((action, message)) if action == "FailJob" => {
                failed += 1;
                failure_target.get_or_insert(("PodFailurePolicy".into(), message));
            }
            _ => failed += 1,
        }
        let delay_ms = (BACKOFF_BASE_MS << failed.saturating_sub(1).min(6)).min(BACKOFF_MAX_MS);
        state.next_pod_create_ms.insert(uid.clone(), now_ms + delay_ms);
    }
    let active: Vec<&Arc<Value>> = pods.iter().filter(|p| !is_terminal(p) && !is_deleting(p)).collect();
    let terminating = pods.iter().filter(|p| !is_terminal(p) && is_deleting(p)).count();
    let success = has_condition(&j, "SuccessCriteriaMet") || succeeded >= j["spec"]["completions"].as_u64().unwrap_or(1);
    if failure_target.is_none() && !success {
        let backoff_limit = j["spec"]["backoffLimit"].as_u64().unwrap_or(6);
        let start_ms = str_at(&j, &["status", "startTime"]).and_then(parse_rfc3339).unwrap_or(now_ms);
        if failed > backoff_limit {
            failure_target = Some(("BackoffLimitExceeded".into(), "Job has reached the specified backoff limit".into()));
        } else if j["spec"]["activeDeadlineSeconds"].as_u64().is_some_and(|s| start_ms + s * 1000 <= now_ms) {
            failure_target = Some(("DeadlineExceeded".into(), "Job was active longer than specified deadline".into()));
        }
    }
    let mut still_active = active.len();
    let mut still_terminating = terminating;
    if let Some((reason, message)) = &failure_target {
        set_condition(&mut j, "FailureTarget", "True", reason, message, &now);
        for p in &active {
            if state.delete(Kind::Pod, &key_of(p), &DeleteOptions::default(), now_ms).is_ok_and(|(_, gone)| !gone) {
                still_terminating += 1;
            }
        }
        still_active = 0;
        if still_terminating == 0 {
            set_condition(&mut j, "Failed", "True", reason, message, &now);
            record_event(state, Kind::Job, job, Note { type_: "Warning", reason, message, component: "job-controller" }, now_ms);
        }
    } else if success {
        let message = "Reached expected number of succeeded pods";
        set_condition(&mut j, "SuccessCriteriaMet", "True", "CompletionsReached", message, &now);
        if still_active == 0 && still_terminating == 0 {
            set_condition(&mut j, "Complete", "True", "CompletionsReached", message, &now);
            j["status"]["completionTime"] = json!(now);
            record_event(
                state,
                Kind::Job,
                job,
                Note { type_: "Normal", reason: "Completed", message: "Job completed", component: "job-controller" },
                now_ms,
            );
        }
    } else if still_active == 0 && still_terminating == 0 && state.next_pod_create_ms.get(&uid).is_none_or(|t| *t <= now_ms) {
        still_active += usize::from(create_pod(state, job, now_ms));
    }
    j["status"]["active"] = json!(still_active);
    j["status"]["ready"] = json!(active.iter().filter(|p| has_condition(p, "Ready")).count());
    j["status"]["succeeded"] = json!(succeeded);
    j["status"]["failed"] = json!(failed);
    j["status"]["terminating"] = json!(still_terminating);
    j["status"]["uncountedTerminatedPods"] = json!({});
    if j != *job {
        // Our copy may be stale if creating an event or pod touched nothing of the Job's.
        state.store.put(Kind::Job, j);
    }
}

/// The TTL-after-finished controller: a finished Job with `ttlSecondsAfterFinished` is
/// deleted (foreground, pods first) that long after its `Complete` or `Failed` condition.
fn expire_finished(state: &mut State, job: &Value, now_ms: u64) {
    let Some(ttl_s) = job["spec"]["ttlSecondsAfterFinished"].as_u64() else { return };
    let finished_ms = ["Complete", "Failed"]
        .iter()
        .filter_map(|t| condition(job, t).filter(|c| c["status"] == "True"))
        .find_map(|c| c["lastTransitionTime"].as_str().and_then(parse_rfc3339));
    if finished_ms.is_some_and(|at| at + ttl_s * 1000 <= now_ms) {
        let foreground = DeleteOptions { propagation_policy: Some("Foreground".into()), ..Default::default() };
        let _ = state.delete(Kind::Job, &key_of(job), &foreground, now_ms);
    }
}

fn reason_message(c: &Value) -> (String, String) {
    (c["reason"].as_str().unwrap_or_default().to_string(), c["message"].as_str().unwrap_or_default().to_string())
}

/// The action of the first `podFailurePolicy` rule matching a failed pod, and the
/// controller's message for it.
fn pod_failure_policy_action(job: &Value, pod: &Value) -> Option<(String, String)> {
    let rules = job["spec"]["podFailurePolicy"]["rules"].as_array()?;
    let pod_name = format!("{}/{}", namespace_of(pod), name_of(pod));
    for (i, rule) in rules.iter().enumerate() {
        let action = rule["action"].as_str().unwrap_or_default();
        if let Some(on) = rule.get("onExitCodes").filter(|v| v.is_object()) {
            let values: Vec<i64> = on["values"].as_array().into_iter().flatten().filter_map(Value::as_i64).collect();
            let container = on["containerName"].as_str();
            for cs in pod["status"]["containerStatuses"].as_array().into_iter().flatten() {
                let Some(code) = cs["state"]["terminated"]["exitCode"].as_i64() else { continue };
                if code == 0 || container.is_some_and(|c| cs["name"] != c) {
                    continue;
                }
                let hit = if on["operator"] == "NotIn" { !values.contains(&code) } else { values.contains(&code) };
                if hit {
                    let name = cs["name"].as_str().unwrap_or_default();
                    return Some((
                        action.to_string(),
                        format!("Container {name} for pod {pod_name} failed with exit code {code} matching {action} rule at index {i}"),
                    ));
                }
            }
        }
        for pattern in rule["onPodConditions"].as_array().into_iter().flatten() {
            let type_ = pattern["type"].as_str().unwrap_or_default();
            // The server defaults an empty status to "True".
            let status = pattern["status"].as_str().filter(|s| !s.is_empty()).unwrap_or("True");
            if condition(pod, type_).is_some_and(|c| c["status"] == status) {
                return Some((action.to_string(), format!("Pod {pod_name} has condition {type_} matching {action} rule at index {i}")));
            }
        }
    }
    None
}

/// Creates the Job's next pod from its template; a refusal (Pod Security) becomes a
/// `FailedCreate` event on the Job and is retried after a backoff. True when created.
fn create_pod(state: &mut State, job: &Value, now_ms: u64) -> bool {
    let (job_name, uid) = (name_of(job).to_string(), uid_of(job).to_string());
    let n = state.next_serial();
    let name = format!("{job_name}-{}", name_suffix(n));
    let template = &job["spec"]["template"];
    let mut labels = template["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    for (k, v) in [(LABEL_CONTROLLER_UID, &uid), ("controller-uid", &uid), (LABEL_JOB_NAME, &job_name), ("job-name", &job_name)] {
        labels.insert(k.into(), json!(v));
    }
    let mut pod = json!({
        "metadata": {"name": name, "generateName": format!("{job_name}-"), "namespace": namespace_of(job), "labels": labels,
            "annotations": template["metadata"]["annotations"].clone(),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": uid, "controller": true, "blockOwnerDeletion": true}],
            "finalizers": [TRACKING_FINALIZER]},
        "spec": template["spec"].clone(),
        "status": {"phase": "Pending"},
    });
    if pod["metadata"]["annotations"].is_null() {
        pod["metadata"].as_object_mut().map(|m| m.remove("annotations"));
    }
    match state.create(Kind::Pod, pod, Origin::Controller, now_ms) {
        Ok(p) => {
            record_event(
                state,
                Kind::Job,
                job,
                Note {
                    type_: "Normal",
                    reason: "SuccessfulCreate",
                    message: &format!("Created pod: {}", name_of(&p)),
                    component: "job-controller",
                },
                now_ms,
            );
            true
        }
        Err(e) => {
            record_event(
                state,
                Kind::Job,
                job,
                Note {
                    type_: "Warning",
                    reason: "FailedCreate",
                    message: &format!("Error creating: {}", e.message),
                    component: "job-controller",
                },
                now_ms,
            );
            state.next_pod_create_ms.insert(uid, now_ms + BACKOFF_BASE_MS);
            false
        }
    }
}

/// Removes the tracking finalizer from pods the controller is done with: finished or
/// being deleted, or whose Job is gone.
fn release_tracked_pods(state: &mut State) {
    // Jobs that still track their pods: not gone, not being deleted.
    let jobs: std::collections::HashSet<String> =
        state.store.objects(Kind::Job).values().filter(|j| !is_deleting(j)).map(|j| uid_of(j).to_string()).collect();
    let done: Vec<Arc<Value>> = state
        .store
        .objects(Kind::Pod)
        .values()
        .filter(|p| p["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|x| x == TRACKING_FINALIZER)))
        .filter(|p| {
            let owner = controller_uid(p).unwrap_or_default();
            let counted = state.counted_pods.get(owner).is_some_and(|c| c.contains(uid_of(p)));
            !jobs.contains(owner) || counted
        })
        .cloned()
        .collect();
    for pod in done {
        let mut p = (*pod).clone();
        let left: Vec<Value> =
            p["metadata"]["finalizers"].as_array().into_iter().flatten().filter(|f| *f != TRACKING_FINALIZER).cloned().collect();
        p["metadata"]["finalizers"] = json!(left);
        if left.is_empty() {
            p["metadata"].as_object_mut().map(|m| m.remove("finalizers"));
        }
        state.write(Kind::Pod, p);
    }
}
