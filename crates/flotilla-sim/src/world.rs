//! One simulated run: replicas, executors, a client and a fault schedule, all driven by
//! one seed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::dial::Dial;
use flotilla_api::v1;
use flotilla_executor::{ExecutorConfig, ExecutorHandle, SimCluster, SimOptions};
use flotilla_server::{RaftTiming, ServerConfig, ServerHandle, WallClock};
use flotilla_store::State;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tonic::transport::Endpoint;

use crate::net::{LinkQuality, Net};
use crate::SimConfig;

/// Unix time the simulated clocks start at (2026-01-01), so that a seed reproduces exactly.
pub const ORIGIN_UNIX_MS: u64 = 1_767_225_600_000;
const CLUSTER_LOST_AFTER: Duration = Duration::from_secs(6);
const SYNC_INTERVAL: Duration = Duration::from_millis(500);
const CLIENT: &str = "client";

pub(crate) struct ReplicaSlot {
    pub id: u64,
    pub host: String,
    /// The client port (executors, the client).
    pub addr: SocketAddr,
    /// The peer port (Raft, forwarded calls): what `peers` names.
    pub peer_addr: SocketAddr,
    pub config: ServerConfig,
    pub handle: Option<ServerHandle>,
}

pub(crate) struct ClusterSlot {
    pub name: String,
    pub host: String,
    pub sim: SimCluster,
    pub config: ExecutorConfig,
    pub handle: Option<ExecutorHandle>,
}

/// What the client was told: request id → (task set, task ids).
pub(crate) type Acked = BTreeMap<String, (String, Vec<u64>)>;

pub(crate) struct World {
    pub net: Net,
    pub replicas: Vec<ReplicaSlot>,
    pub clusters: Vec<ClusterSlot>,
    /// Log of what the fault schedule did, for a failing seed's report.
    pub log: Vec<String>,
    pub started: Instant,
    _dir: tempfile::TempDir,
}

fn temp_dir() -> tempfile::TempDir {
    // tmpfs where there is one: an fsync there costs nothing, and a run does thousands.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("flotilla-sim-").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("a temporary directory")
}

fn clusters_toml(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "[[cluster]]\nname = \"c{i}\"\npending = \"500ms\"\ndefault_duration = \"5s\"\n[cluster.faults]\nfailure_rate = 0.03\n\
             [[cluster.pool]]\nname = \"cpu\"\ncount = 3\ncpu = \"8\"\nmemory = \"32Gi\"\nprice_per_hour_usd = {}.0\nnodes_per_rack = 3\n",
            1 + i
        ));
    }
    s
}

