//! The CLI and `flotilla executor` against a replica serving TLS on its client port: they
//! reach it with `--ca-cert` (or `FLOTILLA_CA_CERT`), and fail with the reason without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flotilla_api::tls::CertFiles;
use flotilla_server::ServerConfig;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tls").join(name)
}

async fn cli(args: Vec<String>, env: Option<(&'static str, PathBuf)>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        command.args(&args).env_remove("FLOTILLA_CA_CERT").env_remove("FLOTILLA_SERVER");
        if let Some((k, v)) = env {
            command.env(k, v);
        }
        command.output().unwrap()
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_an_executor_reach_a_tls_server_with_ca_cert_and_fail_clearly_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::single("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    config.tls = Some(CertFiles::new("--tls-cert", fixture("server.pem"), "--tls-key", fixture("server.key")));
    config.sync_interval = Duration::from_millis(200);
    let server = flotilla_server::start(config).await.unwrap();
    server.wait_for_leader(Duration::from_secs(20)).await.unwrap();
    let url = format!("https://localhost:{}", server.local_addr.port());
    let ca = fixture("ca.pem").display().to_string();

    let out = cli(args(&["--server", &url, "--ca-cert", &ca, "queue", "create", "research"]), None).await;
    assert!(out.status.success(), "with --ca-cert: {}", String::from_utf8_lossy(&out.stderr));
    let out = cli(args(&["--server", &url, "queue", "list", "-o", "json"]), Some(("FLOTILLA_CA_CERT", fixture("ca.pem")))).await;
    assert!(out.status.success(), "with FLOTILLA_CA_CERT: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("research"));

    // A CA that did not sign the server's certificate: exit 1, the reason named.
    let other = fixture("other-ca.pem").display().to_string();
    let out = cli(args(&["--server", &url, "--ca-cert", &other, "queue", "list"]), None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("TLS handshake") && stderr.contains("UnknownIssuer") && stderr.contains("--ca-cert"), "{stderr}");
    // Without --ca-cert: the system's roots do not know the test CA (or there are none).
    let out = cli(args(&["--server", &url, "queue", "list"]), None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("UnknownIssuer") || stderr.contains("no system root certificates"), "{stderr}");
    // A CA file that is not one: a usage error naming the flag and the file.
    let not_pem = dir.path().join("empty.pem");
    std::fs::write(&not_pem, "").unwrap();
    let out = cli(args(&["--server", &url, "--ca-cert", &not_pem.display().to_string(), "queue", "list"]), None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("--ca-cert {}: no certificate found", not_pem.display())), "{stderr}");

    // An executor with --ca-cert syncs with the https server.
    let clusters = dir.path().join("clusters.toml");
    std::fs::write(
        &clusters,
        "[[cluster]]\nname = \"sim-a\"\n[[cluster.pool]]\nname = \"cpu\"\ncount = 1\ncpu = \"8\"\nmemory = \"32Gi\"\n",
    )
    .unwrap();
    let mut executor = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["--server", &url, "executor", "--cluster", "sim-a", "--sync-interval", "200ms", "--ca-cert", &ca])
        .arg("--sim")
        .arg(&clusters)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.ctx.read(|s| s.cluster("sim-a").is_none()) {
        assert!(Instant::now() < deadline, "the executor never reached the https server");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    executor.kill().unwrap();
    executor.wait().unwrap();
    server.shutdown().await;
}
