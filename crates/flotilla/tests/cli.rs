//! The `flotilla` CLI end to end against one in-process replica and a simulated cluster.
//!
//! Every command runs the real binary as a child process, so exit codes, stdout and
//! stderr are what a user sees.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use flotilla_executor::{ExecutorConfig, SimCluster, SimOptions};
use flotilla_server::ServerConfig;

const CLUSTERS: &str = r#"
[[cluster]]
name = "sim-a"
region = "test-1"
pending = "100ms"
default_duration = "1s"

[[cluster.pool]]
name = "gpu"
instance_type = "test.8gpu"
count = 4
cpu = "64"
memory = "512Gi"
gpu = 8
gpu_product = "NVIDIA-H100-80GB-HBM3"
price_per_hour_usd = 10.0
zones = ["test-1a"]
nodes_per_rack = 2
"#;

struct Env {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    url: String,
}

impl Env {
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    async fn run(&self, args: &[&str]) -> Output {
        let url = self.url.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_flotilla")).arg("--server").arg(url).args(&args).output().unwrap()
        })
        .await
        .unwrap()
    }

    async fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        let out = self.run(&full).await;
        assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }
}

async fn start() -> (Env, flotilla_server::ServerHandle, flotilla_executor::ExecutorHandle) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::single("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    config.schedule_interval = Duration::from_millis(100);
    config.sync_interval = Duration::from_millis(200);
    let server = flotilla_server::start(config).await.unwrap();
    server.wait_for_leader(Duration::from_secs(20)).await.unwrap();
    let url = format!("http://{}", server.local_addr);
    let clusters = flotilla_executor::parse_clusters(CLUSTERS, Path::new("test.toml")).unwrap();
    let sim = SimCluster::from_file(&clusters, "sim-a", SimOptions { seed: Some(7), speed: Some(10.0), ..Default::default() }).unwrap();
    let mut ec = ExecutorConfig::new(vec![url.clone()], "sim-a");
    ec.sync_interval = Duration::from_millis(200);
    let executor = flotilla_executor::spawn(ec, Arc::new(sim));
    let env = Env { dir: dir.path().to_path_buf(), _dir: dir, url };
    (env, server, executor)
}

const GOOD: &str = r#"
queue: research
taskSet: nightly
tasks:
  - name: agent
    count: 3
    image: ghcr.io/acme/agent:1.4.2
    resources: {cpu: 500m, memory: 2Gi}
    sim: {duration: 1s}
  - name: train
    gang: {size: 2, topology: rack}
    image: ghcr.io/acme/train:2.0
    resources: {cpu: 8, memory: 64Gi, nvidia.com/gpu: 8}
    placement: {gpuModel: H100}
    after: [agent]
    sim: {duration: 1s}
"#;

