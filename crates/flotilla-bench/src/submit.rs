//! `submit`: acknowledged submissions per second through a real 3-replica group.
//!
//! Starts `--replicas` real `flotilla server` processes on 127.0.0.1 (the `flotilla` binary next
//! to this one: build both with `cargo build --release -p flotilla -p flotilla-bench`), creates a
//! queue, then `--concurrency` clients submit `--tasks` tasks in batches of `--batch`, spread over
//! all replicas (followers forward to the leader). A submission counts once `SubmitTasks`
//! returns, which is after the Raft entry is committed on a majority and fsynced.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flotilla_api::auth::AuthChannel;
use flotilla_api::v1::{self, queues_client::QueuesClient, tasks_client::TasksClient};
use tonic::transport::Channel;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    #[arg(long, default_value_t = 500)]
    batch: usize,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Also run with authentication (a token per call) and TLS on every port (mutual TLS
    /// between replicas), and print both results and their ratio: the cost of security in
    /// one run. Uses the test certificates in tests/fixtures/tls.
    #[arg(long)]
    compare_secure: bool,
    /// With --compare-secure: this many rounds of both runs, the order swapped every round
    /// (the second run of a pair tends to be slower); the ratio is of the medians.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Each call carries `--batch` distinct one-task templates (their name, an argument and an
    /// environment variable differ), as agent fleets submit, instead of one array task.
    #[arg(long)]
    distinct: bool,
}

/// The token the secure run's client sends, and the auth file that knows it.
const BENCH_TOKEN: &str = "bench-admin-token";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tls")
}

/// Replica processes, replica `i + 1` at position `i`.
pub(crate) struct Replicas {
    pub children: Vec<Child>,
    _dir: tempfile::TempDir,
    data_dirs: Vec<PathBuf>,
    pub urls: Vec<String>,
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn flotilla_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("flotilla");
    if !bin.exists() {
        bail!("{} not found: build it with `cargo build --release -p flotilla -p flotilla-bench`", bin.display());
    }
    Ok(bin)
}

