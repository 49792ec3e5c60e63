//! A Flotilla scheduler replica.
//!
//! One process of the replicated scheduler: it joins the Raft group ([`raft`]), serves the
//! public gRPC API (`Queues`, `Tasks`, `Clusters`, `Replicas`), the executor protocol
//! (`Executor`), Armada's API ([`armada`]), KEDA's scaler ([`keda`]), gRPC health and
//! reflection ([`health`]) on the client port, Raft traffic and the calls followers forward to the
//! leader on the peer port ([`services`]), and `/metrics`, `/healthz`, `/readyz` and a
//! small read-only web view on the HTTP port. The client and HTTP ports speak TLS with
//! `--tls-cert`; the peer port speaks mutual TLS with `--peer-tls-*` ([`listen`]). The replica that is Raft leader also runs
//! the scheduling loop ([`leader`]): it feeds the queued tasks, running tasks and the
//! executors' capacity reports to `flotilla_sched::schedule` and commits the decisions.
//!
//! This crate is not for the scheduling algorithm (`flotilla-sched`), the state machine
//! (`flotilla-store`) or running tasks (`flotilla-executor`); it wires them together.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let config = flotilla_server::ServerConfig::single("127.0.0.1:50051".parse()?, "/tmp/flotilla".into());
//! let server = flotilla_server::start(config).await?;
//! server.wait_for_leader(std::time::Duration::from_secs(10)).await?;
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod armada;
pub mod auth;
pub mod backlog;
pub mod capacity;
pub mod clock;
pub mod cluster_metrics;
mod convert;
pub mod cost;
pub mod health;
pub mod keda;
pub mod leader;
pub mod listen;
pub mod logs;
pub mod metrics;
pub mod planted;
pub mod raft;
pub mod services;
mod web;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

use anyhow::Context as _;
use flotilla_api::tls::{self, CaFile, CertFiles, ClientTls, ReloadingCert};
use flotilla_model::SubmitLimits;
use flotilla_store::{Command, CommandResult, RejectKind, State};
use tokio::sync::{oneshot, Notify};
use tonic::Status;

pub use capacity::Capacity;
pub use clock::WallClock;
pub use metrics::Metrics;
pub use raft::{NetworkFault, Replica, ReplicaConfig};

/// Everything a replica needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub id: u64,
    /// gRPC client port: public API and executor protocol (never Raft).
    pub listen: SocketAddr,
    /// gRPC peer port: Raft traffic and calls forwarded to the leader; `peers` names it.
    pub peer_listen: SocketAddr,
    /// TLS on the client gRPC port and the HTTP port; `None`: plaintext.
    pub tls: Option<CertFiles>,
    /// Mutual TLS on the peer port and on this replica's calls to its peers; `None`:
    /// plaintext (development, tests).
    pub peer_tls: Option<PeerTls>,
    /// HTTP: metrics, health, web view. `None` disables it.
    pub http: Option<SocketAddr>,
    /// Plaintext gRPC without credentials, read-only: `grpc.health.v1.Health` (Kubernetes'
    /// gRPC probes speak neither TLS nor tokens) and KEDA's external scaler (queue depths).
    /// `None` (the default): not served.
    pub probe_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Every replica of the group by id, including this one: the URL of its peer port
    /// (`http://host:port`, `https://` with `peer_tls`). A URL of this replica ending in
    /// `:0` is replaced by the port `peer_listen` got.
    pub peers: BTreeMap<u64, String>,
    pub schedule_interval: Duration,
    /// A cluster whose executor has not synced for this long has its tasks requeued.
    pub cluster_lost_after: Duration,
    /// The lease each Sync grants an executor; `None`: a third of `cluster_lost_after`.
    pub executor_lease: Option<Duration>,
    /// The most an executor whose lease expired gives its attempts to stop; `None`: a third
    /// of `cluster_lost_after`.
    pub lease_expiry_grace: Option<Duration>,
    /// What executors are told to use between syncs.
    pub sync_interval: Duration,
    pub submit_limits: SubmitLimits,
    /// Most attempts one Sync response asks an executor to start.
    pub max_starts_per_sync: usize,
    /// Most events accepted in one ReportEvents call.
    pub max_events_per_report: usize,
    /// Finished tasks are forgotten after this long...
    pub finished_retention: Duration,
    /// ...or once more than this many tasks are held.
    pub max_tasks: usize,
    pub sched: flotilla_sched::Config,
    /// Test hook: drop Raft traffic between replicas.
    pub fault: Option<NetworkFault>,
    /// How this replica reaches the others (TCP, or the fault simulator's network).
    pub dial: flotilla_api::dial::Dial,
    /// The wall clock entries are stamped with.
    pub clock: WallClock,
    /// Raft timing; `None`: [`ReplicaConfig::new`]'s defaults.
    pub raft_timing: Option<RaftTiming>,
    /// Users, executors' credentials, roles and the OIDC provider; `None`: authentication is
    /// off and every caller may do anything.
    pub auth_file: Option<PathBuf>,
    /// Serve without authentication on an address other hosts can reach.
    pub insecure: bool,
    /// `/metrics` needs a token too when authentication is on (health probes never do).
    pub protect_metrics: bool,
}

