//! `e2e`: tasks leased per second end to end, in one process.
//!
//! One replica (real Raft on redb in a temporary directory, real gRPC on loopback) and one
//! simulated executor per cluster of `--clusters`. Clients submit `--tasks` small tasks through
//! gRPC; the clock starts at the first submit and stops when every task has been leased
//! (committed to a node). Submit-to-running latency is read from the task-set event logs once
//! every task runs, so it includes the executors' sync interval and the simulated pod start.
//!
//! The tasks are tiny (`--cpu`, `--memory`) so that the example federation holds them all at
//! once: this measures the scheduler and the executor protocol, not kubelet pod density.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use flotilla_api::v1::{self, queues_client::QueuesClient, tasks_client::TasksClient};
use flotilla_executor::{ExecutorConfig, SimCluster, SimOptions};
use flotilla_model::TaskState;
use flotilla_server::ServerConfig;
use flotilla_store::EventKind;
use tonic::transport::Channel;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value = "clusters.example.toml")]
    pub clusters: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    pub tasks: usize,
    /// Tasks per SubmitTasks call (at most 10,000).
    #[arg(long, default_value_t = 5_000)]
    pub batch: usize,
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    #[arg(long, default_value = "20m")]
    pub cpu: String,
    #[arg(long, default_value = "32Mi")]
    pub memory: String,
    /// Simulated time speed-up (pod start included).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Steady state instead (see `steady.rs`): submit at `--rate` for this many seconds, with
    /// replicas as separate processes; 0: the burst above, in one process.
    #[arg(long, default_value_t = 0)]
    pub duration_s: u64,
    /// Steady state: replica processes.
    #[arg(long, default_value_t = 3)]
    pub replicas: u64,
    /// Steady state: tasks submitted per second, open loop.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Steady state: the first seconds, left out of the figures.
    #[arg(long, default_value_t = 15)]
    pub warmup_s: u64,
    /// Steady state: how long each task runs (simulated time).
    #[arg(long, default_value = "30s")]
    pub task_duration: String,
    /// Steady state: generate this many alike clusters instead of reading `--clusters`.
    #[arg(long, default_value_t = 0)]
    pub generate_clusters: u32,
    #[arg(long, default_value_t = 1_000)]
    pub nodes_per_cluster: u32,
    #[arg(long, default_value = "32")]
    pub node_cpu: String,
    #[arg(long, default_value = "128Gi")]
    pub node_memory: String,
    /// The most pods a node runs: for generated clusters (default 110, the kubelet's), and,
    /// when given, instead of every pool's `max_pods` in `--clusters`.
    #[arg(long)]
    pub max_pods: Option<u32>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.batch == 0 || args.batch > 10_000 || args.concurrency == 0 {
        bail!("--batch must be 1..=10000 and --concurrency above 0");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if args.duration_s > 0 {
        println!("{}", rt.block_on(crate::steady::run(args))?);
        return Ok(());
    }
    rt.block_on(run_async(args))
}

async fn run_async(args: &Args) -> anyhow::Result<()> {
    let clusters = crate::steady::load_clusters(args)?;
    let dir = tempfile::tempdir()?;
    let mut config = ServerConfig::single("127.0.0.1:0".parse()?, dir.path().join("data"));
    config.schedule_interval = Duration::from_millis(500);
    let server = flotilla_server::start(config).await?;
    server.wait_for_leader(Duration::from_secs(30)).await?;
    let url = format!("http://{}", server.local_addr);
    let mut executors = Vec::new();
    for name in clusters.cluster_names() {
        let sim = SimCluster::from_file(&clusters, &name, SimOptions { speed: Some(args.speed), seed: Some(1), ..Default::default() })?;
        executors.push(flotilla_executor::spawn(ExecutorConfig::new(vec![url.clone()], name), Arc::new(sim)));
    }
    let channel = Channel::from_shared(url.clone())?.connect().await?;
    let spec = v1::QueueSpec { name: "bench".into(), weight: 1.0, ..Default::default() };
    QueuesClient::new(channel.clone()).create_queue(v1::CreateQueueRequest { queue: Some(spec) }).await?;
    // Let every executor report once, so capacity is known when work arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let batches = args.tasks.div_ceil(args.batch);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (next, channel) = (next.clone(), channel.clone());
        let (batch, total, cpu, memory) = (args.batch, args.tasks, args.cpu.clone(), args.memory.clone());
        workers.push(tokio::spawn(async move {
            let mut client = TasksClient::new(channel).max_encoding_message_size(64 << 20).max_decoding_message_size(64 << 20);
            loop {
                let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if b >= batches {
                    return anyhow::Ok(());
                }
                let count = batch.min(total - b * batch) as u32;
                let template = v1::TaskTemplate {
                    name: "agent".into(),
                    count: Some(count),
                    image: "ghcr.io/acme/agent:1.4.2".into(),
                    resources: [("cpu".to_string(), cpu.clone()), ("memory".to_string(), memory.clone())].into(),
                    sim: Some(v1::SimTemplate { duration: "1h".into(), ..Default::default() }),
                    ..Default::default()
                };
                let req = v1::SubmitTasksRequest {
                    queue: "bench".into(),
                    task_set: format!("set-{b}"),
                    tasks: vec![template],
                    client_request_id: format!("e2e-{b}"),
                };
                client.submit_tasks(req).await?;
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    let submitted_s = started.elapsed().as_secs_f64();

    let deadline = started + Duration::from_secs(args.timeout_s);
    let count = |pred: fn(TaskState, u32) -> bool| server.ctx.read(|s| s.tasks().filter(|t| pred(t.state, t.attempt)).count());
    loop {
        if count(|_, attempt| attempt >= 1) >= args.tasks {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {} of {} tasks leased after {} s", count(|_, a| a >= 1), args.tasks, args.timeout_s);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leased_s = started.elapsed().as_secs_f64();
    loop {
        if count(|state, _| state == TaskState::Running) >= args.tasks {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {} of {} tasks running after {} s", count(|st, _| st == TaskState::Running), args.tasks, args.timeout_s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let running_s = started.elapsed().as_secs_f64();
    let mut latencies_ms: Vec<u64> = server.ctx.read(|s| {
        let mut out = Vec::new();
        for set in s.task_sets() {
            let mut submitted = std::collections::HashMap::new();
            for e in &set.events {
                match e.kind {
                    EventKind::Submitted => {
                        submitted.insert(e.task, e.time_ms);
                    }
                    EventKind::Running => {
                        if let Some(t0) = submitted.get(&e.task) {
                            out.push(e.time_ms.saturating_sub(*t0));
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    });
    latencies_ms.sort_unstable();
    let p = |q: f64| {
        latencies_ms.get(((latencies_ms.len() as f64 * q) as usize).min(latencies_ms.len().saturating_sub(1))).copied().unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({
            "bench": "e2e",
            "clusters": executors.len(),
            "tasks": args.tasks,
            "submit_seconds": submitted_s,
            "seconds_until_all_leased": leased_s,
            "leased_tasks_per_second": args.tasks as f64 / leased_s,
            "seconds_until_all_running": running_s,
            "p50_submit_to_running_ms": p(0.50),
            "p99_submit_to_running_ms": p(0.99),
            "peak_memory_bytes": crate::peak_memory_bytes(),
        })
    );
    for e in executors {
        e.abort();
    }
    server.shutdown().await;
    Ok(())
}
