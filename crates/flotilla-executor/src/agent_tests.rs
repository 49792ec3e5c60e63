//! The executor loop against fake scheduler replicas (tonic on 127.0.0.1:0) and a
//! simulated cluster with a manual clock.

use std::collections::BTreeSet;
use std::sync::Mutex;

use flotilla_api::v1::executor_server::{Executor, ExecutorServer};
use flotilla_api::v1::{AttemptRef, LeasedTask, ReportEventsResponse, SyncResponse};
use tonic::{Request, Response};

use super::*;
use crate::sim::config::parse_clusters;
use crate::sim::{SimCluster, SimOptions};

#[derive(Default)]
struct Script {
    syncs: Vec<SyncRequest>,
    events: Vec<v1::AttemptEvent>,
    report_calls: usize,
    /// The next this-many `ReportEvents` calls fail with UNAVAILABLE.
    fail_reports: usize,
    /// Every call fails with UNAVAILABLE (a replica that lost its leader).
    unavailable: bool,
    start: Vec<LeasedTask>,
    stop: Vec<AttemptRef>,
    /// The lease each Sync grants; `None`: ten seconds.
    lease_ms: Option<u32>,
}

#[derive(Clone, Default)]
struct FakeScheduler(Arc<Mutex<Script>>);

impl FakeScheduler {
    fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

#[tonic::async_trait]
impl Executor for FakeScheduler {
    async fn sync(&self, request: Request<SyncRequest>) -> Result<Response<SyncResponse>, Status> {
        let mut s = self.0.lock().unwrap();
        if s.unavailable {
            return Err(Status::unavailable("no leader"));
        }
        let request = request.into_inner();
        // Level-triggered like the real scheduler: start what is listed and not running.
        let running: BTreeSet<(u64, u32)> = request.attempts.iter().map(|a| (a.task_id, a.attempt)).collect();
        let start = s.start.iter().filter(|t| !running.contains(&(t.task_id, t.attempt))).cloned().collect();
        let stop = s.stop.iter().filter(|a| running.contains(&(a.task_id, a.attempt))).cloned().collect();
        s.syncs.push(request);
        let lease_ms = s.lease_ms.unwrap_or(10_000);
        Ok(Response::new(SyncResponse { start, stop, sync_interval_ms: 0, lease_ms, lease_expiry_grace_ms: 1_000, ..Default::default() }))
    }

    async fn register(&self, _: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        Ok(Response::new(v1::RegisterResponse { installation_id: "0123456789abcdef".into() }))
    }

    async fn push_logs(&self, _: Request<v1::PushLogsRequest>) -> Result<Response<v1::PushLogsResponse>, Status> {
        Ok(Response::new(v1::PushLogsResponse { more: false }))
    }

    async fn report_events(&self, request: Request<ReportEventsRequest>) -> Result<Response<ReportEventsResponse>, Status> {
        let mut s = self.0.lock().unwrap();
        s.report_calls += 1;
        if s.unavailable || s.fail_reports > 0 {
            s.fail_reports = s.fail_reports.saturating_sub(1);
            return Err(Status::unavailable("leader election in progress"));
        }
        let events = request.into_inner().events;
        let accepted = events.len() as u32;
        s.events.extend(events);
        Ok(Response::new(ReportEventsResponse { accepted }))
    }
}

/// Serves `fake` on a free port; returns its URL.
async fn serve(fake: FakeScheduler) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let incoming = futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    });
    tokio::spawn(tonic::transport::Server::builder().add_service(ExecutorServer::new(fake)).serve_with_incoming(incoming));
    url
}

/// A URL nothing listens on.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn sim() -> SimCluster {
    let file = parse_clusters(
        "[[cluster]]\nname = \"lab\"\npending = \"1s\"\n[[cluster.pool]]\nname = \"cpu\"\ncount = 2\ncpu = \"16\"\nmemory = \"64Gi\"\n",
        "test.toml",
    )
    .unwrap();
    SimCluster::from_file(&file, "lab", SimOptions { seed: Some(3), manual_clock: true, ..Default::default() }).unwrap()
}