/// The replicas' mutual TLS: this replica's certificate (presented as server and client) and
/// the CA every replica's certificate must be signed by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTls {
    pub cert: CertFiles,
    pub ca: CaFile,
}

/// `--tls-cert` and `--tls-key`: both or neither.
pub fn tls_flags(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<CertFiles>, String> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(CertFiles::new("--tls-cert", cert, "--tls-key", key))),
        (Some(_), None) => Err("--tls-cert and --tls-key go together: --tls-key is missing".into()),
        (None, Some(_)) => Err("--tls-cert and --tls-key go together: --tls-cert is missing".into()),
    }
}

/// `--peer-tls-cert`, `--peer-tls-key` and `--peer-ca-cert`: all three or none.
pub fn peer_tls_flags(cert: Option<PathBuf>, key: Option<PathBuf>, ca: Option<PathBuf>) -> Result<Option<PeerTls>, String> {
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(PeerTls {
            cert: CertFiles::new("--peer-tls-cert", cert, "--peer-tls-key", key),
            ca: CaFile::new("--peer-ca-cert", ca),
        })),
        (cert, key, ca) => {
            let missing: Vec<&str> =
                [(cert.is_none(), "--peer-tls-cert"), (key.is_none(), "--peer-tls-key"), (ca.is_none(), "--peer-ca-cert")]
                    .into_iter()
                    .filter_map(|(m, flag)| m.then_some(flag))
                    .collect();
            Err(format!("--peer-tls-cert, --peer-tls-key and --peer-ca-cert go together: {} missing", missing.join(" and ")))
        }
    }
}

/// How fast replicas notice each other: heartbeat and election timeout range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
}

impl ServerConfig {
    /// A one-replica group (dev mode, tests).
    /// Its peer port is `127.0.0.1:0` (any free port).
    pub fn single(listen: SocketAddr, data_dir: PathBuf) -> ServerConfig {
        let peer_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        ServerConfig {
            id: 1,
            listen,
            peer_listen,
            tls: None,
            peer_tls: None,
            http: None,
            probe_listen: None,
            data_dir,
            peers: BTreeMap::from([(1, format!("http://{peer_listen}"))]),
            schedule_interval: Duration::from_secs(1),
            cluster_lost_after: Duration::from_secs(30),
            executor_lease: None,
            lease_expiry_grace: None,
            sync_interval: Duration::from_secs(1),
            submit_limits: SubmitLimits::default(),
            max_starts_per_sync: 5_000,
            max_events_per_report: 10_000,
            finished_retention: Duration::from_secs(24 * 3600),
            // Snapshots hold every task (about 0.5 KB each as JSON): this bounds them near 0.5 GB.
            max_tasks: 1_000_000,
            // A lease is about 90 bytes in the log: 10,000 keep one `Schedule` entry near 1 MB,
            // which followers receive within a heartbeat.
            sched: flotilla_sched::Config { max_leases_per_cycle: 10_000, ..flotilla_sched::Config::default() },
            fault: None,
            dial: flotilla_api::dial::Dial::tcp(),
            clock: WallClock::system(),
            raft_timing: None,
            auth_file: None,
            insecure: false,
            protect_metrics: false,
        }
    }
}

