//! `leader`: the leader's whole scheduling cycle at a large backlog, through real replicas.
//!
//! `--replicas` replicas run in this process (real Raft on redb in a temporary directory,
//! real gRPC on loopback). `--tasks` queued one-CPU tasks are submitted through gRPC as
//! array tasks of 10,000 over `--queues` queues. One cluster of `--nodes` nodes with
//! `--cpus` CPUs each is put straight into the leader's capacity (no executor: leased tasks
//! stay leased), so about `nodes x cpus` tasks fit.
//!
//! Each round cancels `--finish` leased tasks (as if they had finished; not timed), then
//! times one leader cycle (`flotilla_server::leader::cycle`): bringing the backlog up to
//! date and building the input under the state's read lock, `schedule_backlog`, committing
//! the `Schedule` entry through the replicas and applying it on the leader. Cycles until
//! the federation is first full are warm-up and reported apart. The built-in leader loop
//! sleeps meanwhile (an interval of a day, and nothing here wakes it).
//!
//! Then, on the same state, it times what people read at that size: a ListTasks page
//! with and without a selective filter, `/metrics`, the web view and its task API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use flotilla_api::v1::{self, queues_client::QueuesClient, tasks_client::TasksClient};
use flotilla_model::{Node, Resources, TaskId, Topology};
use flotilla_server::backlog::LeaderBacklog;
use flotilla_server::capacity::ClusterReport;
use flotilla_server::{ServerConfig, ServerHandle};
use flotilla_store::{CancelTarget, Command};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    /// Queued tasks (one CPU each).
    #[arg(long, default_value_t = 1_000_000)]
    tasks: usize,
    #[arg(long, default_value_t = 10)]
    queues: usize,
    #[arg(long, default_value_t = 1_000)]
    nodes: usize,
    /// CPUs per node.
    #[arg(long, default_value_t = 32)]
    cpus: u64,
    /// Leased tasks ended before each timed cycle (what the cycle can place again).
    #[arg(long, default_value_t = 1_450)]
    finish: usize,
    /// Timed cycles.
    #[arg(long, default_value_t = 30)]
    rounds: usize,
    /// Rounds that also time the old way (every queued task converted under the read lock,
    /// then the full `schedule`; nothing committed), for a before/after in one run.
    #[arg(long, default_value_t = 3)]
    compare_rounds: usize,
}

const CLUSTER: &str = "bench";
const SUBMIT_BATCH: usize = 10_000;

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(args.replicas >= 1 && args.queues >= 1 && args.rounds >= 1, "--replicas, --queues and --rounds must be at least 1");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run_async(args))
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn start_replicas(args: &Args, root: &Path) -> anyhow::Result<BTreeMap<u64, ServerHandle>> {
    let ids = 1..=args.replicas;
    let peers: BTreeMap<u64, String> = ids.clone().map(|id| Ok((id, format!("http://{}", free_addr()?)))).collect::<anyhow::Result<_>>()?;
    let mut servers = BTreeMap::new();
    for id in ids {
        let mut config = ServerConfig::single("127.0.0.1:0".parse()?, root.join(format!("replica-{id}")));
        config.id = id;
        config.peer_listen = peers[&id].trim_start_matches("http://").parse()?;
        config.peers = peers.clone();
        config.http = Some("127.0.0.1:0".parse()?);
        // The bench runs the cycles; the built-in loop waits for a wake-up that never comes.
        config.schedule_interval = Duration::from_secs(24 * 3600);
        config.max_tasks = args.tasks + 1_000;
        config.sched.max_leases_per_cycle = 100_000;
        servers.insert(id, flotilla_server::start(config).await.with_context(|| format!("starting replica {id}"))?);
    }
    Ok(servers)
}