/// (case, task file or None, extra args, expected exit code, expected text in stderr)
type BadInput = (&'static str, Option<String>, Vec<&'static str>, i32, &'static str);

fn bad_inputs() -> Vec<BadInput> {
    let t = |body: &str| Some(format!("queue: research\ntaskSet: bad\ntasks:\n{body}"));
    let ok_task = "  - name: ok\n    image: busybox\n    resources: {cpu: 1}\n";
    let many = "  - name: many\n    count: 10001\n    image: busybox\n    resources: {cpu: 1}\n".to_string();
    let huge = format!("  - name: huge\n    image: busybox\n    resources: {{cpu: 1}}\n    command: [\"{}\"]\n", "x".repeat(70_000));
    vec![
        ("malformed yaml", Some("queue: research\ntaskSet: bad\ntasks:\n  - name: a\n    resources: {cpu: [1\n".into()), vec![], 2, "line"),
        ("unknown field", t("  - name: a\n    imagee: busybox\n"), vec![], 2, "imagee"),
        ("unknown queue", Some("queue: nope\ntaskSet: bad\ntasks:\n  - name: a\n    image: i\n    resources: {cpu: 1}\n".into()), vec![], 2, "queue: \"nope\" does not exist"),
        ("unknown priority class", t("  - name: a\n    image: i\n    priorityClass: urgent\n    resources: {cpu: 1}\n"), vec![], 2, "tasks[0].priorityClass: unknown priority class \"urgent\""),
        ("unparseable quantity after a good task", t(&format!("{ok_task}  - name: b\n    image: i\n    resources: {{memory: 2Gx}}\n")), vec![], 2, "tasks[1].resources.memory: \"2Gx\" is not a quantity"),
        ("negative quantity", t("  - name: a\n    image: i\n    resources: {cpu: \"-1\"}\n"), vec![], 2, "tasks[0].resources.cpu: \"-1\" must be greater than zero"),
        ("zero quantity", t("  - name: a\n    image: i\n    resources: {memory: \"0\"}\n"), vec![], 2, "tasks[0].resources.memory: \"0\" must be greater than zero"),
        ("fractional gpu", t("  - name: a\n    image: i\n    resources: {nvidia.com/gpu: 1.5}\n"), vec![], 2, "tasks[0].resources.nvidia.com/gpu: \"1.5\" must be a whole number"),
        ("limits below requests", t("  - name: a\n    image: i\n    resources: {memory: 2Gi}\n    limits: {memory: 1Gi}\n"), vec![], 2, "tasks[0].limits.memory: \"1Gi\" is below the request \"2Gi\""),
        ("gang of one", t("  - name: a\n    image: i\n    resources: {cpu: 1}\n    gang: {size: 1}\n"), vec![], 2, "tasks[0].gang.size: 1 must be at least 2"),
        ("gang with count", t("  - name: a\n    image: i\n    resources: {cpu: 1}\n    count: 2\n    gang: {size: 2}\n"), vec![], 2, "tasks[0].count: cannot be combined with gang"),
        ("bad gang topology", t("  - name: a\n    image: i\n    resources: {cpu: 1}\n    gang: {size: 2, topology: galaxy}\n"), vec![], 2, "tasks[0].gang.topology: \"galaxy\" is not one of node, rack, zone, cluster"),
        ("unknown after", t(&format!("{ok_task}  - name: b\n    image: i\n    resources: {{cpu: 1}}\n    after: [nope]\n")), vec![], 2, "tasks[1].after[0]: \"nope\" is not the name of a task in this file"),
        ("cyclic after", t("  - name: a\n    image: i\n    resources: {cpu: 1}\n    after: [b]\n  - name: b\n    image: i\n    resources: {cpu: 1}\n    after: [a]\n"), vec![], 2, "dependency cycle between"),
        ("task name not a DNS label", t("  - name: Agent_1\n    image: i\n    resources: {cpu: 1}\n"), vec![], 2, "tasks[0].name: \"Agent_1\" is not a valid name"),
        ("task set not a DNS label", Some("queue: research\ntaskSet: Nightly Eval\ntasks:\n  - name: a\n    image: i\n    resources: {cpu: 1}\n".into()), vec![], 2, "taskSet: \"Nightly Eval\" is not a valid name"),
        ("duplicate task names", t(&format!("{ok_task}{ok_task}")), vec![], 2, "tasks[1].name: \"ok\" is also the name of tasks[0]"),
        ("too many tasks", t(&many), vec![], 2, "tasks: 10001 tasks exceed the limit of 10000 per submission"),
        ("task over the byte limit", t(&huge), vec![], 2, "bytes exceed the limit of 65536 bytes per task"),
        ("missing image", t("  - name: a\n    resources: {cpu: 1}\n"), vec![], 2, "tasks[0].image: is required"),
        ("missing resources", t("  - name: a\n    image: i\n"), vec![], 2, "tasks[0].resources: is required"),
        ("bad duration", t("  - name: a\n    image: i\n    resources: {cpu: 1}\n    maxRuntime: forever\n"), vec![], 2, "tasks[0].maxRuntime: \"forever\" is not a duration"),
        ("bad spot policy", t("  - name: a\n    image: i\n    resources: {cpu: 1}\n    placement: {spot: sometimes}\n"), vec![], 2, "tasks[0].placement.spot: \"sometimes\" is not one of allowed, required, never"),
        ("zero max attempts", t("  - name: a\n    image: i\n    resources: {cpu: 1}\n    retry: {maxAttempts: 0}\n"), vec![], 2, "tasks[0].retry.maxAttempts: 0 must be between 1 and 100"),
        ("reserved env var", t("  - name: a\n    image: i\n    resources: {cpu: 1}\n    env: {FLOTILLA_TASK_ID: x}\n"), vec![], 2, "tasks[0].env.FLOTILLA_TASK_ID"),
        ("no tasks", Some("queue: research\ntaskSet: bad\ntasks: []\n".into()), vec![], 2, "tasks: at least one task is required"),
        ("no queue anywhere", Some("taskSet: bad\ntasks:\n  - name: a\n    image: i\n    resources: {cpu: 1}\n".into()), vec![], 2, "queue: not set in the file nor with --queue"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_end_to_end_and_bad_inputs_change_nothing() {
    let (env, server, executor) = start().await;

    // Queues.
    let out = env.run(&["queue", "create", "research", "--weight", "3", "--limit", "nvidia.com/gpu=32"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let queues = env.json(&["queue", "list"]).await;
    assert_eq!(queues[0]["name"], "research");
    assert_eq!(queues[0]["weight"], 3.0);
    let out = env.run(&["queue", "create", "research"]).await;
    assert_eq!(out.status.code(), Some(2), "creating a queue twice is bad input");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    for (args, expected) in [
        (vec!["queue", "create", "Bad_Queue"], "name: \"Bad_Queue\" is not a valid name"),
        (vec!["queue", "create", "neg", "--weight", "-1"], "weight: -1 must be a number >= 0"),
        (vec!["queue", "create", "q2", "--limit", "gpu"], "--limit: \"gpu\" is not RESOURCE=QUANTITY"),
        (vec!["queue", "create", "q3", "--limit", "memory=lots"], "limit.memory: \"lots\" is not a quantity"),
        (vec!["get", "--state", "sleeping"], "state: \"sleeping\" is not one of"),
        (vec!["cancel"], "give task ids, or both --queue and --task-set"),
        (vec!["submit", "/nonexistent/tasks.yaml"], "/nonexistent/tasks.yaml"),
    ] {
        let out = env.run(&args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr:?}");
    }
    assert_eq!(env.json(&["queue", "list"]).await.as_array().unwrap().len(), 1, "bad queue commands created nothing");

    // At least 20 bad task files: each rejected whole, with the field's path, exit code 2.
    let cases = bad_inputs();
    assert!(cases.len() >= 20);
    for (i, (name, text, extra, code, expected)) in cases.iter().enumerate() {
        let path = env.file(&format!("bad-{i}.yaml"), text.as_deref().unwrap_or(""));
        let mut args = vec!["submit", path.to_str().unwrap()];
        args.extend(extra.iter());
        let out = env.run(&args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "case {name:?}: {stderr}");
        assert!(stderr.contains(expected), "case {name:?}: expected {expected:?} in {stderr:?}");
    }
    assert_eq!(env.json(&["get"]).await, serde_json::json!([]), "no bad submission created a task");

    // A good file: submitted, scheduled on the simulated cluster, watched to the end.
    let good = env.file("good.yaml", GOOD);
    let submitted = env.json(&["submit", good.to_str().unwrap()]).await;
    let ids: Vec<u64> = submitted["taskIds"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(ids.len(), 5, "3 agents + a gang of 2");
    let out = env.run(&["watch", "--queue", "research", "--task-set", "nightly", "--until-done"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "watch --until-done exits 0 when all succeeded: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("succeeded"), "{stdout}");

    let tasks = env.json(&["get", "--queue", "research", "--task-set", "nightly"]).await;
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 5);
    for t in tasks {
        for key in ["id", "name", "queue", "taskSet", "state", "attempt", "cluster", "node", "reason"] {
            assert!(t.get(key).is_some(), "get -o json has {key}: {t}");
        }
        assert_eq!(t["state"], "succeeded", "{t}");
        assert_eq!(t["cluster"], "sim-a");
    }
    let one = env.json(&["get", &ids[0].to_string()]).await;
    assert_eq!(one[0]["id"].as_u64(), Some(ids[0]));
    let out = env.run(&["get", "999999"]).await;
    assert_eq!(out.status.code(), Some(2), "an unknown id is bad input");

    let clusters = env.json(&["clusters"]).await;
    assert_eq!(clusters[0]["name"], "sim-a");
    assert_eq!(clusters[0]["state"], "ready");
    assert_eq!(clusters[0]["nodes"], 4);
    assert_eq!(clusters[0]["allocatable"]["gpu"], 32);
    for key in ["cpu", "memory", "gpu"] {
        assert!(clusters[0]["used"].get(key).is_some(), "{}", clusters[0]);
    }

    // Cancel a whole task set; then watch --until-done exits 1 (not every task succeeded).
    let slow = env.file("slow.yaml", "queue: research\ntaskSet: slow\ntasks:\n  - name: a\n    count: 2\n    image: i\n    resources: {cpu: 1}\n    sim: {duration: 1h}\n");
    env.json(&["submit", slow.to_str().unwrap()]).await;
    let cancelled = env.json(&["cancel", "--queue", "research", "--task-set", "slow"]).await;
    assert_eq!(cancelled["cancelled"], 2);
    let out = env.run(&["watch", "--queue", "research", "--task-set", "slow", "--until-done"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let out = env.run(&["resume", "--queue", "research", "--task-set", "slow"]).await;
    assert_eq!(out.status.code(), Some(1), "resuming a set that is not paused fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not paused"));

    // A replica that does not answer: the operation failed, exit 1; the next URL is tried.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["--server", "http://127.0.0.1:1", "queue", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no scheduler replica answered"));
    let both = format!("http://127.0.0.1:1,{}", env.url);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla")).args(["--server", &both, "queue", "list"]).output().unwrap();
    assert!(out.status.success(), "falls over to the second replica: {}", String::from_utf8_lossy(&out.stderr));

    executor.abort();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_examples_auth_toml_the_cli_and_executor_use_their_tokens_and_are_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::single("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    config.schedule_interval = Duration::from_millis(100);
    config.sync_interval = Duration::from_millis(200);
    config.auth_file = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/auth.toml"));
    let server = flotilla_server::start(config).await.unwrap();
    server.wait_for_leader(Duration::from_secs(20)).await.unwrap();
    let url = format!("http://{}", server.local_addr);
    let env = Env { dir: dir.path().to_path_buf(), _dir: dir, url: url.clone() };

    let out = env.run(&["queue", "create", "research"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not authenticated: credentials required"), "{out:?}");
    let out = env.run(&["--token", "alice-example-token", "queue", "create", "research"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied: CreateQueue needs the cluster admin role"), "{out:?}");
    let q = env
        .json(&["--token", "admin-example-token", "queue", "create", "research", "--permit", "group:research=submit,cancel,watch"])
        .await;
    assert_eq!(q[0]["permits"], serde_json::json!(["group:research=submit,cancel,watch"]), "{q}");
    let out = env.run(&["--token", "admin-example-token", "queue", "create", "x", "--permit", "everyone=submit"]).await;
    assert_eq!(out.status.code(), Some(2), "a bad permit is bad input");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--permit: \"everyone\" is not user:NAME or group:NAME"), "{out:?}");

    // The lab's executor, with its credential, runs what alice submits.
    let clusters = flotilla_executor::parse_clusters(&CLUSTERS.replace("sim-a", "onprem-lab"), Path::new("test.toml")).unwrap();
    let sim =
        SimCluster::from_file(&clusters, "onprem-lab", SimOptions { seed: Some(7), speed: Some(10.0), ..Default::default() }).unwrap();
    let mut ec = ExecutorConfig::new(vec![url], "onprem-lab");
    ec.sync_interval = Duration::from_millis(200);
    ec.token = flotilla_api::auth::BearerToken::new("onprem-lab-example-token").unwrap();
    let executor = flotilla_executor::spawn(ec, Arc::new(sim));
    let file = env.file("agents.yaml", "queue: research\ntaskSet: a\ntasks:\n  - name: agent\n    count: 2\n    image: busybox\n    resources: {cpu: 1}\n    sim: {duration: 1s}\n");
    let token_file = env.file("alice.token", "alice-example-token\n");
    let out = env.run(&["--token-file", token_file.to_str().unwrap(), "submit", file.to_str().unwrap()]).await;
    assert!(out.status.success(), "alice submits with a token file: {}", String::from_utf8_lossy(&out.stderr));
    let out = env.run(&["--token", "bob-example-token", "get", "--queue", "research"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`watch` permission on queue \"research\""), "{out:?}");
    let mut done = false;
    for _ in 0..100 {
        let tasks = env.json(&["--token", "alice-example-token", "get", "--queue", "research"]).await;
        if tasks.as_array().is_some_and(|a| a.len() == 2 && a.iter().all(|t| t["state"] == "succeeded")) {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(done, "alice's tasks ran on the lab cluster through its authenticated executor");

    let out = env.run(&["auth", "hash-token", "alice-example-token"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("sha256:62743fdd6bbb8413deedd0657c152fbae2ccb3675ee686ec872974ee5d1ff547"));
    executor.abort();
    server.shutdown().await;
}
