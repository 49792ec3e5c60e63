//! The controllers and the kubelet: Job conditions, Pod Security, scheduling, a node that
//! stops, logs.

mod common;

use std::time::Duration;

use common::*;
use flotilla_kubetest::{Kind, PodState};
use futures::AsyncBufReadExt;
use futures::TryStreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};
use serde_json::{json, Value};

async fn create_job(server: &flotilla_kubetest::ApiServer, job: Value) -> String {
    let name = job["metadata"]["name"].as_str().unwrap().to_string();
    let ns = job["metadata"]["namespace"].as_str().unwrap().to_string();
    let api: Api<Job> = Api::namespaced(server.client(), &ns);
    api.create(&PostParams::default(), &serde_json::from_value(job).unwrap()).await.unwrap();
    name
}

fn only_pod(server: &flotilla_kubetest::ApiServer, job: &str) -> String {
    let pods = server.pods_of_job("a", job);
    pods.last().expect("a pod")["metadata"]["name"].as_str().unwrap().to_string()
}

fn conditions(j: &Value) -> Vec<(String, String)> {
    j["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c["type"].as_str().unwrap().to_string(), c["reason"].as_str().unwrap_or_default().to_string()))
        .collect()
}

async fn cluster() -> flotilla_kubetest::ApiServer {
    let server = server().await;
    server.apply(node("n1", "8", "8"));
    server.apply(namespace("a", None));
    server
}

#[tokio::test]
async fn the_job_controller_creates_a_labelled_owned_pod_and_completes_the_job_when_it_succeeds() {
    let server = cluster().await;
    let job = create_job(&server, job("a", "ok", "n1", json!({}))).await;
    let j = server.get(Kind::Job, "a", &job).unwrap();
    let pods = server.pods_of_job("a", &job);
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    let name = pod["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("ok-") && name.len() == "ok-".len() + 5, "{name}");
    assert_eq!(pod["metadata"]["labels"]["batch.kubernetes.io/controller-uid"], j["metadata"]["uid"]);
    assert_eq!(pod["metadata"]["labels"]["app"], "ok", "template labels are kept");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], j["metadata"]["uid"]);
    assert_eq!(pod["spec"]["nodeName"], "n1", "scheduled to the node its selector names");
    assert_eq!(j["status"]["active"], 1);

    server.set_pod_state("a", name, PodState::Running).unwrap();
    server.set_pod_state("a", name, PodState::Succeeded).unwrap();
    let j = server.get(Kind::Job, "a", &job).unwrap();
    assert_eq!(
        conditions(&j),
        [("SuccessCriteriaMet".into(), "CompletionsReached".into()), ("Complete".into(), "CompletionsReached".into())]
    );
    assert_eq!((j["status"]["succeeded"].clone(), j["status"]["active"].clone()), (json!(1), json!(0)));
    assert!(j["status"]["completionTime"].is_string());
    assert!(server.get(Kind::Pod, "a", name).unwrap()["metadata"]["finalizers"].is_null(), "the tracking finalizer is released");
}

#[tokio::test]
async fn a_failed_pod_beyond_the_backoff_limit_fails_the_job_with_failure_target_first() {
    let server = cluster().await;
    let job = create_job(&server, job("a", "bad", "n1", json!({"backoffLimit": 1}))).await;
    let first = only_pod(&server, &job);
    server.set_pod_state("a", &first, PodState::Failed { exit_code: 3 }).unwrap();
    assert_eq!(server.pods_of_job("a", &job).len(), 1, "the replacement waits for the backoff");
    server.advance(Duration::from_secs(10));
    let second = only_pod(&server, &job);
    assert_ne!(first, second);
    server.set_pod_state("a", &second, PodState::OomKilled).unwrap();
    let j = server.get(Kind::Job, "a", &job).unwrap();
    assert_eq!(conditions(&j), [("FailureTarget".into(), "BackoffLimitExceeded".into()), ("Failed".into(), "BackoffLimitExceeded".into())]);
    assert_eq!(j["status"]["failed"], 2);
    assert_eq!(condition(&j, "Failed").unwrap()["message"], "Job has reached the specified backoff limit");
}

