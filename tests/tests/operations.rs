//! Running the fleet: cordon and drain a cluster, and (further down) progress deadlines and
//! per-cluster metrics. One scheduler replica on a loopback port and one simulated executor
//! per cluster (the `flotilla dev` wiring), driven through gRPC and the `flotilla` binary.
//!
//! Time: executors sync every 200 ms, the leader schedules every 100 ms; simulated clocks run
//! at real speed, so durations below are real.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::v1::{self, clusters_client::ClustersClient, queues_client::QueuesClient};
use flotilla_executor::{ExecutorConfig, ExecutorHandle, SimCluster, SimOptions};
use flotilla_model::{SimTemplate, TaskId, TaskState, TaskTemplate};
use flotilla_server::{ServerConfig, ServerHandle};
use flotilla_store::{ClusterState, DrainState, EventKind, State, TaskEvent};
use tonic::transport::Channel;

const QUEUE: &str = "ops";
const SYNC: Duration = Duration::from_millis(200);

struct Fleet {
    server: ServerHandle,
    url: String,
    channel: Channel,
    sims: BTreeMap<String, SimCluster>,
    executors: Vec<ExecutorHandle>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// The replica, its queue (with `disruption_budget`) and simulated clusters of
    /// `(name, nodes, cpus per node)`; no executor runs yet.
    async fn start(clusters: &[(&str, u32, u32)], disruption_budget: u32) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::single("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
        config.schedule_interval = Duration::from_millis(100);
        config.sync_interval = SYNC;
        config.cluster_lost_after = Duration::from_secs(5);
        let server = flotilla_server::start(config).await.expect("server starts");
        server.wait_for_leader(Duration::from_secs(20)).await.expect("a leader");
        let url = format!("http://{}", server.local_addr);
        let channel = Channel::from_shared(url.clone()).unwrap().connect().await.expect("connect to the server");
        let spec = v1::QueueSpec { name: QUEUE.into(), weight: 1.0, disruption_budget, ..Default::default() };
        QueuesClient::new(channel.clone()).create_queue(v1::CreateQueueRequest { queue: Some(spec) }).await.expect("create queue");
        let mut toml = String::new();
        for (name, nodes, cpu) in clusters {
            toml.push_str(&format!(
                "[[cluster]]\nname = \"{name}\"\nregion = \"r-{name}\"\nspeed = 1.0\npending = \"100ms\"\ndefault_duration = \"1s\"\n\
                 [cluster.faults]\nfailure_rate = 0.0\noom_rate = 0.0\neviction_rate = 0.0\n\
                 [[cluster.pool]]\nname = \"cpu\"\ncount = {nodes}\ncpu = \"{cpu}\"\nmemory = \"64Gi\"\nprice_per_hour_usd = 1.0\n\
                 zones = [\"{name}-z1\"]\nnodes_per_rack = 1\n"
            ));
        }
        let file = flotilla_executor::parse_clusters(&toml, "operations-test.toml").expect("valid clusters file");
        let sims = SimCluster::federation(&file, SimOptions { seed: Some(3), ..Default::default() })
            .expect("simulated clusters")
            .into_iter()
            .map(|s| (s.name().to_string(), s))
            .collect();
        Fleet { server, url, channel, sims, executors: Vec::new(), _dir: dir }
    }

    async fn start_executor(&mut self, cluster: &str) {
        let mut config = ExecutorConfig::new(vec![self.url.clone()], cluster);
        config.sync_interval = SYNC;
        self.executors.push(flotilla_executor::spawn(config, Arc::new(self.sims[cluster].clone())));
        let name = cluster.to_string();
        flotilla_tests::wait_until(Duration::from_secs(10), &format!("cluster {cluster} is ready"), || {
            self.read(|s| s.cluster(&name).is_some_and(|c| c.state == ClusterState::Ready))
        })
        .await;
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        self.server.ctx.read(f)
    }

    async fn submit(&self, task_set: &str, templates: Vec<TaskTemplate>) -> Vec<TaskId> {
        flotilla_tests::submit_templates(&self.channel, QUEUE, task_set, &templates).await
    }

