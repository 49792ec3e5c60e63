//! A three-replica Raft group on loopback ports in one process: each replica is a
//! `Replica` with its own tonic server carrying the Raft service. Checks that acknowledged
//! submissions survive leader crashes, restarts, partitions, log purges and SIGKILL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_model::TaskId;
use flotilla_server::raft::{NetworkFault, ProposeError, Replica, ReplicaConfig};
use flotilla_store::{Command, CommandResult, State};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);

/// The tests run one at a time: each starts three replicas that need the machine's two
/// cores to keep their election timeouts.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One running replica and its gRPC server.
struct Running {
    replica: Arc<Replica>,
    server: JoinHandle<()>,
    stop_server: tokio::sync::oneshot::Sender<()>,
}

/// A test group: data directories, addresses and the shared network fault.
struct Group {
    root: tempfile::TempDir,
    peers: BTreeMap<u64, String>,
    fault: NetworkFault,
    running: BTreeMap<u64, Running>,
    tune: fn(&mut ReplicaConfig),
}

/// Timings for debug builds on two shared cores: openraft gives one AppendEntries call one
/// heartbeat interval, so entries and calls are kept small enough to encode and decode in it.
fn fast(config: &mut ReplicaConfig) {
    config.heartbeat_interval = Duration::from_millis(250);
    config.election_timeout_min = Duration::from_millis(1200);
    config.election_timeout_max = Duration::from_millis(2400);
    config.group_commit.max_bytes = 256 * 1024;
    config.max_entries_per_append = 2;
    config.propose_timeout = Duration::from_secs(5);
}

impl Group {
    /// Binds `n` loopback ports first, so that every replica knows every address.
    async fn start(n: u64, tune: fn(&mut ReplicaConfig)) -> Group {
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let peers = listeners.iter().map(|(id, l)| (*id, format!("http://{}", l.local_addr().unwrap()))).collect();
        let mut group = Group { root: tempfile::tempdir().unwrap(), peers, fault: NetworkFault::new(), running: BTreeMap::new(), tune };
        for (id, listener) in listeners {
            group.launch(id, listener, group.peers.clone()).await;
        }
        group
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("replica-{id}"))
    }

    fn config(&self, id: u64, peers: BTreeMap<u64, String>) -> ReplicaConfig {
        let mut config = ReplicaConfig::new(id, peers, self.dir(id), Some(self.fault.clone()));
        (self.tune)(&mut config);
        config
    }

    async fn launch(&mut self, id: u64, listener: TcpListener, peers: BTreeMap<u64, String>) {
        let replica = Replica::open(self.config(id, peers)).await.unwrap_or_else(|e| panic!("replica {id} opens: {e:#}"));
        let service = replica.raft_service();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let (stop_server, stop) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop.await;
                })
                .await;
        });
        replica.bootstrap();
        self.running.insert(id, Running { replica, server, stop_server });
    }

    /// Restarts a stopped replica on its old port and data directory.
    async fn restart(&mut self, id: u64) {
        let addr = self.peers[&id].trim_start_matches("http://").to_string();
        let listener = bind_retrying(&addr).await;
        self.launch(id, listener, self.peers.clone()).await;
    }

    /// Stops a replica at once: Raft stops (in-flight calls fail), then its server closes
    /// every connection so that peers reconnect to whatever listens on the port next.
    async fn kill(&mut self, id: u64) {
        let running = self.running.remove(&id).expect("running");
        running.replica.shutdown().await;
        let _ = running.stop_server.send(());
        let mut server = running.server;
        if tokio::time::timeout(Duration::from_secs(5), &mut server).await.is_err() {
            server.abort();
        }
    }

    fn replica(&self, id: u64) -> Arc<Replica> {
        self.running[&id].replica.clone()
    }

    async fn wait_for_leader(&self, among: &[u64]) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let leaders: BTreeSet<u64> = among.iter().filter(|id| self.replica(**id).is_leader()).copied().collect();
            let known: BTreeSet<Option<u64>> = among.iter().map(|id| self.replica(*id).leader_id()).collect();
            if leaders.len() == 1 && known.len() == 1 {
                return *leaders.first().unwrap();
            }
            assert!(Instant::now() < deadline, "no single leader among {among:?} within {WAIT:?} (leaders {leaders:?}, known {known:?})");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the given replicas hold identical states; returns that state.
    async fn wait_converged(&self, ids: &[u64]) -> State {
        let deadline = Instant::now() + WAIT;
        loop {
            let states: Vec<Vec<u8>> = ids.iter().map(|id| serialized(&self.replica(*id))).collect();
            let applied: Vec<u64> = ids.iter().map(|id| *self.replica(*id).applied().borrow()).collect();
            if states.windows(2).all(|w| w[0] == w[1]) && applied.windows(2).all(|w| w[0] == w[1]) {
                return self.replica(ids[0]).state().read().unwrap().clone();
            }
            assert!(Instant::now() < deadline, "replicas {ids:?} did not converge within {WAIT:?} (applied {applied:?})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop_all(&mut self) {
        let ids: Vec<u64> = self.running.keys().copied().collect();
        for id in ids {
            self.kill(id).await;
        }
    }
}

async fn bind_retrying(addr: &str) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("rebinding {addr}: {e}"),
        }
    }
}