pub(crate) fn start_replicas(n: u64, secure: bool) -> anyhow::Result<Replicas> {
    let bin = flotilla_binary()?;
    let dir = tempfile::tempdir()?;
    let scheme = if secure { "https" } else { "http" };
    let tls = fixtures();
    let auth_file = dir.path().join("auth.toml");
    std::fs::write(
        &auth_file,
        format!(
            "[[users]]\nname = \"bench\"\ntoken_hash = \"{}\"\n[roles]\nadmin = [\"user:bench\"]\n",
            flotilla_server::auth::hash_token(BENCH_TOKEN)
        ),
    )?;
    let mut grpc = BTreeMap::new();
    let mut peer_ports = BTreeMap::new();
    for id in 1..=n {
        grpc.insert(id, (free_port()?, free_port()?));
        peer_ports.insert(id, free_port()?);
    }
    let peers: Vec<String> = peer_ports.iter().map(|(id, p)| format!("{id}={scheme}://127.0.0.1:{p}")).collect();
    let peers = peers.join(",");
    let mut children = Vec::new();
    let mut data_dirs = Vec::new();
    let mut urls = Vec::new();
    for (id, (g, h)) in &grpc {
        let data = dir.path().join(format!("replica-{id}"));
        let log = std::fs::File::create(dir.path().join(format!("replica-{id}.log")))?;
        let mut command = Command::new(&bin);
        command.args(["server", "--id", &id.to_string(), "--listen", &format!("127.0.0.1:{g}"), "--http", &format!("127.0.0.1:{h}")]);
        if secure {
            command.arg("--auth-file").arg(&auth_file);
            command.arg("--tls-cert").arg(tls.join("server.pem")).arg("--tls-key").arg(tls.join("server.key"));
            command.arg("--peer-tls-cert").arg(tls.join("peer.pem")).arg("--peer-tls-key").arg(tls.join("peer.key"));
            command.arg("--peer-ca-cert").arg(tls.join("ca.pem"));
        }
        let child = command
            .args(["--peer-listen", &format!("127.0.0.1:{}", peer_ports[id])])
            .arg("--data-dir")
            .arg(&data)
            .args(["--peers", &peers])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        children.push(child);
        data_dirs.push(data);
        urls.push(format!("{scheme}://localhost:{g}"));
    }
    Ok(Replicas { children, _dir: dir, data_dirs, urls })
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Creates the queue `bench`. The group elects a leader once a majority is up; this waits
/// for it (60 s at most).
pub(crate) async fn create_bench_queue(channel: &AuthChannel) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spec = v1::QueueSpec { name: "bench".into(), weight: 1.0, ..Default::default() };
        match QueuesClient::new(channel.clone()).create_queue(v1::CreateQueueRequest { queue: Some(spec) }).await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
            Err(s) if Instant::now() > deadline => bail!("the group did not accept writes within 60 s: {s}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

pub(crate) async fn connect(url: &str, dial: &flotilla_api::dial::Dial) -> anyhow::Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match dial.connect(Channel::from_shared(url.to_string())?).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => bail!("{url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.batch == 0 || args.concurrency == 0 || args.replicas == 0 {
        bail!("--batch, --concurrency and --replicas must be above 0");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if !args.compare_secure {
        println!("{}", rt.block_on(run_once(args, false))?);
        return Ok(());
    }
    let rate = |v: &serde_json::Value| v["acked_tasks_per_second"].as_f64().unwrap_or(0.0);
    let (mut plain, mut secure) = (Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        for is_secure in if round % 2 == 0 { [false, true] } else { [true, false] } {
            let result = rt.block_on(run_once(args, is_secure))?;
            println!("{result}");
            if is_secure { &mut secure } else { &mut plain }.push(rate(&result));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (p, s) = (median(&mut plain), median(&mut secure));
    println!(
        "{}",
        serde_json::json!({
            "bench": "submit-secure-vs-plain",
            "rounds": args.rounds.max(1),
            "median_plain_tasks_per_second": p,
            "median_secure_tasks_per_second": s,
            "throughput_ratio": s / p.max(f64::MIN_POSITIVE),
        })
    );
    Ok(())
}

/// One run: a fresh group, `args.tasks` tasks submitted; the result as JSON.
async fn run_once(args: &Args, secure: bool) -> anyhow::Result<serde_json::Value> {
    {
        let replicas = start_replicas(args.replicas, secure)?;
        let (dial, token) = if secure {
            let ca = flotilla_api::tls::CaFile::new("--ca-cert", fixtures().join("ca.pem"));
            let tls = flotilla_api::tls::ClientTls::new(Some(&ca), None).map_err(|e| anyhow::anyhow!("{}", e.0))?;
            (flotilla_api::dial::Dial::tcp().with_tls(tls), flotilla_api::auth::BearerToken::new(BENCH_TOKEN).map_err(anyhow::Error::msg)?)
        } else {
            (flotilla_api::dial::Dial::tcp(), flotilla_api::auth::BearerToken::none())
        };
        let mut channels = Vec::new();
        for url in &replicas.urls {
            channels.push(token.channel(connect(url, &dial).await?));
        }
        create_bench_queue(&channels[0]).await?;

        let batches = args.tasks.div_ceil(args.batch);
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut workers = Vec::new();
        for w in 0..args.concurrency {
            let next = next.clone();
            let channel = channels[w % channels.len()].clone();
            let (batch, total, distinct) = (args.batch, args.tasks, args.distinct);
            workers.push(tokio::spawn(async move {
                let mut client = TasksClient::new(channel).max_encoding_message_size(64 << 20).max_decoding_message_size(64 << 20);
                let mut latencies = Vec::new();
                let mut acked = 0usize;
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches {
                        break;
                    }
                    let count = batch.min(total - b * batch) as u32;
                    let tasks = if distinct { (0..count).map(|i| distinct_template(b, i)).collect() } else { vec![array_template(count)] };
                    let req = v1::SubmitTasksRequest {
                        queue: "bench".into(),
                        task_set: format!("set-{}", b % 64),
                        tasks,
                        client_request_id: format!("bench-{b}"),
                    };
                    let t0 = Instant::now();
                    let resp = client.submit_tasks(req).await?.into_inner();
                    latencies.push(t0.elapsed());
                    anyhow::ensure!(resp.task_ids.len() == count as usize, "batch {b}: {} ids for {count} tasks", resp.task_ids.len());
                    acked += resp.task_ids.len();
                }
                anyhow::Ok((acked, latencies))
            }));
        }
        let mut acked = 0;
        let mut latencies = Vec::new();
        for w in workers {
            let (a, l) = w.await??;
            acked += a;
            latencies.extend(l);
        }
        let wall = started.elapsed().as_secs_f64();
        latencies.sort();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        let disk: u64 = replicas.data_dirs.iter().map(|d| dir_bytes(d)).sum::<u64>() / replicas.data_dirs.len() as u64;
        let result = serde_json::json!({
                "bench": "submit",
                "secure": secure,
                "shape": if args.distinct { "distinct" } else { "array" },
                "replicas": args.replicas,
                "tasks": acked,
                "batch": args.batch,
                "concurrency": args.concurrency,
                "wall_seconds": wall,
                "acked_tasks_per_second": acked as f64 / wall,
                "p50_ack_ms": pct(0.50),
                "p99_ack_ms": pct(0.99),
                "disk_bytes_per_task": disk as f64 / acked.max(1) as f64,
        });
        drop(replicas);
        Ok(result)
    }
}

/// `count` alike tasks: one template.
fn array_template(count: u32) -> v1::TaskTemplate {
    v1::TaskTemplate {
        name: "task".into(),
        count: Some(count),
        image: "busybox:1.36".into(),
        resources: [("cpu".to_string(), "100m".to_string()), ("memory".to_string(), "128Mi".to_string())].into(),
        ..Default::default()
    }
}

/// One agent of its own (call `batch`, position `i`): its name, its prompt argument and its
/// session variable differ from every other task's.
fn distinct_template(batch: usize, i: u32) -> v1::TaskTemplate {
    v1::TaskTemplate {
        name: format!("agent-{i:04}"),
        count: Some(1),
        args: vec!["--prompt-id".into(), format!("{batch}-{i}")],
        env: [("SESSION".to_string(), format!("s-{batch:06}-{i:04}"))].into(),
        ..array_template(1)
    }
}