async fn agreed_leader(servers: &BTreeMap<u64, ServerHandle>) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((id, _)) = servers.iter().find(|(_, s)| s.ctx.is_leader()) {
            if servers.values().all(|s| s.ctx.replica.leader_id() == Some(*id)) {
                return Ok(*id);
            }
        }
        if Instant::now() > deadline {
            bail!("no agreed leader after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(args: &Args, channel: Channel) -> anyhow::Result<()> {
    for q in 0..args.queues {
        let spec = v1::QueueSpec { name: format!("q{q:03}"), weight: 1.0, ..Default::default() };
        QueuesClient::new(channel.clone()).create_queue(v1::CreateQueueRequest { queue: Some(spec) }).await?;
    }
    let batches = args.tasks.div_ceil(SUBMIT_BATCH);
    let mut client = TasksClient::new(channel).max_encoding_message_size(64 << 20).max_decoding_message_size(64 << 20);
    for b in 0..batches {
        let count = SUBMIT_BATCH.min(args.tasks - b * SUBMIT_BATCH) as u32;
        let template = v1::TaskTemplate {
            name: "agent".into(),
            count: Some(count),
            image: "ghcr.io/acme/agent:1.4.2".into(),
            resources: [("cpu".to_string(), "1".to_string()), ("memory".to_string(), "1Gi".to_string())].into(),
            ..Default::default()
        };
        let req = v1::SubmitTasksRequest {
            queue: format!("q{:03}", b % args.queues),
            task_set: format!("set-{b}"),
            tasks: vec![template],
            client_request_id: format!("leader-bench-{b}"),
        };
        client.submit_tasks(req).await?;
    }
    Ok(())
}

fn nodes(args: &Args) -> Vec<Node> {
    (0..args.nodes)
        .map(|i| Node {
            cluster: CLUSTER.into(),
            name: format!("n{i:05}"),
            allocatable: Resources::new(args.cpus * 1_000, (args.cpus * 8) << 30, 0),
            reserved: Resources::default(),
            topology: Topology { region: "r1".into(), zone: format!("z{}", i % 3), rack: format!("rack{:03}", i / 16) },
            gpu_model: None,
            instance_type: String::new(),
            spot: false,
            price_per_hour_usd: 1.0,
            labels: Default::default(),
            taints: vec![],
            unschedulable: false,
        })
        .collect()
}

/// Puts the cluster's nodes into the leader's capacity, as a fresh executor report would.
fn report(server: &ServerHandle, nodes: &[Node]) {
    let report = ClusterReport { nodes: nodes.to_vec(), executor_id: "bench".into(), received: tokio::time::Instant::now() };
    server.ctx.capacity.lock().unwrap_or_else(|e| e.into_inner()).record(CLUSTER, report);
}

/// One timed leader cycle; the leases it committed.
async fn timed_cycle(server: &ServerHandle, term: u64, backlog: &mut Option<LeaderBacklog>) -> anyhow::Result<(f64, u64)> {
    let before = server.ctx.metrics.placements_total.get();
    let start = Instant::now();
    flotilla_server::leader::cycle(&server.ctx, term, backlog).await.map_err(|e| anyhow::anyhow!("cycle: {e}"))?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    Ok((ms, server.ctx.metrics.placements_total.get() - before))
}

/// Milliseconds for the old cycle's first half on the current state: every schedulable task
/// converted under the read lock, then the full `schedule`. Nothing is committed.
fn old_input_and_schedule(server: &ServerHandle) -> f64 {
    let ctx = &server.ctx;
    let start = Instant::now();
    let now = ctx.config.clock.now_ms();
    let nodes =
        ctx.capacity.lock().unwrap_or_else(|e| e.into_inner()).fresh_nodes(tokio::time::Instant::now(), ctx.config.executor_lease());
    let input = ctx.read(|s| flotilla_sched::Input {
        queues: s.queues().cloned().collect(),
        nodes,
        queued: flotilla_server::backlog::all_schedulable(s, now),
        running: flotilla_server::backlog::running(s),
        config: ctx.config.sched.clone(),
        held_queues: Default::default(),
    });
    let decisions = flotilla_sched::schedule(&input);
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    drop((input, decisions));
    ms
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted.get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1).min(sorted.len().saturating_sub(1))).copied().unwrap_or(0.0)
}