fn serialized(replica: &Replica) -> Vec<u8> {
    let state = replica.state();
    let guard = state.read().unwrap();
    serde_json::to_vec(&*guard).unwrap()
}

fn put_queue(name: &str) -> Command {
    Command::PutQueue { queue: flotilla_model::Queue::new(name, 1.0), create: true }
}

fn submit(client_request_id: &str, task_set: &str, count: u32) -> Command {
    Command::Submit {
        client_request_id: client_request_id.into(),
        queue: "q".into(),
        task_set: task_set.into(),
        specs: flotilla_tests::simple_specs("q", task_set, count),
        body_digest: 0,
    }
}

fn submitted(result: CommandResult) -> Vec<TaskId> {
    match result {
        CommandResult::Submitted { task_ids } => task_ids,
        other => panic!("expected Submitted, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_submissions_survive_leader_crash_exactly_once() {
    let _serial = SERIAL.lock().await;
    const BATCHES: usize = 100;
    const TASKS_PER_BATCH: u32 = 100;
    let mut group = Group::start(3, fast).await;
    let leader = group.wait_for_leader(&[1, 2, 3]).await;
    assert_eq!(group.replica(leader).propose(put_queue("q")).await.unwrap(), CommandResult::Ok);

    // Replicas that submitters may use; the leader is taken out when it is killed.
    let alive: Arc<Mutex<Vec<Arc<Replica>>>> = Arc::new(Mutex::new((1..=3).map(|id| group.replica(id)).collect()));
    let acked: Arc<Mutex<BTreeMap<usize, Vec<TaskId>>>> = Arc::default();
    let failed_attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for b in 0..BATCHES {
        let (alive, acked, failed_attempts) = (alive.clone(), acked.clone(), failed_attempts.clone());
        submitters.push(tokio::spawn(async move {
            let command = submit(&format!("batch-{b}"), &format!("set-{b}"), TASKS_PER_BATCH);
            let deadline = Instant::now() + Duration::from_secs(60);
            for attempt in 0usize.. {
                let replica = {
                    let alive = alive.lock().unwrap();
                    alive[(b + attempt) % alive.len()].clone()
                };
                // Retries send the SAME client_request_id: dedupe must make them harmless.
                match replica.propose(command.clone()).await {
                    Ok(result) => {
                        acked.lock().unwrap().insert(b, submitted(result));
                        return;
                    }
                    Err(e) => {
                        failed_attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        assert!(Instant::now() < deadline, "batch {b} never acknowledged: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    // Kill the leader part-way through.
    let deadline = Instant::now() + WAIT;
    while acked.lock().unwrap().len() < BATCHES / 4 {
        assert!(Instant::now() < deadline, "no progress before the crash");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked_before_crash = acked.lock().unwrap().len();
    alive.lock().unwrap().retain(|r| r.id() != leader);
    group.kill(leader).await;
    for s in submitters {
        s.await.unwrap();
    }
    assert!(acked_before_crash < BATCHES, "the leader must die part-way, not after all batches");

    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = group.wait_for_leader(&survivors).await;
    assert_ne!(new_leader, leader);
    let state = group.wait_converged(&survivors).await;

    // Every acknowledged id is present exactly once, in the batch's task set, and nothing else.
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), BATCHES);
    let mut all_ids = BTreeSet::new();
    for (b, ids) in &acked {
        assert_eq!(ids.len(), TASKS_PER_BATCH as usize, "batch {b}");
        for id in ids {
            assert!(all_ids.insert(*id), "task id {id} acknowledged twice");
            let task = state.task(*id).unwrap_or_else(|| panic!("acknowledged task {id} of batch {b} is missing"));
            assert_eq!(task.spec.task_set, format!("set-{b}"));
        }
    }
    let stored: BTreeSet<TaskId> = state.tasks().map(|t| t.id).collect();
    assert_eq!(stored, all_ids, "the survivors hold exactly the acknowledged tasks: no loss, no duplicates");
    assert_eq!(state.task_count(), BATCHES * TASKS_PER_BATCH as usize);

    // Retrying an acknowledged batch on either survivor returns the same ids and adds nothing.
    for (b, id) in [(0usize, survivors[0]), (BATCHES - 1, survivors[1])] {
        let again =
            submitted(group.replica(id).propose(submit(&format!("batch-{b}"), &format!("set-{b}"), TASKS_PER_BATCH)).await.unwrap());
        assert_eq!(again, acked[&b], "retried batch {b} returns the first call's ids");
    }
    assert_eq!(group.wait_converged(&survivors).await.task_count(), BATCHES * TASKS_PER_BATCH as usize);

    // How many commands shared an entry depends on timing, so it is reported, not asserted.
    let m: Vec<_> = (1..=3).filter_map(|id| group.running.get(&id).map(|r| r.replica.metrics())).collect();
    let (entries, commands): (u64, u64) = m.iter().fold((0, 0), |(e, c), m| (e + m.proposed_entries, c + m.proposed_commands));
    eprintln!(
        "failed attempts retried: {}; survivors proposed {commands} commands in {entries} entries",
        failed_attempts.load(std::sync::atomic::Ordering::Relaxed)
    );

    // The crashed leader comes back and catches up.
    group.restart(leader).await;
    group.wait_converged(&[1, 2, 3]).await;
    group.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_of_every_replica_from_its_data_directory_restores_identical_state() {
    let _serial = SERIAL.lock().await;
    fn tune(config: &mut ReplicaConfig) {
        fast(config);
        // Snapshots and purges happen during the run, so a restart loads one and replays the rest.
        config.snapshot_every_logs = 40;
        config.max_in_snapshot_log_to_keep = 5;
    }
    let mut group = Group::start(3, tune).await;
    let leader = group.wait_for_leader(&[1, 2, 3]).await;
    group.replica(leader).propose(put_queue("q")).await.unwrap();
    // Sequential proposals from alternating replicas: many entries, some forwarded.
    for i in 0..120u64 {
        let replica = group.replica(1 + i % 3);
        submitted(replica.propose(submit(&format!("r-{i}"), "restart", 3)).await.unwrap());
    }
    let before = group.wait_converged(&[1, 2, 3]).await;
    let before_bytes = serde_json::to_vec(&before).unwrap();
    assert!(group.replica(leader).metrics().snapshot_index.is_some(), "a snapshot was built during the run");

    group.stop_all().await;
    for id in 1..=3 {
        group.restart(id).await;
    }
    group.wait_for_leader(&[1, 2, 3]).await;
    let after = group.wait_converged(&[1, 2, 3]).await;
    assert_eq!(serde_json::to_vec(&after).unwrap(), before_bytes, "state after restarting every replica equals the state before");
    assert_eq!(after.task_count(), 360);
    group.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_off_replica_cannot_commit_majority_continues_and_it_catches_up_after_heal() {
    let _serial = SERIAL.lock().await;
    fn tune(config: &mut ReplicaConfig) {
        fast(config);
        config.propose_timeout = Duration::from_secs(3);
    }
    let mut group = Group::start(3, tune).await;
    let old_leader = group.wait_for_leader(&[1, 2, 3]).await;
    group.replica(old_leader).propose(put_queue("q")).await.unwrap();
    submitted(group.replica(old_leader).propose(submit("before", "before", 5)).await.unwrap());

    // Cut the leader off: it is the minority, and still believes it leads.
    group.fault.isolate(old_leader);
    let majority: Vec<u64> = (1..=3).filter(|id| *id != old_leader).collect();
    let minority_replica = group.replica(old_leader);
    let started = Instant::now();
    let minority = tokio::spawn(async move { minority_replica.propose(submit("minority", "minority", 5)).await });

    let new_leader = group.wait_for_leader(&majority).await;
    assert_ne!(new_leader, old_leader);
    let mut majority_ids = Vec::new();
    for i in 0..20 {
        let replica = group.replica(majority[i % 2]);
        majority_ids.extend(submitted(replica.propose(submit(&format!("majority-{i}"), "majority", 5)).await.unwrap()));
    }

    let minority_result = minority.await.unwrap();
    assert!(
        matches!(minority_result, Err(ProposeError::Indeterminate(_)) | Err(ProposeError::NoLeader { .. })),
        "a proposal on the cut-off replica must fail, got {minority_result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(8), "the failure came within the propose deadline ({:?})", started.elapsed());
    {
        let state = group.replica(old_leader).state();
        let state = state.read().unwrap();
        assert!(majority_ids.iter().all(|id| state.task(*id).is_none()), "the cut-off replica cannot see the majority's commits");
        assert!(state.task_set("q", "minority").is_none(), "the cut-off replica applied nothing on its own");
    }

    group.fault.heal();
    let state = group.wait_converged(&[1, 2, 3]).await;
    assert!(majority_ids.iter().all(|id| state.task(*id).is_some()), "after healing, the cut-off replica caught up");
    assert!(state.tasks().all(|t| t.spec.task_set != "minority"), "the uncommitted minority proposal was discarded");
    assert_eq!(state.task_count(), 5 + 20 * 5);
    group.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_replica_joins_after_log_purge_and_catches_up_from_snapshot() {
    let _serial = SERIAL.lock().await;
    fn tune(config: &mut ReplicaConfig) {
        fast(config);
        config.snapshot_every_logs = 30;
        config.max_in_snapshot_log_to_keep = 0;
    }
    let mut group = Group::start(3, tune).await;
    let leader = group.wait_for_leader(&[1, 2, 3]).await;
    group.replica(leader).propose(put_queue("q")).await.unwrap();
    for i in 0..100 {
        submitted(group.replica(leader).propose(submit(&format!("s-{i}"), "snap", 2)).await.unwrap());
    }
    let deadline = Instant::now() + WAIT;
    let purged = loop {
        let m = group.replica(leader).metrics();
        if let (Some(snapshot), Some(purged)) = (m.snapshot_index, m.purged_index) {
            if snapshot >= 60 && purged > 0 {
                break purged;
            }
        }
        assert!(Instant::now() < deadline, "no snapshot and purge on the leader: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Replica 4 starts with an empty data directory and replaces a follower (the documented
    // procedure: add it as a learner, then change the voters).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url4 = format!("http://{}", listener.local_addr().unwrap());
    let mut peers4 = group.peers.clone();
    peers4.insert(4, url4.clone());
    group.launch(4, listener, peers4).await;
    let leader_replica = group.replica(leader);
    tokio::time::timeout(WAIT, leader_replica.add_learner(4, url4.clone())).await.expect("learner caught up in time").unwrap();
    let replaced = (1..=3).rev().find(|id| *id != leader).unwrap();
    let voters: BTreeSet<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != replaced).collect();
    tokio::time::timeout(WAIT, leader_replica.change_membership(voters.clone(), false)).await.expect("membership change in time").unwrap();

    let members: Vec<u64> = voters.iter().copied().collect();
    let state = group.wait_converged(&members).await;
    assert_eq!(state.task_count(), 200);
    let m4 = group.replica(4).metrics();
    assert!(
        m4.snapshot_index.is_some_and(|s| s >= purged),
        "replica 4 installed a snapshot covering the purged log (snapshot {:?}, purged {purged})",
        m4.snapshot_index
    );
    assert_eq!(m4.voters, members, "replica 4 is a voter");

    // The new member takes writes (forwarded to the leader if it does not lead).
    submitted(group.replica(4).propose(submit("after-join", "joined", 3)).await.unwrap());
    assert_eq!(group.wait_converged(&members).await.task_count(), 203);
    group.stop_all().await;
}

/// Reads the child's `ACK <client_request_id> <task id>` lines.
fn parse_acks(stdout: &str) -> Vec<(String, u64)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ACK "))
        .filter_map(|l| {
            let (req, id) = l.split_once(' ')?;
            // The last line may be cut mid-way by the kill.
            Some((req.to_string(), id.trim().parse().ok()?))
        })
        .collect()
}

async fn write_until_killed(data_dir: &Path, min_acks: usize) -> Vec<(String, u64)> {
    use tokio::io::AsyncReadExt as _;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_store_writer"))
        .arg(data_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(60);
    while parse_acks(&String::from_utf8_lossy(&out)).len() < min_acks {
        assert!(Instant::now() < deadline, "the writer acknowledged too little: {}", String::from_utf8_lossy(&out));
        let n = tokio::time::timeout(Duration::from_secs(30), stdout.read(&mut buf)).await.expect("writer output").unwrap();
        assert!(n > 0, "the writer exited early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    // SIGKILL while writers are mid-proposal.
    child.start_kill().unwrap();
    stdout.read_to_end(&mut out).await.unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "the writer was killed, not finished");
    parse_acks(&String::from_utf8_lossy(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_killed_with_sigkill_mid_writes_reopens_with_every_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("replica-1");
    let mut acked = Vec::new();
    // Two rounds: the second writer opens what the first left behind after its kill.
    for round in 0..2 {
        let acks = write_until_killed(&data_dir, 300).await;
        assert!(acks.len() >= 300, "round {round}");
        acked.extend(acks);
    }

    // The files open cleanly...
    let (log_store, state_machine) = flotilla_store::raft::open(&data_dir).unwrap_or_else(|e| panic!("store reopens after SIGKILL: {e}"));
    drop((log_store, state_machine));
    // ...and replaying them as the same one-replica group gives back every acknowledged write.
    let peers = BTreeMap::from([(1, "http://127.0.0.1:9".to_string())]);
    let replica = Replica::open(ReplicaConfig::new(1, peers, data_dir.clone(), None)).await.unwrap();
    replica.bootstrap();
    let deadline = Instant::now() + WAIT;
    let mut acknowledged_present = false;
    while !acknowledged_present {
        assert!(Instant::now() < deadline, "acknowledged writes missing after reopening");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let state = replica.state();
        let state = state.read().unwrap();
        acknowledged_present = acked.iter().all(|(_, id)| state.task(TaskId(*id)).is_some());
    }
    {
        let state = replica.state();
        let state = state.read().unwrap();
        let ids: BTreeSet<u64> = acked.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids.len(), acked.len(), "each acknowledgement names its own task");
        for (req, id) in &acked {
            let task = state.task(TaskId(*id)).unwrap();
            assert_eq!(task.spec.task_set, "crash", "task {id} of {req}");
        }
    }
    replica.shutdown().await;
}
