//! Flotilla's per-cluster executor: it reports a cluster's capacity to the scheduler, runs
//! the attempts the scheduler leases to it, and reports how they go.
//!
//! - [`ClusterBackend`] is what an executor needs from a cluster: nodes, attempts, start,
//!   stop, events. It is level-triggered and idempotent, so restarting is always safe.
//! - [`kube::KubeBackend`] runs each attempt as a `batch/v1` Job pinned to its node and
//!   watches Nodes, Jobs and pods with `kube::runtime` reflectors.
//! - [`sim::SimCluster`] simulates a cluster from a clusters file
//!   (`clusters.example.toml`): pods with a duration, injected faults, a fast clock. It
//!   drives `flotilla dev`, the end-to-end tests and the benchmarks.
//! - [`agent::run`] is the loop that talks to the scheduler (`Sync`, `ReportEvents`).
//!
//! This crate is not for scheduling (`flotilla-sched`) or for serving the executor protocol
//! (`flotilla-server`); it is the client side of `proto/flotilla/v1/executor.proto`.
//!
//! ```
//! use flotilla_executor::{parse_clusters, sim::{SimCluster, SimOptions}};
//! use flotilla_api::v1::LeasedTask;
//! use std::time::Duration;
//!
//! let file = parse_clusters(r#"
//!     [[cluster]]
//!     name = "lab"
//!     [[cluster.pool]]
//!     name = "cpu"
//!     count = 2
//!     cpu = "16"
//!     memory = "64Gi"
//! "#, "inline.toml").unwrap();
//! let sim = SimCluster::from_file(&file, "lab", SimOptions { manual_clock: true, ..Default::default() }).unwrap();
//! sim.start_attempt(&LeasedTask { task_id: 1, attempt: 1, node: "lab-cpu-01".into(), sim_duration_ms: 5_000, ..Default::default() });
//! sim.advance(Duration::from_secs(10));
//! let statuses: Vec<_> = sim.take_events(10).into_iter().map(|e| e.status).collect();
//! assert_eq!(statuses.len(), 3); // pending, running, succeeded
//!
//! // In a Tokio runtime, an executor loop for the cluster:
//! // let handle = flotilla_executor::spawn(ExecutorConfig::new(vec!["http://127.0.0.1:50051".into()], "lab"), Arc::new(sim));
//! // ... handle.stop().await?;
//! ```

pub mod agent;
pub mod backend;
pub mod config;
pub mod gang;
pub mod kube;
pub mod planted;
pub mod progress;
pub mod sim;
pub mod status;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use agent::{event_to_proto, run, spawn, ExecutorConfig, ExecutorHandle};
pub use backend::{Attempt, AttemptEvent, AttemptPhase, BackendError, ClusterBackend, LogOptions, LogStream};
pub use config::ConfigError;
pub use kube::{KubeBackend, KubeBackendConfig, KubeSource};
pub use progress::ProgressTracker;
pub use sim::config::{cluster_names, load_clusters, parse_clusters, ClusterConfig, ClustersFile, Faults, PoolConfig, DEFAULT_MAX_PODS};
pub use sim::{SimCluster, SimOptions};
pub use status::ExecutorStatus;

/// Where `flotilla executor` gets its cluster from.
#[derive(Clone, Debug)]
pub enum BackendSource {
    /// `--kubeconfig PATH [--context NAME]`
    Kubeconfig { path: PathBuf, context: Option<String> },
    /// `--in-cluster`
    InCluster,
    /// `--sim FILE`: cluster NAME of a clusters file.
    Sim { file: PathBuf },
}

/// How long [`build_backend`] waits for the Kubernetes watches to list before it returns
/// anyway (the loop then skips syncs until they have).
const KUBE_READY_WAIT: Duration = Duration::from_secs(30);

/// Builds the backend of cluster `cluster` for `installation`'s objects. `kube` is used by
/// the Kubernetes sources, `sim` by the simulated one.
pub async fn build_backend(
    source: &BackendSource,
    cluster: &str,
    installation: &str,
    kube: KubeBackendConfig,
    sim: SimOptions,
) -> anyhow::Result<Arc<dyn ClusterBackend>> {
    let kube_source = match source {
        BackendSource::Sim { file } => {
            let clusters = load_clusters(file)?;
            return Ok(Arc::new(SimCluster::from_file(&clusters, cluster, sim)?));
        }
        BackendSource::Kubeconfig { path, context } => KubeSource::Kubeconfig { path: path.clone(), context: context.clone() },
        BackendSource::InCluster => KubeSource::InCluster,
    };
    let backend = KubeBackend::connect(&kube_source, cluster, installation, kube).await?;
    if let Err(e) = backend.wait_ready(KUBE_READY_WAIT).await {
        tracing::warn!(cluster, error = %e, "starting before the watches have listed (check RBAC and connectivity)");
    }
    Ok(Arc::new(backend))
}

/// `flotilla executor`: learns the installation from the scheduler, builds the backend for
/// its objects and runs the loop until `shutdown`.
pub async fn run_executor(
    config: ExecutorConfig,
    source: &BackendSource,
    kube: KubeBackendConfig,
    sim: SimOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let installation = tokio::select! {
        id = agent::register(&config) => id?,
        _ = &mut shutdown => return Ok(()),
    };
    let backend = build_backend(source, &config.cluster, &installation, kube, sim).await?;
    run(config, backend, shutdown).await
}