impl ServerConfig {
    pub fn executor_lease(&self) -> Duration {
        self.executor_lease.unwrap_or(self.cluster_lost_after / 3)
    }

    pub fn lease_expiry_grace(&self) -> Duration {
        self.lease_expiry_grace.unwrap_or(self.cluster_lost_after / 3)
    }

    /// What must separate an expired executor lease from a re-lease elsewhere beyond the
    /// lease and the grace: a tenth of `cluster_lost_after`, for clocks whose rates differ
    /// by up to 5% (no synchronised clocks are assumed).
    pub fn lease_margin(&self) -> Duration {
        self.cluster_lost_after / 10
    }

    /// Refuses settings under which a lost cluster's tasks could be re-leased while its
    /// executor may still run them (invariant 2), naming the setting to change.
    pub fn validate(&self) -> Result<(), String> {
        let (lease, grace, margin, lost) = (self.executor_lease(), self.lease_expiry_grace(), self.lease_margin(), self.cluster_lost_after);
        if lease + grace + margin >= lost {
            return Err(format!(
                "executor lease ({lease:?}) + lease-expiry grace ({grace:?}) + margin ({margin:?}, a tenth of cluster_lost_after) must be below cluster_lost_after ({lost:?}): raise --cluster-lost-after or lower --executor-lease / --lease-expiry-grace"
            ));
        }
        if lease < self.sync_interval * 2 {
            return Err(format!(
                "executor lease ({lease:?}) must be at least two sync intervals ({:?}) so one missed Sync does not stop a healthy cluster: raise --executor-lease (or --cluster-lost-after, whose third it defaults to)",
                self.sync_interval
            ));
        }
        if self.auth_file.is_none() && !self.insecure {
            let exposed: Vec<String> =
                [Some(self.listen), self.http].into_iter().flatten().filter(|a| !a.ip().is_loopback()).map(|a| a.to_string()).collect();
            if !exposed.is_empty() {
                return Err(format!(
                    "refusing to serve {} without authentication: give --auth-file (see docs/auth.md), listen on loopback, or pass --insecure to accept that anyone who reaches the port may do anything",
                    exposed.join(", ")
                ));
            }
        }
        if self.peer_tls.is_none() && !self.insecure && !self.peer_listen.ip().is_loopback() {
            return Err(format!(
                "refusing to serve the peer port {} without mutual TLS: give --peer-tls-cert, --peer-tls-key and --peer-ca-cert, listen on loopback, or pass --insecure to accept that anyone who reaches it may speak Raft",
                self.peer_listen
            ));
        }
        if self.schedule_interval.is_zero() || self.sync_interval.is_zero() {
            return Err("schedule_interval and sync_interval must be positive".into());
        }
        let scheme = if self.peer_tls.is_some() { "https://" } else { "http://" };
        if let Some((id, url)) = self.peers.iter().find(|(_, url)| !url.starts_with(scheme)) {
            return Err(if self.peer_tls.is_some() {
                format!("--peers: replica {id} is at {url}, but with --peer-tls-cert the peer ports speak mutual TLS: use https:// URLs")
            } else {
                format!(
                    "--peers: replica {id} is at {url}, but without --peer-tls-cert, --peer-tls-key and --peer-ca-cert the peer ports are plaintext: use http:// URLs or give the three flags"
                )
            });
        }
        Ok(())
    }
}

