//! `e2e --duration-s N`: the steady state at real pod density (issue 14, goal 6).
//!
//! `--replicas` real `flotilla server` processes (Raft on redb, every commit fsynced; the
//! `flotilla` binary next to this one) and, in this process, one simulated executor per
//! cluster: `--generate-clusters` clusters of `--nodes-per-cluster` nodes, each node running
//! at most `--max-pods` pods (the kubelet's 110 by default), or the clusters of `--clusters`.
//! Clients submit `--rate` tasks per second, open loop, for `--duration-s` seconds; each task
//! runs `--task-duration` (simulated) and ends, so tasks arrive and finish all along.
//!
//! Measured over the window after `--warmup-s`: starts per second (tasks reaching `running`,
//! from the task sets' event logs, stamped by the leader), submit-to-running p50 / p99 of the
//! tasks submitted in the window (those not running 30 s after the run are counted apart), the
//! CPU (user + system, in cores) of the leader, the busiest follower and this process (the
//! simulated executors and the clients), the leader's memory (resident now and at peak), and
//! the busiest node's pods at the end.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use flotilla_api::auth::AuthChannel;
use flotilla_api::v1::tasks_client::TasksClient;
use flotilla_api::v1::{self, clusters_client::ClustersClient, replicas_client::ReplicasClient};
use flotilla_executor::{ClustersFile, ExecutorConfig, SimCluster, SimOptions};
use tokio::sync::Semaphore;

use crate::e2e::Args;
use crate::submit::{connect, create_bench_queue, start_replicas};

/// Most submissions in flight at once; past it the arrival clock waits (and says so).
const MAX_IN_FLIGHT: usize = 32;
/// How long after the run late tasks may still start and count.
const LATE_START_S: u64 = 30;

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A clusters file of `clusters` alike clusters of `nodes` CPU nodes each, in racks of 20
/// over three zones.
fn generated_clusters(args: &Args) -> String {
    let mut text = String::new();
    for c in 1..=args.generate_clusters {
        text.push_str(&format!(
            "[[cluster]]\nname = \"c{c:02}\"\nregion = \"r{c:02}\"\npending = \"1s\"\nseed = {c}\n\n\
             [[cluster.pool]]\nname = \"cpu\"\ninstance_type = \"m7i.8xlarge\"\ncount = {nodes}\ncpu = \"{cpu}\"\n\
             memory = \"{memory}\"\nmax_pods = {pods}\nprice_per_hour_usd = 1.6\nzones = [\"z1\", \"z2\", \"z3\"]\n\
             nodes_per_rack = 20\nreserved_cpu = \"500m\"\nreserved_memory = \"2Gi\"\n\n",
            nodes = args.nodes_per_cluster,
            cpu = args.node_cpu,
            memory = args.node_memory,
            pods = args.max_pods.unwrap_or(flotilla_executor::DEFAULT_MAX_PODS),
        ));
    }
    text
}

/// The clusters `args` name: generated, or `--clusters` with `--max-pods` (when given) for
/// every pool.
pub fn load_clusters(args: &Args) -> anyhow::Result<ClustersFile> {
    if args.generate_clusters > 0 {
        return Ok(flotilla_executor::parse_clusters(&generated_clusters(args), "generated.toml")?);
    }
    let mut file = flotilla_executor::load_clusters(&args.clusters).with_context(|| format!("loading {}", args.clusters.display()))?;
    if let Some(max) = args.max_pods {
        ensure!(max > 0, "--max-pods must be at least 1");
        for pool in file.clusters.iter_mut().flat_map(|c| c.pools.iter_mut()) {
            pool.max_pods = max;
        }
    }
    Ok(file)
}

/// CPU seconds used so far by each of `pids`.
fn cpu_seconds(pids: &[u32]) -> Vec<f64> {
    pids.iter().map(|&p| process_usage(p).0).collect()
}

/// (CPU seconds used so far, resident bytes, peak resident bytes) of process `pid`.
fn process_usage(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name. Linux counts
    // them in clock ticks of 1/100 s (USER_HZ) on every architecture it runs on here.
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    let pid = pid.to_string();
    (ticks as f64 / 100.0, crate::process_memory_bytes(&pid, "VmRSS:"), crate::process_memory_bytes(&pid, "VmHWM:"))
}

