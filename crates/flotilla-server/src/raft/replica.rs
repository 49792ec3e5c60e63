//! One replica's Raft node: store, openraft, bootstrap, proposals, leadership and metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use flotilla_store::raft::{check_identity, LogStore, Node, NodeId, Raft, StateMachineStore};
use flotilla_store::{Command, CommandResult, RejectKind, Request, State};
use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::fence::{self, Fence, FenceError};
use super::group_commit::{self, encoded_len, GroupCommitConfig, Origin, Pending};
use super::network::{NetworkFactory, Peers, Rpc, SendError};
use super::service::RaftService;
use super::{HelloReply, HelloRequest, ProposeReply, ProposeRequest};

/// How a replica joins its group and commits.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub id: NodeId,
    /// Every voting replica by id, including this one: `http://host:port` of its gRPC port.
    pub peers: BTreeMap<NodeId, String>,
    pub data_dir: PathBuf,
    /// The leader's heartbeat; also the time limit of one AppendEntries call.
    pub heartbeat_interval: Duration,
    /// A follower that hears nothing for a random time in this range starts an election.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every_logs: u64,
    /// Entries kept in the log behind a snapshot, so a briefly absent replica catches up
    /// from the log instead of a full snapshot.
    pub max_in_snapshot_log_to_keep: u64,
    pub group_commit: GroupCommitConfig,
    /// Most entries in one AppendEntries call. With `group_commit.max_bytes` it bounds the
    /// call's size, which must be sent and decoded within `heartbeat_interval` (openraft's
    /// time limit for it).
    pub max_entries_per_append: u64,
    /// How long a proposal may wait for a leader (across elections) before it fails.
    pub propose_timeout: Duration,
    /// Test hook: drop traffic between replicas.
    pub fault: Option<super::NetworkFault>,
    /// How this replica reaches its peers.
    pub dial: flotilla_api::dial::Dial,
    /// Stamps entries this replica proposes as leader.
    pub clock: crate::clock::WallClock,
}

impl ReplicaConfig {
    pub fn new(id: NodeId, peers: BTreeMap<NodeId, String>, data_dir: PathBuf, fault: Option<super::NetworkFault>) -> ReplicaConfig {
        ReplicaConfig {
            id,
            peers,
            data_dir,
            heartbeat_interval: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            snapshot_every_logs: 5000,
            max_in_snapshot_log_to_keep: 1000,
            group_commit: GroupCommitConfig::default(),
            max_entries_per_append: 8,
            propose_timeout: Duration::from_secs(10),
            fault,
            dial: flotilla_api::dial::Dial::tcp(),
            clock: crate::clock::WallClock::system(),
        }
    }

    /// How long a quorum confirmation lets this replica act as leader: 3/4 of the shortest
    /// election timeout (see [`fence`](super::fence) for why that is safe).
    pub fn leader_lease(&self) -> Duration {
        self.election_timeout_min * 3 / 4
    }

    fn raft_config(&self) -> anyhow::Result<openraft::Config> {
        let config = openraft::Config {
            cluster_name: "flotilla".into(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: self.election_timeout_min.as_millis() as u64,
            election_timeout_max: self.election_timeout_max.as_millis() as u64,
            // Chunks of a few MiB sent over a busy loopback on two cores need more than the
            // default 200 ms.
            install_snapshot_timeout: 10_000,
            max_payload_entries: self.max_entries_per_append.max(1),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_logs),
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            ..Default::default()
        };
        config.validate().context("invalid Raft timing settings")
    }
}

/// Why a proposal did not produce results.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProposeError {
    /// No leader could be reached in time. The commands were not applied.
    #[error("no Raft leader reachable within {waited_ms} ms ({last_error}); the commands were not applied")]
    NoLeader { waited_ms: u64, last_error: String },
    /// The commands were proposed but it is not known whether they committed (the leader
    /// stopped or lost its majority mid-way). Retrying is safe only for idempotent commands,
    /// such as a `Submit` with the same `client_request_id`.
    #[error("outcome unknown: {0}; the commands may or may not have been applied")]
    Indeterminate(String),
    /// This replica is not the leader (answer to a forwarded batch only).
    #[error("replica is not the leader (leader: {leader_id:?}); the commands were not applied")]
    NotLeader { leader_id: Option<NodeId> },
    /// The replica is stopping. The commands were not applied.
    #[error("the replica is shutting down; the commands were not applied")]
    ShuttingDown,
}

