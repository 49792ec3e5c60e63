//! Cross-crate tests.
//!
//! Shared helpers for the test files in `tests/` and the helper binaries in `bin/`.

use flotilla_model::{SubmitLimits, TaskSpec, TaskTemplate};

/// An array task of `count` small tasks (1 CPU, 1 GiB), as a task file would hold it.
pub fn simple_template(count: u32) -> TaskTemplate {
    TaskTemplate {
        name: "agent".into(),
        count: Some(count),
        image: "busybox:1.36".into(),
        command: vec!["sleep".into(), "1".into()],
        resources: [("cpu".to_string(), "1".to_string()), ("memory".to_string(), "1Gi".to_string())].into(),
        ..Default::default()
    }
}

/// [`simple_template`] in `queue`/`task_set`, expanded as `flotilla submit` would send it.
pub fn simple_specs(queue: &str, task_set: &str, count: u32) -> Vec<TaskSpec> {
    flotilla_model::expand(queue, task_set, &[simple_template(count)], &SubmitLimits::default()).expect("a valid template")
}

/// A free loopback address: bound, then released for a server to bind again.
pub fn free_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("its address")
}

/// The address of a peer URL (`http://127.0.0.1:7001`): what the replica it names listens on.
pub fn peer_listen_of(url: &str) -> std::net::SocketAddr {
    let authority = url.split("://").nth(1).expect("a URL").trim_end_matches('/');
    authority.parse().unwrap_or_else(|e| panic!("{url}: not IP:port: {e}"))
}

/// A one-replica server on a loopback port with a leader, a client channel to it, and
/// `queue` created (weight 1). Keep the directory as long as the server runs.
pub async fn single_server_with_queue(queue: &str) -> (flotilla_server::ServerHandle, tonic::transport::Channel, tempfile::TempDir) {
    use flotilla_api::v1;
    let dir = tempfile::tempdir().unwrap();
    let config = flotilla_server::ServerConfig::single("127.0.0.1:0".parse().unwrap(), dir.path().join("replica"));
    let server = flotilla_server::start(config).await.expect("server starts");
    server.wait_for_leader(std::time::Duration::from_secs(10)).await.expect("a leader");
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", server.local_addr)).unwrap().connect().await.expect("connect");
    v1::queues_client::QueuesClient::new(channel.clone())
        .create_queue(v1::CreateQueueRequest { queue: Some(v1::QueueSpec { name: queue.into(), weight: 1.0, ..Default::default() }) })
        .await
        .expect("create queue");
    (server, channel, dir)
}

/// A plain HTTP/1.0 GET with extra header lines (each ending in `\r\n`, or none): the status
/// code, the response head and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str, headers: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect to the HTTP port");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n{headers}\r\n").as_bytes()).await.expect("send the request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read the response");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").map(|(h, b)| (h.to_string(), b.to_string())).unwrap_or_default();
    (status, head, body)
}

/// The `flotilla` binary: `$FLOTILLA_BIN`, else built (or found fresh) by cargo, once per
/// test process.
pub fn flotilla_bin() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(find_flotilla_bin).clone()
}

fn find_flotilla_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("FLOTILLA_BIN") {
        return p.into();
    }
    let cargo = std::env::var("CARGO").ok().or(option_env!("CARGO").map(str::to_string)).unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-p", "flotilla", "--bin", "flotilla", "--message-format=json-render-diagnostics"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::inherit());
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("running cargo build -p flotilla");
    assert!(out.status.success(), "cargo build -p flotilla failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "flotilla")
        .find_map(|m| m["executable"].as_str().map(std::path::PathBuf::from))
        .expect("cargo build names the flotilla executable")
}

