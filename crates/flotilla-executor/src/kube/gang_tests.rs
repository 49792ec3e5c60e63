//! Gangs on the kube backend: each member's Job gets its place in the gang (env, pod
//! `hostname` and `subdomain`), the gang gets one headless Service carrying the installation's
//! labels, and the Service goes with the gang's last Job (or, orphaned, once old enough).

use std::sync::Arc;
use std::time::Duration;

use flotilla_api::v1::{GangRole, LeasedTask};
use flotilla_kubetest::{ApiServer, Kind};
use flotilla_model::TaskId;
use serde_json::{json, Value};

use super::tests::support::*;
use crate::backend::ClusterBackend;
use crate::kube::KubeBackend;

const SERVICE: &str = "flotilla-01234567-g40";

/// Member `rank` of gang 40: a launcher (rank 0) and four workers, task ids 100 + rank.
fn member(rank: u32) -> LeasedTask {
    LeasedTask {
        task_id: 100 + u64::from(rank),
        attempt: 1,
        name: if rank == 0 { "launcher".into() } else { "worker".into() },
        gang_size: 5,
        gang_rank: rank,
        gang_roles: vec![GangRole { name: "launcher".into(), count: 1 }, GangRole { name: "worker".into(), count: 4 }],
        ..lease()
    }
}

fn env_of(job: &Value, key: &str) -> String {
    let env = job["spec"]["template"]["spec"]["containers"][0]["env"].as_array().cloned().unwrap_or_default();
    env.iter().find(|e| e["name"] == key).and_then(|e| e["value"].as_str()).unwrap_or_default().to_string()
}

async fn on_clock(server: &Arc<ApiServer>) -> KubeBackend {
    let backend = KubeBackend::new(server.client(), CLUSTER, INSTALLATION, settings());
    backend.wait_ready(Duration::from_secs(10)).await.unwrap();
    let clock = server.clone();
    backend.with_clock(Arc::new(move || clock.now_ms()))
}

/// Waits until the backend's Job cache holds `n` attempts.
async fn cached_attempts(backend: &KubeBackend, n: usize) {
    for _ in 0..500 {
        if backend.attempts().await.map(|a| a.len()).unwrap_or(0) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the Job cache never held {n} attempts");
}

#[tokio::test]
async fn a_worker_s_job_names_its_role_and_leader_and_its_gang_has_one_headless_service_with_the_installation_label() {
    let server = cluster(vec![h100_node()]).await;
    let backend = backend(&server).await;
    backend.start(member(3)).await.unwrap();
    backend.start(member(0)).await.unwrap();

    let job = server.get(Kind::Job, NAMESPACE, &job_of(103, 1)).expect("the worker's Job");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!((pod["hostname"].as_str(), pod["subdomain"].as_str()), (Some("worker-2"), Some(SERVICE)));
    assert_eq!(job["spec"]["template"]["metadata"]["labels"]["flotilla.io/gang-id"], "40", "the Service selects the pods by it");
    assert_eq!(env_of(&job, "FLOTILLA_GANG_ROLE"), "worker");
    assert_eq!(env_of(&job, "FLOTILLA_GANG_ROLE_RANK"), "2");
    assert_eq!(env_of(&job, "FLOTILLA_GANG_RANK"), "3");
    assert_eq!(env_of(&job, "FLOTILLA_GANG_LEADER"), format!("launcher-0.{SERVICE}.{NAMESPACE}.svc"));
    let launcher = server.get(Kind::Job, NAMESPACE, &job_of(100, 1)).expect("the launcher's Job");
    assert_eq!(launcher["spec"]["template"]["spec"]["hostname"], "launcher-0");
    assert_eq!(env_of(&launcher, "FLOTILLA_GANG_ADDRESS"), env_of(&job, "FLOTILLA_GANG_LEADER"));

    let service = server.get(Kind::Service, NAMESPACE, SERVICE).expect("the gang's Service");
    let labels = &service["metadata"]["labels"];
    assert_eq!(labels["flotilla.io/installation"], INSTALLATION);
    assert_eq!(labels["app.kubernetes.io/managed-by"], "flotilla");
    assert_eq!(labels["flotilla.io/gang-id"], "40");
    assert_eq!(service["spec"]["clusterIP"], "None", "headless: one DNS record per pod");
    assert_eq!(service["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(service["spec"]["selector"], json!({"flotilla.io/installation": INSTALLATION, "flotilla.io/gang-id": "40"}));
    // Two creates by the first member (before and after its namespace); the second finds the
    // Service in its cache, or is told it exists (409).
    let creates = server.writes().iter().filter(|w| w.method == "POST" && w.path.ends_with("/services")).count();
    assert!((2..=3).contains(&creates), "{creates} Service creates");
    assert_eq!(server.list(Kind::Service).len(), 1, "one Service per gang");
}

#[tokio::test]
async fn the_gangs_service_is_deleted_with_its_last_job_and_not_before() {
    let server = Arc::new(cluster(vec![h100_node()]).await);
    let backend = on_clock(&server).await;
    for rank in 0..2 {
        backend.start(member(rank)).await.unwrap();
    }
    cached_attempts(&backend, 2).await;
    backend.stop(TaskId(100), 1).await.unwrap();
    // Even once old enough to be swept, a Service whose gang still has a Job stays.
    server.advance(Duration::from_secs(120));
    backend.attempts().await.unwrap();
    assert!(server.get(Kind::Service, NAMESPACE, SERVICE).is_some(), "one member's Job is left");
    backend.stop(TaskId(101), 1).await.unwrap();
    assert!(server.get(Kind::Service, NAMESPACE, SERVICE).is_none(), "the Service went with the last Job");
}

#[tokio::test]
async fn an_orphaned_gang_service_is_swept_only_once_it_is_old_enough() {
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE, "labels": {
            "flotilla.io/installation": INSTALLATION, "app.kubernetes.io/managed-by": "flotilla", "flotilla.io/gang-id": "40"}},
        "spec": {"clusterIP": "None"}
    });
    let foreign = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "someone-elses", "namespace": NAMESPACE, "labels": {"flotilla.io/gang-id": "40"}},
        "spec": {"clusterIP": "None"}
    });
    let server = Arc::new(seeded(vec![h100_node(), service, foreign]).await);
    let backend = on_clock(&server).await;
    // The reflector lists the Service; it may have been created a moment ago for a Job on its way.
    for _ in 0..500 {
        if backend.gang_services.state().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    backend.attempts().await.unwrap();
    assert!(server.get(Kind::Service, NAMESPACE, SERVICE).is_some(), "a young Service is kept");
    server.advance(Duration::from_secs(61));
    backend.attempts().await.unwrap();
    assert!(server.get(Kind::Service, NAMESPACE, SERVICE).is_none(), "an old Service without Jobs is deleted");
    assert!(server.get(Kind::Service, NAMESPACE, "someone-elses").is_some(), "another installation's Service is never touched");
}
