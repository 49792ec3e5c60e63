//! A simulated federation in one process: one scheduler replica on a loopback port with a
//! temporary data directory, and one simulated executor per cluster (the `flotilla dev`
//! wiring), all with short timings. Checks the executor-side promises of DESIGN.md under
//! faults: every task of a large submission runs exactly once, a lost cluster's work moves
//! elsewhere and its stale attempts are stopped when it returns (invariants 2 and 6), gangs
//! never run partially and stay in one rack (invariant 4), retries back off and avoid the
//! failed node, and a task set that always fails trips the circuit breaker.
//!
//! Time: the scheduler and the executors sync every 200 ms, the leader schedules every
//! 100 ms, clusters are lost after 3 s, and simulated clocks run 20–50× faster, except
//! where a test needs attempts that stay running.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::v1::{self, queues_client::QueuesClient, tasks_client::TasksClient};
use flotilla_executor::{ExecutorConfig, ExecutorHandle, SimCluster, SimOptions};
use flotilla_model::{GangTemplate, RetryTemplate, SimTemplate, TaskId, TaskState, TaskTemplate};
use flotilla_server::{ServerConfig, ServerHandle};
use flotilla_store::{ClusterState, EventKind, State, TaskEvent};
use tonic::transport::Channel;

const QUEUE: &str = "fed";
const SYNC: Duration = Duration::from_millis(200);
const LOST_AFTER: Duration = Duration::from_secs(3);

/// One replica, its simulated clusters and their executor loops.
struct Federation {
    server: Option<ServerHandle>,
    url: String,
    channel: Channel,
    sims: BTreeMap<String, SimCluster>,
    executors: BTreeMap<String, ExecutorHandle>,
    _dir: tempfile::TempDir,
}

