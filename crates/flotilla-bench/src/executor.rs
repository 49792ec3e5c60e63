//! `executor`: one Kubernetes backend over a large cluster, measured.
//!
//! A child process (`executor-server`, this binary again) runs `flotilla-kubetest`'s API
//! server seeded with `--nodes` Nodes and `--pods` pods (a `--flotilla-share` of them
//! Flotilla's Jobs and pods, the rest other workloads' pods, spread over the nodes), so
//! that the memory measured here, in the parent, is the executor's alone. The parent
//! builds a real `KubeBackend`, times its watches' first list, reads its resident memory
//! (`VmRSS`) before and after, then times what one executor Sync asks of the backend
//! (`nodes()`, `attempts()`, `pending_events(1000)` and the ack) once a second for
//! `--rounds`, first on a quiet cluster and then while pods change phase at `--churn-per-s`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flotilla_executor::{ClusterBackend, KubeBackend};
use flotilla_kubetest::{ApiServer, Kind, Options};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(clap::Args, Clone)]
pub struct Args {
    #[arg(long, default_value_t = 5_000)]
    nodes: usize,
    #[arg(long, default_value_t = 50_000)]
    pods: usize,
    /// The share of pods that are Flotilla's (each with its Job).
    #[arg(long, default_value_t = 0.2)]
    flotilla_share: f64,
    /// Sync rounds (one a second) on a quiet cluster, and again under churn.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Pod phase changes per second during the churn rounds.
    #[arg(long, default_value_t = 200)]
    churn_per_s: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.nodes == 0 || !(0.0..=1.0).contains(&args.flotilla_share) || args.rounds == 0 {
        bail!("--nodes must be above 0, --flotilla-share within 0..=1, --rounds above 0");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(measure(args))
}

async fn measure(args: &Args) -> anyhow::Result<()> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["executor-server", "--nodes", &args.nodes.to_string(), "--pods", &args.pods.to_string()])
        .args(["--flotilla-share", &args.flotilla_share.to_string(), "--churn-per-s", &args.churn_per_s.to_string()])
        .args(["--seed", &args.seed.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the API server process")?;
    let mut lines = BufReader::new(child.stdout.take().context("child stdout")?).lines();
    let ready: Value = serde_json::from_str(&lines.next().context("the API server process ended")??)?;
    let url = ready["url"].as_str().context("no url from the API server process")?.to_string();

    let rss_before = rss_bytes();
    let client = kube::Client::try_from(kube::Config::new(url.parse()?))?;
    let started = Instant::now();
    let backend = KubeBackend::new(client, "bench", INSTALLATION, Default::default());
    backend.wait_ready(Duration::from_secs(600)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let ready_s = started.elapsed().as_secs_f64();
    let rss_ready = rss_bytes();
    let nodes = backend.nodes().await?.len();
    let attempts = backend.attempts().await?.len();

    let quiet = sync_rounds(&backend, args.rounds).await?;
    let mut stdin = child.stdin.take().context("child stdin")?;
    writeln!(stdin, "churn")?;
    let churn = sync_rounds(&backend, args.rounds).await?;
    let rss_after = rss_bytes();
    drop(stdin);
    let _ = child.wait();

    let mib = |b: u64| (b as f64 / (1 << 20) as f64).round();
    let line = json!({
        "bench": "executor",
        "nodes": nodes,
        "pods": args.pods,
        "flotilla_attempts": attempts,
        "seed_s": ready["seed_s"],
        "server_rss_mib": ready["rss_mib"],
        "ready_s": (ready_s * 100.0).round() / 100.0,
        "executor_rss_mib_before": mib(rss_before),
        "executor_rss_mib_ready": mib(rss_ready),
        "executor_rss_mib_after": mib(rss_after),
        "executor_peak_rss_mib": mib(crate::peak_memory_bytes()),
        "sync_quiet": quiet,
        "sync_churn": churn,
        "churn_per_s": args.churn_per_s,
    });
    println!("{line}");
    Ok(())
}

/// `rounds` Syncs' worth of backend calls, one a second: p50 and p99 in ms of each call and
/// of the whole.
async fn sync_rounds(backend: &KubeBackend, rounds: usize) -> anyhow::Result<Value> {
    let (mut total, mut nodes, mut attempts, mut events) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut reported = 0usize;
    for _ in 0..rounds {
        let round = Instant::now();
        let t = Instant::now();
        backend.nodes().await?;
        nodes.push(t.elapsed());
        let t = Instant::now();
        backend.attempts().await?;
        attempts.push(t.elapsed());
        let t = Instant::now();
        let batch = backend.pending_events(1000).await?;
        backend.ack_events(&batch);
        events.push(t.elapsed());
        reported += batch.len();
        total.push(round.elapsed());
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(round.elapsed())).await;
    }
    Ok(json!({"total": percentiles(&mut total), "nodes": percentiles(&mut nodes), "attempts": percentiles(&mut attempts),
        "pending_events": percentiles(&mut events), "events_reported": reported}))
}

fn percentiles(samples: &mut [Duration]) -> Value {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    json!({"p50_ms": (at(0.5) * 10.0).round() / 10.0, "p99_ms": (at(0.99) * 10.0).round() / 10.0})
}

/// Resident memory of this process now (`VmRSS`), in bytes.
fn rss_bytes() -> u64 {
    crate::memory_bytes("VmRSS:")
}

/// The API server process: seeds, prints `{"url": ...}`, churns after a `churn` line on
/// stdin, and exits when stdin closes.
pub fn serve(args: &Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let options = Options { max_logged_requests: 1_000, ..Options::bare() };
        let server = ApiServer::start(options).await;
        let started = Instant::now();
        let flotilla_pods = seed(&server, args);
        let ready = json!({"url": server.url(), "seed_s": started.elapsed().as_secs(), "rss_mib": rss_bytes() >> 20});
        println!("{ready}");
        std::io::stdout().flush()?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                if line.is_ok_and(|l| l.trim() == "churn") {
                    let _ = tx.blocking_send(());
                }
            }
        });
        if rx.recv().await.is_some() {
            tokio::select! {
                _ = churn(&server, &flotilla_pods, args) => {}
                _ = rx.recv() => {}
            }
        }
        Ok(())
    })
}