/// Parses `1=http://127.0.0.1:7001,2=http://127.0.0.1:7002`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, url) = part.split_once('=').ok_or_else(|| format!("--peers: {part:?} is not ID=URL"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("--peers: {id:?} is not a replica id (a positive number)"))?;
        if id == 0 {
            return Err("--peers: replica ids start at 1".into());
        }
        let url = url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("--peers: {url:?} must start with http:// or https://"));
        }
        if peers.insert(id, url.to_string()).is_some() {
            return Err(format!("--peers: replica {id} is listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("--peers: at least one replica is required".into());
    }
    Ok(peers)
}

/// Shared by the services, the leader loop and the HTTP endpoints of one replica.
pub struct Context {
    pub config: ServerConfig,
    pub replica: Arc<Replica>,
    /// Executors' reports. Lock order: never hold this and the state lock at once.
    pub capacity: Mutex<Capacity>,
    pub metrics: Metrics,
    /// Wakes the leader loop early (new work or new capacity).
    pub schedule_now: Notify,
    /// Last cycle's fair and actual shares, for metrics, ListQueues and the web view.
    pub shares: Mutex<Vec<flotilla_sched::QueueShare>>,
    pub started: Instant,
    /// Credentials and roles.
    pub auth: Arc<auth::Authenticator>,
    /// Open `Tasks.Logs` requests waiting for their executors (leader only).
    pub logs: Arc<logs::LogBroker>,
    /// A channel to the current leader's peer port, for calls only the leader can answer.
    leader_channel: Mutex<Option<(String, tonic::transport::Channel)>>,
    /// One membership change at a time on this replica (check, then change), whichever
    /// port the call came in on.
    pub(crate) membership_changes: tokio::sync::Mutex<()>,
    /// `grpc.health.v1.Health` statuses ([`health`]).
    pub health: tonic_health::server::HealthReporter,
}

/// The system clock's milliseconds since the Unix epoch (a replica uses `config.clock`).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Context {
    /// Reads the local replica's state. Never held across an await.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let state = self.replica.state();
        let guard = state.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// Proposes a command through Raft (forwarded to the leader when this replica is not
    /// it) and waits until it is committed and applied.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, Status> {
        match self.replica.propose(command).await {
            Ok(r) => Ok(r),
            Err(e) => Err(Status::unavailable(format!("could not commit: {e}"))),
        }
    }

    /// Proposes decisions of this replica's leader loop: committed by this replica as leader
    /// or not at all (never forwarded), dropped at apply if committed in another term.
    pub async fn propose_decision(&self, command: Command) -> Result<CommandResult, Status> {
        match self.replica.propose_leader_only(vec![command]).await {
            Ok(mut results) => Ok(results.remove(0)),
            Err(e) => Err(Status::unavailable(format!("could not commit: {e}"))),
        }
    }

    /// The term this replica may grant or end leases in (fenced leadership), or UNAVAILABLE.
    pub async fn fenced_term(&self) -> Result<u64, Status> {
        self.replica.fenced_term().await.map_err(|e| Status::unavailable(format!("not serving leases: {e}")))
    }

    /// Like [`propose`](Self::propose), but a rejected command is an error naming why.
    pub async fn propose_ok(&self, command: Command) -> Result<CommandResult, Status> {
        match self.propose(command).await? {
            CommandResult::Rejected { kind, message } => {
                let code = match kind {
                    RejectKind::NotFound => tonic::Code::NotFound,
                    RejectKind::AlreadyExists => tonic::Code::AlreadyExists,
                    RejectKind::Invalid => tonic::Code::InvalidArgument,
                    RejectKind::Conflict => tonic::Code::FailedPrecondition,
                    RejectKind::Stale => tonic::Code::Unavailable,
                };
                Err(Status::new(code, message))
            }
            other => Ok(other),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.replica.is_leader()
    }

    /// Answers "may this caller …" against the current auth file.
    pub fn authorizer(&self) -> auth::Authorizer {
        self.auth.authorizer()
    }

    /// PERMISSION_DENIED unless `caller` may do `verb` on queue `name` (its permits as this
    /// replica has applied them).
    pub fn require_on_queue(&self, caller: &auth::Caller, name: &str, verb: flotilla_model::Verb) -> Result<(), Status> {
        let z = self.authorizer();
        if z.is_admin(caller) {
            return Ok(());
        }
        let permits = self.read(|s| s.queue(name).map(|q| q.permits.clone())).unwrap_or_default();
        z.require(caller, name, &permits, verb)
    }

    /// A (cached, lazily connected) channel to the leader's peer port (its membership URL,
    /// with the peer mutual TLS), when another replica leads.
    pub fn leader_channel(&self) -> Option<tonic::transport::Channel> {
        let url = self.replica.leader_url()?;
        let mut cache = self.leader_channel.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cached, channel)) = cache.as_ref() {
            if *cached == url {
                return Some(channel.clone());
            }
        }
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30));
        let channel = self.config.dial.connect_lazy(endpoint);
        *cache = Some((url, channel.clone()));
        Some(channel)
    }
}

