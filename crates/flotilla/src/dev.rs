//! `flotilla server`, `flotilla executor` and `flotilla dev`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::dial::Dial;
use flotilla_api::tls::{CaFile, ClientTls};
use flotilla_api::v1::{self, clusters_client::ClustersClient, queues_client::QueuesClient, tasks_client::TasksClient};
use flotilla_executor::{BackendSource, ExecutorConfig, ExecutorStatus, KubeBackendConfig, SimCluster, SimOptions};
use flotilla_model::TaskFile;
use flotilla_server::{parse_peers, ServerConfig};
use tonic::transport::Channel;

use crate::{DevArgs, ExecutorArgs, Failure, Format, ServerArgs};

pub async fn server(a: ServerArgs) -> Result<ExitCode, Failure> {
    let tls = flotilla_server::tls_flags(a.tls_cert, a.tls_key).map_err(Failure::Input)?;
    let peer_tls = flotilla_server::peer_tls_flags(a.peer_tls_cert, a.peer_tls_key, a.peer_ca_cert).map_err(Failure::Input)?;
    let peers = match &a.peers {
        Some(p) => parse_peers(p).map_err(Failure::Input)?,
        None => BTreeMap::from([(a.id, format!("{}://{}", if peer_tls.is_some() { "https" } else { "http" }, a.peer_listen))]),
    };
    let mut config = ServerConfig::single(a.listen, a.data_dir);
    config.id = a.id;
    config.peer_listen = a.peer_listen;
    config.tls = tls;
    config.peer_tls = peer_tls;
    config.peers = peers;
    config.http = Some(a.http);
    config.probe_listen = a.probe_listen;
    config.schedule_interval = a.schedule_interval;
    config.cluster_lost_after = a.cluster_lost_after;
    config.executor_lease = a.executor_lease;
    config.lease_expiry_grace = a.lease_expiry_grace;
    config.auth_file = a.auth_file;
    config.insecure = a.insecure;
    config.protect_metrics = a.protect_metrics;
    config.sched.protected_fraction = a.protected_fraction;
    config.validate().map_err(Failure::Input)?;
    flotilla_server::run(config).await?;
    Ok(ExitCode::SUCCESS)
}

/// How the CLI and executors dial servers: https:// URLs trust `--ca-cert`, or the system's
/// root certificates without it.
pub fn dial(ca_cert: Option<&Path>) -> Result<Dial, Failure> {
    let Some(path) = ca_cert else { return Ok(Dial::tcp()) };
    let tls = ClientTls::new(Some(&CaFile::new("--ca-cert", path)), None).map_err(|e| Failure::Input(e.to_string()))?;
    Ok(Dial::tcp().with_tls(tls))
}

