//! The transport of issue 12: the client port never serves Raft, the peer port speaks mutual
//! TLS when configured, and the client and HTTP ports serve TLS from certificates that are
//! re-read when they change on disk.
//!
//! Certificates: `tests/fixtures/tls` (see its README). `ca` signed `server` (localhost,
//! 127.0.0.1) and `peer` (client and server); `other-ca` signed `other`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_api::dial::Dial;
use flotilla_api::raft::raft_client::RaftClient;
use flotilla_api::raft::RaftPayload;
use flotilla_api::tls::{CaFile, CertFiles, ClientTls, ReloadingCert};
use flotilla_api::v1::{self, executor_client::ExecutorClient, queues_client::QueuesClient, tasks_client::TasksClient};
use flotilla_server::{PeerTls, ServerConfig, ServerHandle};
use flotilla_tests::{free_addr, peer_listen_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls").join(name)
}

fn ca(name: &str) -> CaFile {
    CaFile::new("--ca-cert", fixture(name))
}

/// The peer mutual TLS of every test replica: `peer.pem`, signed by `ca.pem`.
fn peer_tls() -> PeerTls {
    PeerTls {
        cert: CertFiles::new("--peer-tls-cert", fixture("peer.pem"), "--peer-tls-key", fixture("peer.key")),
        ca: CaFile::new("--peer-ca-cert", fixture("ca.pem")),
    }
}

/// A client that trusts `ca_file` and presents `identity` (a fixture name) if given.
fn client_tls(ca_file: &str, identity: Option<&str>) -> Dial {
    let identity = identity.map(|name| {
        ReloadingCert::load(CertFiles::new("cert", fixture(&format!("{name}.pem")), "key", fixture(&format!("{name}.key")))).unwrap()
    });
    Dial::tcp().with_tls(ClientTls::new(Some(&ca(ca_file)), identity).unwrap())
}

async fn connect(dial: &Dial, url: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(url.to_string()).unwrap().connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(10));
    dial.connect(endpoint).await.map_err(|e| error_chain(&e))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

fn payload(json: &str) -> RaftPayload {
    RaftPayload { data: json.as_bytes().to_vec() }
}

/// What two anonymous AppendEntries did to a replica before the ports were split: a term
/// near u64::MAX from a replica that does not exist.
const HOSTILE_APPEND: &str = r#"{"vote":{"leader_id":{"term":18446744073709551614,"node_id":2},"committed":true},"prev_log_id":null,"entries":[],"leader_commit":null}"#;
const HOSTILE_VOTE: &str = r#"{"vote":{"leader_id":{"term":18446744073709551615,"node_id":2},"committed":false},"last_log_id":null}"#;

async fn single(config: impl FnOnce(&mut ServerConfig)) -> (tempfile::TempDir, ServerHandle) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = ServerConfig::single("127.0.0.1:0".parse().unwrap(), dir.path().join("data"));
    config(&mut c);
    let server = flotilla_server::start(c).await.unwrap_or_else(|e| panic!("server starts: {e:#}"));
    server.wait_for_leader(WAIT).await.unwrap();
    (dir, server)
}