/// Pods changing phase, `churn_per_s` a second in ten steps: Flotilla's pods between
/// Running and Succeeded, other pods' phases likewise (a finished pod leaves the
/// executor's other-pods watch, a restarted one joins it again).
async fn churn(server: &ApiServer, flotilla_pods: &[String], args: &Args) {
    let mut rng = SmallRng::seed_from_u64(args.seed + 1);
    let per_step = args.churn_per_s.div_ceil(10);
    loop {
        for _ in 0..per_step {
            let i = rng.random_range(0..args.pods);
            let (ns, name) = if i < flotilla_pods.len() { ("flotilla-bench", flotilla_pods[i].clone()) } else { ("", other_pod_name(i)) };
            let ns = if ns.is_empty() { other_namespace(i) } else { ns.to_string() };
            let _ = server.update(Kind::Pod, &ns, &name, |p| {
                let next = if p["status"]["phase"] == "Running" { "Succeeded" } else { "Running" };
                p["status"]["phase"] = json!(next);
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn other_namespace(i: usize) -> String {
    format!("team-{}", i % 200)
}

fn other_pod_name(i: usize) -> String {
    format!("web-{i:06}-7d9f8c6b5-x2k4p")
}

/// Seeds nodes, Flotilla's Jobs and pods, and other pods; returns Flotilla's pod names.
fn seed(server: &ApiServer, args: &Args) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(args.seed);
    for i in 0..args.nodes {
        server.apply(node(i));
    }
    let flotilla = (args.pods as f64 * args.flotilla_share) as usize;
    let mut names = Vec::with_capacity(flotilla);
    for i in 0..args.pods {
        let node = format!("node-{:05}", rng.random_range(0..args.nodes));
        if i < flotilla {
            let task_id = i as u64 + 1;
            server.apply(flotilla_job(task_id));
            let phase = ["Running", "Running", "Running", "Running", "Pending", "Succeeded", "Failed"][rng.random_range(0..7)];
            let pod = flotilla_pod(task_id, &node, phase);
            names.push(pod["metadata"]["name"].as_str().unwrap_or_default().to_string());
            server.apply(pod);
        } else {
            let phase = if rng.random_bool(0.9) { "Running" } else { "Succeeded" };
            server.apply(other_pod(i, &node, phase));
        }
    }
    names
}

fn node(i: usize) -> Value {
    let name = format!("node-{i:05}");
    let images: Vec<Value> = (0..20)
        .map(|k| json!({"names": [format!("registry.example.com/team-{k}/service@sha256:{:064x}", k * 7919 + i)], "sizeBytes": 100_000_000 + k * 1_000_000}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "topology.kubernetes.io/region": "us-east-1", "topology.kubernetes.io/zone": format!("us-east-1{}", ["a", "b", "c"][i % 3]),
            "topology.flotilla.io/rack": format!("rack-{}", i / 16), "node.kubernetes.io/instance-type": "p5.48xlarge",
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "karpenter.sh/capacity-type": "on-demand"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {"providerID": format!("aws:///us-east-1a/i-{i:017x}"), "podCIDR": format!("10.{}.{}.0/24", i / 256, i % 256)},
        "status": {
            "capacity": {"cpu": "192", "memory": "2063937Mi", "nvidia.com/gpu": "8", "pods": "110", "ephemeral-storage": "1Ti"},
            "allocatable": {"cpu": "191450m", "memory": "2000Gi", "nvidia.com/gpu": "8", "pods": "110", "ephemeral-storage": "1Ti"},
            "conditions": node_conditions(),
            "addresses": [{"type": "InternalIP", "address": format!("10.0.{}.{}", i / 256, i % 256)}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"machineID": format!("{i:032x}"), "systemUUID": format!("{i:032x}"), "bootID": format!("{i:032x}"), "kernelVersion": "6.1.0",
                "osImage": "Amazon Linux 2023", "containerRuntimeVersion": "containerd://1.7.11", "kubeletVersion": "v1.33.0",
                "kubeProxyVersion": "v1.33.0", "operatingSystem": "linux", "architecture": "amd64"},
            "images": images}})
}

fn node_conditions() -> Vec<Value> {
    ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
        .iter()
        .map(|t| {
            json!({"type": t, "status": if *t == "Ready" { "True" } else { "False" }, "reason": format!("Kubelet{t}"),
                "message": "kubelet is posting ready status", "lastHeartbeatTime": "2025-01-01T00:00:00Z", "lastTransitionTime": "2025-01-01T00:00:00Z"})
        })
        .collect()
}

fn flotilla_labels(task_id: u64) -> Value {
    json!({"flotilla.io/task-id": task_id.to_string(), "flotilla.io/attempt": "1", "flotilla.io/queue": "bench",
        "flotilla.io/task-set": "sweep", "app.kubernetes.io/managed-by": "flotilla", "flotilla.io/installation": INSTALLATION})
}

/// The installation the benchmark's executor belongs to (its Jobs and pods carry it).
const INSTALLATION: &str = "5eed0000b0a7c0de";

fn job_name(task_id: u64) -> String {
    format!("flotilla-{}-{task_id}-1", &INSTALLATION[..8])
}

fn flotilla_container() -> Value {
    json!({"name": "task", "image": "ghcr.io/acme/train:1.4", "command": ["python", "train.py"], "args": ["--lr=3e-4"],
        "env": [{"name": "FLOTILLA_TASK_ID", "value": "1"}, {"name": "FLOTILLA_QUEUE", "value": "bench"}, {"name": "WANDB_PROJECT", "value": "sweep"}],
        "resources": {"requests": {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "1"}, "limits": {"memory": "160Gi", "nvidia.com/gpu": "1"}},
        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}})
}

fn flotilla_job(task_id: u64) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(task_id), "namespace": "flotilla-bench", "labels": flotilla_labels(task_id),
            "annotations": {"flotilla.io/task-name": format!("train-{task_id}"), "flotilla.io/task-set": "sweep"}},
        "spec": {"backoffLimit": 0, "completions": 1, "parallelism": 1, "activeDeadlineSeconds": 7201,
            "template": {"metadata": {"labels": flotilla_labels(task_id)}, "spec": {"restartPolicy": "Never",
                "nodeSelector": {"kubernetes.io/hostname": "node-00000"}, "containers": [flotilla_container()]}}},
        "status": {"active": 1, "startTime": "2025-01-01T00:00:00Z"}})
}