/// Why a linearizable read could not be served here.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReadError {
    #[error("linearizable reads are served by the leader; this replica is not it (leader: {leader_id:?}, its peer port {leader_url:?}; ask its client port)")]
    NotLeader { leader_id: Option<NodeId>, leader_url: Option<String> },
    #[error("this leader could not confirm its leadership with a majority: {0}")]
    NoQuorum(String),
    #[error("raft stopped: {0}")]
    Stopped(String),
}

/// A replica's role in the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

/// Figures for Prometheus and status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaMetrics {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    /// The highest index known committed (persisted lazily: it may lag after a restart).
    pub commit_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Entries this replica proposed as leader, and the commands in them (group commit).
    pub proposed_entries: u64,
    pub proposed_commands: u64,
    /// Batches this replica forwarded to the leader.
    pub forwarded_batches: u64,
}

/// One member of the Raft group. Open it, mount [`raft_service`](Self::raft_service) on the
/// gRPC server, then call [`bootstrap`](Self::bootstrap).
pub struct Replica {
    id: NodeId,
    config: ReplicaConfig,
    raft: Raft,
    peers: Peers,
    log_store: LogStore,
    state_machine: StateMachineStore,
    metrics: watch::Receiver<RaftMetrics<NodeId, Node>>,
    proposals: mpsc::Sender<Pending>,
    fence: Fence,
    shutdown_tx: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    bootstrap_started: AtomicBool,
    last_now_ms: AtomicU64,
    proposed_entries: AtomicU64,
    proposed_commands: AtomicU64,
    forwarded_batches: AtomicU64,
}

impl Replica {
    /// Opens the data directory (refusing a damaged one, another replica's, or one whose
    /// stored membership disagrees with `peers`) and starts the Raft node.
    pub async fn open(config: ReplicaConfig) -> anyhow::Result<Arc<Replica>> {
        anyhow::ensure!(
            config.peers.contains_key(&config.id),
            "replica {} is not in --peers ({:?})",
            config.id,
            config.peers.keys().collect::<Vec<_>>()
        );
        for (id, url) in &config.peers {
            tonic::transport::Endpoint::from_shared(url.clone()).with_context(|| format!("--peers: replica {id} has a bad URL {url:?}"))?;
        }
        let raft_config = Arc::new(config.raft_config()?);
        let data_dir = config.data_dir.clone();
        let (log_store, state_machine) = flotilla_store::run_blocking(move || flotilla_store::raft::open(&data_dir))
            .await
            .context("opening the store")?
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
        check_identity(&config.data_dir, &log_store, &state_machine, config.id, &config.peers)?;

        let peers = Peers::new(config.id, config.fault.clone(), config.dial.clone());
        let network = NetworkFactory { peers: peers.clone() };
        let raft = Raft::new(config.id, raft_config, network, log_store.clone(), state_machine.clone()).await.context("starting Raft")?;
        let metrics = raft.metrics();
        let (proposals, rx) = mpsc::channel(config.group_commit.max_queued.max(1));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let replica = Arc::new(Replica {
            id: config.id,
            config: config.clone(),
            raft,
            peers,
            log_store,
            state_machine,
            metrics,
            proposals,
            shutdown_tx,
            tasks: Mutex::new(Vec::new()),
            bootstrap_started: AtomicBool::new(false),
            last_now_ms: AtomicU64::new(0),
            proposed_entries: AtomicU64::new(0),
            proposed_commands: AtomicU64::new(0),
            forwarded_batches: AtomicU64::new(0),
            fence: Fence::new(config.leader_lease()),
        });
        let confirmer = tokio::spawn(fence::run(Arc::downgrade(&replica), config.heartbeat_interval, replica.shutdown_tx.subscribe()));
        replica.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(confirmer);
        let batcher = tokio::spawn(group_commit::run(Arc::downgrade(&replica), config.group_commit.clone(), rx, shutdown_rx));
        replica.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(batcher);
        tracing::info!(id = config.id, data_dir = %config.data_dir.display(), "replica opened");
        Ok(replica)
    }