#[tokio::test]
async fn pod_failure_policy_fails_the_job_on_an_exit_code_and_ignores_disruptions() {
    let server = cluster().await;
    let policy = json!({"podFailurePolicy": {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "task", "operator": "In", "values": [42]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}});
    let job = create_job(&server, job("a", "pfp", "n1", policy)).await;
    let first = only_pod(&server, &job);
    server.set_pod_state("a", &first, PodState::Evicted { message: "The node was low on resource: memory.".into() }).unwrap();
    server.advance(Duration::from_secs(1));
    let j = server.get(Kind::Job, "a", &job).unwrap();
    assert_eq!(j["status"]["failed"], 0, "an ignored failure is not counted");
    let second = only_pod(&server, &job);
    assert_ne!(first, second, "and the pod is replaced");
    server.set_pod_state("a", &second, PodState::Failed { exit_code: 42 }).unwrap();
    let j = server.get(Kind::Job, "a", &job).unwrap();
    assert_eq!(conditions(&j), [("FailureTarget".into(), "PodFailurePolicy".into()), ("Failed".into(), "PodFailurePolicy".into())]);
    assert_eq!(
        condition(&j, "Failed").unwrap()["message"],
        format!("Container task for pod a/{second} failed with exit code 42 matching FailJob rule at index 0")
    );
}

#[tokio::test]
async fn active_deadline_ends_the_job_once_its_pod_is_gone() {
    let server = cluster().await;
    let job = create_job(&server, job("a", "slow", "n1", json!({"activeDeadlineSeconds": 60}))).await;
    let pod = only_pod(&server, &job);
    server.set_pod_state("a", &pod, PodState::Running).unwrap();
    server.advance(Duration::from_secs(60));
    let j = server.get(Kind::Job, "a", &job).unwrap();
    assert_eq!(conditions(&j), [("FailureTarget".into(), "DeadlineExceeded".into())], "Failed waits for the pod to terminate");
    assert_eq!(j["status"]["terminating"], 1);
    server.advance(Duration::from_secs(30));
    let j = server.get(Kind::Job, "a", &job).unwrap();
    assert_eq!(condition(&j, "Failed").unwrap()["reason"], "DeadlineExceeded");
    assert!(server.pods_of_job("a", &job).is_empty());
}

#[tokio::test]
async fn a_pod_the_namespace_pod_security_level_forbids_is_a_failed_create_event_on_the_job() {
    let server = cluster().await;
    server.apply(namespace("locked", Some("baseline")));
    let mut spec = job("locked", "priv", "n1", json!({}));
    spec["spec"]["template"]["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    create_job(&server, spec).await;
    assert!(server.pods_of_job("locked", "priv").is_empty());
    let events = server.list(Kind::Event);
    let refused: Vec<_> = events.iter().filter(|e| e["reason"] == "FailedCreate" && e["involvedObject"]["name"] == "priv").collect();
    assert_eq!(refused.len(), 1);
    let message = refused[0]["message"].as_str().unwrap();
    assert!(message.starts_with("Error creating: pods \"priv-") && message.contains("is forbidden: violates PodSecurity \"baseline:latest\": privileged (container \"task\" must not set securityContext.privileged=true)"), "{message}");
    // A client's own pod gets the same answer directly.
    let pods: Api<Pod> = Api::namespaced(server.client(), "locked");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "securityContext": {"privileged": true}}]}}),
    )
    .unwrap();
    let Err(kube::Error::Api(s)) = pods.create(&PostParams::default(), &pod).await else { panic!("admitted") };
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
}

#[tokio::test]
async fn a_pod_that_fits_no_node_stays_pending_with_the_schedulers_message() {
    let server = cluster().await;
    server.apply(node("n2", "8", "0"));
    server.update(Kind::Node, "", "n2", |n| n["spec"]["unschedulable"] = json!(true)).unwrap();
    let mut spec = job("a", "big", "n1", json!({}));
    spec["spec"]["template"]["spec"]["nodeSelector"] = json!({});
    spec["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] = json!({"nvidia.com/gpu": "16"});
    create_job(&server, spec).await;
    let pod = &server.pods_of_job("a", "big")[0];
    assert!(pod["spec"]["nodeName"].is_null());
    let c = condition(pod, "PodScheduled").unwrap();
    assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("Unschedulable")));
    assert_eq!(
        c["message"],
        "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) were unschedulable. preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling."
    );
}

