//! `flotilla executor --http`: the health check a liveness probe uses, and the metrics.

use std::time::{Duration, Instant};

use flotilla_server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLUSTERS: &str = r#"
[[cluster]]
name = "sim-a"
region = "test-1"

[[cluster.pool]]
name = "cpu"
instance_type = "test.8cpu"
count = 2
cpu = "8"
memory = "32Gi"
price_per_hour_usd = 1.0
zones = ["test-1a"]
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: t\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// Polls `path` until `ok` holds for (status, body), or panics after `within`.
async fn until(port: u16, path: &str, within: Duration, ok: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        if let Some((code, body)) = get(port, path).await {
            if ok(code, &body) {
                return (code, body);
            }
            assert!(Instant::now() < deadline, "{path}: still {code}: {body}");
        } else {
            assert!(Instant::now() < deadline, "{path}: no answer");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn executor(server: &str, file: &std::path::Path, http_port: u16) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["--server", server, "executor", "--cluster", "sim-a", "--sync-interval", "200ms", "--unhealthy-after", "1s"])
        .arg("--sim")
        .arg(file)
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_health_follows_its_syncs_and_metrics_count_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clusters.toml");
    std::fs::write(&file, CLUSTERS).unwrap();

    // No scheduler answers: healthy during the grace, then unhealthy, failures counted.
    let port = free_port();
    let mut lonely = executor(&format!("http://127.0.0.1:{}", free_port()), &file, port);
    let (_, body) = until(port, "/healthz", Duration::from_secs(20), |code, _| code == 503).await;
    assert!(body.contains("unhealthy: last successful sync"), "{body}");
    let (_, metrics) =
        until(port, "/metrics", Duration::from_secs(10), |_, b| !b.contains("sync_failures_total{cluster=\"sim-a\"} 0")).await;
    assert!(metrics.contains("flotilla_executor_syncs_total{cluster=\"sim-a\"} 0"), "{metrics}");
    lonely.kill().unwrap();
    lonely.wait().unwrap();

    // A live scheduler: healthy, and successful syncs are counted.
    let mut config = ServerConfig::single("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    config.sync_interval = Duration::from_millis(200);
    let server = flotilla_server::start(config).await.unwrap();
    server.wait_for_leader(Duration::from_secs(20)).await.unwrap();
    let port = free_port();
    let mut child = executor(&format!("http://{}", server.local_addr), &file, port);
    let (_, metrics) = until(port, "/metrics", Duration::from_secs(20), |_, b| {
        b.lines().any(|l| l.starts_with("flotilla_executor_syncs_total") && !l.ends_with(" 0"))
    })
    .await;
    assert!(metrics.contains("# TYPE flotilla_executor_sync_age_seconds gauge"), "{metrics}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, body) = get(port, "/healthz").await.unwrap();
    assert_eq!(code, 200, "syncing executors stay healthy past --unhealthy-after: {body}");
    child.kill().unwrap();
    child.wait().unwrap();
    server.shutdown().await;
}

/// `POST path` with extra header lines and a body: the status code.
async fn post(port: u16, path: &str, headers: &str, body: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("POST {path} HTTP/1.0\r\nHost: t\r\nContent-Length: {}\r\n{headers}\r\n{body}", body.len());
    s.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    String::from_utf8_lossy(&buf).split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_progress_endpoint_refuses_missing_and_unknown_tokens_and_large_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clusters.toml");
    std::fs::write(&file, CLUSTERS).unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["--server", &format!("http://127.0.0.1:{}", free_port()), "executor", "--cluster", "sim-a"])
        .arg("--sim")
        .arg(&file)
        .args(["--http", &format!("127.0.0.1:{port}"), "--progress-url", &format!("http://127.0.0.1:{port}/progress")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until(port, "/healthz", Duration::from_secs(20), |_, _| true).await;
    assert_eq!(post(port, "/progress", "", "").await, Some(401), "no token");
    assert_eq!(post(port, "/progress", "Authorization: Bearer 00ff\r\n", "").await, Some(401), "a token no attempt holds");
    assert_eq!(post(port, "/progress", "Authorization: Bearer 00ff\r\n", &"x".repeat(4096)).await, Some(413), "a body over 1 KiB");
    assert_eq!(get(port, "/progress").await.map(|(c, _)| c), Some(405), "signals are POSTs");
    child.kill().unwrap();
    child.wait().unwrap();
}