/// A `flotilla dev` process on free loopback ports; killed when dropped.
pub struct DevProcess {
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT` of its gRPC port.
    pub grpc: String,
    /// Its HTTP port (web console, metrics).
    pub http: std::net::SocketAddr,
    /// Every line it wrote to stdout and stderr so far.
    pub output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository's root (where `clusters.example.toml` and `examples/` are).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Starts `flotilla dev` with `args` (after its free-port flags) in `dir`, its log in
/// `dir/flotilla-dev.log`, and waits until it printed its addresses. Its output is kept (read continuously so that it never blocks).
pub fn start_dev(dir: &std::path::Path, args: &[&str]) -> DevProcess {
    spawn_dev(dir, &dir.join("flotilla-dev.log"), args)
}

fn spawn_dev(dir: &std::path::Path, log_file: &std::path::Path, args: &[&str]) -> DevProcess {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(flotilla_bin())
        .args(["dev", "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--log-file")
        .arg(log_file)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("flotilla dev starts");
    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    for reader in [Box::new(stdout) as Box<dyn std::io::Read + Send>, Box::new(stderr)] {
        let (tx, output) = (tx.clone(), output.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("gRPC on ").nth(1) {
                    let grpc = rest.split(',').next().unwrap_or_default().to_string();
                    let http = line.split("metrics on http://").nth(1).and_then(|r| r.split(',').next()).unwrap_or_default().to_string();
                    let _ = tx.send((grpc, http));
                }
                output.lock().unwrap().push(line);
            }
        });
    }
    let Ok((grpc, http)) = rx.recv_timeout(std::time::Duration::from_secs(120)) else {
        let _ = child.kill();
        panic!("flotilla dev printed no addresses; its output:\n{}", output.lock().unwrap().join("\n"));
    };
    DevProcess { child, grpc, http: http.parse().unwrap_or_else(|e| panic!("HTTP address {http:?}: {e}")), output }
}

/// Runs the `flotilla` CLI against `server`; (success, stdout, stderr).
pub fn flotilla_cli(server: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(flotilla_bin())
        .arg("--server")
        .arg(server)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("flotilla runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Waits for `child` to exit, killing it after `within`: its output, and whether it was killed.
pub fn wait_output(mut child: std::process::Child, within: std::time::Duration) -> (std::process::Output, bool) {
    let started = std::time::Instant::now();
    let mut killed = false;
    while child.try_wait().expect("waiting for a child process").is_none() {
        if started.elapsed() > within {
            let _ = child.kill();
            killed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (child.wait_with_output().expect("the child's output"), killed)
}

/// Submits `templates` as one request to `queue`/`task_set` (request id `submit-<task_set>`)
/// and returns the task ids in order.
pub async fn submit_templates(
    channel: &tonic::transport::Channel,
    queue: &str,
    task_set: &str,
    templates: &[TaskTemplate],
) -> Vec<flotilla_model::TaskId> {
    use flotilla_api::v1;
    let req = v1::SubmitTasksRequest {
        queue: queue.into(),
        task_set: task_set.into(),
        tasks: templates.iter().map(flotilla_api::template_to_proto).collect(),
        client_request_id: format!("submit-{task_set}"),
    };
    let resp = v1::tasks_client::TasksClient::new(channel.clone()).submit_tasks(req).await.expect("submit").into_inner();
    resp.task_ids.into_iter().map(flotilla_model::TaskId).collect()
}

/// A task set's whole event log, oldest first (empty when the set is unknown).
pub fn task_set_events(state: &flotilla_store::State, queue: &str, task_set: &str) -> Vec<flotilla_store::TaskEvent> {
    state.task_set(queue, task_set).map(|t| t.events.iter().cloned().collect()).unwrap_or_default()
}

impl DevProcess {
    /// Starts `flotilla dev --clusters CLUSTERS --speed SPEED` in the repository's root (so
    /// `CLUSTERS` is relative to it), its log discarded, and waits for its addresses.
    pub fn start(clusters: &str, speed: &str) -> DevProcess {
        spawn_dev(&repo_root(), std::path::Path::new("/dev/null"), &["--clusters", clusters, "--speed", speed])
    }

    /// Its gRPC address without the scheme: `127.0.0.1:PORT`.
    pub fn grpc_host_port(&self) -> &str {
        self.grpc.trim_start_matches("http://")
    }

    /// Runs the `flotilla` CLI against this process: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(flotilla_bin())
            .arg("--server")
            .arg(&self.grpc)
            .args(args)
            .current_dir(repo_root())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("the flotilla CLI runs");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }

    /// Runs the CLI with `-o json`, which must succeed, and parses its output.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = args.to_vec();
        full.extend(["-o", "json"]);
        let (code, out, err) = self.cli(&full);
        assert_eq!(code, 0, "{args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }
}

/// Polls `cond` every 20 ms until it holds and returns how long that took; panics naming
/// `what` after `timeout`.
pub async fn wait_until(timeout: std::time::Duration, what: &str, mut cond: impl FnMut() -> bool) -> std::time::Duration {
    let started = std::time::Instant::now();
    loop {
        if cond() {
            return started.elapsed();
        }
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting until {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