/// A cluster whose Job `name` has a running pod on n1, whose heartbeats have just stopped.
/// A pod running on n1, whose heartbeats then stop; n2 stays Ready (with no node Ready the
/// controller would presume its own disruption and evict nothing).
async fn running_on_a_node_that_stops(name: &str) -> (flotilla_kubetest::ApiServer, String, String) {
    let server = cluster().await;
    server.apply(node("n2", "8", "8"));
    let job = create_job(&server, job("a", name, "n1", json!({}))).await;
    let pod = only_pod(&server, &job);
    server.set_pod_state("a", &pod, PodState::Running).unwrap();
    server.stop_node_heartbeats("n1");
    (server, job, pod)
}

#[tokio::test]
async fn a_node_that_stops_heartbeats_turns_unknown_then_its_pods_are_evicted_and_stay_terminating() {
    let (server, job, pod) = running_on_a_node_that_stops("stranded").await;
    server.advance(Duration::from_secs(49));
    assert_eq!(condition(&server.get(Kind::Node, "", "n1").unwrap(), "Ready").unwrap()["status"], "True");
    server.advance(Duration::from_secs(1));
    let n = server.get(Kind::Node, "", "n1").unwrap();
    let ready = condition(&n, "Ready").unwrap();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("Unknown"), Some("NodeStatusUnknown")));
    assert_eq!(ready["message"], "Kubelet stopped posting node status.");
    let taints: Vec<_> = n["spec"]["taints"].as_array().unwrap().iter().map(|t| (t["key"].clone(), t["effect"].clone())).collect();
    assert_eq!(
        taints,
        [(json!("node.kubernetes.io/unreachable"), json!("NoSchedule")), (json!("node.kubernetes.io/unreachable"), json!("NoExecute"))]
    );
    assert!(server.get(Kind::Pod, "a", &pod).unwrap()["metadata"]["deletionTimestamp"].is_null(), "tolerated for 300 s");

    server.advance(Duration::from_secs(300));
    let p = server.get(Kind::Pod, "a", &pod).unwrap();
    let disruption = condition(&p, "DisruptionTarget").unwrap();
    assert_eq!(disruption["reason"], "DeletionByTaintManager");
    assert!(p["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(p["status"]["phase"], "Running", "the kubelet is gone: nobody ends the pod");
    let j = server.get(Kind::Job, "a", &job).unwrap();
    assert!(condition(&j, "FailureTarget").is_none() && j["status"]["terminating"] == 1);
    server.advance(Duration::from_secs(600));
    assert!(server.get(Kind::Pod, "a", &pod).is_some(), "Terminating for as long as the node is down");

    server.resume_node_heartbeats("n1");
    assert!(server.get(Kind::Pod, "a", &pod).is_none(), "the kubelet ends it once back");
    let j = server.get(Kind::Job, "a", &job).unwrap();
    assert_eq!(conditions(&j), [("FailureTarget".into(), "BackoffLimitExceeded".into()), ("Failed".into(), "BackoffLimitExceeded".into())]);
}

#[tokio::test]
async fn with_no_node_ready_the_node_controller_evicts_nothing() {
    let server = cluster().await;
    let job = create_job(&server, job("a", "alone", "n1", json!({}))).await;
    let pod = only_pod(&server, &job);
    server.set_pod_state("a", &pod, PodState::Running).unwrap();
    server.stop_node_heartbeats("n1");
    server.advance(Duration::from_secs(50 + 3600));
    let n = server.get(Kind::Node, "", "n1").unwrap();
    assert_eq!(condition(&n, "Ready").unwrap()["status"], "Unknown");
    let taints: Vec<_> = n["spec"]["taints"].as_array().unwrap().iter().map(|t| (t["key"].clone(), t["effect"].clone())).collect();
    assert_eq!(taints, [(json!("node.kubernetes.io/unreachable"), json!("NoSchedule"))], "no NoExecute taint");
    let p = server.get(Kind::Pod, "a", &pod).unwrap();
    assert!(p["metadata"]["deletionTimestamp"].is_null() && condition(&p, "DisruptionTarget").is_none(), "an hour later, not evicted");
}

#[tokio::test]
async fn a_force_delete_removes_a_pod_stuck_on_a_lost_node() {
    let (server, _job, pod) = running_on_a_node_that_stops("stuck").await;
    server.advance(Duration::from_secs(360));
    assert!(server.get(Kind::Pod, "a", &pod).is_some());
    let pods: Api<Pod> = Api::namespaced(server.client(), "a");
    pods.delete(&pod, &kube::api::DeleteParams::default().grace_period(0)).await.unwrap();
    assert!(server.get(Kind::Pod, "a", &pod).is_none());
}

#[tokio::test]
async fn logs_honour_tail_limit_since_and_follow_until_the_pod_ends() {
    let server = cluster().await;
    let job = create_job(&server, job("a", "talk", "n1", json!({}))).await;
    let pod = only_pod(&server, &job);
    let pods: Api<Pod> = Api::namespaced(server.client(), "a");
    let Err(kube::Error::Api(s)) = pods.logs(&pod, &LogParams::default()).await else { panic!("logs of a pending pod") };
    assert_eq!((s.code, s.message.clone()), (400, format!("container \"task\" in pod \"{pod}\" is waiting to start: ContainerCreating")));
    let Err(kube::Error::Api(s)) = pods.logs("nope", &LogParams::default()).await else { panic!("logs of no pod") };
    assert_eq!(s.code, 404);

    server.set_pod_state("a", &pod, PodState::Running).unwrap();
    server.append_log("a", &pod, None, "one\ntwo\nthree");
    assert_eq!(pods.logs(&pod, &LogParams::default()).await.unwrap(), "one\ntwo\nthree\n");
    assert_eq!(pods.logs(&pod, &LogParams { tail_lines: Some(2), ..Default::default() }).await.unwrap(), "two\nthree\n");
    assert_eq!(pods.logs(&pod, &LogParams { limit_bytes: Some(5), ..Default::default() }).await.unwrap(), "one\nt");
    server.advance(Duration::from_secs(120));
    server.append_log("a", &pod, None, "four");
    assert_eq!(pods.logs(&pod, &LogParams { since_seconds: Some(60), ..Default::default() }).await.unwrap(), "four\n");
    let stamped = pods.logs(&pod, &LogParams { tail_lines: Some(1), timestamps: true, ..Default::default() }).await.unwrap();
    assert!(stamped.ends_with("Z four\n") && stamped.len() > 31, "{stamped}");

    let stream = pods.log_stream(&pod, &LogParams { follow: true, tail_lines: Some(1), ..Default::default() }).await.unwrap();
    let mut lines = stream.lines();
    assert_eq!(lines.try_next().await.unwrap().as_deref(), Some("four"));
    server.append_log("a", &pod, None, "five");
    assert_eq!(lines.try_next().await.unwrap().as_deref(), Some("five"));
    server.append_log("a", &pod, None, "last words");
    server.set_pod_state("a", &pod, PodState::Succeeded).unwrap();
    let rest: Vec<String> = tokio::time::timeout(Duration::from_secs(10), lines.try_collect()).await.expect("the stream ends").unwrap();
    assert_eq!(rest, ["last words"]);
}

#[tokio::test]
async fn a_finished_job_is_deleted_with_its_pods_ttl_seconds_after_it_finished() {
    let server = cluster().await;
    let job = create_job(&server, job("a", "kept", "n1", json!({"ttlSecondsAfterFinished": 900}))).await;
    let pod = only_pod(&server, &job);
    server.set_pod_state("a", &pod, PodState::Succeeded).unwrap();
    server.advance(Duration::from_secs(899));
    assert!(server.get(Kind::Job, "a", &job).is_some(), "kept for its TTL");
    assert!(server.get(Kind::Pod, "a", &pod).is_some(), "and so is its pod, with its log");
    server.advance(Duration::from_secs(1));
    assert!(server.get(Kind::Job, "a", &job).is_none() && server.get(Kind::Pod, "a", &pod).is_none());
}
