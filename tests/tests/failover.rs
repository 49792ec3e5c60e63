//! Leader failover while executors run tasks.
//!
//! Three full replicas (`flotilla_server::start`) and two simulated clusters whose executors
//! know every replica's URL. While tasks run, the leader's process is shut down. The survivors
//! elect a new leader, the executors move to a surviving replica, and every task finishes: once,
//! with one attempt, never running twice at the same time (invariant 2), and a leader change
//! alone requeues nothing.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::v1::{self, queues_client::QueuesClient, tasks_client::TasksClient};
use flotilla_executor::{AttemptPhase, ExecutorConfig, SimCluster, SimOptions};
use flotilla_model::{TaskId, TaskState};
use flotilla_server::{ServerConfig, ServerHandle};
use flotilla_store::EventKind;
use tonic::transport::Channel;

const CLUSTERS: &str = r#"
[[cluster]]
name = "east"
region = "r1"
pending = "1s"

[[cluster.pool]]
name = "cpu"
instance_type = "test.8cpu"
count = 4
cpu = "8"
memory = "32Gi"
price_per_hour_usd = 1.0
zones = ["r1-a"]

[[cluster]]
name = "west"
region = "r2"
pending = "1s"

[[cluster.pool]]
name = "cpu"
instance_type = "test.8cpu"
count = 4
cpu = "8"
memory = "32Gi"
price_per_hour_usd = 1.0
zones = ["r2-a"]
"#;

const TASKS: usize = 160;

use flotilla_tests::{free_addr, peer_listen_of};

async fn start(id: u64, listen: SocketAddr, peers: &BTreeMap<u64, String>, root: &Path) -> ServerHandle {
    let mut config = ServerConfig::single(listen, root.join(format!("replica-{id}")));
    config.id = id;
    config.peer_listen = peer_listen_of(&peers[&id]);
    config.peers = peers.clone();
    config.schedule_interval = Duration::from_millis(100);
    config.sync_interval = Duration::from_millis(200);
    // Long enough that the failover itself never makes a cluster look lost.
    config.cluster_lost_after = Duration::from_secs(15);
    flotilla_server::start(config).await.unwrap_or_else(|e| panic!("replica {id} starts: {e:#}"))
}