    /// The gRPC service carrying Raft traffic, forwarded proposals and bootstrap probes.
    pub fn raft_service(self: &Arc<Self>) -> flotilla_api::raft::raft_server::RaftServer<RaftService> {
        RaftService::server(self.clone())
    }

    /// Starts joining the group in the background; safe to call more than once.
    ///
    /// A group with one replica initialises at once. Otherwise the lowest id in `peers`
    /// probes the others and initialises the group with all of `peers` once a majority
    /// (itself included) answers and none of them already belongs to a group; the others
    /// wait to be contacted by the leader. A replica whose data directory already holds a
    /// group does nothing.
    pub fn bootstrap(self: &Arc<Self>) {
        if self.bootstrap_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = Arc::downgrade(self);
        let mut shutdown = self.shutdown_tx.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let Some(replica) = me.upgrade() else { return };
                if replica.try_initialize().await {
                    return;
                }
                drop(replica);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        });
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(task);
    }

    /// One bootstrap round; true when there is nothing more to do.
    async fn try_initialize(&self) -> bool {
        match self.raft.is_initialized().await {
            Ok(true) | Err(_) => return true,
            Ok(false) => {}
        }
        let lowest = self.config.peers.keys().next().copied();
        if lowest != Some(self.id) {
            return true;
        }
        let others: Vec<(NodeId, String)> =
            self.config.peers.iter().filter(|(id, _)| **id != self.id).map(|(i, u)| (*i, u.clone())).collect();
        let probes = others.iter().map(|(id, url)| async move {
            self.peers.call::<_, HelloReply>(*id, url, Rpc::Hello, &HelloRequest {}, Duration::from_secs(1)).await.ok()
        });
        let replies: Vec<HelloReply> = futures::future::join_all(probes).await.into_iter().flatten().collect();
        if let Some(member) = replies.iter().find(|r| r.initialized) {
            tracing::info!(id = self.id, peer = member.id, "peers already form a group; waiting for its leader to contact this replica");
            return true;
        }
        let up = 1 + replies.len();
        if up * 2 <= self.config.peers.len() {
            tracing::info!(
                id = self.id,
                up,
                of = self.config.peers.len(),
                "waiting for a majority of --peers before initialising the group"
            );
            return false;
        }
        let members: BTreeMap<NodeId, Node> = self.config.peers.iter().map(|(id, url)| (*id, Node::new(url))).collect();
        match self.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(id = self.id, peers = ?self.config.peers, "initialised the Raft group");
                true
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => true,
            Err(e) => {
                tracing::warn!(id = self.id, error = %e, "initialising the Raft group failed; retrying");
                false
            }
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// True once [`shutdown`](Self::shutdown) was called.
    pub fn is_stopped(&self) -> bool {
        *self.shutdown_tx.borrow()
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub(crate) fn peers(&self) -> &Peers {
        &self.peers
    }

    /// The replicated state, as applied on this replica. Never hold its lock across `.await`.
    pub fn state(&self) -> Arc<RwLock<State>> {
        self.state_machine.state()
    }

    /// The last applied log index; changes whenever entries are applied.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.state_machine.applied()
    }

    /// Waits until this replica has applied `index`, or until `deadline` (then the caller's
    /// results are still right; only reads of the local state may briefly lag).
    async fn wait_applied(&self, index: u64, deadline: tokio::time::Instant) {
        let mut applied = self.applied();
        while *applied.borrow_and_update() < index {
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }

    /// The state-machine store (snapshots, last applied log id, membership).
    pub fn state_machine(&self) -> &StateMachineStore {
        &self.state_machine
    }

    /// The log store (for its files and committed index).
    pub fn log_store(&self) -> &LogStore {
        &self.log_store
    }

    /// True while this replica is the leader of the current term.
    pub fn is_leader(&self) -> bool {
        let m = self.metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// The leadership lease (fenced leadership): see [`fence`](super::fence).
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// The term this replica may grant or end leases in, waiting up to one lease for a
    /// confirmation. Errors on a follower, a leader that has not caught up, or one that a
    /// majority has not confirmed recently.
    pub async fn fenced_term(&self) -> Result<u64, FenceError> {
        self.fence.acquire(self, self.fence.lease()).await
    }

    /// The term of the last entry applied here.
    pub fn last_applied_term(&self) -> Option<u64> {
        self.metrics.borrow().last_applied.map(|l| l.leader_id.term)
    }

    /// The leader this replica knows of, if any.
    pub fn leader_id(&self) -> Option<NodeId> {
        self.metrics.borrow().current_leader
    }

    /// The leader's gRPC URL (`http://host:port`), if known.
    pub fn leader_url(&self) -> Option<String> {
        let m = self.metrics.borrow();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
    }

    fn node_url(&self, id: NodeId) -> Option<String> {
        let m = self.metrics.borrow();
        m.membership_config.membership().get_node(&id).map(|n| n.addr.clone()).or_else(|| self.config.peers.get(&id).cloned())
    }

    pub fn current_term(&self) -> u64 {
        self.metrics.borrow().current_term
    }

    /// openraft's own metrics, to wait on (`raft().wait(..)`) or to watch.
    pub fn raft_metrics(&self) -> watch::Receiver<RaftMetrics<NodeId, Node>> {
        self.metrics.clone()
    }

    pub fn metrics(&self) -> ReplicaMetrics {
        let m = self.metrics.borrow();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let membership = m.membership_config.membership();
        ReplicaMetrics {
            id: self.id,
            role,
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            commit_index: self.log_store.committed_index(),
            last_applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            proposed_entries: self.proposed_entries.load(Ordering::Relaxed),
            proposed_commands: self.proposed_commands.load(Ordering::Relaxed),
            forwarded_batches: self.forwarded_batches.load(Ordering::Relaxed),
        }
    }

    /// Proposes one command and waits until it is committed on a majority and applied.
    /// Group-committed with concurrent proposals; forwarded to the leader from a follower.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, ProposeError> {
        let mut results = self.propose_all(vec![command]).await?;
        assert_eq!(results.len(), 1, "one result per command");
        Ok(results.remove(0))
    }

    /// Proposes several commands that are committed in the same entry, in order.
    pub async fn propose_all(&self, commands: Vec<Command>) -> Result<Vec<CommandResult>, ProposeError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        self.enqueue(commands, Origin::Local).await
    }

    /// Proposes commands of the leader loop (scheduling decisions, cluster loss, compaction),
    /// which carry the term they were decided in. They are committed only by this replica as
    /// leader, never forwarded (invariant 7): a deposed leader's decision fails here with
    /// [`ProposeError::NotLeader`], and one that slips into a later term's log is dropped
    /// when applied.
    pub async fn propose_leader_only(&self, commands: Vec<Command>) -> Result<Vec<CommandResult>, ProposeError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        if flotilla_store::planted::SKIP_TERM_CHECK.load(std::sync::atomic::Ordering::Relaxed) {
            // Planted bug (simulator only): decisions forwarded like any proposal.
            return self.enqueue(commands, Origin::Local).await;
        }
        if !self.is_leader() {
            return Err(ProposeError::NotLeader { leader_id: self.leader_id() });
        }
        self.enqueue(commands, Origin::LeaderOnly).await
    }

    async fn enqueue(&self, commands: Vec<Command>, origin: Origin) -> Result<Vec<CommandResult>, ProposeError> {
        let bytes = commands.iter().map(encoded_len).sum();
        let (tx, rx) = oneshot::channel();
        let pending = Pending { commands, bytes, origin, enqueued: Instant::now(), tx };
        self.proposals.send(pending).await.map_err(|_| ProposeError::ShuttingDown)?;
        // Dropped unanswered only if the batcher stopped before taking it: not proposed.
        rx.await.unwrap_or(Err(ProposeError::ShuttingDown))
    }

    /// A follower's forwarded batch (the `Propose` RPC).
    pub(crate) async fn handle_forwarded(&self, commands: Vec<Command>) -> ProposeReply {
        if !self.is_leader() {
            return ProposeReply::NotLeader { leader_id: self.leader_id() };
        }
        if commands.iter().any(|c| c.proposer_term().is_some())
            && !flotilla_store::planted::SKIP_TERM_CHECK.load(std::sync::atomic::Ordering::Relaxed)
        {
            // Decisions of another replica's leader loop are never committed here.
            let refused = CommandResult::rejected(RejectKind::Invalid, "leader-only commands are never forwarded");
            return ProposeReply::Applied { results: vec![refused; commands.len()], applied_index: *self.applied().borrow() };
        }
        match self.enqueue(commands, Origin::Forwarded).await {
            Ok(results) => ProposeReply::Applied { results, applied_index: *self.applied().borrow() },
            Err(ProposeError::NotLeader { leader_id }) => ProposeReply::NotLeader { leader_id },
            Err(ProposeError::ShuttingDown) | Err(ProposeError::NoLeader { .. }) => ProposeReply::NotLeader { leader_id: None },
            Err(ProposeError::Indeterminate(m)) => ProposeReply::Indeterminate(m),
        }
    }

    /// The leader's clock for an entry, never behind an earlier entry this replica proposed.
    fn next_now_ms(&self) -> u64 {
        let now = self.config.clock.now_ms();
        let previous = self.last_now_ms.fetch_max(now, Ordering::SeqCst);
        now.max(previous)
    }

    /// Commits one batch as one entry here (leader) or forwards it (follower), retrying
    /// across elections until the oldest proposal's deadline.
    pub(crate) async fn commit_batch(&self, mut batch: Vec<Pending>) {
        let Some(oldest) = batch.iter().map(|p| p.enqueued).min() else { return };
        let deadline = oldest + self.config.propose_timeout;
        let mut last_error = String::from("no leader elected yet");
        loop {
            if batch.is_empty() {
                return;
            }
            if *self.shutdown_tx.borrow() {
                return answer_all(batch, Err(ProposeError::ShuttingDown));
            }
            if Instant::now() >= deadline {
                let waited_ms = oldest.elapsed().as_millis() as u64;
                return answer_all(batch, Err(ProposeError::NoLeader { waited_ms, last_error }));
            }
            let leader = self.leader_id();
            if leader == Some(self.id) && self.is_leader() {
                let commands: Vec<Command> = batch.iter().flat_map(|p| p.commands.iter().cloned()).collect();
                let count = commands.len() as u64;
                let request = Request { now_ms: self.next_now_ms(), commands };
                match tokio::time::timeout_at(deadline, self.raft.client_write(request)).await {
                    Ok(Ok(response)) => {
                        self.proposed_entries.fetch_add(1, Ordering::Relaxed);
                        self.proposed_commands.fetch_add(count, Ordering::Relaxed);
                        return distribute(batch, response.data.results);
                    }
                    Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                        // Not appended, or appended and then truncated: certainly not applied.
                        last_error = format!("leadership moved to {:?}", f.leader_id);
                        batch = refuse_forwarded(batch, f.leader_id);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(Err(e)) => {
                        return answer_all(batch, Err(ProposeError::Indeterminate(format!("raft: {e}"))));
                    }
                    Err(_) => {
                        let message = format!("not committed within {:?}: no majority answers this leader", self.config.propose_timeout);
                        return answer_all(batch, Err(ProposeError::Indeterminate(message)));
                    }
                }
                continue;
            }
            batch = refuse_forwarded(batch, leader);
            if batch.is_empty() {
                return;
            }
            let Some((leader, url)) = leader.filter(|l| *l != self.id).and_then(|l| self.node_url(l).map(|u| (l, u))) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let commands: Vec<Command> = batch.iter().flat_map(|p| p.commands.iter().cloned()).collect();
            let timeout = deadline.saturating_duration_since(Instant::now());
            self.forwarded_batches.fetch_add(1, Ordering::Relaxed);
            match self.peers.call::<_, ProposeReply>(leader, &url, Rpc::Propose, &ProposeRequest { commands }, timeout).await {
                Ok(ProposeReply::Applied { results, applied_index }) => {
                    // Read-your-writes on every replica: a caller that reads this replica's
                    // state right after its write must see it, so wait until it is applied here.
                    self.wait_applied(applied_index, deadline).await;
                    return distribute(batch, results);
                }
                Ok(ProposeReply::NotLeader { leader_id }) => {
                    last_error = format!("replica {leader} is no longer the leader (it names {leader_id:?})");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(ProposeReply::Indeterminate(m)) => return answer_all(batch, Err(ProposeError::Indeterminate(m))),
                Err(SendError::NotSent(m)) => {
                    last_error = m;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return answer_all(batch, Err(ProposeError::Indeterminate(format!("forwarding to replica {leader}: {e}")))),
            }
        }
    }

    /// Waits until this replica, as leader, has confirmed leadership with a majority and
    /// applied everything committed before the call: reads of [`state`](Self::state) after
    /// it returns are linearizable. On a follower it names the leader to ask instead.
    pub async fn read_linearizable(&self) -> Result<(), ReadError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                let leader_id = f.leader_id.or_else(|| self.leader_id());
                Err(ReadError::NotLeader { leader_id, leader_url: leader_id.and_then(|l| self.node_url(l)) })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => Err(ReadError::NoQuorum(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(ReadError::Stopped(f.to_string())),
        }
    }

    /// Adds a replica as a learner (it receives the log or a snapshot, but does not vote)
    /// and returns the index of the membership entry that added it, once committed. It does
    /// not wait for the learner: openraft's blocking wait counts a learner that never answered
    /// as caught up while the log is shorter than its lag threshold, so the caller waits
    /// itself (see `services::replicas`). Leader only.
    pub async fn add_learner(&self, id: NodeId, url: String) -> anyhow::Result<u64> {
        let added = self.raft.add_learner(id, Node::new(url), false).await.with_context(|| format!("adding replica {id} as a learner"))?;
        Ok(added.log_id.index)
    }

    /// Makes `voters` the voting members (joint consensus, two entries); current members
    /// left out become learners if `retain`, otherwise they are removed. Leader only.
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>, retain: bool) -> anyhow::Result<()> {
        self.raft.change_membership(voters.clone(), retain).await.with_context(|| format!("changing the voters to {voters:?}"))?;
        Ok(())
    }

    /// Stops Raft and the batcher and closes the store files. Waiting proposals fail with
    /// [`ProposeError::ShuttingDown`]; the in-memory state stays readable.
    pub async fn shutdown(&self) {
        self.shutdown_tx.send_replace(true);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(id = self.id, error = %e, "raft did not stop cleanly");
        }
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        // Release the files now (a restart in the same process reopens them), even if a
        // stopping replication task or connection still holds a clone of the stores.
        let (log_store, state_machine) = (self.log_store.clone(), self.state_machine.clone());
        let _ = flotilla_store::run_blocking(move || {
            log_store.close();
            state_machine.close();
        })
        .await;
        tracing::info!(id = self.id, "replica stopped");
    }
}

fn answer_all(batch: Vec<Pending>, answer: Result<Vec<CommandResult>, ProposeError>) {
    for p in batch {
        p.answer(answer.clone());
    }
}

/// Splits one entry's results back to the proposals it held.
fn distribute(batch: Vec<Pending>, results: Vec<CommandResult>) {
    let expected: usize = batch.iter().map(|p| p.commands.len()).sum();
    assert_eq!(results.len(), expected, "the state machine returns one result per command");
    let mut results = results.into_iter();
    for p in batch {
        let mine: Vec<CommandResult> = results.by_ref().take(p.commands.len()).collect();
        p.answer(Ok(mine));
    }
}

/// Answers forwarded and leader-only proposals with "not the leader" (the follower retries
/// elsewhere; a forwarded batch is never forwarded again, a leader-only one never at all) and
/// keeps the local ones.
fn refuse_forwarded(batch: Vec<Pending>, leader_id: Option<NodeId>) -> Vec<Pending> {
    let (forwarded, local): (Vec<Pending>, Vec<Pending>) = batch.into_iter().partition(|p| p.origin != Origin::Local);
    for p in forwarded {
        p.answer(Err(ProposeError::NotLeader { leader_id }));
    }
    local
}