/// A running replica.
pub struct ServerHandle {
    pub ctx: Arc<Context>,
    /// The client gRPC port.
    pub local_addr: SocketAddr,
    /// The peer gRPC port (Raft, forwarded calls).
    pub peer_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    /// The plaintext health and scaler port (`probe_listen`).
    pub probe_addr: Option<SocketAddr>,
    shutdown: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    /// Waits until some replica of the group is known to lead.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.ctx.replica.leader_id() {
                return Ok(id);
            }
            if Instant::now() > deadline {
                anyhow::bail!("no leader elected within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops serving, stops Raft and waits for the background tasks.
    pub async fn shutdown(mut self) {
        for tx in self.shutdown.drain(..) {
            let _ = tx.send(());
        }
        self.ctx.replica.shutdown().await;
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

/// A stream of accepted connections, for [`start_with`]: what the fault simulator serves on.
pub type Incoming = std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<ServerIo>> + Send>>;

/// One accepted connection from a custom listener.
pub struct ServerIo(pub flotilla_api::dial::BoxIo);

impl tonic::transport::server::Connected for ServerIo {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for ServerIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ServerIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The TLS settings of [`ServerConfig`], loaded: what each port presents and verifies.
struct LoadedTls {
    client: Option<Arc<rustls::ServerConfig>>,
    http: Option<Arc<rustls::ServerConfig>>,
    peer: Option<Arc<rustls::ServerConfig>>,
    /// What this replica trusts and presents when it calls its peers.
    peer_client: Option<ClientTls>,
}

fn load_tls(config: &ServerConfig) -> anyhow::Result<LoadedTls> {
    let mut loaded = LoadedTls { client: None, http: None, peer: None, peer_client: None };
    if let Some(files) = &config.tls {
        let cert = ReloadingCert::load(files.clone())?;
        loaded.client = Some(tls::server_config(cert.clone(), None, tls::ALPN_GRPC)?);
        loaded.http = Some(tls::server_config(cert, None, tls::ALPN_HTTP)?);
    }
    if let Some(peer) = &config.peer_tls {
        // One certificate, reloaded from disk, for both directions of peer traffic.
        let cert = ReloadingCert::load(peer.cert.clone())?;
        loaded.peer = Some(tls::server_config(cert.clone(), Some(&peer.ca), tls::ALPN_GRPC)?);
        loaded.peer_client = Some(ClientTls::new(Some(&peer.ca), Some(cert))?);
    }
    Ok(loaded)
}

async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("{flag} {addr}: cannot listen"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Opens the store, joins the group and starts serving. Returns once listening.
pub async fn start(mut config: ServerConfig) -> anyhow::Result<ServerHandle> {
    config.validate().map_err(anyhow::Error::msg)?;
    let tls = load_tls(&config)?;
    if let Some(peer_client) = tls.peer_client {
        config.dial = config.dial.clone().with_tls(peer_client);
    }
    let (client, local_addr) = bind(config.listen, "--listen").await?;
    let (peer, peer_addr) = bind(config.peer_listen, "--peer-listen").await?;
    let client = listen::incoming(client, tls.client, "client");
    let peer = listen::incoming(peer, tls.peer, "peer");
    start_serving(config, (local_addr, client), (peer_addr, peer), tls.http).await
}

/// Like [`start`], serving the connections of `client_incoming` and `peer_incoming` instead
/// of TCP ports (the fault simulator); `config.listen` and `config.peer_listen` are the
/// addresses they stand for. The connections are served as they are: TLS settings are
/// refused here.
pub async fn start_with(config: ServerConfig, client_incoming: Incoming, peer_incoming: Incoming) -> anyhow::Result<ServerHandle> {
    if config.tls.is_some() || config.peer_tls.is_some() {
        anyhow::bail!("start_with serves the connections it is given as they are: TLS settings are for start");
    }
    config.validate().map_err(anyhow::Error::msg)?;
    let (local_addr, peer_addr) = (config.listen, config.peer_listen);
    start_serving(config, (local_addr, client_incoming), (peer_addr, peer_incoming), None).await
}

async fn start_serving(
    config: ServerConfig,
    (local_addr, client_incoming): (SocketAddr, Incoming),
    (peer_addr, peer_incoming): (SocketAddr, Incoming),
    http_tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<ServerHandle> {
    if !config.peers.contains_key(&config.id) {
        anyhow::bail!("--id {} is not in --peers ({:?})", config.id, config.peers.keys().collect::<Vec<_>>());
    }
    if config.insecure && config.auth_file.is_none() {
        tracing::warn!(listen = %config.listen, "serving without authentication (--insecure): anyone who reaches the port may do anything");
    }
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let mut config = config;
    if let Some(url) = config.peers.get_mut(&config.id) {
        if let Some(base) = url.strip_suffix(":0") {
            // Peers find this replica at the peer port it really got, and the stored
            // membership must name that port too, or a restart would see a disagreeing list.
            *url = format!("{base}:{}", peer_addr.port());
        }
    }
    let mut replica_config = ReplicaConfig::new(config.id, config.peers.clone(), config.data_dir.clone(), config.fault.clone());
    replica_config.dial = config.dial.clone();
    replica_config.clock = config.clock.clone();
    if let Some(t) = config.raft_timing {
        replica_config.heartbeat_interval = t.heartbeat_interval;
        replica_config.election_timeout_min = t.election_timeout_min;
        replica_config.election_timeout_max = t.election_timeout_max;
    }
    let auth = match &config.auth_file {
        Some(path) => Arc::new(auth::Authenticator::load(path).await.map_err(anyhow::Error::msg)?),
        None => Arc::new(auth::Authenticator::open()),
    };
    let replica = Replica::open(replica_config).await.context("opening the replica")?;
    let ctx = Arc::new(Context {
        auth: auth.clone(),
        health: health::reporter().await,
        config: config.clone(),
        replica,
        capacity: Mutex::new(Capacity::default()),
        metrics: Metrics::new(),
        schedule_now: Notify::new(),
        shares: Mutex::new(Vec::new()),
        started: Instant::now(),
        leader_channel: Mutex::new(None),
        membership_changes: tokio::sync::Mutex::new(()),
        logs: Arc::default(),
    });

    let mut shutdown = Vec::new();
    let mut tasks = Vec::new();

    for (port, router, incoming) in
        [("client", services::client_router(ctx.clone()), client_incoming), ("peer", services::peer_router(ctx.clone()), peer_incoming)]
    {
        let (tx, rx) = oneshot::channel();
        shutdown.push(tx);
        tasks.push(spawn_serving(port, router.serve_with_incoming_shutdown(incoming, stopped(rx))));
    }

    let mut probe_addr = None;
    if let Some(addr) = config.probe_listen {
        let (listener, local) = bind(addr, "--probe-listen").await?;
        probe_addr = Some(local);
        let (tx, rx) = oneshot::channel();
        shutdown.push(tx);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tasks.push(spawn_serving("probe", services::probe_router(ctx.clone()).serve_with_incoming_shutdown(incoming, stopped(rx))));
    }

    let mut http_addr = None;
    if let Some(addr) = config.http {
        let (listener, local) = bind(addr, "--http").await?;
        http_addr = Some(local);
        let (tx, rx) = oneshot::channel();
        shutdown.push(tx);
        tasks.push(tokio::spawn(web::serve(ctx.clone(), listen::incoming(listener, http_tls, "http"), rx)));
    }

    ctx.replica.bootstrap();
    tasks.push(tokio::spawn(leader::run(ctx.clone())));
    tasks.push(tokio::spawn(auth.keep_fresh()));
    tasks.push(tokio::spawn(health::follow_leader(ctx.clone())));
    tracing::info!(
        id = config.id,
        grpc = %local_addr,
        peer = %peer_addr,
        http = ?http_addr,
        probe = ?probe_addr,
        tls = config.tls.is_some(),
        peer_mtls = config.peer_tls.is_some(),
        "replica started"
    );
    Ok(ServerHandle { ctx, local_addr, peer_addr, http_addr, probe_addr, shutdown, tasks })
}

/// Runs one port's gRPC server; a server that stops with an error says which port.
fn spawn_serving(
    port: &'static str,
    serving: impl std::future::Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = serving.await {
            tracing::error!(port, error = %e, "gRPC server stopped");
        }
    })
}

/// Resolves when the shutdown signal `rx` fires (or its sender is dropped).
async fn stopped(rx: oneshot::Receiver<()>) {
    let _ = rx.await;
}

/// Runs a replica until SIGINT or SIGTERM.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let server = start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_could_re_lease_work_before_an_executor_stopped_it_are_refused() {
        let mut c = ServerConfig::single("127.0.0.1:0".parse().unwrap(), "/tmp/unused".into());
        assert_eq!(c.validate(), Ok(()), "the defaults: 10 s lease + 10 s grace + 3 s margin < 30 s");
        c.executor_lease = Some(Duration::from_secs(20));
        let e = c.validate().unwrap_err();
        assert!(e.contains("must be below cluster_lost_after") && e.contains("--executor-lease"), "{e}");
        c.executor_lease = None;
        c.lease_expiry_grace = Some(Duration::from_secs(18));
        assert!(c.validate().unwrap_err().contains("--lease-expiry-grace"));
        c.lease_expiry_grace = None;
        c.executor_lease = Some(Duration::from_millis(1500));
        assert!(c.validate().unwrap_err().contains("two sync intervals"));
    }

    #[test]
    fn tls_flags_come_together_and_the_error_names_the_missing_ones() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(tls_flags(None, None), Ok(None));
        assert!(tls_flags(p("c.pem"), p("k.pem")).unwrap().is_some());
        assert_eq!(tls_flags(p("c.pem"), None).unwrap_err(), "--tls-cert and --tls-key go together: --tls-key is missing");
        assert_eq!(tls_flags(None, p("k.pem")).unwrap_err(), "--tls-cert and --tls-key go together: --tls-cert is missing");
        assert_eq!(peer_tls_flags(None, None, None), Ok(None));
        let peer = peer_tls_flags(p("c.pem"), p("k.pem"), p("ca.pem")).unwrap().unwrap();
        assert_eq!((peer.cert.cert_flag.as_str(), peer.ca.flag.as_str()), ("--peer-tls-cert", "--peer-ca-cert"));
        assert_eq!(
            peer_tls_flags(p("c.pem"), None, None).unwrap_err(),
            "--peer-tls-cert, --peer-tls-key and --peer-ca-cert go together: --peer-tls-key and --peer-ca-cert missing"
        );
        assert!(peer_tls_flags(None, p("k.pem"), p("ca.pem")).unwrap_err().ends_with(": --peer-tls-cert missing"));
    }

    #[test]
    fn a_non_loopback_peer_port_without_mutual_tls_is_refused_unless_insecure() {
        let mut c = ServerConfig::single("127.0.0.1:0".parse().unwrap(), "/tmp/unused".into());
        c.peer_listen = "0.0.0.0:50052".parse().unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.contains("peer port 0.0.0.0:50052 without mutual TLS") && e.contains("--peer-ca-cert"), "{e}");
        c.insecure = true;
        assert_eq!(c.validate(), Ok(()));
        c.insecure = false;
        c.peer_tls = peer_tls_flags(Some("c".into()), Some("k".into()), Some("ca".into())).unwrap();
        c.peers.insert(1, "https://127.0.0.1:0".into());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn peer_urls_must_say_whether_the_peer_ports_speak_mutual_tls() {
        let mut c = ServerConfig::single("127.0.0.1:0".parse().unwrap(), "/tmp/unused".into());
        c.peers.insert(2, "https://127.0.0.1:7002".into());
        let e = c.validate().unwrap_err();
        assert!(e.contains("replica 2 is at https://127.0.0.1:7002") && e.contains("--peer-ca-cert"), "{e}");
        c.peer_tls = peer_tls_flags(Some("c".into()), Some("k".into()), Some("ca".into())).unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.contains("replica 1 is at http://127.0.0.1:0") && e.contains("use https://"), "{e}");
        c.peers.insert(1, "https://127.0.0.1:0".into());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn peers_parse_and_bad_entries_name_the_problem() {
        let p = parse_peers("1=http://127.0.0.1:7001, 2=http://127.0.0.1:7002").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[&2], "http://127.0.0.1:7002");
        assert!(parse_peers("1=127.0.0.1:7001").unwrap_err().contains("must start with http://"));
        assert!(parse_peers("x=http://a").unwrap_err().contains("not a replica id"));
        assert!(parse_peers("1=http://a,1=http://b").unwrap_err().contains("listed twice"));
        assert!(parse_peers("").unwrap_err().contains("at least one"));
    }
}
