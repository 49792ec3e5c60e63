//! The kube backend against the failure cases of a real cluster, on the faithful test API
//! server (`flotilla-kubetest`, manual clock, every controller on): a node that stops
//! answering, an eviction, a pod no node takes, two installations sharing one cluster, and
//! the output of a finished attempt. The backend reads the server's clock, so minutes pass
//! in `advance` calls, not in real time.

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::v1::ResourceAmounts;
use flotilla_model::{AttemptStatus, FailureKind, TaskId};
use futures::StreamExt;

use super::tests::support::*;
use crate::backend::{AttemptPhase, ClusterBackend, LogOptions};
use crate::kube::KubeBackend;

const NODE: &str = "ip-10-0-1-23.ec2.internal";
const OTHER_INSTALLATION: &str = "fedcba9876543210";

/// A server with one healthy 8-GPU node, and a backend of `installation` on its clock.
async fn setup() -> (Arc<ApiServer>, KubeBackend) {
    let server = Arc::new(cluster(vec![healthy_h100_node()]).await);
    let backend = on_clock(&server, INSTALLATION).await;
    (server, backend)
}

async fn on_clock(server: &Arc<ApiServer>, installation: &str) -> KubeBackend {
    let backend = KubeBackend::new(server.client(), CLUSTER, installation, settings());
    backend.wait_ready(Duration::from_secs(10)).await.unwrap();
    let clock = server.clone();
    backend.with_clock(Arc::new(move || clock.now_ms()))
}