async fn create_queue(channel: Channel, name: &str) {
    QueuesClient::new(channel)
        .create_queue(v1::CreateQueueRequest { queue: Some(v1::QueueSpec { name: name.into(), weight: 1.0, ..Default::default() }) })
        .await
        .expect("create queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_rpcs_on_the_client_port_answer_unimplemented_and_change_nothing() {
    let (_dir, server) = single(|_| {}).await;
    let term = server.ctx.replica.current_term();
    let client_url = format!("http://{}", server.local_addr);
    let mut raft = RaftClient::new(connect(&Dial::tcp(), &client_url).await.unwrap());

    let e = raft.append_entries(payload(HOSTILE_APPEND)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "AppendEntries on the client port: {e:?}");
    let e = raft.vote(payload(HOSTILE_VOTE)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "Vote on the client port: {e:?}");
    let e = raft.propose(payload(r#"{"commands":[]}"#)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "Propose on the client port: {e:?}");
    let e = raft.install_snapshot(payload("{}")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "InstallSnapshot on the client port: {e:?}");
    let e = raft.hello(payload("{}")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "Hello on the client port: {e:?}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.ctx.replica.current_term(), term, "the term did not move");
    assert!(server.ctx.is_leader(), "replica 1 still leads");
    // The client port still serves the public API, and the peer port serves Raft.
    create_queue(connect(&Dial::tcp(), &client_url).await.unwrap(), "q").await;
    let mut peer = RaftClient::new(connect(&Dial::tcp(), &format!("http://{}", server.peer_addr)).await.unwrap());
    let hello = peer.hello(payload("{}")).await.expect("Hello on the peer port").into_inner();
    assert!(String::from_utf8_lossy(&hello.data).contains("\"id\":1"), "{:?}", String::from_utf8_lossy(&hello.data));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_with_mutual_tls_admits_only_certificates_of_the_peer_ca() {
    let (_dir, server) = single(|c| {
        c.peer_tls = Some(peer_tls());
        c.peers = BTreeMap::from([(1, "https://127.0.0.1:0".to_string())]);
    })
    .await;
    let term = server.ctx.replica.current_term();
    let url = format!("https://127.0.0.1:{}", server.peer_addr.port());

    // The own peer URL was rewritten to the port the peer listener got.
    let members =
        server.ctx.replica.raft_metrics().borrow().membership_config.membership().nodes().map(|(_, n)| n.addr.clone()).collect::<Vec<_>>();
    assert_eq!(members, vec![url.clone()]);

    for (who, dial) in
        [("no client certificate", client_tls("ca.pem", None)), ("a certificate from another CA", client_tls("ca.pem", Some("other")))]
    {
        // TLS 1.3 finishes the client's side of the handshake before the server checks the
        // certificate, so the refusal may come with the first call rather than the connect.
        let refused = match connect(&dial, &url).await {
            Err(e) => e,
            Ok(channel) => match RaftClient::new(channel).append_entries(payload(HOSTILE_APPEND)).await {
                Err(status) => format!("{status:?}"),
                Ok(answer) => panic!("{who}: the peer port answered AppendEntries: {answer:?}"),
            },
        };
        // E.g. "received fatal alert: CertificateRequired", or the connection closed.
        let by_tls = ["alert", "TLS", "connection closed", "transport error"].iter().any(|w| refused.contains(w));
        assert!(by_tls && !refused.contains("Unimplemented"), "{who}: refused by TLS, not by a service: {refused}");
    }
    // Plaintext to the TLS peer port gets nothing either.
    let plain = format!("http://127.0.0.1:{}", server.peer_addr.port());
    if let Ok(channel) = connect(&Dial::tcp(), &plain).await {
        RaftClient::new(channel).hello(payload("{}")).await.expect_err("plaintext to the mutual-TLS peer port");
    }
    assert_eq!(server.ctx.replica.current_term(), term, "nothing reached Raft");

    // A replica's certificate is admitted.
    let channel = connect(&client_tls("ca.pem", Some("peer")), &url).await.expect("a peer certificate connects");
    RaftClient::new(channel).hello(payload("{}")).await.expect("Hello with a peer certificate");
    server.shutdown().await;
}

/// Replica `id` of a group whose peer ports speak mutual TLS.
async fn start_mtls(id: u64, listen: std::net::SocketAddr, peers: &BTreeMap<u64, String>, root: &Path) -> ServerHandle {
    let mut config = ServerConfig::single(listen, root.join(format!("replica-{id}")));
    config.id = id;
    config.peer_listen = peer_listen_of(&peers[&id]);
    config.peers = peers.clone();
    config.peer_tls = Some(peer_tls());
    config.sync_interval = Duration::from_millis(200);
    flotilla_server::start(config).await.unwrap_or_else(|e| panic!("replica {id} starts: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_with_peer_mutual_tls_elects_commits_and_forwards_sync_over_the_peer_port() {
    let root = tempfile::tempdir().unwrap();
    let client: BTreeMap<u64, std::net::SocketAddr> = (1..=3).map(|id| (id, free_addr())).collect();
    let peers: BTreeMap<u64, String> = (1..=3).map(|id| (id, format!("https://{}", free_addr()))).collect();
    let mut servers = BTreeMap::new();
    for id in 1..=3 {
        servers.insert(id, start_mtls(id, client[&id], &peers, root.path()).await);
    }
    let deadline = Instant::now() + WAIT;
    let leader = loop {
        if let Some((id, _)) = servers.iter().find(|(_, s)| s.ctx.is_leader()) {
            if servers.values().all(|s| s.ctx.replica.leader_id() == Some(*id)) {
                break *id;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader over mutual TLS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let follower = *servers.keys().find(|id| **id != leader).unwrap();
    let follower_url = format!("http://{}", client[&follower]);

    // A write through a follower: forwarded to the leader (Propose on its peer port),
    // committed on a majority, applied everywhere.
    create_queue(connect(&Dial::tcp(), &format!("http://{}", client[&leader])).await.unwrap(), "q").await;
    let deadline = Instant::now() + WAIT;
    while !servers.values().all(|s| s.ctx.read(|st| st.queue("q").is_some())) {
        assert!(Instant::now() < deadline, "the queue did not reach every replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let template = flotilla_tests::simple_template(3);
    let req = v1::SubmitTasksRequest {
        queue: "q".into(),
        task_set: "s".into(),
        tasks: vec![flotilla_api::template_to_proto(&template)],
        client_request_id: "mtls-1".into(),
    };
    let ids = TasksClient::new(connect(&Dial::tcp(), &follower_url).await.unwrap()).submit_tasks(req).await.expect("submit").into_inner();
    assert_eq!(ids.task_ids.len(), 3);
    let deadline = Instant::now() + WAIT;
    while !servers.values().all(|s| s.ctx.read(|st| st.task_count()) == 3) {
        assert!(Instant::now() < deadline, "the tasks did not reach every replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A Sync sent to the follower is answered by the leader (capacity is its soft state),
    // reached over the leader's mutual-TLS peer port.
    let mut executor = ExecutorClient::new(connect(&Dial::tcp(), &follower_url).await.unwrap());
    let deadline = Instant::now() + WAIT;
    loop {
        let sync = v1::SyncRequest { cluster: "c1".into(), executor_id: "c1-exec".into(), ..Default::default() };
        match executor.sync(sync).await {
            Ok(_) => break,
            // A new leader answers only once a majority confirmed it (fenced leadership).
            Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(s) => panic!("Sync through the follower: {s:?}"),
        }
    }
    let on = |id: u64| servers[&id].ctx.capacity.lock().unwrap().reports.contains_key("c1");
    assert!(on(leader), "the leader holds the forwarded report");
    assert!(!on(follower), "the follower forwarded it rather than keeping it");
    for (_, s) in servers {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_reaches_a_tls_client_port_with_the_ca_and_names_the_unknown_issuer_without_it() {
    let (_dir, server) =
        single(|c| c.tls = Some(CertFiles::new("--tls-cert", fixture("server.pem"), "--tls-key", fixture("server.key")))).await;
    let port = server.local_addr.port();
    for host in ["localhost", "127.0.0.1"] {
        let channel = connect(&client_tls("ca.pem", None), &format!("https://{host}:{port}")).await.expect("TLS with the right CA");
        QueuesClient::new(channel).list_queues(v1::ListQueuesRequest {}).await.expect("ListQueues over TLS");
    }
    let e = connect(&client_tls("other-ca.pem", None), &format!("https://localhost:{port}")).await.expect_err("a CA that did not sign it");
    assert!(e.contains("TLS handshake") && e.contains("UnknownIssuer") && e.contains("--ca-cert"), "{e}");
    // Plaintext gRPC to the TLS port gets no answer.
    if let Ok(channel) = connect(&Dial::tcp(), &format!("http://localhost:{port}")).await {
        QueuesClient::new(channel).list_queues(v1::ListQueuesRequest {}).await.expect_err("plaintext to a TLS port");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_is_served_to_new_connections_without_a_restart() {
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (files.path().join("tls.pem"), files.path().join("tls.key"));
    std::fs::copy(fixture("server.pem"), &cert).unwrap();
    std::fs::copy(fixture("server.key"), &key).unwrap();
    let tls = CertFiles::new("--tls-cert", &cert, "--tls-key", &key);
    let (_dir, server) = single(|c| c.tls = Some(tls)).await;
    let url = format!("https://localhost:{}", server.local_addr.port());
    let old = connect(&client_tls("ca.pem", None), &url).await.expect("the first pair, signed by ca");
    assert!(connect(&client_tls("other-ca.pem", None), &url).await.is_err(), "other-ca does not trust the first pair");

    // A half-written pair is not served: the old one stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
    tokio::time::sleep(flotilla_api::tls::RELOAD_CHECK_INTERVAL + Duration::from_millis(200)).await;
    connect(&client_tls("ca.pem", None), &url).await.expect("a broken file keeps the previous pair");

    // Rotated, as cert-manager would: a pair from another CA.
    std::fs::copy(fixture("other.key"), &key).unwrap();
    std::fs::copy(fixture("other.pem"), &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(channel) = connect(&client_tls("other-ca.pem", None), &url).await {
            QueuesClient::new(channel).list_queues(v1::ListQueuesRequest {}).await.expect("ListQueues with the new pair");
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let e = connect(&client_tls("ca.pem", None), &url).await.expect_err("new connections see the new pair");
    assert!(e.contains("UnknownIssuer"), "{e}");
    // A connection made before keeps working.
    QueuesClient::new(old).list_queues(v1::ListQueuesRequest {}).await.expect("the old connection still serves");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_over_tls_serves_healthz_with_http1_and_h2_offered() {
    let (_dir, server) = single(|c| {
        c.tls = Some(CertFiles::new("--tls-cert", fixture("server.pem"), "--tls-key", fixture("server.key")));
        c.http = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let addr = server.http_addr.expect("an HTTP port");
    let mut roots = rustls::RootCertStore::empty();
    for c in flotilla_api::tls::load_certs("ca", &fixture("ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(flotilla_api::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS on the HTTP port");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok\n"), "{response}");

    // Plain HTTP to the TLS port gets no page.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"), "plaintext got a page");
    server.shutdown().await;
}