/// `flotilla auth hash-token`: prints the digest the auth file stores for a token.
pub fn auth(a: crate::AuthCommand) -> Result<ExitCode, Failure> {
    match a {
        crate::AuthCommand::HashToken { token, generate } => {
            let token = match (token, generate) {
                (Some(_), true) => return Err(Failure::Input("give a TOKEN or --generate, not both".into())),
                (Some(t), false) => t,
                (None, true) => {
                    let t = flotilla_server::auth::generate_token().map_err(Failure::Op)?;
                    outln!("token: {t}");
                    t
                }
                (None, false) => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).map_err(|e| Failure::Input(format!("reading the token from stdin: {e}")))?;
                    line
                }
            };
            let token = token.trim();
            if token.is_empty() {
                return Err(Failure::Input("the token is empty".into()));
            }
            outln!("{}", flotilla_server::auth::hash_token(token));
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn executor(
    servers: &str,
    ca_cert: Option<&Path>,
    token: flotilla_api::auth::BearerToken,
    a: ExecutorArgs,
) -> Result<ExitCode, Failure> {
    let servers: Vec<String> = servers.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if servers.is_empty() {
        return Err(Failure::Input("--server: at least one URL is required".into()));
    }
    let source = match (&a.kubeconfig, a.in_cluster, &a.sim) {
        (Some(path), false, None) => BackendSource::Kubeconfig { path: path.clone(), context: None },
        (None, true, None) => BackendSource::InCluster,
        (None, false, Some(file)) => BackendSource::Sim { file: file.clone() },
        _ => return Err(Failure::Input("give exactly one of --kubeconfig PATH, --in-cluster, --sim FILE".into())),
    };
    let mut kube = match &a.kube_config {
        Some(path) => KubeBackendConfig::load(path).map_err(|e| Failure::Input(e.to_string()))?,
        None => KubeBackendConfig::default(),
    };
    if let Some(p) = &a.namespace_prefix {
        kube.namespace_prefix = p.clone();
    }
    if let Some(l) = &a.rack_label {
        kube.rack_label = l.clone();
    }
    if let Some(level) = a.namespace_pod_security {
        kube.namespace_pod_security = level;
    }
    kube.validate().map_err(Failure::Input)?;
    if !(a.speed.is_finite() && a.speed > 0.0) {
        return Err(Failure::Input(format!("--speed: {} must be a number above 0", a.speed)));
    }
    let mut config = ExecutorConfig::new(servers, a.cluster.clone());
    config.sync_interval = a.sync_interval;
    config.dial = dial(ca_cert)?;
    config.token = token;
    if let Some(url) = &a.progress_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
            return Err(Failure::Input("--progress-url: an http:// or https:// URL of at most 2,048 bytes".into()));
        }
        config.progress = Arc::new(flotilla_executor::ProgressTracker::new(Some(url.clone())));
    }
    if let Some(addr) = a.http {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| Failure::Op(format!("--http {addr}: {e}")))?;
        let http = executor_http(listener, config.status.clone(), config.progress.clone(), a.cluster.clone(), a.unhealthy_after);
        tokio::spawn(http);
    }
    let sim = SimOptions { speed: Some(a.speed), ..SimOptions::default() };
    if let (Some(history), BackendSource::Sim { file }) = (&a.sim_history, &source) {
        let clusters = flotilla_executor::load_clusters(file).map_err(|e| Failure::Input(e.to_string()))?;
        let cluster = SimCluster::from_file(&clusters, &a.cluster, sim).map_err(|e| Failure::Input(e.to_string()))?;
        let writer = cluster.spawn_history_writer(history.clone(), Duration::from_millis(200));
        let result = flotilla_executor::run(config, Arc::new(cluster.clone()), flotilla_server::shutdown_signal()).await;
        writer.abort();
        if let Err(e) = cluster.write_run_history(history) {
            tracing::warn!(path = %history.display(), error = %e, "cannot write the run history");
        }
        result?;
        return Ok(ExitCode::SUCCESS);
    }
    flotilla_executor::run_executor(config, &source, kube, sim, flotilla_server::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// The executor's `/healthz` (503 once syncs stop succeeding), `/metrics` and `POST /progress`
/// (a task's progress signal, see `flotilla_executor::progress`).
async fn executor_http(
    listener: tokio::net::TcpListener,
    status: Arc<ExecutorStatus>,
    progress: Arc<flotilla_executor::ProgressTracker>,
    cluster: String,
    unhealthy_after: Duration,
) {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let health = {
        let status = status.clone();
        move || async move {
            match status.health(unhealthy_after) {
                Ok(line) => (StatusCode::OK, format!("ok: {line}\n")),
                Err(line) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {line}\n")),
            }
        }
    };
    let metrics =
        move || async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], status.render_metrics(&cluster)).into_response() };
    let signal = move |headers: axum::http::HeaderMap, _body: axum::body::Bytes| async move {
        use flotilla_executor::progress::SignalError;
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 128);
        let Some(token) = token else { return (StatusCode::UNAUTHORIZED, "send Authorization: Bearer $FLOTILLA_PROGRESS_TOKEN\n") };
        match progress.signal(token, tokio::time::Instant::now()) {
            Ok(()) => (StatusCode::OK, "ok\n"),
            Err(SignalError::Unknown) => (StatusCode::UNAUTHORIZED, "unknown or expired token\n"),
            Err(SignalError::TooSoon) => (StatusCode::TOO_MANY_REQUESTS, "at most one signal per second\n"),
        }
    };
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(health))
        .route("/metrics", axum::routing::get(metrics))
        .route("/progress", axum::routing::post(signal))
        .layer(axum::extract::DefaultBodyLimit::max(flotilla_executor::progress::MAX_SIGNAL_BODY_BYTES));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "executor HTTP server stopped");
    }
}

/// Queues and files of the demo: (queue, weight, file name, its text). The files are
/// embedded, so `flotilla dev --demo` works from any directory.
const DEMO: [(&str, f64, &str, &str); 2] = [
    ("agents", 1.0, "examples/agents.yaml", include_str!("../../../examples/agents.yaml")),
    ("research", 3.0, "examples/train-gang.yaml", include_str!("../../../examples/train-gang.yaml")),
];

/// The federation `flotilla dev` simulates without `--clusters`.
const EXAMPLE_CLUSTERS: &str = include_str!("../../../clusters.example.toml");

/// Where `flotilla dev` writes its log: `--log-file`, or a new file in the temporary directory.
pub fn dev_log_path(a: &DevArgs) -> std::path::PathBuf {
    a.log_file.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("flotilla-dev-{}.log", std::process::id())))
}