/// Starts the lease, lets the controllers create and bind its pod, and runs it.
async fn running(server: &ApiServer, backend: &KubeBackend, installation: &str) -> String {
    backend.start(lease()).await.unwrap();
    let job = crate::kube::jobs::job_name(installation, TaskId(42), 3);
    let mut pod = None;
    for _ in 0..500 {
        server.advance(Duration::from_millis(100));
        pod = server.pods_of_job(NAMESPACE, &job).last().and_then(|p| p["metadata"]["name"].as_str().map(str::to_string));
        if pod.as_ref().is_some_and(|p| server.set_pod_state(NAMESPACE, p, PodState::Running).is_ok()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pod.expect("the Job controller made a pod and the scheduler bound it")
}

/// Waits until the backend's caches hold a pod of the attempt (watches deliver a moment later).
async fn cached_pod(backend: &KubeBackend) {
    for _ in 0..500 {
        if backend.logs(TaskId(42), 3, LogOptions::default()).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the backend never saw the attempt's pod");
}

async fn ack_until(backend: &KubeBackend, done: impl Fn(&AttemptStatus) -> bool) -> AttemptStatus {
    let events = eventually(backend, |e| e.iter().any(|e| done(&e.status))).await;
    backend.ack_events(&events);
    events.into_iter().map(|e| e.status).find(|s| done(s)).unwrap()
}

/// A second node, Ready, in another zone: the cluster is not disrupted when `NODE` stops.
fn another_ready_node() -> serde_json::Value {
    let mut n = healthy_h100_node();
    n["metadata"]["name"] = "ip-10-0-2-7.ec2.internal".into();
    n["metadata"]["labels"]["kubernetes.io/hostname"] = "ip-10-0-2-7.ec2.internal".into();
    n["metadata"]["labels"]["topology.kubernetes.io/zone"] = "us-east-1b".into();
    n
}

#[tokio::test]
async fn a_node_silent_for_node_lost_after_has_its_attempt_lost_not_counted_and_its_capacity_withdrawn() {
    let server = Arc::new(cluster(vec![healthy_h100_node(), another_ready_node()]).await);
    let backend = on_clock(&server, INSTALLATION).await;
    running(&server, &backend, INSTALLATION).await;
    ack_until(&backend, |s| *s == AttemptStatus::Running).await;

    server.stop_node_heartbeats(NODE);
    server.advance(Duration::from_secs(120));
    let mut unschedulable = false;
    for _ in 0..500 {
        unschedulable = backend.nodes().await.unwrap().iter().any(|n| n.name == NODE && n.unschedulable);
        if unschedulable {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(unschedulable, "a node that went Unknown is offered no more work");
    assert!(backend.pending_events(10).await.unwrap().is_empty(), "2 minutes of silence are not yet a lost node");

    // Past node_lost_after (5 min after the Ready condition changed; the taint manager has
    // by then marked the pod for deletion, but its kubelet cannot stop it).
    server.advance(Duration::from_secs(300));
    let lost = ack_until(&backend, |s| matches!(s, AttemptStatus::Failed { .. })).await;
    let AttemptStatus::Failed { kind, message, .. } = &lost else { unreachable!() };
    assert_eq!(*kind, FailureKind::Lost, "{message}");
    assert!(!kind.counts_against_attempts());
    assert!(message.contains(&format!("node {NODE} not ready for")) && message.contains("presumed gone"), "{message}");
    let attempts = backend.attempts().await.unwrap();
    assert_eq!(attempts.iter().map(|a| a.phase).collect::<Vec<_>>(), [AttemptPhase::Failed]);
    // The scheduler then stops it: the Job goes (its pod stays Terminating on the dead node).
    backend.stop(TaskId(42), 3).await.unwrap();
    assert!(server.get(Kind::Job, NAMESPACE, &job_of(42, 3)).is_none(), "the lost attempt's Job is deleted");
}

#[tokio::test]
async fn when_no_node_of_the_cluster_is_ready_nothing_is_presumed_lost_and_work_resumes_when_they_return() {
    // One node, silent: as Kubernetes' node lifecycle controller does when no node is Ready,
    // the executor presumes a control-plane or network fault, not a dead node, and keeps
    // the attempt (its pod may well be running) instead of starting a second copy elsewhere.
    let (server, backend) = setup().await;
    running(&server, &backend, INSTALLATION).await;
    ack_until(&backend, |s| *s == AttemptStatus::Running).await;

    server.stop_node_heartbeats(NODE);
    server.advance(Duration::from_secs(30 * 60));
    let mut unschedulable = false;
    for _ in 0..500 {
        unschedulable = backend.nodes().await.unwrap()[0].unschedulable;
        if unschedulable {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(unschedulable, "the controllers saw the node go Unknown");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(backend.pending_events(10).await.unwrap().is_empty(), "30 minutes without a Ready node: nothing presumed lost");
    let attempts = backend.attempts().await.unwrap();
    assert_eq!(attempts.iter().map(|a| a.phase).collect::<Vec<_>>(), [AttemptPhase::Running]);

    server.resume_node_heartbeats(NODE);
    for _ in 0..500 {
        server.advance(Duration::from_secs(1));
        if !backend.nodes().await.unwrap()[0].unschedulable {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!backend.nodes().await.unwrap()[0].unschedulable, "the node is Ready again");
    assert_eq!(backend.attempts().await.unwrap().iter().map(|a| a.phase).collect::<Vec<_>>(), [AttemptPhase::Running]);
}

#[tokio::test]
async fn a_kubelet_eviction_is_evicted_before_and_after_its_pod_is_gone() {
    let (server, backend) = setup().await;
    let pod = running(&server, &backend, INSTALLATION).await;
    ack_until(&backend, |s| *s == AttemptStatus::Running).await;
    server.set_pod_state(NAMESPACE, &pod, PodState::Evicted { message: "The node was low on resource: memory.".into() }).unwrap();
    server.advance(Duration::from_secs(1));
    let evicted = eventually(&backend, |e| e.iter().any(|e| e.status.is_terminal())).await;
    let AttemptStatus::Failed { kind, message, .. } = &evicted[0].status else { panic!("{evicted:?}") };
    assert_eq!(*kind, FailureKind::Evicted, "{message}");
    // The pod failure policy fails the Job for the disruption (not BackoffLimitExceeded):
    // with the pod gone, the Job alone still says eviction. A restarted executor (no memory
    // of what it reported) reads it the same way.
    let job = server.get(Kind::Job, NAMESPACE, &job_of(42, 3)).expect("the Job");
    let reasons: Vec<&str> = job["status"]["conditions"].as_array().into_iter().flatten().filter_map(|c| c["reason"].as_str()).collect();
    assert!(reasons.contains(&"PodFailurePolicy"), "{reasons:?}");
    server.delete(Kind::Pod, NAMESPACE, &pod, DeleteOptions { grace_period_seconds: Some(0), ..Default::default() }).unwrap();
    server.advance(Duration::from_secs(1));
    let restarted = on_clock(&server, INSTALLATION).await;
    let again = eventually(&restarted, |e| e.iter().any(|e| e.status.is_terminal())).await;
    assert!(matches!(again[0].status, AttemptStatus::Failed { kind: FailureKind::Evicted, .. }), "{again:?}");
}

#[tokio::test]
async fn a_pod_no_node_takes_is_unschedulable_after_its_pending_timeout_with_the_schedulers_message() {
    let (server, backend) = setup().await;
    let mut big = lease();
    big.requests = Some(ResourceAmounts { cpu_millis: 16_000, memory_bytes: 128 << 30, gpu: 16, ..Default::default() });
    big.pending_timeout_ms = 60_000;
    backend.start(big).await.unwrap();
    server.advance(Duration::from_secs(59));
    let early = backend.pending_events(10).await.unwrap();
    assert!(early.iter().all(|e| e.status == AttemptStatus::Pending), "{early:?}");
    backend.ack_events(&early);
    server.advance(Duration::from_secs(2));
    let status = ack_until(&backend, |s| matches!(s, AttemptStatus::Failed { .. })).await;
    let AttemptStatus::Failed { kind, message, .. } = &status else { unreachable!() };
    assert_eq!(*kind, FailureKind::Unschedulable);
    assert!(message.contains("pendingTimeout 60s") && message.contains("nodes are available"), "{message}");
}

#[tokio::test]
async fn two_installations_on_one_cluster_see_and_stop_only_their_own_jobs_and_count_each_others_pods_as_reserved() {
    let (server, mine) = setup().await;
    let theirs = on_clock(&server, OTHER_INSTALLATION).await;
    // Same task id and attempt in both groups: two Jobs, one each.
    let mut small = lease();
    small.requests = Some(ResourceAmounts { cpu_millis: 4_000, memory_bytes: 8 << 30, gpu: 2, ..Default::default() });
    mine.start(small.clone()).await.unwrap();
    theirs.start(small).await.unwrap();
    let (my_job, their_job) = (job_of(42, 3), crate::kube::jobs::job_name(OTHER_INSTALLATION, TaskId(42), 3));
    assert_ne!(my_job, their_job);
    for _ in 0..100 {
        server.advance(Duration::from_millis(100));
        let seen = mine.attempts().await.unwrap().len() == 1 && theirs.attempts().await.unwrap().len() == 1;
        if seen && !server.pods_of_job(NAMESPACE, &their_job).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mine.attempts().await.unwrap().len(), 1, "each backend sees its own attempt only");
    assert_eq!(theirs.attempts().await.unwrap().len(), 1);
    let their_pod = server.pods_of_job(NAMESPACE, &their_job)[0]["metadata"]["name"].as_str().unwrap().to_string();
    server.set_pod_state(NAMESPACE, &their_pod, PodState::Running).unwrap();
    // Their running pod holds part of the node: for me it is reserved, like any workload.
    let mut reserved = Default::default();
    for _ in 0..200 {
        reserved = mine.nodes().await.unwrap()[0].reserved.clone();
        if reserved != flotilla_model::Resources::default() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(reserved.gpu, 2, "{reserved:?}");
    // Stopping mine leaves theirs alone.
    mine.stop(TaskId(42), 3).await.unwrap();
    server.advance(Duration::from_secs(1));
    assert!(server.get(Kind::Job, NAMESPACE, &my_job).is_none());
    assert!(server.get(Kind::Job, NAMESPACE, &their_job).is_some(), "the other installation's Job is untouched");
    let deletes: Vec<String> =
        server.writes().into_iter().filter(|r| r.method == "DELETE").map(|r| r.path).filter(|p| p.contains(&their_job)).collect();
    assert!(deletes.is_empty(), "{deletes:?}");
}

#[tokio::test]
async fn a_finished_attempt_keeps_its_job_and_output_for_keep_finished() {
    let (server, backend) = setup().await;
    let pod = running(&server, &backend, INSTALLATION).await;
    server.append_log(NAMESPACE, &pod, Some("task"), "step 1\nstep 2\n");
    cached_pod(&backend).await;
    let read = |tail: u32| {
        let backend = &backend;
        async move {
            let mut stream = backend.logs(TaskId(42), 3, LogOptions { tail_lines: tail, ..Default::default() }).await.unwrap();
            let mut text = Vec::new();
            while let Some(chunk) = stream.next().await {
                text.extend(chunk.unwrap());
            }
            String::from_utf8(text).unwrap()
        }
    };
    assert_eq!(read(0).await, "step 1\nstep 2\n");
    server.set_pod_state(NAMESPACE, &pod, PodState::Succeeded).unwrap();
    server.advance(Duration::from_secs(1));
    ack_until(&backend, |s| *s == AttemptStatus::Succeeded).await;
    // The scheduler asks to stop the finished attempt: kept for now, its output readable.
    backend.stop(TaskId(42), 3).await.unwrap();
    assert!(server.get(Kind::Job, NAMESPACE, &job_of(42, 3)).is_some(), "kept for keep_finished");
    assert_eq!(read(1).await, "step 2\n");
    // After keep_finished (15 min) the next stop deletes it.
    server.advance(Duration::from_secs(15 * 60 + 1));
    backend.stop(TaskId(42), 3).await.unwrap();
    server.advance(Duration::from_secs(1));
    assert!(server.get(Kind::Job, NAMESPACE, &job_of(42, 3)).is_none());
}