async fn run_async(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let servers = start_replicas(args, dir.path()).await?;
    let leader_id = agreed_leader(&servers).await?;
    let leader = &servers[&leader_id];
    let channel = Channel::from_shared(format!("http://{}", leader.local_addr))?.connect().await?;

    let started = Instant::now();
    submit(args, channel.clone()).await?;
    let submit_s = started.elapsed().as_secs_f64();
    // Every replica holds every task before the cycles start.
    let deadline = Instant::now() + Duration::from_secs(600);
    while servers.values().any(|s| s.ctx.read(|st| st.task_count()) < args.tasks) {
        ensure!(Instant::now() < deadline, "replicas did not apply every submission within 600 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The submissions woke the built-in loop; let it run its cycle (no capacity yet, so no
    // leases) and fall asleep before capacity appears, so that only the bench's cycles decide.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let term = leader.ctx.fenced_term().await.map_err(|e| anyhow::anyhow!("fenced term: {e}"))?;
    leader
        .ctx
        .propose_decision(Command::ClusterSeen { cluster: CLUSTER.into(), term: Some(term) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let nodes = nodes(args);
    let mut backlog = Some(LeaderBacklog::default());

    // Warm-up: the first cycle files the whole backlog; then fill the federation.
    let mut warmup = Vec::new();
    loop {
        report(leader, &nodes);
        let (ms, leased) = timed_cycle(leader, term, &mut backlog).await?;
        warmup.push(serde_json::json!({ "ms": ms, "leases": leased }));
        if leased == 0 || warmup.len() >= 20 {
            break;
        }
    }

    let mut cycle_ms = Vec::new();
    let mut leases = Vec::new();
    let mut old_ms = Vec::new();
    for round in 0..args.rounds {
        let ended: Vec<TaskId> = leader.ctx.read(|s| s.active().take(args.finish).map(|t| t.id).collect());
        let cancel = Command::Cancel { target: CancelTarget::Tasks(ended), reason: "finished (bench)".into() };
        leader.ctx.propose(cancel).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        report(leader, &nodes);
        if round < args.compare_rounds {
            old_ms.push(old_input_and_schedule(leader));
        }
        let (ms, leased) = timed_cycle(leader, term, &mut backlog).await?;
        cycle_ms.push(ms);
        leases.push(leased);
    }
    old_ms.sort_by(f64::total_cmp);
    let (queued_after, running_after) = leader.ctx.read(|s| (s.queued().count(), s.active().count()));
    ensure!(
        running_after <= args.nodes * args.cpus as usize,
        "{running_after} tasks hold CPUs of {} nodes: a second loop decided",
        args.nodes
    );
    let mut sorted = cycle_ms.clone();
    sorted.sort_by(f64::total_cmp);

    let reads = time_reads(leader).await?;
    println!(
        "{}",
        serde_json::json!({
            "bench": "leader",
            "replicas": args.replicas,
            "tasks": args.tasks,
            "queues": args.queues,
            "nodes": args.nodes,
            "cpus_per_node": args.cpus,
            "finish_per_round": args.finish,
            "submit_seconds": submit_s,
            "warmup_cycles": warmup,
            "rounds": args.rounds,
            "leases_per_cycle_mean": leases.iter().sum::<u64>() as f64 / leases.len().max(1) as f64,
            "queued_after": queued_after,
            "running_after": running_after,
            "cycle_ms_p50": percentile(&sorted, 0.50),
            "cycle_ms_p99": percentile(&sorted, 0.99),
            "cycle_ms_max": sorted.last().copied().unwrap_or(0.0),
            "cycle_ms": cycle_ms.iter().map(|ms| (ms * 10.0).round() / 10.0).collect::<Vec<f64>>(),
            "old_input_and_schedule_ms_p50": percentile(&old_ms, 0.50),
            "reads_ms": reads,
            "peak_memory_bytes_all_replicas": crate::peak_memory_bytes(),
        })
    );
    for (_, s) in servers {
        s.shutdown().await;
    }
    Ok(())
}

/// Milliseconds for what people read at this size (each the median of 5).
async fn time_reads(leader: &ServerHandle) -> anyhow::Result<serde_json::Value> {
    let channel = Channel::from_shared(format!("http://{}", leader.local_addr))?.connect().await?;
    let mut tasks = TasksClient::new(channel).max_decoding_message_size(64 << 20);
    let http = leader.http_addr.context("the replica serves HTTP")?;
    let mut out = serde_json::Map::new();
    let list =
        |queue: &str, state: &str| v1::ListTasksRequest { queue: queue.into(), state: state.into(), limit: 1_000, ..Default::default() };
    for (name, req) in [
        ("list_first_page", list("", "")),
        ("list_queue_first_page", list("q001", "")),
        ("list_queue_running_page", list("q001", "running")),
        ("list_succeeded_page_none_match", list("", "succeeded")),
    ] {
        let mut ms = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            tasks.list_tasks(req.clone()).await?;
            ms.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        out.insert(name.into(), ms[2].into());
    }
    // A watcher catching up on a task set of 10,000 tasks: the first 1,000 events.
    let mut ms = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let req = v1::WatchRequest { queue: "q000".into(), task_set: "set-0".into(), from_seq: 1 };
        let mut stream = tasks.watch(req).await?.into_inner();
        for _ in 0..1_000 {
            stream.message().await?.context("the watch ended early")?;
        }
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    out.insert("watch_first_1000_events".into(), ms[2].into());
    for (name, path) in [("metrics", "/metrics"), ("web_view", "/"), ("api_tasks_running", "/api/tasks?state=running")] {
        let mut ms = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            http_get(http, path).await?;
            ms.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        out.insert(name.into(), ms[2].into());
    }
    Ok(out.into())
}

/// A plain HTTP/1.0 GET; the status must be 200.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<usize> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes()).await?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await?;
    ensure!(
        body.starts_with(b"HTTP/1.0 200") || body.starts_with(b"HTTP/1.1 200"),
        "GET {path}: {}",
        String::from_utf8_lossy(&body[..body.len().min(80)])
    );
    Ok(body.len())
}
