//! The `flotilla` binary: scheduler replica, executor, dev mode and the CLI.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 bad input or usage. A reader of the
//! output that goes away (`flotilla get | head`) ends the command quietly with 0.

/// `println!` that ends the process quietly when standard output is a closed pipe (see
/// `output::emit`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::emit(&format!("{}\n", format_args!($($arg)*)))
    };
}

mod client;
mod cluster;
mod commands;
mod dev;
mod output;
mod priority_classes;
mod progress;
mod replicas;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "flotilla", version, about = "A replicated, multi-cluster scheduler for AI-agent fleets and GPU jobs on Kubernetes")]
pub struct Cli {
    /// Scheduler replicas to talk to; the next one is tried when one does not answer.
    #[arg(long, global = true, env = "FLOTILLA_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// A PEM file of the CA that signed the servers' certificates, for https:// servers
    /// (default: the system's root certificates).
    #[arg(long, global = true, env = "FLOTILLA_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// The caller's token, for servers with authentication on (an API token or an OIDC ID token).
    #[arg(long, global = true, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token (its first line), e.g. a mounted Kubernetes Secret.
    #[arg(long, global = true, env = "FLOTILLA_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Log format of server, executor and dev.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a scheduler replica.
    Server(ServerArgs),
    /// Run the executor of one cluster.
    Executor(ExecutorArgs),
    /// One replica and simulated clusters on this machine, for trying Flotilla out.
    Dev(DevArgs),
    /// Create, update, delete and list queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Submit the tasks of a task file.
    Submit(SubmitArgs),
    /// Show tasks.
    Get(GetArgs),
    /// Stream a task set's events.
    Watch(WatchArgs),
    /// Show the output of a task's attempt, read from its cluster through its executor.
    Logs(LogsArgs),
    /// Cancel tasks, or every task of a task set.
    Cancel(CancelArgs),
    /// Resume a task set paused by the retry circuit breaker.
    Resume(ResumeArgs),
    /// Show the clusters, their capacity and health.
    Clusters,
    /// List, add and remove scheduler replicas (Raft membership).
    #[command(subcommand)]
    Replica(ReplicaCommand),
    /// Helpers for the auth file.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Create, update, delete and list priority classes (creating, updating and deleting
    /// need the cluster admin role).
    #[command(subcommand)]
    PriorityClass(PriorityClassCommand),
    /// Cordon, uncordon or drain one cluster (cluster admins).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Stop new leases on the cluster; running tasks stay.
    Cordon { name: String },
    /// Let the cluster take new leases again (ends a drain).
    Uncordon { name: String },
    /// Cordon the cluster and move its preemptible tasks elsewhere, each stopped with its own
    /// termination grace and requeued as a new attempt (not a failure), within the queues'
    /// disruption budgets. Non-preemptible tasks are not stopped: they are listed and waited for.
    Drain {
        name: String,
        /// Wait up to this long (e.g. 10m) for the cluster to be drained, showing what is left;
        /// exit 1 if it is not drained by then. It never shortens a task's own grace.
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<Duration>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Print the `token_hash` the auth file stores for a token (read from stdin when not
    /// given, so that it stays out of the shell history).
    HashToken {
        token: Option<String>,
        /// Make a new random token (printed first) and hash it.
        #[arg(long)]
        generate: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReplicaCommand {
    /// Show the members as the answering replica sees them.
    List,
    /// Add a running replica (empty data directory) as a learner, then make it a voter.
    Add {
        #[arg(long)]
        id: u64,
        /// Its peer port's URL, e.g. http://host:50052 (https:// with --peer-tls-cert).
        #[arg(long)]
        url: String,
    },
    /// Remove a replica from the group.
    Remove {
        #[arg(long)]
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum PriorityClassCommand {
    Create(PriorityClassArgs),
    /// Replace a class; its queued and running tasks take the new values from the next cycle.
    Update(PriorityClassArgs),
    /// Refused while an unfinished task uses the class.
    Delete {
        name: String,
    },
    List,
}

#[derive(Args, Debug)]
pub struct PriorityClassArgs {
    pub name: String,
    /// Higher goes first and may preempt lower preemptible tasks.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: i32,
    /// Tasks of this class may be evicted (by higher classes or by fair-share reclaim).
    #[arg(long)]
    pub preemptible: bool,
    #[arg(long, default_value = "")]
    pub description: String,
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// This replica's id (a key of --peers).
    #[arg(long, default_value_t = 1)]
    pub id: u64,
    /// gRPC client port: public API and executor protocol.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// gRPC peer port: Raft traffic and calls followers forward to the leader. For replicas
    /// only: --peers names these ports.
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub peer_listen: SocketAddr,
    /// PEM certificate chain: serve TLS on the client gRPC port and the HTTP port (with
    /// --tls-key). Re-read when the file changes.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate of this replica for the peer port's mutual TLS, presented as server
    /// and as client (with --peer-tls-key and --peer-ca-cert; --peers then names https://
    /// URLs). Without the three, the peer port is plaintext.
    #[arg(long, value_name = "FILE")]
    pub peer_tls_cert: Option<PathBuf>,
    /// PEM private key of --peer-tls-cert.
    #[arg(long, value_name = "FILE")]
    pub peer_tls_key: Option<PathBuf>,
    /// PEM CA certificate every replica's peer certificate must be signed by.
    #[arg(long, value_name = "FILE")]
    pub peer_ca_cert: Option<PathBuf>,
    /// HTTP address: /metrics, /healthz, /readyz and the web view.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Plaintext gRPC without credentials, read-only: gRPC health (for Kubernetes' gRPC
    /// probes) and KEDA's external scaler (queue depths). Off unless given.
    #[arg(long)]
    pub probe_listen: Option<SocketAddr>,
    #[arg(long, default_value = "flotilla-data")]
    pub data_dir: PathBuf,
    /// Every replica as ID=URL of its peer port, the same list on each (default: a
    /// one-replica group at --peer-listen).
    #[arg(long)]
    pub peers: Option<String>,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub schedule_interval: Duration,
    /// A cluster whose executor has not synced for this long has its tasks requeued elsewhere.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub cluster_lost_after: Duration,
    /// The lease each Sync grants an executor (default: a third of --cluster-lost-after).
    /// An executor whose lease expires stops its attempts.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub executor_lease: Option<Duration>,
    /// The most an executor whose lease expired gives each attempt to stop (default: a third
    /// of --cluster-lost-after). Lease + grace + a tenth of --cluster-lost-after must stay
    /// below --cluster-lost-after; the server refuses to start otherwise.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lease_expiry_grace: Option<Duration>,
    /// Users, executor credentials, roles and the OIDC provider (docs/auth.md). Without it
    /// every caller may do anything, and only loopback addresses are served.
    #[arg(long, env = "FLOTILLA_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Serve without --auth-file on addresses other hosts can reach.
    #[arg(long)]
    pub insecure: bool,
    /// Require a token for /metrics too (health probes stay open).
    #[arg(long)]
    pub protect_metrics: bool,
    /// The fraction (0..=1) of its fair share below which fair-share preemption never takes
    /// from a queue, for queues that set none (`flotilla queue create --protected-fraction`).
    #[arg(long, default_value_t = flotilla_model::DEFAULT_PROTECTED_FRACTION, value_parser = parse_protected_fraction)]
    pub protected_fraction: f64,
}

#[derive(Args, Debug)]
pub struct ExecutorArgs {
    /// The cluster this executor runs (with --sim: its name in the file).
    #[arg(long)]
    pub cluster: String,
    #[arg(long, group = "backend")]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long, group = "backend")]
    pub in_cluster: bool,
    /// A clusters TOML file: simulate the named cluster.
    #[arg(long, group = "backend")]
    pub sim: Option<PathBuf>,
    /// Simulated time runs this many times faster (--sim only).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Keep the simulated cluster's run history (task, attempt, node, from, until) in FILE as
    /// JSON lines, rewritten every 200 ms through FILE.tmp and a rename (--sim only).
    #[arg(long, value_name = "FILE", requires = "sim")]
    pub sim_history: Option<PathBuf>,
    /// Namespace prefix for Jobs (kube only): tasks of queue Q run in PREFIX + Q.
    #[arg(long)]
    pub namespace_prefix: Option<String>,
    /// Node label holding the rack or block (kube only).
    #[arg(long)]
    pub rack_label: Option<String>,
    /// Kubernetes backend settings (prices per instance type, checkpoint volume...), TOML.
    #[arg(long)]
    pub kube_config: Option<PathBuf>,
    /// Pod Security level enforced in the queue namespaces this executor creates (kube only):
    /// restricted, baseline or privileged [default: baseline, or the settings file's
    /// `namespace_pod_security`]. Tasks asking for more than it fail to start.
    #[arg(long, value_parser = parse_pod_security)]
    pub namespace_pod_security: Option<flotilla_model::PodSecurity>,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub sync_interval: Duration,
    /// Serve `/healthz` and `/metrics` here (e.g. 0.0.0.0:8080); off when not given.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// `/healthz` fails once no Sync has succeeded for this long (a liveness probe restarts a
    /// stuck executor). Keep it well above a scheduler leader election.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    pub unhealthy_after: Duration,
    /// The URL tasks reach this executor's `--http` port at (e.g. http://flotilla-executor.flotilla:8080/progress):
    /// tasks with `progressDeadline` get it and a per-attempt token to signal progress. Without
    /// it a Kubernetes executor does not enforce progress deadlines (a warning says so).
    #[arg(long, requires = "http")]
    pub progress_url: Option<String>,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// The federation to simulate (default: the built-in copy of clusters.example.toml).
    #[arg(long)]
    pub clusters: Option<PathBuf>,
    /// Where the log goes (default: flotilla-dev-PID.log in the temporary directory); its
    /// path is printed once, so the terminal shows only the demo's progress.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Keep state here (default: a temporary directory removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Simulated time runs this many times faster.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Create two queues, submit the examples and show progress until they finish.
    #[arg(long)]
    pub demo: bool,
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// The replica's peer port (fixed, so that a kept --data-dir names the same member).
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub peer_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub cluster_lost_after: Duration,
    /// With --demo: exit once the demo's tasks are finished (0 if all succeeded).
    #[arg(long, requires = "demo")]
    pub exit_after_demo: bool,
}

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    Create(QueueArgs),
    Update(QueueArgs),
    Delete { name: String },
    Get { name: String },
    List,
}

#[derive(Args, Debug)]
pub struct QueueArgs {
    pub name: String,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub weight: f64,
    /// Never preempted below this, e.g. `nvidia.com/gpu=8,cpu=64`.
    #[arg(long, default_value = "")]
    pub guarantee: String,
    /// Never scheduled above this, e.g. `nvidia.com/gpu=16`.
    #[arg(long, default_value = "")]
    pub limit: String,
    #[arg(long, default_value = "")]
    pub owner: String,
    /// Most tasks preempted per scheduling cycle (0: the default).
    #[arg(long, default_value_t = 0)]
    pub disruption_budget: u32,
    /// Grants verbs on the queue, e.g. `group:research=submit,cancel,watch` or
    /// `user:alice=admin`; repeat for more subjects. Update replaces the whole list.
    #[arg(long = "permit", value_name = "SUBJECT=VERBS")]
    pub permits: Vec<String>,
    /// Most dollars the queue may spend per UTC day (0: no budget); once spent, its tasks get
    /// no new leases until 00:00 UTC.
    #[arg(long, default_value_t = 0.0)]
    pub budget_usd_per_day: f64,
    /// The fraction (0..=1) of its fair share below which fair-share preemption never takes
    /// from this queue (default: the server's `--protected-fraction`, 1.0 unless set).
    #[arg(long, value_parser = parse_protected_fraction)]
    pub protected_fraction: Option<f64>,
    /// Caps what the queue's tasks of one priority class hold at once, as an amount or a
    /// percentage of the pool, e.g. `urgent:gpu=10%`, `batch:cpu=64`, `batch:memory=256Gi`;
    /// repeat for more (one per class and resource). Update replaces the whole list.
    #[arg(long = "class-limit", value_name = "CLASS:RESOURCE=VALUE", value_parser = parse_class_limit)]
    pub class_limits: Vec<flotilla_model::ClassLimit>,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    pub file: PathBuf,
    /// Overrides the file's queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Overrides the file's task set.
    #[arg(long)]
    pub task_set: Option<String>,
    /// Makes retries safe: the same id returns the same tasks (default: a fresh id).
    #[arg(long)]
    pub request_id: Option<String>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    pub ids: Vec<u64>,
    #[arg(long)]
    pub queue: Option<String>,
    #[arg(long)]
    pub task_set: Option<String>,
    #[arg(long)]
    pub state: Option<String>,
    /// Read through the leader with a majority check (linearizable).
    #[arg(long)]
    pub linearizable: bool,
    /// Tasks per page (at most 10000); without `--all` only the first page is shown.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// List every matching task, page by page as the pages arrive.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[arg(long)]
    pub queue: String,
    #[arg(long)]
    pub task_set: String,
    /// Exit when every task is finished: 0 if all succeeded, 1 otherwise.
    #[arg(long)]
    pub until_done: bool,
    #[arg(long, default_value_t = 1)]
    pub from_seq: u64,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The task's id.
    pub task: u64,
    /// Which attempt (default: the latest).
    #[arg(long)]
    pub attempt: Option<u32>,
    /// Keep printing new output until the attempt ends.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<u32>,
    /// At most this many bytes (the server's limit is 4 MiB).
    #[arg(long)]
    pub limit_bytes: Option<u64>,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    pub ids: Vec<u64>,
    #[arg(long)]
    pub queue: Option<String>,
    #[arg(long)]
    pub task_set: Option<String>,
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Args, Debug)]
pub struct ResumeArgs {
    #[arg(long)]
    pub queue: String,
    #[arg(long)]
    pub task_set: String,
}

/// What went wrong, and so which exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad input or usage: exit 2.
    Input(String),
    /// The operation failed: exit 1.
    Op(String),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::InvalidArgument | tonic::Code::NotFound | tonic::Code::AlreadyExists => Failure::Input(s.message().to_string()),
            tonic::Code::Unavailable => Failure::Op(format!("no scheduler replica answered: {}", s.message())),
            tonic::Code::Unauthenticated => Failure::Op(format!("not authenticated: {}", s.message())),
            tonic::Code::PermissionDenied => Failure::Op(format!("permission denied: {}", s.message())),
            _ => Failure::Op(s.message().to_string()),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Op(format!("{e:#}"))
    }
}

fn parse_class_limit(s: &str) -> Result<flotilla_model::ClassLimit, String> {
    flotilla_model::ClassLimit::parse(s)
}

fn parse_protected_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if flotilla_model::is_protected_fraction(f) => Ok(f),
        _ => Err(format!("{} is not a fraction between 0 and 1", flotilla_model::quote(s))),
    }
}

