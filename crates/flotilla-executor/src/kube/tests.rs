//! The Kubernetes backend against `flotilla-kubetest`'s API server: what the backend sends,
//! how it reads statuses, and what survives watch gaps and restarts. Fixtures are in
//! `test_support.rs`.

use flotilla_api::v1::LeasedTask;
use flotilla_model::{AttemptStatus, FailureKind, Resources, TaskId, Topology};
use serde_json::{json, Value};

use super::*;

#[path = "test_support.rs"]
pub(super) mod support;

use flotilla_kubetest::pod_security_violations;
use support::*;

#[tokio::test]
async fn a_lease_becomes_exactly_this_job_in_a_namespace_created_on_demand() {
    let server = cluster(vec![h100_node()]).await;
    let backend = backend(&server).await;
    backend.start(lease()).await.unwrap();
    let requests = server.writes();
    let paths: Vec<_> = requests.iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(
        paths,
        [
            // A gang member: its gang's Service first, so the names resolve from the start.
            "POST /api/v1/namespaces/flotilla-research/services",
            "POST /api/v1/namespaces",
            "POST /api/v1/namespaces/flotilla-research/services",
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
    let env = json!([
        {"name": "FLOTILLA_TASK_ID", "value": "42"},
        {"name": "FLOTILLA_TASK_NAME", "value": "train-7"},
        {"name": "FLOTILLA_TASK_INDEX", "value": "7"},
        {"name": "FLOTILLA_ATTEMPT", "value": "3"},
        {"name": "FLOTILLA_QUEUE", "value": "research"},
        {"name": "FLOTILLA_TASK_SET", "value": "llama-sweep"},
        {"name": "FLOTILLA_GANG_ID", "value": "40"},
        {"name": "FLOTILLA_GANG_SIZE", "value": "4"},
        {"name": "FLOTILLA_GANG_RANK", "value": "2"},
        {"name": "FLOTILLA_GANG_ROLE", "value": "train-7"},
        {"name": "FLOTILLA_GANG_ROLE_RANK", "value": "2"},
        {"name": "FLOTILLA_GANG_ROLE_SIZE", "value": "4"},
        {"name": "FLOTILLA_GANG_ROLES", "value": "train-7:4"},
        {"name": "FLOTILLA_GANG_ADDRESS", "value": "train-7-2.flotilla-01234567-g40.flotilla-research.svc"},
        {"name": "FLOTILLA_GANG_LEADER", "value": "train-7-0.flotilla-01234567-g40.flotilla-research.svc"},
        {"name": "FLOTILLA_GANG_SUBDOMAIN", "value": "flotilla-01234567-g40.flotilla-research.svc"},
        {"name": "FLOTILLA_GANG_PEERS", "value": "train-7-0.flotilla-01234567-g40.flotilla-research.svc,train-7-1.flotilla-01234567-g40.flotilla-research.svc,train-7-2.flotilla-01234567-g40.flotilla-research.svc,train-7-3.flotilla-01234567-g40.flotilla-research.svc"},
        {"name": "FLOTILLA_CHECKPOINT_DIR", "value": "/flotilla/checkpoint"},
        {"name": "WANDB_PROJECT", "value": "sweep"}
    ]);
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
                    "hostname": "train-7-2",
                    "subdomain": "flotilla-01234567-g40",
                    "containers": [{
                        "name": "task",
                        "image": "ghcr.io/acme/train:1.4",
                        "command": ["python", "train.py"],
                        "args": ["--lr=3e-4"],
                        "env": env,
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
    assert_eq!(requests[3].body, expected);
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

#[test]
fn a_runtime_class_becomes_the_pods_runtime_class_name_and_none_leaves_the_cluster_default() {
    let config = KubeBackendConfig::default();
    let sandboxed = LeasedTask { runtime_class: "gvisor".into(), ..lease() };
    let job = serde_json::to_value(jobs::job_for_lease(&sandboxed, "h", &[], INSTALLATION, &config)).unwrap();
    assert_eq!(job["spec"]["template"]["spec"]["runtimeClassName"], "gvisor");
    let plain = serde_json::to_value(jobs::job_for_lease(&lease(), "h", &[], INSTALLATION, &config)).unwrap();
    assert!(plain["spec"]["template"]["spec"].get("runtimeClassName").is_none(), "{plain}");
}

#[test]
fn node_affinity_reaches_the_pod_as_one_required_term_and_weighted_preferred_terms() {
    use flotilla_api::v1::{AffinityTerm, NodeAffinity};
    let term = |key: &str, operator: &str, values: &[&str], weight: i32| AffinityTerm {
        key: key.into(),
        operator: operator.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
        weight,
    };
    let affinity = NodeAffinity {
        required: vec![
            term("cloud.google.com/gke-nodepool", "In", &["a100-pool", "h100-pool"], 0),
            term("example.com/broken", "DoesNotExist", &[], 0),
        ],
        preferred: vec![term("topology.kubernetes.io/zone", "In", &["us-east-1a"], 50)],
    };
    let task = LeasedTask { affinity: Some(affinity), ..lease() };
    let job = serde_json::to_value(jobs::job_for_lease(&task, "h", &[], INSTALLATION, &KubeBackendConfig::default())).unwrap();
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(
        pod["affinity"],
        json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "cloud.google.com/gke-nodepool", "operator": "In", "values": ["a100-pool", "h100-pool"]},
                {"key": "example.com/broken", "operator": "DoesNotExist"},
            ]}]},
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "preference": {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1a"]}]}},
            ],
        }})
    );
    // The node pin stays: affinity narrows what the cluster's scheduler may do, it never widens it.
    assert_eq!(pod["nodeSelector"]["kubernetes.io/hostname"], "h");
    let plain = serde_json::to_value(jobs::job_for_lease(&lease(), "h", &[], INSTALLATION, &KubeBackendConfig::default())).unwrap();
    assert!(plain["spec"]["template"]["spec"].get("affinity").is_none(), "{plain}");
}