impl World {
    pub async fn build(seed: u64, config: &SimConfig) -> World {
        let net = Net::new(seed);
        let dir = temp_dir();
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x776f_726c_6400);
        let peers: BTreeMap<u64, String> = (1..=config.replicas as u64).map(|id| (id, format!("http://10.0.0.{id}:7001"))).collect();
        let mut replicas = Vec::new();
        for id in 1..=config.replicas as u64 {
            let host = format!("r{id}");
            let addr: SocketAddr = format!("10.0.0.{id}:7000").parse().expect("address");
            let peer_addr: SocketAddr = format!("10.0.0.{id}:7001").parse().expect("address");
            let mut c = ServerConfig::single(addr, dir.path().join(&host));
            c.id = id;
            c.peer_listen = peer_addr;
            // A virtual network no one else reaches: no authentication, no TLS.
            c.insecure = true;
            c.peers = peers.clone();
            c.schedule_interval = Duration::from_millis(500);
            c.sync_interval = SYNC_INTERVAL;
            c.cluster_lost_after = CLUSTER_LOST_AFTER;
            c.finished_retention = Duration::from_secs(24 * 3600);
            c.dial = Dial::custom(net.dialer(&host));
            c.clock = WallClock::simulated(ORIGIN_UNIX_MS);
            // Distinct election timeouts per replica, from the seed: openraft draws its own
            // from an unseeded generator, so the range is one millisecond wide.
            let election_ms = rng.random_range(500..900);
            c.raft_timing = Some(RaftTiming {
                heartbeat_interval: Duration::from_millis(100),
                election_timeout_min: Duration::from_millis(election_ms),
                election_timeout_max: Duration::from_millis(election_ms + 1),
            });
            replicas.push(ReplicaSlot { id, host, addr, peer_addr, config: c, handle: None });
        }
        let file = flotilla_executor::parse_clusters(&clusters_toml(config.clusters), "sim.toml").expect("clusters file");
        let servers: Vec<String> = replicas.iter().map(|r: &ReplicaSlot| format!("http://{}", r.addr)).collect();
        let mut clusters = Vec::new();
        for i in 0..config.clusters {
            let name = format!("c{i}");
            let host = format!("exec-{name}");
            let options = SimOptions {
                seed: Some(seed.wrapping_add(i as u64)),
                speed: Some(1.0),
                origin_unix_ms: Some(ORIGIN_UNIX_MS),
                ..Default::default()
            };
            let sim = SimCluster::from_file(&file, &name, options).expect("simulated cluster");
            let mut servers = servers.clone();
            // Each executor tries the replicas in its own order.
            let k = rng.random_range(0..servers.len());
            servers.rotate_left(k);
            let mut ec = ExecutorConfig::new(servers, name.clone());
            ec.executor_id = format!("{name}-0");
            ec.sync_interval = SYNC_INTERVAL;
            ec.connect_timeout = Duration::from_secs(1);
            ec.rpc_timeout = Duration::from_secs(2);
            ec.backend_timeout = Duration::from_secs(2);
            ec.dial = Dial::custom(net.dialer(&host));
            clusters.push(ClusterSlot { name, host, sim, config: ec, handle: None });
        }
        let mut world = World { net, replicas, clusters, log: Vec::new(), started: Instant::now(), _dir: dir };
        for i in 0..world.replicas.len() {
            world.start_replica(i).await;
        }
        for i in 0..world.clusters.len() {
            world.start_executor(i);
        }
        world
    }

    fn note(&mut self, what: String) {
        let at = self.started.elapsed().as_millis();
        self.log.push(format!("{at:>7} ms {what}"));
    }

    pub async fn start_replica(&mut self, i: usize) {
        let slot = &self.replicas[i];
        let incoming = self.net.listen(&slot.host, slot.addr);
        let peer_incoming = self.net.listen(&slot.host, slot.peer_addr);
        let handle = flotilla_server::start_with(slot.config.clone(), incoming, peer_incoming).await.expect("replica starts");
        self.replicas[i].handle = Some(handle);
    }

    pub async fn crash_replica(&mut self, i: usize) {
        let (host, addr, peer_addr) = (self.replicas[i].host.clone(), self.replicas[i].addr, self.replicas[i].peer_addr);
        self.net.crash_host(&host, addr);
        self.net.crash_host(&host, peer_addr);
        if let Some(h) = self.replicas[i].handle.take() {
            h.shutdown().await;
        }
    }

    pub fn start_executor(&mut self, i: usize) {
        let slot = &mut self.clusters[i];
        let mut config = slot.config.clone();
        // A new process: a new id, no lease.
        config.executor_id = format!("{}-{}", slot.name, self.log.len());
        slot.handle = Some(flotilla_executor::spawn(config, Arc::new(slot.sim.clone())));
    }

    pub fn crash_executor(&mut self, i: usize) {
        if let Some(h) = self.clusters[i].handle.take() {
            h.abort();
        }
    }

    fn leader(&self) -> Option<usize> {
        self.replicas.iter().position(|r| r.handle.as_ref().is_some_and(|h| h.ctx.is_leader()))
    }

    fn replica_hosts(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.host.clone()).collect()
    }

    /// Runs the seeded fault schedule for `window`, healing each fault before the next.
    pub async fn faults(&mut self, rng: &mut SmallRng, window: Duration) {
        let end = Instant::now() + window;
        tokio::time::sleep(Duration::from_secs(3)).await;
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(rng.random_range(500..4000))).await;
            let fault = rng.random_range(0..9);
            self.fault(fault, rng).await;
        }
        self.heal_all().await;
    }

    async fn fault(&mut self, fault: u32, rng: &mut SmallRng) {
        let replicas = self.replica_hosts();
        let hold = |rng: &mut SmallRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..hi));
        match fault {
            // The leader cut off from the other replicas; executors and clients reach it.
            0 | 1 => {
                let Some(l) = self.leader() else { return };
                let host = replicas[l].clone();
                let d = hold(rng, 2_000, 12_000);
                self.note(format!("isolate leader {host} from replicas for {d:?}"));
                self.net.isolate(&host, &replicas);
                self.heal_after(d).await;
            }
            // The scenario: one executor reaches only the cut-off leader.
            2 => {
                let Some(l) = self.leader() else { return };
                let host = replicas[l].clone();
                let c = rng.random_range(0..self.clusters.len());
                let exec = self.clusters[c].host.clone();
                let d = hold(rng, 4_000, 15_000);
                self.note(format!("isolate leader {host} from replicas; {exec} reaches only it, for {d:?}"));
                self.net.isolate(&host, &replicas);
                for r in &replicas {
                    if *r != host {
                        self.net.cut(&exec, r);
                        self.net.cut(r, &exec);
                    }
                }
                self.heal_after(d).await;
            }
            // Asymmetric: the leader's messages are lost, it still hears the others.
            3 => {
                let Some(l) = self.leader() else { return };
                let host = replicas[l].clone();
                let d = hold(rng, 2_000, 8_000);
                self.note(format!("drop messages from leader {host} to replicas for {d:?}"));
                for r in &replicas {
                    if *r != host {
                        self.net.cut(&host, r);
                    }
                }
                self.heal_after(d).await;
            }
            // Flapping partitions of random replicas.
            4 => {
                self.note("flapping partitions".into());
                for _ in 0..rng.random_range(3..7) {
                    let r = rng.random_range(0..replicas.len());
                    self.net.isolate(&replicas[r].clone(), &replicas);
                    tokio::time::sleep(hold(rng, 200, 900)).await;
                    self.net.heal();
                    tokio::time::sleep(hold(rng, 200, 900)).await;
                }
            }
            // A replica crashes and restarts from its data directory.
            5 => {
                let r = rng.random_range(0..self.replicas.len());
                let d = hold(rng, 500, 6_000);
                self.note(format!("crash replica {} for {d:?}", self.replicas[r].host));
                self.crash_replica(r).await;
                tokio::time::sleep(d).await;
                self.start_replica(r).await;
                self.note(format!("restart replica {}", self.replicas[r].host));
            }
            // An executor process crashes and a new one starts (bounded downtime: a dead
            // executor cannot stop its pods; see docs/architecture.md).
            6 => {
                let c = rng.random_range(0..self.clusters.len());
                let d = hold(rng, 200, 2_000);
                self.note(format!("crash executor of {} for {d:?}", self.clusters[c].name));
                self.crash_executor(c);
                tokio::time::sleep(d).await;
                self.start_executor(c);
            }
            // A replica's wall clock jumps.
            7 => {
                let r = rng.random_range(0..self.replicas.len());
                let by: i64 = rng.random_range(-120_000..120_000);
                self.note(format!("clock of {} jumps {by} ms", self.replicas[r].host));
                self.replicas[r].config.clock.jump(by);
            }
            // Slow, lossy links; or an executor cut off from every replica (cluster lost).
            _ => {
                if rng.random_bool(0.5) {
                    let d = hold(rng, 2_000, 8_000);
                    let quality = LinkQuality { latency_min_ms: 1, latency_max_ms: rng.random_range(20..300), reset_per_write: 0.002 };
                    self.note(format!("degraded links {quality:?} for {d:?}"));
                    self.net.set_quality(quality);
                    tokio::time::sleep(d).await;
                    self.net.set_quality(LinkQuality::default());
                } else {
                    let c = rng.random_range(0..self.clusters.len());
                    let exec = self.clusters[c].host.clone();
                    let d = hold(rng, 1_000, 12_000);
                    self.note(format!("cut {exec} off from every replica for {d:?}"));
                    self.net.isolate(&exec, &replicas);
                    self.heal_after(d).await;
                }
            }
        }
    }

    /// Leaves the fault in place for `d`, then restores every link.
    async fn heal_after(&mut self, d: Duration) {
        tokio::time::sleep(d).await;
        self.net.heal();
        self.note("heal".into());
    }

    pub async fn heal_all(&mut self) {
        self.net.heal();
        self.net.set_quality(LinkQuality::default());
        for i in 0..self.replicas.len() {
            if self.replicas[i].handle.is_none() {
                self.start_replica(i).await;
            }
        }
        for i in 0..self.clusters.len() {
            if self.clusters[i].handle.is_none() {
                self.start_executor(i);
            }
        }
        self.note("all faults healed".into());
    }

    /// The state of the replica that leads now, if any.
    pub fn leader_state(&self) -> Option<State> {
        let l = self.leader()?;
        self.replicas[l].handle.as_ref().map(|h| h.ctx.read(State::clone))
    }

    /// Waits until every replica has applied the same entries, then returns their states.
    pub async fn converged_states(&self, within: Duration) -> Vec<(u64, State)> {
        let deadline = Instant::now() + within;
        loop {
            let applied: BTreeSet<u64> =
                self.replicas.iter().filter_map(|r| r.handle.as_ref()).map(|h| *h.ctx.replica.applied().borrow()).collect();
            if applied.len() == 1 || Instant::now() > deadline {
                return self.replicas.iter().filter_map(|r| r.handle.as_ref().map(|h| (r.id, h.ctx.read(State::clone)))).collect();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn shutdown(mut self) {
        for c in &mut self.clusters {
            if let Some(h) = c.handle.take() {
                let _ = h.stop().await;
            }
        }
        for r in &mut self.replicas {
            if let Some(h) = r.handle.take() {
                h.shutdown().await;
            }
        }
    }
}

/// A client on its own host: creates the queues, then submits `n` task sets over the fault
/// window, each retried with its request id (on the next replica) until acknowledged.
pub(crate) async fn client(net: Net, servers: Vec<String>, seed: u64, n: usize, window: Duration, give_up_after: Duration) -> Acked {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x636c_6965_6e74);
    let dial = Dial::custom(net.dialer(CLIENT));
    let channels: Vec<tonic::transport::Channel> = servers
        .iter()
        .map(|u| {
            dial.connect_lazy(
                Endpoint::from_shared(u.clone()).expect("url").timeout(Duration::from_secs(3)).connect_timeout(Duration::from_secs(1)),
            )
        })
        .collect();
    let give_up = Instant::now() + give_up_after;
    let mut next = 0usize;
    for queue in ["q1", "q2"] {
        loop {
            let mut c = v1::queues_client::QueuesClient::new(channels[next % channels.len()].clone());
            let spec = v1::QueueSpec { name: queue.into(), weight: 1.0, ..Default::default() };
            match c.create_queue(v1::CreateQueueRequest { queue: Some(spec) }).await {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::AlreadyExists => break,
                Err(_) if Instant::now() < give_up => {
                    next += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(s) => panic!("queue {queue} could not be created: {s}"),
            }
        }
    }
    let mut acked = Acked::new();
    let gap = window / (n as u32 + 1);
    for k in 0..n {
        tokio::time::sleep(gap).await;
        let request = submission(&mut rng, k);
        loop {
            let mut c = v1::tasks_client::TasksClient::new(channels[next % channels.len()].clone());
            match c.submit_tasks(request.clone()).await {
                Ok(r) => {
                    acked.insert(request.client_request_id.clone(), (request.task_set.clone(), r.into_inner().task_ids));
                    break;
                }
                Err(s) if s.code() == tonic::Code::InvalidArgument => panic!("the simulator's submission {k} is invalid: {}", s.message()),
                Err(_) if Instant::now() < give_up => {
                    next += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(_) => break,
            }
        }
    }
    acked
}

fn template(name: &str, cpu: u32, duration_s: u64) -> v1::TaskTemplate {
    v1::TaskTemplate {
        name: name.into(),
        image: "sim".into(),
        resources: [("cpu".to_string(), cpu.to_string()), ("memory".to_string(), "1Gi".to_string())].into(),
        retry: Some(v1::RetryTemplate { max_attempts: Some(5), backoff: "1s".into(), max_backoff: "4s".into(), ..Default::default() }),
        sim: Some(v1::SimTemplate { duration: format!("{duration_s}s"), ..Default::default() }),
        ..Default::default()
    }
}

/// One task set: an array task, a gang, or two tasks where the first waits for the second.
fn submission(rng: &mut SmallRng, k: usize) -> v1::SubmitTasksRequest {
    let queue = if k.is_multiple_of(2) { "q1" } else { "q2" };
    let tasks = match rng.random_range(0..3) {
        0 => {
            let mut t = template("work", rng.random_range(1..4), rng.random_range(3..25));
            t.count = Some(rng.random_range(1..6));
            vec![t]
        }
        1 => {
            let mut t = template("gang", rng.random_range(1..3), rng.random_range(5..20));
            t.gang = Some(v1::GangTemplate { size: rng.random_range(2..5), topology: "cluster".into(), ..Default::default() });
            vec![t]
        }
        _ => {
            // Listed first, defined after the task it waits for.
            let mut report = template("report", 1, rng.random_range(2..6));
            report.after = vec!["shard".into()];
            let mut shard = template("shard", rng.random_range(1..4), rng.random_range(3..15));
            shard.count = Some(rng.random_range(1..4));
            vec![report, shard]
        }
    };
    // Some urgent work arrives on full clusters: it preempts (the victims restart elsewhere).
    let priority_class = if rng.random_bool(0.25) { "critical" } else { "default" };
    let tasks = tasks.into_iter().map(|t| v1::TaskTemplate { priority_class: priority_class.into(), ..t }).collect();
    v1::SubmitTasksRequest { queue: queue.into(), task_set: format!("set-{k}"), tasks, client_request_id: format!("sim-{k}") }
}