async fn wait_for_clusters(channel: &AuthChannel, want: usize, nodes: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = ClustersClient::new(channel.clone()).list_clusters(v1::ListClustersRequest::default()).await?.into_inner();
        let ready = list.clusters.iter().filter(|c| c.state == "ready").count();
        let known: usize = list.clusters.iter().map(|c| c.nodes as usize).sum();
        if ready >= want && known >= nodes {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{ready} of {want} clusters ready with {known} of {nodes} nodes after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The replica (1-based id) the group says leads.
async fn leader_id(channel: &AuthChannel) -> anyhow::Result<u64> {
    let list = ReplicasClient::new(channel.clone()).list_replicas(v1::ListReplicasRequest::default()).await?.into_inner();
    list.leader_id.context("no leader known")
}

/// One submission: `count` alike tasks in task set `set`.
async fn submit(channel: AuthChannel, set: String, count: u32, args: Arc<(String, String, String)>) -> anyhow::Result<()> {
    let (cpu, memory, duration) = &*args;
    let template = v1::TaskTemplate {
        name: "agent".into(),
        count: Some(count),
        image: "ghcr.io/acme/agent:1.4.2".into(),
        resources: [("cpu".to_string(), cpu.clone()), ("memory".to_string(), memory.clone())].into(),
        sim: Some(v1::SimTemplate { duration: duration.clone(), ..Default::default() }),
        ..Default::default()
    };
    let req = v1::SubmitTasksRequest { queue: "bench".into(), task_set: set.clone(), tasks: vec![template], client_request_id: set };
    let mut client = TasksClient::new(channel).max_decoding_message_size(64 << 20);
    client.submit_tasks(req).await?;
    Ok(())
}

/// Per task of `set`: (submitted at, running at), from its event log, read until every one of
/// its `count` tasks ran or the log stays quiet for 2 s.
async fn task_times(channel: AuthChannel, set: String, count: usize) -> anyhow::Result<Vec<(u64, Option<u64>)>> {
    let mut client = TasksClient::new(channel).max_decoding_message_size(64 << 20);
    let req = v1::WatchRequest { queue: "bench".into(), task_set: set, from_seq: 1 };
    let mut stream = client.watch(req).await?.into_inner();
    let mut times: std::collections::HashMap<u64, (u64, Option<u64>)> = std::collections::HashMap::with_capacity(count);
    let mut running = 0usize;
    while running < count {
        let Ok(next) = tokio::time::timeout(Duration::from_secs(2), stream.message()).await else { break };
        let Some(e) = next? else { break };
        match e.kind.as_str() {
            "submitted" => {
                times.entry(e.task_id).or_insert((e.time_ms, None));
            }
            "running" => {
                if let Some(t) = times.get_mut(&e.task_id) {
                    if t.1.is_none() {
                        t.1 = Some(e.time_ms);
                        running += 1;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(times.into_values().collect())
}

pub async fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    ensure!(args.rate > 0 && args.duration_s > args.warmup_s, "--rate must be above 0 and --duration-s above --warmup-s");
    let file = load_clusters(args)?;
    let names = file.cluster_names();
    let nodes: usize = file.clusters.iter().map(|c| c.nodes().map_or(0, |n| n.len())).sum();
    let replicas = start_replicas(args.replicas, false)?;
    let dial = flotilla_api::dial::Dial::tcp();
    let mut channels = Vec::new();
    for url in &replicas.urls {
        channels.push(flotilla_api::auth::BearerToken::none().channel(connect(url, &dial).await?));
    }
    create_bench_queue(&channels[0]).await?;
    let mut executors = Vec::new();
    for name in &names {
        let sim = SimCluster::from_file(&file, name, SimOptions { speed: Some(args.speed), ..Default::default() })?;
        executors.push(flotilla_executor::spawn(ExecutorConfig::new(replicas.urls.clone(), name.clone()), Arc::new(sim)));
    }
    wait_for_clusters(&channels[0], names.len(), nodes).await?;
    let leader = leader_id(&channels[0]).await?;
    let leader_pid = replicas.children.get((leader - 1) as usize).context("the leader is not one of ours")?.id();
    // The leader first, then the followers, then this process.
    let pids: Vec<u32> = std::iter::once(leader_pid)
        .chain(replicas.children.iter().map(|c| c.id()).filter(|&p| p != leader_pid))
        .chain([std::process::id()])
        .collect();

    // Open loop: every 100 ms, whatever is due by now at `--rate`, in submissions of at most
    // `--batch`, spread over every replica (followers forward to the leader).
    let template = Arc::new((args.cpu.clone(), args.memory.clone(), args.task_duration.clone()));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let started = Instant::now();
    let window_start_ms = unix_ms() + args.warmup_s * 1000;
    let mut sets: Vec<(String, usize)> = Vec::new();
    let mut pending = Vec::new();
    let (mut submitted, mut waited_ms, mut usage_at_warmup) = (0u64, 0u64, None);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while started.elapsed() < Duration::from_secs(args.duration_s) {
        tick.tick().await;
        if usage_at_warmup.is_none() && started.elapsed() >= Duration::from_secs(args.warmup_s) {
            usage_at_warmup = Some((Instant::now(), cpu_seconds(&pids)));
        }
        let due = (started.elapsed().as_secs_f64() * args.rate as f64) as u64;
        while submitted < due {
            let count = (due - submitted).min(args.batch as u64) as u32;
            let set = format!("s{:06}", sets.len());
            sets.push((set.clone(), count as usize));
            let t0 = Instant::now();
            let permit = in_flight.clone().acquire_owned().await?;
            waited_ms += t0.elapsed().as_millis() as u64;
            let channel = channels[sets.len() % channels.len()].clone();
            let template = template.clone();
            pending.push(tokio::spawn(async move {
                let r = submit(channel, set, count, template).await;
                drop(permit);
                r
            }));
            submitted += u64::from(count);
        }
    }
    let (window_end, cpu_end) = (Instant::now(), cpu_seconds(&pids));
    let window_end_ms = unix_ms();
    let (warm_at, cpu_warm) = usage_at_warmup.context("the run ended before its warm-up")?;
    // CPU cores each process used in the window: the leader, the followers, and this one
    // (the simulated executors and the submitting clients).
    let cores: Vec<f64> =
        cpu_end.iter().zip(&cpu_warm).map(|(end, warm)| (end - warm) / window_end.duration_since(warm_at).as_secs_f64()).collect();
    let leader_cores = cores[0];
    let follower_cores = cores[1..cores.len() - 1].iter().copied().fold(0.0, f64::max);
    let bench_cores = cores[cores.len() - 1];
    let mut failed_submits = 0usize;
    for p in pending {
        if p.await?.is_err() {
            failed_submits += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(LATE_START_S.min(args.duration_s))).await;
    let (_, leader_rss, leader_peak) = process_usage(leader_pid);
    let follower_peak = replicas.children.iter().filter(|c| c.id() != leader_pid).map(|c| process_usage(c.id()).2).max().unwrap_or(0);

    let mut times = Vec::with_capacity(submitted as usize);
    for chunk in sets.chunks(16) {
        let reads: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, (set, n))| tokio::spawn(task_times(channels[i % channels.len()].clone(), set.clone(), *n)))
            .collect();
        for r in reads {
            times.extend(r.await??);
        }
    }
    let window_s = (window_end_ms.saturating_sub(window_start_ms)) as f64 / 1000.0;
    let starts_in_window = times.iter().filter(|(_, r)| r.is_some_and(|r| r >= window_start_ms && r < window_end_ms)).count();
    let in_window: Vec<&(u64, Option<u64>)> = times.iter().filter(|(s, _)| *s >= window_start_ms && *s < window_end_ms).collect();
    let never_ran = in_window.iter().filter(|(_, r)| r.is_none()).count();
    let mut latencies: Vec<u64> = in_window.iter().filter_map(|(s, r)| r.map(|r| r.saturating_sub(*s))).collect();
    latencies.sort_unstable();
    let p = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or(0);

    let busiest_node_pods = max_pods_on_a_node(&channels[0]).await.unwrap_or(0);
    for e in executors {
        e.abort();
    }
    drop(replicas);
    Ok(serde_json::json!({
        "bench": "e2e-steady",
        "replicas": args.replicas,
        "clusters": names.len(),
        "nodes": nodes,
        "max_pods_per_node": args.max_pods.unwrap_or(flotilla_executor::DEFAULT_MAX_PODS),
        "task_cpu": args.cpu,
        "task_memory": args.memory,
        "task_duration": args.task_duration,
        "target_rate": args.rate,
        "tasks_submitted": submitted,
        "failed_submissions": failed_submits,
        "arrival_clock_waited_ms": waited_ms,
        "window_seconds": window_s,
        "starts_per_second": starts_in_window as f64 / window_s.max(f64::MIN_POSITIVE),
        "tasks_submitted_in_window": in_window.len(),
        "of_them_not_running_after_30s": never_ran,
        "p50_submit_to_running_ms": p(0.50),
        "p99_submit_to_running_ms": p(0.99),
        "leader_cpu_cores": leader_cores,
        "busiest_follower_cpu_cores": follower_cores,
        "bench_process_cpu_cores": bench_cores,
        "leader_rss_bytes": leader_rss,
        "leader_peak_rss_bytes": leader_peak,
        "follower_peak_rss_bytes": follower_peak,
        "busiest_node_running_tasks": busiest_node_pods,
    }))
}

/// The most tasks running on one node now, from the first pages of running tasks.
async fn max_pods_on_a_node(channel: &AuthChannel) -> anyhow::Result<usize> {
    let mut client = TasksClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let mut per_node: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut after_id = 0;
    for _ in 0..200 {
        let req = v1::ListTasksRequest { queue: "bench".into(), state: "running".into(), after_id, limit: 1000, ..Default::default() };
        let page = client.list_tasks(req).await?.into_inner();
        for t in &page.tasks {
            *per_node.entry(format!("{}/{}", t.cluster, t.node)).or_default() += 1;
        }
        if page.next_after_id <= after_id {
            break;
        }
        after_id = page.next_after_id;
    }
    Ok(per_node.into_values().max().unwrap_or(0))
}