fn parse_pod_security(s: &str) -> Result<flotilla_model::PodSecurity, String> {
    flotilla_model::PodSecurity::parse(s)
        .ok_or_else(|| format!("{} is not one of restricted, baseline, privileged", flotilla_model::quote(s)))
}

/// Logs to stderr, or to `file` (plain text, no colours) when given.
fn init_tracing(format: LogFormat, file: Option<std::fs::File>) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,h2=warn,tower=warn,hyper=warn"));
    let to_file = file.is_some();
    let writer = match file {
        Some(f) => BoxMakeWriter::new(std::sync::Arc::new(f)),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(!to_file);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}

/// `flotilla dev` logs to a file, so that its own lines and the demo's progress are not
/// interleaved with log lines; the file's path is printed once.
fn dev_log_file(a: &DevArgs) -> Option<std::fs::File> {
    let path = dev::dev_log_path(a);
    match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        Ok(f) => {
            eprintln!("flotilla dev: logging to {}", path.display());
            Some(f)
        }
        Err(e) => {
            eprintln!("flotilla dev: cannot write the log to {} ({e}); logging to stderr", path.display());
            None
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match &cli.command {
        Command::Dev(a) => init_tracing(cli.log_format, dev_log_file(a)),
        Command::Server(_) | Command::Executor(_) => init_tracing(cli.log_format, None),
        _ => {}
    }
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(Failure::Input(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Op(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
    }
}