fn flotilla_pod(task_id: u64, node: &str, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{}-x7k2p", job_name(task_id)), "namespace": "flotilla-bench", "labels": flotilla_labels(task_id),
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name(task_id), "uid": "u", "controller": true}]},
        "spec": {"nodeName": node, "restartPolicy": "Never", "containers": [flotilla_container()]},
        "status": {"phase": phase, "podIP": "10.1.0.1", "startTime": "2025-01-01T00:00:00Z",
            "containerStatuses": [{"name": "task", "image": "ghcr.io/acme/train:1.4", "imageID": "", "ready": phase == "Running", "restartCount": 0,
                "state": if phase == "Running" { json!({"running": {"startedAt": "2025-01-01T00:00:00Z"}}) } else { json!({"terminated": {"exitCode": 0, "reason": "Completed"}}) }}]}})
}

fn other_pod(i: usize, node: &str, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": other_pod_name(i), "namespace": other_namespace(i),
            "labels": {"app": format!("web-{}", i % 500), "pod-template-hash": "7d9f8c6b5"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z", "prometheus.io/scrape": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("web-{}-7d9f8c6b5", i % 500), "uid": "r", "controller": true}]},
        "spec": {"nodeName": node, "serviceAccountName": "default", "containers": [
            {"name": "app", "image": "registry.example.com/web:2.3.1", "ports": [{"containerPort": 8080, "protocol": "TCP"}],
             "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "REGION", "value": "us-east-1"}],
             "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
             "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
             "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]},
            {"name": "sidecar", "image": "registry.example.com/proxy:1.0", "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]},
        "status": {"phase": phase, "podIP": "10.2.0.1", "hostIP": "10.0.0.1", "qosClass": "Burstable", "startTime": "2025-01-01T00:00:00Z",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "app", "image": "registry.example.com/web:2.3.1", "imageID": "", "ready": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}]}})
}