    fn events(&self, task_set: &str) -> Vec<TaskEvent> {
        self.read(|s| flotilla_tests::task_set_events(s, QUEUE, task_set))
    }

    /// `flotilla ARGS --server URL`: exit code and stdout.
    fn cli(&self, args: &[&str]) -> (i32, String) {
        let out = std::process::Command::new(flotilla_tests::flotilla_bin())
            .args(args)
            .args(["--server", &self.url])
            .output()
            .expect("run the flotilla binary");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.code().is_some(), "flotilla {args:?} was killed: {}", String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), stdout)
    }

    async fn shutdown(self) {
        for e in self.executors {
            e.abort();
        }
        self.server.shutdown().await;
    }
}

fn task(name: &str, duration: &str) -> TaskTemplate {
    TaskTemplate {
        name: name.into(),
        image: "busybox:1.36".into(),
        command: vec!["true".into()],
        resources: [("cpu".to_string(), "1".to_string()), ("memory".to_string(), "1Gi".to_string())].into(),
        sim: Some(SimTemplate { duration: Some(duration.into()), ..Default::default() }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_cluster_ends_empty_moved_tasks_resume_elsewhere_as_new_attempts_within_the_budget() {
    const BUDGET: usize = 2;
    // Built (or found fresh) before the clock of any task starts.
    flotilla_tests::flotilla_bin();
    let mut fleet = Fleet::start(&[("old", 2, 8), ("new", 2, 8)], BUDGET as u32).await;
    fleet.start_executor("old").await;
    // Seven preemptible agents that run long, and one critical task that ends on its own.
    let movable = fleet.submit("agents", vec![TaskTemplate { count: Some(7), ..task("agent", "300s") }]).await;
    let critical =
        fleet.submit("critical", vec![TaskTemplate { priority_class: Some("critical".into()), ..task("critical", "20s") }]).await[0];
    let all: Vec<TaskId> = movable.iter().copied().chain([critical]).collect();
    let on = |s: &State, id: &TaskId, cluster: &str, state: TaskState| {
        s.task(*id).is_some_and(|t| t.state == state && t.lease.as_ref().is_some_and(|l| l.cluster == cluster))
    };
    flotilla_tests::wait_until(Duration::from_secs(15), "every task runs in cluster old", || {
        fleet.read(|s| all.iter().all(|id| on(s, id, "old", TaskState::Running)))
    })
    .await;
    fleet.start_executor("new").await;

    // Through the binary: the drain lists the task it will not stop.
    let (code, out) = fleet.cli(&["cluster", "drain", "old"]);
    assert_eq!(code, 0, "drain answered: {out}");
    assert!(out.contains("draining ("), "drain shows what is left: {out}");
    assert!(out.contains("not preemptible") && out.contains(&critical.0.to_string()), "drain lists the critical task: {out}");
    let (_, again) = fleet.cli(&["cluster", "drain", "old"]);
    assert!(again.contains("draining ("), "a second drain is harmless: {again}");

    let moved_in = flotilla_tests::wait_until(Duration::from_secs(20), "every movable task runs in cluster new", || {
        fleet.read(|s| movable.iter().all(|id| on(s, id, "new", TaskState::Running)))
    })
    .await;
    fleet.read(|s| {
        assert!(on(s, &critical, "old", TaskState::Running), "the critical task is left alone while the others move");
        for id in &movable {
            let t = s.task(*id).unwrap();
            assert_eq!((t.attempt, t.failures), (2, 0), "task {id} moved as a new attempt that is not a failure");
        }
        assert_eq!(s.cluster_drain("old").unwrap().state, DrainState::Draining);
    });
    let (_, listed) = fleet.cli(&["clusters"]);
    assert!(listed.contains("draining (1 left)"), "flotilla clusters shows the drain: {listed}");

    flotilla_tests::wait_until(Duration::from_secs(20), "the critical task finished and old is drained", || {
        fleet.read(|s| {
            s.task(critical).unwrap().state == TaskState::Succeeded && s.cluster_drain("old").unwrap().state == DrainState::Drained
        })
    })
    .await;
    assert_eq!(fleet.read(|s| s.task(critical).unwrap().attempt), 1, "the critical task was never stopped");
    // The cluster's own record: nothing of Flotilla runs in old any more.
    let history = fleet.sims["old"].run_history();
    assert!(history.iter().all(|r| r.ended_unix_ms.is_some()), "a pod still runs in old: {history:?}");
    let (code, drained) = fleet.cli(&["cluster", "drain", "old", "--grace", "5s"]);
    assert_eq!(code, 0, "a drained cluster's drain --grace returns at once: {drained}");
    assert!(drained.contains("drained"), "{drained}");

    // The budget, from the event log: each cycle's entry stamps its preemptions with one time.
    let events = fleet.events("agents");
    let mut per_cycle: BTreeMap<u64, usize> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind == EventKind::Preempted) {
        assert!(e.reason.contains("draining"), "preempted for the drain: {}", e.reason);
        *per_cycle.entry(e.time_ms).or_default() += 1;
    }
    assert_eq!(per_cycle.values().sum::<usize>(), movable.len(), "each movable task was moved once: {per_cycle:?}");
    assert!(per_cycle.values().all(|n| *n <= BUDGET), "more than the budget moved in one cycle: {per_cycle:?}");
    assert!(per_cycle.len() >= movable.len().div_ceil(BUDGET), "the drain took several cycles: {per_cycle:?}");
    eprintln!("drain: {} tasks moved in {moved_in:?}, preempted per cycle {:?}", movable.len(), per_cycle.values().collect::<Vec<_>>());
    assert!(!fleet.events("critical").iter().any(|e| e.kind == EventKind::Preempted), "the critical task was not preempted");

    // Uncordon: the cluster takes work again.
    let (code, out) = fleet.cli(&["cluster", "uncordon", "old"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(fleet.read(|s| s.cluster_drain("old").unwrap().state), DrainState::Schedulable);
    let later = fleet.submit("later", vec![TaskTemplate { count: Some(20), ..task("later", "300s") }]).await;
    flotilla_tests::wait_until(Duration::from_secs(15), "new work lands in old again", || {
        fleet.read(|s| later.iter().any(|id| s.task(*id).unwrap().lease.as_ref().is_some_and(|l| l.cluster == "old")))
    })
    .await;
    let clusters = ClustersClient::new(fleet.channel.clone()).list_clusters(v1::ListClustersRequest {}).await.unwrap().into_inner();
    let old = clusters.clusters.iter().find(|c| c.name == "old").unwrap();
    assert_eq!((old.cordoned, old.draining, old.drain_state.as_str()), (false, false, "schedulable"));
    let names: BTreeSet<&str> = clusters.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["new", "old"].into());
    fleet.shutdown().await;
}

/// A simulated agent that signals progress every second, for `duration`, stalling after
/// `stall_after` if given, with a 5 s progress deadline.
fn signalling(name: &str, duration: &str, stall_after: Option<&str>) -> TaskTemplate {
    TaskTemplate {
        progress_deadline: Some("5s".into()),
        retry: Some(flotilla_model::RetryTemplate { max_attempts: Some(3), backoff: Some("1s".into()), ..Default::default() }),
        sim: Some(SimTemplate {
            duration: Some(duration.into()),
            progress_every: Some("1s".into()),
            stall_after: stall_after.map(str::to_string),
            ..Default::default()
        }),
        ..task(name, duration)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_stops_signalling_is_retried_elsewhere_after_its_deadline_and_one_that_signals_runs_on() {
    let mut fleet = Fleet::start(&[("a", 1, 8), ("b", 1, 8)], 64).await;
    fleet.start_executor("a").await;
    fleet.start_executor("b").await;
    let stuck = fleet.submit("stuck", vec![signalling("stuck", "120s", Some("2s"))]).await[0];
    let busy = fleet.submit("busy", vec![signalling("busy", "12s", None)]).await[0];

    flotilla_tests::wait_until(Duration::from_secs(20), "the stuck agent runs again as attempt 2", || {
        fleet.read(|s| s.task(stuck).is_some_and(|t| t.attempt == 2 && t.state == TaskState::Running))
    })
    .await;
    let events = fleet.events("stuck");
    let ended = events.iter().find(|e| e.kind == EventKind::Retrying).expect("the first attempt ended as a failure to retry");
    assert_eq!(ended.attempt, 1);
    assert!(ended.reason.contains("NoProgress") && ended.reason.contains("no progress for 5s"), "reason: {}", ended.reason);
    let running_at = events.iter().find(|e| e.kind == EventKind::Running && e.attempt == 1).expect("attempt 1 ran").time_ms;
    let stalled_for = ended.time_ms.saturating_sub(running_at);
    assert!((6_000..12_000).contains(&stalled_for), "stopped {stalled_for} ms after it began running: 2 s of signals + the 5 s deadline");
    let first = events.iter().find(|e| e.kind == EventKind::Leased && e.attempt == 1).unwrap();
    let second = events.iter().find(|e| e.kind == EventKind::Leased && e.attempt == 2).unwrap();
    assert_ne!((&first.cluster, &first.node), (&second.cluster, &second.node), "the retry avoids the node it stalled on");
    assert_eq!(fleet.read(|s| s.task(stuck).unwrap().failures), 1, "no progress counts as the task's failure");
    assert!(fleet.sims[&first.cluster]
        .run_history()
        .iter()
        .any(|r| r.task_id == stuck && r.attempt == 1 && r.ended_by.as_deref() == Some("stopped")));

    flotilla_tests::wait_until(Duration::from_secs(20), "the signalling agent succeeded", || {
        fleet.read(|s| s.task(busy).unwrap().state == TaskState::Succeeded)
    })
    .await;
    let t = fleet.read(|s| s.task(busy).unwrap().clone());
    assert_eq!((t.attempt, t.failures), (1, 0), "an agent that keeps signalling is never stopped");
    assert!(!fleet.events("busy").iter().any(|e| e.kind == EventKind::Retrying));

    // The per-cluster dispatch metrics after this run: three attempts started (the stuck
    // agent twice, the busy one once), one NoProgress failure where it stalled, sane
    // lease-to-running times and sync ages.
    flotilla_tests::wait_until(Duration::from_secs(5), "the metrics caught up", || {
        metric(&fleet.server.ctx.metrics.render(), "flotilla_cluster_attempts_started_total", &[]) >= 3.0
    })
    .await;
    let text = fleet.server.ctx.metrics.render();
    assert_eq!(metric(&text, "flotilla_cluster_attempts_started_total", &[]), 3.0, "{text}");
    let stalled_in = format!("cluster=\"{}\"", first.cluster);
    assert_eq!(metric(&text, "flotilla_cluster_attempt_failures_total", &[&stalled_in, "reason=\"NoProgress\""]), 1.0, "{text}");
    assert_eq!(metric(&text, "flotilla_cluster_attempt_failures_total", &[]), 1.0, "no other failure: {text}");
    let (count, sum) = (
        metric(&text, "flotilla_cluster_lease_to_running_seconds_count", &[]),
        metric(&text, "flotilla_cluster_lease_to_running_seconds_sum", &[]),
    );
    assert_eq!(count, 3.0, "{text}");
    eprintln!("lease to running: {count} samples, mean {:.3} s; stalled attempt stopped {stalled_for} ms after running", sum / count);
    assert!(sum / count > 0.05 && sum / count < 5.0, "mean lease-to-running {} s: the pending time (100 ms) plus syncs", sum / count);
    for c in ["a", "b"] {
        let age = metric(&text, "flotilla_executor_sync_age_seconds", &[&format!("cluster=\"{c}\"")]);
        assert!(age < 2.0, "cluster {c} synced {age} s ago");
        assert!(text.contains(&format!("flotilla_cluster_unacknowledged{{cluster=\"{c}\",kind=\"stop\"}} 0")), "{text}");
    }
    fleet.shutdown().await;
}

/// The sum of a metric's samples whose line has every one of `labels` (`cluster="a"`).
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