async fn leader_of(servers: &BTreeMap<u64, ServerHandle>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((id, _)) = servers.iter().find(|(_, s)| s.ctx.is_leader()) {
            if servers.values().all(|s| s.ctx.replica.leader_id() == Some(*id)) {
                return *id;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Tasks with more than one attempt pending or running at this moment, over all clusters.
fn doubly_running(sims: &[SimCluster]) -> Vec<TaskId> {
    let mut live: HashMap<TaskId, u32> = HashMap::new();
    for sim in sims {
        for a in sim.current_attempts() {
            if matches!(a.phase, AttemptPhase::Pending | AttemptPhase::Running) {
                *live.entry(a.task_id).or_default() += 1;
            }
        }
    }
    live.into_iter().filter(|(_, n)| *n > 1).map(|(t, _)| t).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_while_tasks_run_loses_nothing_and_runs_nothing_twice() {
    let root = tempfile::tempdir().unwrap();
    let addrs: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, free_addr())).collect();
    let urls: BTreeMap<u64, String> = addrs.iter().map(|(id, a)| (*id, format!("http://{a}"))).collect();
    let peers: BTreeMap<u64, String> = (1..=3).map(|id| (id, format!("http://{}", free_addr()))).collect();
    let mut servers = BTreeMap::new();
    for id in 1..=3 {
        servers.insert(id, start(id, addrs[&id], &peers, root.path()).await);
    }
    let leader = leader_of(&servers).await;

    let clusters = flotilla_executor::parse_clusters(CLUSTERS, Path::new("failover.toml")).unwrap();
    let mut sims = Vec::new();
    let mut executors = Vec::new();
    for name in clusters.cluster_names() {
        let sim = SimCluster::from_file(&clusters, &name, SimOptions { seed: Some(3), speed: Some(10.0), ..Default::default() }).unwrap();
        // Every replica, leader first: the executors must move on when it disappears.
        let mut servers_list: Vec<String> = vec![urls[&leader].clone()];
        servers_list.extend(urls.iter().filter(|(id, _)| **id != leader).map(|(_, u)| u.clone()));
        let mut config = ExecutorConfig::new(servers_list, name);
        config.sync_interval = Duration::from_millis(200);
        executors.push(flotilla_executor::spawn(config, Arc::new(sim.clone())));
        sims.push(sim);
    }

    let channel = Channel::from_shared(urls[&leader].clone()).unwrap().connect().await.unwrap();
    let spec = v1::QueueSpec { name: "agents".into(), weight: 1.0, ..Default::default() };
    QueuesClient::new(channel.clone()).create_queue(v1::CreateQueueRequest { queue: Some(spec) }).await.unwrap();
    let template = v1::TaskTemplate {
        name: "agent".into(),
        count: Some(TASKS as u32),
        image: "busybox".into(),
        // 64 slots for 160 tasks: they run in waves, so some run while the leader goes away.
        resources: [("cpu".to_string(), "1".to_string())].into(),
        sim: Some(v1::SimTemplate { duration: "20s".into(), ..Default::default() }),
        ..Default::default()
    };
    let req =
        v1::SubmitTasksRequest { queue: "agents".into(), task_set: "fleet".into(), tasks: vec![template], client_request_id: "f1".into() };
    let ids = TasksClient::new(channel).submit_tasks(req).await.unwrap().into_inner().task_ids;
    assert_eq!(ids.len(), TASKS);

    // Wait until work is running on both clusters, then take the leader away.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = servers[&leader].ctx.read(|s| s.tasks().filter(|t| t.state == TaskState::Running).count());
        if running >= 32 {
            break;
        }
        assert!(Instant::now() < deadline, "tasks did not start ({running} running)");
        assert!(doubly_running(&sims).is_empty());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = servers.remove(&leader).unwrap();
    old.shutdown().await;
    let new_leader = leader_of(&servers).await;
    assert_ne!(new_leader, leader);

    // Every task finishes on the survivors; nothing ever runs twice at once.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut samples = 0;
    loop {
        let doubles = doubly_running(&sims);
        assert!(doubles.is_empty(), "tasks with two live attempts at once: {doubles:?}");
        samples += 1;
        let done = servers[&new_leader].ctx.read(|s| s.tasks().filter(|t| t.state == TaskState::Succeeded).count());
        if done == TASKS {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {TASKS} tasks succeeded after the failover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(samples > 10, "the run was sampled");

    for (id, s) in &servers {
        let (succeeded, attempts, requeued) = s.ctx.read(|st| {
            let set = st.task_set("agents", "fleet").unwrap();
            (
                st.tasks().filter(|t| t.state == TaskState::Succeeded).count(),
                st.tasks().map(|t| t.attempt).max().unwrap_or(0),
                set.events.iter().filter(|e| matches!(e.kind, EventKind::Requeued | EventKind::Retrying | EventKind::Preempted)).count(),
            )
        });
        // A follower may lag by an entry or two; wait for it to apply the last one.
        if succeeded < TASKS {
            let deadline = Instant::now() + Duration::from_secs(10);
            while s.ctx.read(|st| st.tasks().filter(|t| t.state == TaskState::Succeeded).count()) < TASKS {
                assert!(Instant::now() < deadline, "replica {id} did not catch up");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(attempts, 1, "replica {id}: a leader change alone starts no second attempt");
        assert_eq!(requeued, 0, "replica {id}: a leader change alone requeues nothing");
    }

    for e in executors {
        e.abort();
    }
    for (_, s) in servers {
        s.shutdown().await;
    }
}