fn config(servers: Vec<String>) -> ExecutorConfig {
    ExecutorConfig {
        sync_interval: Duration::from_millis(20),
        connect_timeout: Duration::from_millis(500),
        rpc_timeout: Duration::from_secs(2),
        ..ExecutorConfig::new(servers, "lab")
    }
}

fn lease(task_id: u64) -> LeasedTask {
    LeasedTask { task_id, attempt: 1, node: "lab-cpu-01".into(), queue: "q".into(), sim_duration_ms: 1_000, ..Default::default() }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn the_loop_starts_and_stops_what_sync_lists_and_reports_every_event() {
    let fake = FakeScheduler::default();
    let url = serve(fake.clone()).await;
    let cluster = sim();
    fake.with(|s| s.start = vec![lease(1), lease(2)]);
    let handle = spawn(config(vec![url]), Arc::new(cluster.clone()));

    until("both leases run", || cluster.current_attempts().len() == 2).await;
    let first_sync = fake.with(|s| s.syncs[0].clone());
    assert_eq!(first_sync.cluster, "lab");
    assert_eq!(first_sync.nodes.len(), 2);
    assert_eq!(first_sync.nodes[0].name, "lab-cpu-01");

    cluster.advance(Duration::from_secs(5));
    let all_done = |s: &mut Script| s.events.iter().filter(|e| e.status == "succeeded").count() == 2;
    until("both attempts reported succeeded", || fake.with(all_done)).await;
    let statuses: Vec<(u64, String)> = fake.with(|s| s.events.iter().map(|e| (e.task_id, e.status.clone())).collect());
    for id in [1, 2] {
        let mine: Vec<&str> = statuses.iter().filter(|(t, _)| *t == id).map(|(_, s)| s.as_str()).collect();
        assert_eq!(mine, ["pending", "running", "succeeded"], "events of task {id} in order, once each");
    }
    until("a sync reports the finished phase", || {
        fake.with(|s| s.syncs.last().is_some_and(|r| r.attempts.iter().all(|a| a.phase == "succeeded")))
    })
    .await;

    fake.with(|s| s.stop = vec![AttemptRef { task_id: 1, attempt: 1 }]);
    until("the stopped attempt is gone", || cluster.current_attempts().len() == 1).await;
    assert_eq!(cluster.current_attempts()[0].task_id, TaskId(2));
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn events_are_sent_again_until_acknowledged_so_none_is_lost() {
    let fake = FakeScheduler::default();
    let url = serve(fake.clone()).await;
    let cluster = sim();
    for id in 0..50 {
        cluster.start_attempt(&lease(id));
    }
    cluster.advance(Duration::from_secs(5));
    fake.with(|s| s.fail_reports = 5);
    let config = ExecutorConfig { max_events_per_report: 7, ..config(vec![url]) };
    let handle = spawn(config, Arc::new(cluster.clone()));
    until("150 distinct events arrive", || {
        fake.with(|s| s.events.iter().map(|e| (e.task_id, e.status.clone())).collect::<BTreeSet<_>>().len() == 150)
    })
    .await;
    let (calls, batches_max) = fake.with(|s| (s.report_calls, s.events.len()));
    assert!(calls >= 5 + 150 / 7, "failed calls were retried ({calls} calls)");
    assert!(batches_max >= 150);
    assert!(cluster.peek_events(10).is_empty(), "acknowledged events leave the backend");
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn the_loop_moves_past_dead_and_unavailable_replicas() {
    let unavailable = FakeScheduler::default();
    unavailable.with(|s| s.unavailable = true);
    let healthy = FakeScheduler::default();
    let servers = vec![dead_url().await, serve(unavailable.clone()).await, serve(healthy.clone()).await];
    let cluster = sim();
    cluster.start_attempt(&lease(9));
    let handle = spawn(config(servers), Arc::new(cluster.clone()));
    until("the healthy replica gets syncs and the event", || healthy.with(|s| !s.syncs.is_empty() && !s.events.is_empty())).await;
    assert!(unavailable.with(|s| s.report_calls) >= 1, "the unavailable replica was tried");
    assert_eq!(healthy.with(|s| s.events[0].task_id), 9);
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn a_restarted_executor_stops_attempts_that_are_no_longer_leased() {
    let fake = FakeScheduler::default();
    let url = serve(fake.clone()).await;
    let cluster = sim();
    fake.with(|s| s.start = vec![lease(1)]);
    let first = spawn(config(vec![url.clone()]), Arc::new(cluster.clone()));
    until("the lease runs", || cluster.current_attempts().len() == 1).await;
    first.abort();

    // While the executor was away the scheduler requeued the task elsewhere.
    fake.with(|s| {
        s.start.clear();
        s.stop = vec![AttemptRef { task_id: 1, attempt: 1 }];
    });
    let syncs_before = fake.with(|s| s.syncs.len());
    let second = spawn(config(vec![url]), Arc::new(cluster.clone()));
    until("the stale attempt is stopped", || cluster.current_attempts().is_empty()).await;
    let ids: BTreeSet<String> = fake.with(|s| s.syncs.iter().map(|r| r.executor_id.clone()).collect());
    assert_eq!(ids.len(), 2, "a restarted executor has a new id");
    assert!(
        fake.with(|s| s.syncs[syncs_before].attempts.iter().any(|a| a.task_id == 1)),
        "the restarted executor reported the stale attempt"
    );
    second.stop().await.unwrap();
}

#[tokio::test]
async fn an_executor_whose_lease_expires_stops_its_attempts_and_reports_them_lost() {
    let fake = FakeScheduler::default();
    let url = serve(fake.clone()).await;
    let cluster = sim();
    fake.with(|s| {
        s.start = vec![lease(1), lease(2)];
        s.lease_ms = Some(300);
    });
    let handle = spawn(config(vec![url]), Arc::new(cluster.clone()));
    until("both leases run", || cluster.current_attempts().len() == 2).await;

    // Only a replica that cannot grant leases answers now (a partitioned leader).
    fake.with(|s| s.unavailable = true);
    until("the executor stopped every attempt", || cluster.current_attempts().is_empty()).await;
    assert!(fake.with(|s| s.events.iter().all(|e| e.failure_kind != "Lost")), "nothing reported while unreachable");

    fake.with(|s| {
        s.unavailable = false;
        s.start.clear();
    });
    let lost = |s: &mut Script| {
        s.events.iter().filter(|e| e.status == "failed" && e.failure_kind == "Lost").map(|e| e.task_id).collect::<BTreeSet<_>>()
    };
    until("both attempts are reported lost once a scheduler answers", || fake.with(lost) == BTreeSet::from([1, 2])).await;
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn an_executor_starts_nothing_without_a_lease() {
    let fake = FakeScheduler::default();
    let url = serve(fake.clone()).await;
    let cluster = sim();
    fake.with(|s| {
        s.start = vec![lease(1)];
        s.lease_ms = Some(0);
    });
    let handle = spawn(config(vec![url]), Arc::new(cluster.clone()));
    until("five syncs", || fake.with(|s| s.syncs.len() >= 5)).await;
    assert!(cluster.current_attempts().is_empty(), "a Sync without a lease started {:?}", cluster.current_attempts());
    // The same answer with a lease starts it.
    fake.with(|s| s.lease_ms = None);
    until("the lease runs", || cluster.current_attempts().len() == 1).await;
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_configuration_is_an_error() {
    let err = run(config(vec![]), Arc::new(sim()), std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("no scheduler servers"), "{err}");
}