impl Federation {
    /// Starts the replica, waits for it to lead and creates the queue. No executor runs yet.
    async fn start(clusters_toml: &str) -> Federation {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::single("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
        config.schedule_interval = Duration::from_millis(100);
        config.sync_interval = SYNC;
        config.cluster_lost_after = LOST_AFTER;
        let server = flotilla_server::start(config).await.expect("server starts");
        server.wait_for_leader(Duration::from_secs(20)).await.expect("a leader");
        let url = format!("http://{}", server.local_addr);
        let channel = Channel::from_shared(url.clone()).unwrap().connect().await.expect("connect to the server");
        QueuesClient::new(channel.clone())
            .create_queue(v1::CreateQueueRequest { queue: Some(v1::QueueSpec { name: QUEUE.into(), weight: 1.0, ..Default::default() }) })
            .await
            .expect("create queue");
        let file = flotilla_executor::parse_clusters(clusters_toml, "federation-test.toml").expect("valid clusters file");
        let sims = SimCluster::federation(&file, SimOptions { seed: Some(7), ..Default::default() })
            .expect("simulated clusters")
            .into_iter()
            .map(|s| (s.name().to_string(), s))
            .collect();
        Federation { server: Some(server), url, channel, sims, executors: BTreeMap::new(), _dir: dir }
    }

    /// Starts an executor loop for `cluster` over its (shared) simulated cluster.
    fn start_executor(&mut self, cluster: &str) {
        let mut config = ExecutorConfig::new(vec![self.url.clone()], cluster);
        config.sync_interval = SYNC;
        let handle = flotilla_executor::spawn(config, Arc::new(self.sims[cluster].clone()));
        assert!(self.executors.insert(cluster.to_string(), handle).is_none(), "executor {cluster} already runs");
    }

    fn start_all_executors(&mut self) {
        let names: Vec<String> = self.sims.keys().cloned().collect();
        for n in names {
            self.start_executor(&n);
        }
    }

    fn server(&self) -> &ServerHandle {
        self.server.as_ref().unwrap()
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        self.server().ctx.read(f)
    }

    async fn submit(&self, task_set: &str, templates: Vec<TaskTemplate>) -> Vec<TaskId> {
        flotilla_tests::submit_templates(&self.channel, QUEUE, task_set, &templates).await
    }

    /// The task set's event log (all of it: these tests stay far below the trim limit).
    fn events(&self, task_set: &str) -> Vec<TaskEvent> {
        self.read(|s| flotilla_tests::task_set_events(s, QUEUE, task_set))
    }

    fn states(&self, ids: &[TaskId]) -> Vec<TaskState> {
        self.read(|s| ids.iter().map(|id| s.task(*id).expect("task exists").state).collect())
    }

    fn cluster_ready(&self, name: &str) -> bool {
        self.read(|s| s.cluster(name).is_some_and(|c| c.state == ClusterState::Ready))
    }

    /// (cluster, node) -> rack of every simulated node.
    fn racks(&self) -> HashMap<(String, String), String> {
        self.sims
            .values()
            .flat_map(|s| s.sim_nodes().iter().map(|n| ((n.cluster.clone(), n.name.clone()), n.topology.rack.clone())))
            .collect()
    }

    async fn shutdown(mut self) {
        for (_, e) in std::mem::take(&mut self.executors) {
            e.abort();
        }
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

fn task(name: &str, cpu: &str, duration: &str) -> TaskTemplate {
    TaskTemplate {
        name: name.into(),
        image: "busybox:1.36".into(),
        command: vec!["true".into()],
        resources: [("cpu".to_string(), cpu.to_string()), ("memory".to_string(), "1Gi".to_string())].into(),
        sim: Some(SimTemplate { duration: Some(duration.into()), ..Default::default() }),
        ..Default::default()
    }
}

fn failing(name: &str, cpu: &str, max_attempts: u32, backoff: &str) -> TaskTemplate {
    let mut t = task(name, cpu, "1s");
    t.sim = Some(SimTemplate { duration: Some("1s".into()), exit_code: Some(1), ..Default::default() });
    t.retry = Some(RetryTemplate { max_attempts: Some(max_attempts), backoff: Some(backoff.into()), ..Default::default() });
    t
}

fn of_kind(events: &[TaskEvent], kind: EventKind) -> impl Iterator<Item = &TaskEvent> {
    events.iter().filter(move |e| e.kind == kind)
}

/// A pool: `(name, count, cpu per node, nodes_per_rack)`.
type Pool<'a> = (&'a str, u32, u32, u32);

/// A clusters file from `(name, speed, pools)`, without faults.
fn clusters_toml(clusters: &[(&str, f64, &[Pool])]) -> String {
    let mut out = String::new();
    for (name, speed, pools) in clusters {
        out.push_str(&format!(
            "[[cluster]]\nname = \"{name}\"\nregion = \"r-{name}\"\nspeed = {speed:?}\npending = \"200ms\"\ndefault_duration = \"1s\"\n"
        ));
        out.push_str("[cluster.faults]\nfailure_rate = 0.0\noom_rate = 0.0\neviction_rate = 0.0\n");
        for (pool, count, cpu, per_rack) in pools.iter() {
            out.push_str(&format!(
                "[[cluster.pool]]\nname = \"{pool}\"\ncount = {count}\ncpu = \"{cpu}\"\nmemory = \"64Gi\"\nprice_per_hour_usd = 1.0\n\
                 zones = [\"{name}-z1\"]\nnodes_per_rack = {per_rack}\n"
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_cluster_federation_runs_1000_tasks_each_exactly_once() {
    // 3 clusters x 4 nodes x 16 CPUs: 192 one-CPU tasks at a time, so 1,000 need every cluster.
    let toml =
        clusters_toml(&[("east", 40.0, &[("cpu", 4, 16, 2)]), ("west", 40.0, &[("cpu", 4, 16, 2)]), ("lab", 40.0, &[("cpu", 4, 16, 2)])]);
    let mut fed = Federation::start(&toml).await;
    fed.start_all_executors();
    flotilla_tests::wait_until(Duration::from_secs(10), "every cluster is ready", || {
        ["east", "west", "lab"].iter().all(|c| fed.cluster_ready(c))
    })
    .await;
    let ids = fed.submit("bulk", vec![TaskTemplate { count: Some(1000), ..task("work", "1", "2s") }]).await;
    assert_eq!(ids.len(), 1000);

    let allocatable: HashMap<(String, String), u64> = fed
        .sims
        .values()
        .flat_map(|s| s.sim_nodes().iter().map(|n| ((n.cluster.clone(), n.name.clone()), n.allocatable.cpu_millis)))
        .collect();
    let mut max_active = 0;
    let took = flotilla_tests::wait_until(Duration::from_secs(60), "all 1,000 tasks succeeded", || {
        fed.read(|s| {
            // Invariant 3 while it runs: no node holds more than its allocatable CPU.
            let mut used: HashMap<(String, String), u64> = HashMap::new();
            for t in s.active() {
                let l = t.lease.as_ref().expect("an active task holds a lease");
                *used.entry((l.cluster.clone(), l.node.clone())).or_default() += t.spec.resources.cpu_millis;
            }
            for (node, cpu) in &used {
                assert!(*cpu <= allocatable[node], "node {node:?} holds {cpu}m CPU, more than its {}m", allocatable[node]);
            }
            max_active = max_active.max(s.active().count());
            for id in &ids {
                let st = s.task(*id).unwrap().state;
                assert!(!matches!(st, TaskState::Failed | TaskState::Cancelled), "task {id} ended {st:?} with faults off");
            }
            ids.iter().all(|id| s.task(*id).unwrap().state == TaskState::Succeeded)
        })
    })
    .await;
    eprintln!("1,000 tasks succeeded in {took:?}; at most {max_active} active at once");
    assert!(max_active <= 192, "more tasks active ({max_active}) than the federation holds");

    let events = fed.events("bulk");
    let mut succeeded: BTreeMap<TaskId, u32> = BTreeMap::new();
    for e in of_kind(&events, EventKind::Succeeded) {
        *succeeded.entry(e.task).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(succeeded.get(id), Some(&1), "task {id} succeeded exactly once");
    }
    fed.read(|s| {
        for id in &ids {
            let t = s.task(*id).unwrap();
            assert_eq!(t.attempt, 1, "task {id} needed {} attempts with faults off", t.attempt);
            assert!(t.lease.is_none());
        }
    });
    for kind in [EventKind::Retrying, EventKind::Requeued, EventKind::Preempted, EventKind::Failed] {
        assert_eq!(of_kind(&events, kind).count(), 0, "no {kind:?} events with faults off");
    }
    let mut per_cluster: BTreeMap<String, usize> = BTreeMap::new();
    for e in of_kind(&events, EventKind::Leased) {
        *per_cluster.entry(e.cluster.clone()).or_default() += 1;
    }
    assert_eq!(per_cluster.values().sum::<usize>(), 1000, "one lease per task: {per_cluster:?}");
    assert_eq!(per_cluster.len(), 3, "1,000 tasks cannot fit one cluster; they should use all three: {per_cluster:?}");
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_cluster_work_moves_elsewhere_and_returning_executor_stops_stale_attempts() {
    // "slow" runs in real time, so its 20 s tasks are still running when its executor dies;
    // on the fast clusters the same tasks take 0.4 s.
    let toml =
        clusters_toml(&[("slow", 1.0, &[("cpu", 2, 8, 2)]), ("fast-a", 50.0, &[("cpu", 2, 8, 2)]), ("fast-b", 50.0, &[("cpu", 2, 8, 2)])]);
    let mut fed = Federation::start(&toml).await;
    // Only "slow" reports at first, so every task lands there.
    fed.start_executor("slow");
    let ids = fed.submit("moving", vec![TaskTemplate { count: Some(10), ..task("agent", "1", "20s") }]).await;
    flotilla_tests::wait_until(Duration::from_secs(15), "all 10 tasks run on cluster slow", || {
        fed.read(|s| {
            ids.iter().all(|id| s.task(*id).is_some_and(|t| t.state == TaskState::Running && t.lease.as_ref().unwrap().cluster == "slow"))
        })
    })
    .await;
    fed.start_executor("fast-a");
    fed.start_executor("fast-b");
    flotilla_tests::wait_until(Duration::from_secs(10), "the fast clusters are ready", || {
        fed.cluster_ready("fast-a") && fed.cluster_ready("fast-b")
    })
    .await;

    // Kill the executor of "slow" like a crash; its simulated pods keep running.
    let killed_at = Instant::now();
    let killed_at_ms = flotilla_server::now_ms();
    // The leader counts silence from the last report it received.
    let report_age = fed.server().ctx.capacity.lock().unwrap().age("slow", tokio::time::Instant::now()).expect("slow has reported");
    fed.executors.remove("slow").unwrap().abort();
    let stale: BTreeSet<(TaskId, u32)> = fed.sims["slow"].current_attempts().iter().map(|a| (a.task_id, a.attempt)).collect();
    assert_eq!(stale.len(), 10, "the killed cluster still runs its 10 attempts");

    let took = flotilla_tests::wait_until(LOST_AFTER + Duration::from_secs(10), "the lost cluster's tasks succeeded elsewhere", || {
        fed.read(|s| ids.iter().all(|id| s.task(*id).unwrap().state == TaskState::Succeeded))
    })
    .await;
    eprintln!("cluster slow lost; its tasks succeeded elsewhere {took:?} after the kill");
    assert!(killed_at.elapsed() >= LOST_AFTER, "tasks moved before the cluster counted as lost");
    // Nothing may move before the cluster was silent for LOST_AFTER.
    let earliest_ms = killed_at_ms - report_age.as_millis() as u64 + LOST_AFTER.as_millis() as u64;
    assert!(fed.read(|s| s.cluster("slow").unwrap().state == ClusterState::Lost));
    let events = fed.events("moving");
    for id in &ids {
        let requeued: Vec<&TaskEvent> = of_kind(&events, EventKind::Requeued).filter(|e| e.task == *id).collect();
        assert_eq!(requeued.len(), 1, "task {id} requeued once: {requeued:?}");
        assert!(requeued[0].reason.contains("cluster slow stopped reporting"), "{:?}", requeued[0].reason);
        assert!(requeued[0].time_ms >= earliest_ms, "task {id} requeued {} ms after the kill", requeued[0].time_ms - killed_at_ms);
        let leases: Vec<(u32, &str)> =
            of_kind(&events, EventKind::Leased).filter(|e| e.task == *id).map(|e| (e.attempt, e.cluster.as_str())).collect();
        assert_eq!(leases.len(), 2, "task {id}: {leases:?}");
        assert_eq!(leases[0], (1, "slow"));
        assert_eq!(leases[1].0, 2, "the requeue is a new attempt");
        assert_ne!(leases[1].1, "slow", "task {id} must move off the lost cluster");
        let done: Vec<&TaskEvent> = of_kind(&events, EventKind::Succeeded).filter(|e| e.task == *id).collect();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].attempt, 2);
        assert_ne!(done[0].cluster, "slow");
    }
    // The old attempts are still "running" in the simulated cluster.
    let still: Vec<_> = fed.sims["slow"].current_attempts().into_iter().filter(|a| a.phase.as_str() == "running").collect();
    assert_eq!(still.len(), 10, "stale attempts keep running while no executor watches them: {still:?}");

    // Restart: a new loop over the same cluster must stop every attempt that is not a lease.
    fed.start_executor("slow");
    let took =
        flotilla_tests::wait_until(Duration::from_secs(10), "the returning cluster is ready and its stale attempts are stopped", || {
            fed.cluster_ready("slow") && fed.sims["slow"].current_attempts().is_empty()
        })
        .await;
    eprintln!("returning executor stopped its stale attempts in {took:?}");
    // Invariant 2 from here on: whatever runs on "slow" is the current lease of its task.
    let check_until = Instant::now() + SYNC * 3;
    while Instant::now() < check_until {
        let attempts = fed.sims["slow"].current_attempts();
        fed.read(|s| {
            for a in &attempts {
                let t = s.task(a.task_id).unwrap();
                assert!(
                    t.attempt == a.attempt && t.lease.as_ref().is_some_and(|l| l.cluster == "slow"),
                    "cluster slow runs {:?} attempt {} that is not a current lease",
                    a.task_id,
                    a.attempt
                );
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stale reports did not reopen finished tasks (invariant 5).
    assert!(fed.states(&ids).iter().all(|s| *s == TaskState::Succeeded));
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gang_never_runs_partially_and_stays_in_one_rack() {
    // Nodes of 8 CPUs; gang members take 8 CPUs, so a gang of 4 needs a rack of 4 such nodes.
    // Fitting racks: two in "alpha", one in "gamma". "alpha"'s narrow racks have nodes too
    // small; "beta"'s racks have only two nodes.
    let toml = clusters_toml(&[
        ("alpha", 20.0, &[("fit", 8, 8, 4), ("narrow", 8, 4, 4)]),
        ("beta", 20.0, &[("pairs", 6, 8, 2)]),
        ("gamma", 20.0, &[("fit", 4, 8, 4)]),
    ]);
    let mut fed = Federation::start(&toml).await;
    fed.start_all_executors();
    let racks = fed.racks();
    let gangs: Vec<TaskTemplate> = (0..8)
        .map(|i| TaskTemplate {
            gang: Some(GangTemplate { size: 4, topology: Some("rack".into()), ..Default::default() }),
            ..task(&format!("train-{i}"), "8", "10s")
        })
        .collect();
    let gang_ids = fed.submit("gangs", gangs).await;
    assert_eq!(gang_ids.len(), 32);
    // Singles competing for the same nodes, so gangs must wait for whole racks to free.
    let single_ids = fed.submit("singles", vec![TaskTemplate { count: Some(40), ..task("filler", "2", "4s") }]).await;

    let members: BTreeMap<TaskId, Vec<TaskId>> = fed.read(|s| {
        let mut m: BTreeMap<TaskId, Vec<TaskId>> = BTreeMap::new();
        for id in &gang_ids {
            let g = s.task(*id).unwrap().spec.gang.clone().expect("a gang member");
            assert_eq!(g.size, 4);
            m.entry(g.id).or_default().push(*id);
        }
        m
    });
    assert_eq!(members.len(), 8);
    assert!(members.values().all(|m| m.len() == 4));

    let mut samples = 0u64;
    let mut seen_whole: BTreeSet<TaskId> = BTreeSet::new();
    let mut max_concurrent_gangs = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = fed.read(|s| {
            let mut running_gangs = 0;
            for (gang, ms) in &members {
                let tasks: Vec<_> = ms.iter().map(|id| s.task(*id).unwrap()).collect();
                let active: Vec<_> = tasks.iter().filter(|t| t.state.is_active()).collect();
                let queued = tasks.iter().filter(|t| t.state == TaskState::Queued).count();
                assert!(active.is_empty() || queued == 0, "gang {gang} runs partially: {} members active, {queued} queued", active.len());
                assert!(
                    tasks.iter().all(|t| !matches!(t.state, TaskState::Failed | TaskState::Cancelled)),
                    "gang {gang} failed with faults off"
                );
                if !active.is_empty() {
                    running_gangs += 1;
                    let domains: BTreeSet<(String, String)> = active
                        .iter()
                        .map(|t| {
                            let l = t.lease.as_ref().unwrap();
                            (l.cluster.clone(), racks[&(l.cluster.clone(), l.node.clone())].clone())
                        })
                        .collect();
                    assert_eq!(domains.len(), 1, "gang {gang} spans racks {domains:?}");
                    let nodes: BTreeSet<&str> = active.iter().map(|t| t.lease.as_ref().unwrap().node.as_str()).collect();
                    assert_eq!(nodes.len(), active.len(), "gang {gang}: 8-CPU members cannot share an 8-CPU node");
                }
                if active.len() == 4 {
                    seen_whole.insert(*gang);
                }
            }
            max_concurrent_gangs = max_concurrent_gangs.max(running_gangs);
            gang_ids.iter().chain(&single_ids).all(|id| s.task(*id).unwrap().state == TaskState::Succeeded)
        });
        samples += 1;
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "gangs and singles did not all succeed within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{samples} samples; {} gangs seen whole; at most {max_concurrent_gangs} gangs at once", seen_whole.len());
    assert!(max_concurrent_gangs <= 3, "only three racks fit a gang, yet {max_concurrent_gangs} gangs ran at once");
    assert!(!seen_whole.is_empty(), "sampling never saw a gang running");

    // From the log: each gang was leased whole in one decision (one entry, one timestamp),
    // on one rack, and never on a rack that cannot hold it.
    let events = fed.events("gangs");
    for (gang, ms) in &members {
        let leases: Vec<&TaskEvent> = of_kind(&events, EventKind::Leased).filter(|e| ms.contains(&e.task)).collect();
        assert_eq!(leases.len(), 4, "gang {gang} leased once, whole: {leases:?}");
        assert!(leases.iter().all(|e| e.time_ms == leases[0].time_ms && e.attempt == 1), "gang {gang} leased in pieces: {leases:?}");
        let seqs: Vec<u64> = leases.iter().map(|e| e.seq).collect();
        assert_eq!(seqs[3] - seqs[0], 3, "gang {gang}'s leases are one contiguous decision: {seqs:?}");
        let domains: BTreeSet<(&str, &str)> =
            leases.iter().map(|e| (e.cluster.as_str(), racks[&(e.cluster.clone(), e.node.clone())].as_str())).collect();
        assert_eq!(domains.len(), 1, "gang {gang} spans {domains:?}");
        let (cluster, rack) = domains.into_iter().next().unwrap();
        assert!(cluster != "beta" && !rack.contains("narrow"), "gang {gang} placed on rack {rack} of {cluster}, which cannot hold it");
    }
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_exponentially_and_avoid_the_failed_node() {
    let toml =
        clusters_toml(&[("one", 20.0, &[("cpu", 3, 8, 3)]), ("two", 20.0, &[("cpu", 3, 8, 3)]), ("three", 20.0, &[("cpu", 3, 8, 3)])]);
    let mut fed = Federation::start(&toml).await;
    fed.start_all_executors();
    flotilla_tests::wait_until(Duration::from_secs(10), "every cluster is ready", || {
        ["one", "two", "three"].iter().all(|c| fed.cluster_ready(c))
    })
    .await;
    let ids = fed.submit("flaky", vec![failing("flaky", "4", 3, "1s")]).await;
    let id = ids[0];
    let took =
        flotilla_tests::wait_until(Duration::from_secs(30), "the failing task is failed", || fed.states(&ids)[0] == TaskState::Failed)
            .await;
    eprintln!("3 attempts with 1s/2s backoff took {took:?}");

    use EventKind::{Failed, Leased, Retrying};
    let events: Vec<TaskEvent> = fed.events("flaky").into_iter().filter(|e| e.task == id).collect();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).filter(|k| matches!(k, Leased | Retrying | Failed)).collect();
    assert_eq!(kinds, [Leased, Retrying, Leased, Retrying, Leased, Failed], "{events:#?}");
    let retrying: Vec<&TaskEvent> = of_kind(&events, Retrying).collect();
    assert!(retrying[0].reason.contains("retrying in 1s"), "{:?}", retrying[0].reason);
    assert!(retrying[1].reason.contains("retrying in 2s"), "{:?}", retrying[1].reason);
    assert!(retrying.iter().all(|e| e.exit_code == Some(1)));
    let failed = of_kind(&events, Failed).next().unwrap();
    assert!(failed.reason.contains("failed after 3 attempts"), "{:?}", failed.reason);
    assert_eq!(failed.exit_code, Some(1));

    let leases: Vec<&TaskEvent> = of_kind(&events, Leased).collect();
    assert_eq!(leases.iter().map(|e| e.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    // The gap between a failure and the next lease is at least that retry's backoff.
    for (i, backoff_ms) in [(0usize, 1000u64), (1, 2000)] {
        let gap = leases[i + 1].time_ms - retrying[i].time_ms;
        assert!(gap >= backoff_ms, "attempt {} leased {gap} ms after the failure, before its {backoff_ms} ms backoff", i + 2);
    }
    // Each retry lands on a node that has not failed it (every cluster has free nodes).
    let nodes: Vec<(String, String)> = leases.iter().map(|e| (e.cluster.clone(), e.node.clone())).collect();
    assert_ne!(nodes[1], nodes[0], "attempt 2 went back to the node attempt 1 failed on");
    assert!(nodes[2] != nodes[0] && nodes[2] != nodes[1], "attempt 3 went back to a failed node: {nodes:?}");
    // After two failures in one cluster the task avoids that cluster as well.
    if nodes[0].0 == nodes[1].0 {
        assert_ne!(nodes[2].0, nodes[0].0, "attempt 3 went back to a cluster that failed it twice: {nodes:?}");
    }
    assert!(fed.read(|s| s.task(id).unwrap().attempt) == 3);
    fed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_task_set_trips_the_breaker_instead_of_retrying_forever() {
    // The breaker pauses a task set after 20 failures in 5 minutes (Limits::default(); the
    // limits are replicated state with no configuration path), so 24 tasks that always fail.
    let toml = clusters_toml(&[("one", 20.0, &[("cpu", 4, 16, 2)]), ("two", 20.0, &[("cpu", 4, 16, 2)])]);
    let mut fed = Federation::start(&toml).await;
    fed.start_all_executors();
    flotilla_tests::wait_until(Duration::from_secs(10), "every cluster is ready", || fed.cluster_ready("one") && fed.cluster_ready("two"))
        .await;
    let ids = fed.submit("doomed", vec![TaskTemplate { count: Some(24), ..failing("crash", "1", 10, "300ms") }]).await;
    let paused = |fed: &Federation| fed.read(|s| s.task_set(QUEUE, "doomed").unwrap().paused);
    let took = flotilla_tests::wait_until(Duration::from_secs(20), "the task set is paused", || paused(&fed)).await;
    eprintln!("breaker tripped {took:?} after the submission");

    let events = fed.events("doomed");
    let pause = of_kind(&events, EventKind::Paused).next().expect("a paused event").clone();
    assert!(pause.reason.contains("paused: 20 failures"), "{:?}", pause.reason);
    let leases_at_pause = of_kind(&events, EventKind::Leased).count();
    assert!(leases_at_pause < 24 * 10, "the breaker must stop retries long before every attempt is spent");
    assert!(of_kind(&events, EventKind::Leased).all(|e| e.seq < pause.seq), "a lease was committed after the pause");

    // While paused nothing new starts: watch for well over the backoff and many cycles.
    let watch_until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < watch_until {
        let events = fed.events("doomed");
        assert_eq!(of_kind(&events, EventKind::Leased).count(), leases_at_pause, "a paused task set got new leases");
        assert!(paused(&fed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fed.read(|s| {
        assert!(s.active().all(|t| t.spec.task_set != "doomed"), "nothing of a paused set holds a node once its running attempts ended");
        let unfinished = ids.iter().filter(|id| s.task(**id).unwrap().state == TaskState::Queued).count();
        assert_eq!(unfinished, 24, "every task waits, paused, with attempts left");
    });

    // ResumeTaskSet lets it run again; it keeps failing, so the breaker trips again.
    TasksClient::new(fed.channel.clone())
        .resume_task_set(v1::ResumeTaskSetRequest { queue: QUEUE.into(), task_set: "doomed".into() })
        .await
        .expect("resume");
    assert!(!paused(&fed), "resumed (the call returns after the commit)");
    assert!(of_kind(&fed.events("doomed"), EventKind::Resumed).count() == 1);
    flotilla_tests::wait_until(Duration::from_secs(10), "leases after the resume", || {
        of_kind(&fed.events("doomed"), EventKind::Leased).count() > leases_at_pause
    })
    .await;
    flotilla_tests::wait_until(Duration::from_secs(20), "the breaker trips again", || {
        of_kind(&fed.events("doomed"), EventKind::Paused).count() == 2
    })
    .await;
    let resumed_again = TasksClient::new(fed.channel.clone())
        .resume_task_set(v1::ResumeTaskSetRequest { queue: QUEUE.into(), task_set: "not-there".into() })
        .await;
    assert!(resumed_again.is_err(), "resuming an unknown task set is an error");
    let leases = of_kind(&fed.events("doomed"), EventKind::Leased).count();
    assert!(leases < 24 * 10, "{leases} attempts: retries were not bounded by the breaker");
    fed.shutdown().await;
}