#[tokio::test]
async fn starting_an_existing_attempt_sends_nothing_and_stop_deletes_in_the_background() {
    let server = seeded(vec![h100_node(), job(42, 3, json!([]))]).await;
    let backend = backend(&server).await;
    backend.start(lease()).await.unwrap();
    assert!(server.writes().is_empty(), "{:?}", server.writes());
    backend.stop(TaskId(42), 3).await.unwrap();
    backend.stop(TaskId(42), 9).await.unwrap();
    let requests = server.writes();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "DELETE");
    assert_eq!(requests[0].path, "/apis/batch/v1/namespaces/flotilla-research/jobs/flotilla-01234567-42-3");
    assert_eq!(requests[0].body, json!({"propagationPolicy": "Background"}));
    assert!(server.get(Kind::Job, NAMESPACE, &job_of(42, 3)).is_none(), "the Job is gone");
}

#[tokio::test]
async fn a_refused_job_is_reported_as_a_start_failure() {
    let server = cluster(vec![h100_node()]).await;
    let backend = backend(&server).await;
    // The API server validates before anything else: a Job without an image is invalid.
    backend.start(LeasedTask { image: String::new(), ..lease() }).await.unwrap();
    let events = backend.pending_events(10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert!(
        matches!(&events[0].status, AttemptStatus::Failed { kind: FailureKind::StartFailed, message, .. }
            if message.contains("spec.template.spec.containers[0].image: Required value") && message.ends_with("(422)")),
        "{events:?}"
    );
    backend.ack_events(&events);
    assert!(backend.pending_events(10).await.unwrap().is_empty());
    // A server error is not final: the scheduler will send the lease again.
    server.fail_next_method("POST", 1, 500);
    assert!(backend.start(lease()).await.is_err());
    assert!(backend.pending_events(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn nodes_report_capacity_topology_spot_price_and_what_other_pods_hold() {
    // A finished pod holds nothing: the field selector leaves it out.
    let mut finished = other_pod("done", "ip-10-0-1-23.ec2.internal", "4", "1Gi");
    finished["status"]["phase"] = json!("Succeeded");
    let server = seeded(vec![
        h100_node(),
        gke_spot_node("gke-spot-1", "True"),
        gke_spot_node("gke-spot-2", "False"),
        other_pod("dcgm", "ip-10-0-1-23.ec2.internal", "500m", "1Gi"),
        other_pod("cni", "ip-10-0-1-23.ec2.internal", "250m", "512Mi"),
        finished,
    ])
    .await;
    let backend = backend(&server).await;
    let nodes = backend.nodes().await.unwrap();
    assert_eq!(nodes.len(), 3);
    let h100 = &nodes[2];
    assert_eq!(h100.name, "ip-10-0-1-23.ec2.internal");
    assert_eq!(h100.cluster, "eks-us-east");
    let mut allocatable = Resources::new(191_450, 2000 << 30, 8);
    allocatable.extended.insert("vpc.amazonaws.com/efa".into(), 32);
    allocatable.extended.insert("pods".into(), 110);
    assert_eq!(h100.allocatable, allocatable, "the kubelet's maxPods comes as pods");
    let mut reserved = Resources::new(750, (1 << 30) + (512 << 20), 0);
    reserved.extended.insert("pods".into(), 2);
    assert_eq!(h100.reserved, reserved, "the two running pods that are not ours hold their requests and two pod slots");
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
    // The pods are set by hand: the server runs no Job controller here.
    let mut objects = vec![h100_node()];
    for (id, conditions, status) in &cases {
        objects.push(job(*id, 1, conditions.clone()));
        if let Some(s) = status {
            objects.push(pod(*id, 1, s.clone()));
        }
    }
    let server = seeded(objects).await;
    let backend = backend(&server).await;
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
    let server = seeded(vec![h100_node(), job(1, 1, json!([])), job(2, 1, json!([])), pod(1, 1, json!({"phase": "Pending"}))]).await;
    let backend = backend(&server).await;
    let first = backend.pending_events(10).await.unwrap();
    assert_eq!(first.iter().map(|e| e.status.clone()).collect::<Vec<_>>(), [AttemptStatus::Pending, AttemptStatus::Pending]);
    backend.ack_events(&first);

    server.apply(pod(1, 1, json!({"phase": "Running"})));
    let running = eventually(&backend, |e| !e.is_empty()).await;
    assert_eq!(running.iter().map(|e| (e.task_id.0, e.status.clone())).collect::<Vec<_>>(), [(1, AttemptStatus::Running)]);
    backend.ack_events(&running);

    // Deleted by us: no event. Deleted by someone else: lost.
    backend.stop(TaskId(1), 1).await.unwrap();
    assert!(server.get(Kind::Job, NAMESPACE, &job_of(1, 1)).is_none());
    server.delete(Kind::Job, NAMESPACE, &job_of(2, 1), DeleteOptions::default()).unwrap();
    let lost = eventually(&backend, |e| !e.is_empty()).await;
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].task_id, TaskId(2));
    assert!(matches!(lost[0].status, AttemptStatus::Failed { kind: FailureKind::Lost, .. }));
    backend.ack_events(&lost);
    assert!(backend.pending_events(10).await.unwrap().is_empty());
    assert!(backend.attempts().await.unwrap().is_empty());
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
    let server = cluster(vec![h100_node()]).await;
    let backend = backend_with(&server, config).await;
    backend.start(lease()).await.unwrap();
    let requests = server.writes();
    let labels = &requests[1].body["metadata"]["labels"];
    assert_eq!(labels[POD_SECURITY_ENFORCE], "restricted");
    assert_eq!(
        (&labels["pod-security.kubernetes.io/warn"], &labels["pod-security.kubernetes.io/audit"]),
        (&json!("restricted"), &json!("restricted"))
    );
    // The Job is seen; its pod was admitted, so the attempt is pending, not failed.
    let events = eventually(&backend, |e| !e.is_empty()).await;
    assert_eq!(events.iter().map(|e| (e.task_id.0, e.status.clone())).collect::<Vec<_>>(), [(42, AttemptStatus::Pending)]);
    assert_eq!(server.pods_of_job(NAMESPACE, &job_of(42, 3)).len(), 1, "its pod was created");
    assert!(server.list(Kind::Event).iter().all(|e| e["reason"] != "FailedCreate"), "no pod was refused");
}

#[tokio::test]
async fn a_task_pod_the_namespace_level_forbids_fails_its_attempt_once_with_the_api_servers_message() {
    // Namespaces enforce baseline (the default): a privileged task's Job is created, but
    // admission refuses its pod, and the Job controller would retry that for ever.
    let server = cluster(vec![h100_node()]).await;
    let backend = backend(&server).await;
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
    let creates = server.writes().iter().filter(|r| r.method == "POST" && r.path.ends_with("/jobs")).count();
    // The lease is a gang member: its gang's Service, created first, made the namespace.
    assert_eq!(creates, 1, "one Job create, none retried");

    // A baseline task in the same namespace is admitted.
    backend.start(LeasedTask { task_id: 43, ..lease_at("baseline", None) }).await.unwrap();
    let events = eventually(&backend, |e| e.iter().any(|e| e.task_id == TaskId(43))).await;
    assert_eq!(events.iter().map(|e| (e.task_id.0, e.status.clone())).collect::<Vec<_>>(), [(43, AttemptStatus::Pending)]);
}

/// Statuses of attempts in `events`, by task id.
fn statuses(events: &[AttemptEvent]) -> Vec<(u64, AttemptStatus)> {
    events.iter().map(|e| (e.task_id.0, e.status.clone())).collect()
}

fn lists_of(server: &ApiServer, path: &str) -> usize {
    server.requests().iter().filter(|r| r.method == "GET" && r.path == path && !r.is_watch()).count()
}

#[tokio::test]
async fn a_relist_after_410_and_an_executor_restart_during_a_watch_gap_lose_no_attempt_event() {
    let server = cluster(vec![healthy_h100_node()]).await;
    let first = backend(&server).await;
    for task_id in [42, 43] {
        first.start(LeasedTask { task_id, requests: None, limits: None, ..lease() }).await.unwrap();
        server.set_pod_state(NAMESPACE, &pod_of(&server, task_id, 3), PodState::Running).unwrap();
    }
    let running = eventually(&first, |e| e.len() == 2 && e.iter().all(|e| e.status == AttemptStatus::Running)).await;
    first.ack_events(&running);

    // A watch gap the watches come back from with 410: connections cut, a pod succeeds,
    // the history is compacted. The reflectors relist and the success is reported.
    let pod_lists = lists_of(&server, "/api/v1/pods");
    server.pause_watches();
    server.drop_connections();
    server.set_pod_state(NAMESPACE, &pod_of(&server, 42, 3), PodState::Succeeded).unwrap();
    server.compact();
    server.resume_watches();
    let done = eventually(&first, |e| !e.is_empty()).await;
    assert_eq!(statuses(&done), [(42, AttemptStatus::Succeeded)]);
    first.ack_events(&done);
    assert!(lists_of(&server, "/api/v1/pods") > pod_lists, "the pod watches relisted after 410");

    // The executor restarts during a second gap, in which the other attempt fails: the
    // new backend reports every attempt's current status, the failure included.
    server.pause_watches();
    drop(first);
    server.drop_connections();
    server.set_pod_state(NAMESPACE, &pod_of(&server, 43, 3), PodState::Failed { exit_code: 3 }).unwrap();
    server.compact();
    let second = backend(&server).await;
    server.resume_watches();
    let events = eventually(&second, |e| e.len() == 2).await;
    let failed = AttemptStatus::Failed { kind: FailureKind::Error, exit_code: Some(3), message: "Error (exit code 3)".into() };
    assert_eq!(statuses(&events), [(42, AttemptStatus::Succeeded), (43, failed)]);
    second.ack_events(&events);

    // And the restarted backend's watches follow changes after the gap.
    second.start(LeasedTask { task_id: 44, requests: None, limits: None, ..lease() }).await.unwrap();
    let pending = eventually(&second, |e| !e.is_empty()).await;
    assert_eq!(statuses(&pending), [(44, AttemptStatus::Pending)]);
}

#[test]
fn the_progress_url_and_token_reach_the_container_only_from_the_tracker_and_only_with_a_deadline() {
    let env_of = |task: &LeasedTask| -> Vec<String> {
        let job = serde_json::to_value(jobs::job_for_lease(task, "h", &[], INSTALLATION, &KubeBackendConfig::default())).unwrap();
        job["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                e["name"].as_str().filter(|n| n.starts_with("FLOTILLA_PROGRESS")).map(|n| format!("{n}={}", e["value"].as_str().unwrap()))
            })
            .collect()
    };
    // A task's own values never pass for them.
    let mut own = lease();
    own.env.insert("FLOTILLA_PROGRESS_TOKEN".into(), "mine".into());
    assert!(env_of(&own).is_empty());
    let tracker = crate::progress::ProgressTracker::new(Some("http://executor:8080/progress".into()));
    let mut task = LeasedTask { progress_deadline_ms: 600_000, ..lease() };
    task.env.insert("FLOTILLA_PROGRESS_TOKEN".into(), "mine".into());
    tracker.register(&mut task, false);
    let env = env_of(&task);
    assert_eq!(env.len(), 2, "{env:?}");
    assert_eq!(env[0], "FLOTILLA_PROGRESS_URL=http://executor:8080/progress");
    assert!(
        env[1].starts_with("FLOTILLA_PROGRESS_TOKEN=")
            && env[1].len() == "FLOTILLA_PROGRESS_TOKEN=".len() + 64
            && !env[1].ends_with("mine")
    );
}

/// A GPU node as GPU Feature Discovery and NVIDIA's device plugin label and advertise it.
fn shared_gpu_node(name: &str, labels: Value, allocatable: Value) -> Value {
    let mut all_labels = json!({"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": "us-east-1a"});
    for (k, v) in labels.as_object().unwrap() {
        all_labels[k] = v.clone();
    }
    let mut all_allocatable = json!({"cpu": "64", "memory": "512Gi", "pods": "110"});
    for (k, v) in allocatable.as_object().unwrap() {
        all_allocatable[k] = v.clone();
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": all_labels},
        "spec": {},
        "status": {"allocatable": all_allocatable, "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

#[tokio::test]
async fn mig_and_time_sliced_nodes_report_their_slices_and_replicas_and_never_slices_as_whole_gpus() {
    let server = seeded(vec![
        // Mixed strategy: one A100 split into seven 1g.10gb slices, one whole A100 left.
        shared_gpu_node(
            "mig-mixed",
            json!({"nvidia.com/mig.strategy": "mixed", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "nvidia.com/mig-1g.10gb.count": "7"}),
            json!({"nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "7"}),
        ),
        // Time slicing with renameByDefault: two GPUs shared four ways.
        shared_gpu_node(
            "time-sliced",
            json!({"nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.sharing-strategy": "time-slicing", "nvidia.com/gpu.product": "NVIDIA-A10G"}),
            json!({"nvidia.com/gpu.shared": "8"}),
        ),
        // Single strategy: the slices are advertised as nvidia.com/gpu.
        shared_gpu_node(
            "mig-single",
            json!({"nvidia.com/mig.strategy": "single", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "nvidia.com/mig-1g.5gb.count": "7"}),
            json!({"nvidia.com/gpu": "7"}),
        ),
        // Time slicing without renaming: the replicas are advertised as nvidia.com/gpu.
        shared_gpu_node(
            "shared-unrenamed",
            json!({"nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.product": "NVIDIA-A10G-SHARED"}),
            json!({"nvidia.com/gpu": "4"}),
        ),
    ])
    .await;
    let backend = backend(&server).await;
    let nodes = backend.nodes().await.unwrap();
    let by_name = |n: &str| nodes.iter().find(|x| x.name == n).unwrap_or_else(|| panic!("{n} reported"));
    let mixed = by_name("mig-mixed");
    assert_eq!(mixed.allocatable.gpu, 1, "the whole GPU stays a GPU");
    assert_eq!(mixed.allocatable.extended.get("nvidia.com/mig-1g.10gb"), Some(&7));
    assert_eq!(mixed.gpu_model.as_deref(), Some("A100"));
    let sliced = by_name("time-sliced");
    assert_eq!(sliced.allocatable.gpu, 0);
    assert_eq!(sliced.allocatable.extended.get("nvidia.com/gpu.shared"), Some(&8));
    assert_eq!(flotilla_model::gpu_replicas_of(sliced), 4, "the replicas label reaches the scheduler");
    for name in ["mig-single", "shared-unrenamed"] {
        let n = by_name(name);
        assert_eq!(n.allocatable.gpu, 0, "{name}: slices or replicas advertised as nvidia.com/gpu are not whole GPUs");
        assert_eq!(n.gpu_model, None, "{name}");
    }
}

#[test]
fn a_mig_lease_requests_exactly_its_profile_and_tolerates_the_gpu_taint() {
    let mut requests = flotilla_api::v1::ResourceAmounts { cpu_millis: 2_000, memory_bytes: 8 << 30, ..Default::default() };
    requests.extended.insert("nvidia.com/mig-1g.10gb".into(), 1);
    let task = LeasedTask { requests: Some(requests), limits: None, ..lease() };
    let job = serde_json::to_value(jobs::job_for_lease(&task, "h", &[], INSTALLATION, &KubeBackendConfig::default())).unwrap();
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["resources"],
        json!({"requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/mig-1g.10gb": "1"}, "limits": {"nvidia.com/mig-1g.10gb": "1"}})
    );
    assert_eq!(pod["tolerations"], json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]));
}
