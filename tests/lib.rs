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

/// The repository's root directory (relative paths in `flotilla dev` flags start there).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `flotilla dev` on free loopback ports; killed when dropped.
pub struct DevProcess {
    child: std::process::Child,
    /// `127.0.0.1:PORT`: its gRPC address.
    pub grpc: String,
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DevProcess {
    /// Starts `flotilla dev --clusters CLUSTERS --speed SPEED` (a path relative to the
    /// repository's root) and waits for its gRPC address.
    pub fn start(clusters: &str, speed: &str) -> DevProcess {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new(flotilla_bin())
            .args(["dev", "--clusters", clusters, "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--speed", speed])
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("flotilla dev starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps reading (the logs go to stderr) so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("gRPC on http://").nth(1) {
                    let _ = tx.send(rest.split(',').next().unwrap_or_default().to_string());
                }
            }
        });
        let grpc = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("flotilla dev prints its gRPC address");
        DevProcess { child, grpc }
    }

    /// Runs the `flotilla` CLI against this process: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(flotilla_bin())
            .arg("--server")
            .arg(format!("http://{}", self.grpc))
            .args(args)
            .current_dir(repo_root())
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