pub async fn dev(a: DevArgs, format: Format) -> Result<ExitCode, Failure> {
    if !(a.speed.is_finite() && a.speed > 0.0) {
        return Err(Failure::Input(format!("--speed: {} must be a number above 0", a.speed)));
    }
    let clusters = match &a.clusters {
        Some(path) => flotilla_executor::load_clusters(path).map_err(|e| Failure::Input(e.to_string()))?,
        None => flotilla_executor::parse_clusters(EXAMPLE_CLUSTERS, "clusters.example.toml (built in)")
            .map_err(|e| Failure::Op(e.to_string()))?,
    };
    let (_tmp, data_dir) = match &a.data_dir {
        Some(d) => (None, d.clone()),
        None => {
            let t =
                tempfile::Builder::new().prefix("flotilla-dev-").tempdir().map_err(|e| Failure::Op(format!("temporary directory: {e}")))?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let mut config = ServerConfig::single(a.listen, data_dir.clone());
    config.peer_listen = a.peer_listen;
    config.peers = BTreeMap::from([(1, format!("http://{}", a.peer_listen))]);
    config.http = Some(a.http);
    config.cluster_lost_after = a.cluster_lost_after;
    let server = flotilla_server::start(config).await?;
    server.wait_for_leader(Duration::from_secs(30)).await?;
    let url = format!("http://{}", server.local_addr);

    let mut executors = Vec::new();
    for name in clusters.cluster_names() {
        let sim = SimCluster::from_file(&clusters, &name, SimOptions { speed: Some(a.speed), ..SimOptions::default() })
            .map_err(|e| Failure::Input(e.to_string()))?;
        executors.push(flotilla_executor::spawn(ExecutorConfig::new(vec![url.clone()], name), Arc::new(sim)));
    }
    eprintln!(
        "flotilla dev: gRPC on {url}, web view and metrics on http://{}, {} simulated clusters, state in {}",
        server.http_addr.map_or("-".to_string(), |h| h.to_string()),
        executors.len(),
        data_dir.display()
    );

    let mut code = ExitCode::SUCCESS;
    if a.demo {
        let channel = Channel::from_shared(url.clone())
            .map_err(|e| Failure::Op(e.to_string()))?
            .connect()
            .await
            .map_err(|e| Failure::Op(e.to_string()))?;
        let sets = start_demo(&channel).await?;
        let ok = demo_progress(&channel, &sets, format).await?;
        if a.exit_after_demo {
            code = if ok { ExitCode::SUCCESS } else { ExitCode::from(1) };
        } else {
            eprintln!("demo finished; Flotilla keeps running (Ctrl-C to stop). Try: flotilla get --queue agents, flotilla clusters");
            flotilla_server::shutdown_signal().await;
        }
    } else {
        flotilla_server::shutdown_signal().await;
    }
    for e in executors {
        e.abort();
    }
    server.shutdown().await;
    Ok(code)
}

/// Creates the demo queues and submits the example files. Returns (queue, task set) pairs.
async fn start_demo(channel: &Channel) -> Result<Vec<(String, String)>, Failure> {
    let mut sets = Vec::new();
    for (queue, weight, file, text) in DEMO {
        let spec = v1::QueueSpec { name: queue.into(), weight, ..Default::default() };
        match QueuesClient::new(channel.clone()).create_queue(v1::CreateQueueRequest { queue: Some(spec) }).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => return Err(s.into()),
        }
        let tf = TaskFile::from_yaml(text).map_err(|e| Failure::Op(format!("{file} (built in): {}", e.message)))?;
        let task_set = tf.task_set.clone().unwrap_or_else(|| "demo".into());
        let req = v1::SubmitTasksRequest {
            queue: tf.queue.clone().unwrap_or_else(|| queue.into()),
            task_set: task_set.clone(),
            tasks: tf.tasks.iter().map(flotilla_api::template_to_proto).collect(),
            client_request_id: format!("demo-{queue}-{task_set}"),
        };
        let resp = TasksClient::new(channel.clone()).submit_tasks(req.clone()).await?.into_inner();
        eprintln!("submitted {} tasks from {file} to {}/{}", resp.task_ids.len(), req.queue, task_set);
        sets.push((req.queue, task_set));
    }
    Ok(sets)
}

/// One demo task set's tasks by state, and what they cost.
#[derive(Default)]
struct SetProgress {
    total: u64,
    finished: u64,
    failed: u64,
    running: u64,
    queued: u64,
    cost_usd: f64,
}

/// Reads every task of the demo's task sets: (per set, by state, active by cluster).
async fn demo_state(
    channel: &Channel,
    sets: &[(String, String)],
) -> Result<(Vec<SetProgress>, BTreeMap<String, u64>, BTreeMap<String, u64>), Failure> {
    let mut per_set = Vec::new();
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_cluster: BTreeMap<String, u64> = BTreeMap::new();
    for (queue, task_set) in sets {
        let mut p = SetProgress::default();
        let mut after_id = 0;
        loop {
            let req =
                v1::ListTasksRequest { queue: queue.clone(), task_set: task_set.clone(), limit: 10_000, after_id, ..Default::default() };
            let page = TasksClient::new(channel.clone()).list_tasks(req).await?.into_inner();
            p.cost_usd = page.task_set_cost_usd;
            for t in &page.tasks {
                p.total += 1;
                *by_state.entry(t.state.clone()).or_default() += 1;
                if !t.cluster.is_empty() {
                    *by_cluster.entry(t.cluster.clone()).or_default() += 1;
                }
                match t.state.as_str() {
                    "succeeded" => p.finished += 1,
                    "failed" | "cancelled" => {
                        p.finished += 1;
                        p.failed += 1;
                    }
                    "running" => p.running += 1,
                    "queued" => p.queued += 1,
                    _ => {}
                }
            }
            if page.next_after_id == 0 {
                break;
            }
            after_id = page.next_after_id;
        }
        per_set.push(p);
    }
    Ok((per_set, by_state, by_cluster))
}

/// Shows progress until every demo task is finished: bars redrawn in place on a terminal,
/// plain lines every two seconds otherwise.
async fn demo_progress(channel: &Channel, sets: &[(String, String)], format: Format) -> Result<bool, Failure> {
    let started = Instant::now();
    let bars = crate::progress::live(format).then(|| {
        let items: Vec<(String, u64)> = sets.iter().map(|(q, s)| (format!("{q}/{s}"), 1)).collect();
        crate::progress::Bars::new(&items, &["clusters", "shares"])
    });
    loop {
        tokio::time::sleep(if bars.is_some() { Duration::from_millis(500) } else { Duration::from_secs(2) }).await;
        let (per_set, by_state, by_cluster) = demo_state(channel, sets).await?;
        let total: u64 = per_set.iter().map(|p| p.total).sum();
        let finished: u64 = per_set.iter().map(|p| p.finished).sum();
        let failed: u64 = per_set.iter().map(|p| p.failed).sum();
        let queues = QueuesClient::new(channel.clone()).list_queues(v1::ListQueuesRequest {}).await?.into_inner().queues;
        let clusters = ClustersClient::new(channel.clone()).list_clusters(v1::ListClustersRequest {}).await?.into_inner().clusters;
        let shares: Vec<String> = queues
            .iter()
            .map(|q| {
                let s = q.status.clone().unwrap_or_default();
                format!(
                    "{} fair {:.0}% / actual {:.0}%",
                    q.spec.as_ref().map_or("", |x| x.name.as_str()),
                    s.fair_share * 100.0,
                    s.actual_share * 100.0
                )
            })
            .collect();
        let gpus: Vec<String> = clusters
            .iter()
            .map(|c| {
                format!("{} {}/{} GPUs", c.name, c.used.clone().unwrap_or_default().gpu, c.allocatable.clone().unwrap_or_default().gpu)
            })
            .collect();
        match (&bars, format) {
            (Some(bars), _) => {
                for (i, p) in per_set.iter().enumerate() {
                    let msg = format!(
                        "running {}, queued {}, did not succeed {} · {}",
                        p.running,
                        p.queued,
                        p.failed,
                        crate::output::dollars(p.cost_usd)
                    );
                    bars.set(i, p.finished, p.total, msg);
                }
                bars.line(0, gpus.join(" · "));
                bars.line(1, shares.join(" · "));
            }
            (None, Format::Json) => outln!(
                "{}",
                serde_json::json!({"elapsedS": started.elapsed().as_secs(), "tasks": by_state, "activeByCluster": by_cluster, "total": total})
            ),
            (None, Format::Table) => {
                let states: Vec<String> = by_state.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let active: Vec<String> = by_cluster.iter().map(|(k, v)| format!("{k} {v}")).collect();
                outln!("[{:>4}s] tasks: {}", started.elapsed().as_secs(), states.join(", "));
                outln!("        on clusters: {} | {}", if active.is_empty() { "-".into() } else { active.join(", ") }, gpus.join(", "));
                outln!("        shares: {}", shares.join("; "));
            }
        }
        if total > 0 && finished == total {
            if let Some(bars) = &bars {
                bars.finish();
            }
            outln!("all {total} demo tasks finished in {}s: {} succeeded, {failed} did not", started.elapsed().as_secs(), total - failed);
            return Ok(failed == 0);
        }
    }
}
