//! Invariant 2 under a real network partition (issue 11): a task attempt runs on at most one
//! cluster at any moment, partitions included, and healing the partition stops nothing healthy.
//!
//! Real processes in Linux network namespaces (iproute2 only, no iptables): three `flotilla
//! server` replicas, each in its own namespace, and two `flotilla executor --sim` processes
//! (clusters A and B, named `a` and `b`), each in its own namespace. Links:
//! - peer: every replica has a veth into a bridge namespace (10.X.1.N/24); `--peers` uses it;
//! - client: one veth pair per (client, replica), a /30 each, from the root namespace (this
//!   test, the observer), from executor A's namespace and from executor B's namespace.
//!
//! The scenario: 20 tasks of 60 s run on A (B's executor starts only once they all run). Then
//! a zone partition: the Raft leader and executor A on one side, the two other replicas and
//! executor B on the other (the leader's peer link is cut, and so are A's client links to
//! the two others and B's client link to the leader; the observer still sees everything). It
//! lasts `cluster_lost_after` + a margin after the majority elected a new leader, then heals;
//! the test waits until every task is terminal and checks, from the clusters' own run
//! histories (`--sim-history`) and the task events:
//! 1. no two runs of one task (any attempts, any clusters) ever overlap in time;
//! 2. every task succeeded exactly once (its state, its events, the clusters' histories);
//! 3. every attempt the majority saw running at the heal ran on to success: the heal stopped
//!    nothing healthy (no stale decision of the deposed leader took effect).
//!
//! It prints a timeline (t = 0 at the cut) for the issue. Needs root and `ip`; otherwise it
//! prints why and passes. The `flotilla` binary is built with `cargo build -p flotilla` (a
//! no-op when fresh) unless `FLOTILLA_BIN` names one. On failure the work directory (logs of
//! every process, history files) is kept and its path printed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_api::v1::{
    self, clusters_client::ClustersClient, queues_client::QueuesClient, replicas_client::ReplicasClient, tasks_client::TasksClient,
};
use flotilla_executor::sim::RunRecord;
use tonic::transport::{Channel, Endpoint};

/// Every replica listens here inside its own namespace (namespaces have separate port spaces):
/// the client port, and the peer port that `--peers` names.
const PORT: u16 = 50051;
const PEER_PORT: u16 = 50052;
const CLUSTER_LOST_AFTER: Duration = Duration::from_secs(10);
/// How long the partition outlasts `cluster_lost_after`, counted from the majority's election.
const PARTITION_MARGIN: Duration = Duration::from_secs(8);
const TASKS: usize = 20;
const TASK_DURATION: &str = "60s";
const QUEUE: &str = "agents";
const TASK_SET: &str = "partition";

/// One simulated cluster of two 10-CPU nodes; `a` and `b` differ only in name and seed.
fn cluster_toml(name: &str, seed: u64) -> String {
    format!(
        "[[cluster]]\nname = \"{name}\"\nregion = \"r{name}\"\npending = \"1s\"\nseed = {seed}\n\n\
         [[cluster.pool]]\nname = \"cpu\"\ninstance_type = \"test.10cpu\"\ncount = 2\ncpu = \"10\"\nmemory = \"40Gi\"\n\
         price_per_hour_usd = 1.0\nzones = [\"r{name}-1\"]\n"
    )
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Runs `ip ARGS`; the error carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ip_ok(args: &[&str]) {
    ip(args).unwrap_or_else(|e| panic!("{e}"));
}

fn ip_output(args: &[&str]) -> String {
    Command::new("ip").args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// Why this machine cannot run the test, if it cannot.
fn skip_reason() -> Option<String> {
    match Command::new("ip").arg("-V").output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some("`ip` (iproute2) is not installed".into()),
        Err(e) => return Some(format!("cannot run `ip`: {e}")),
        Ok(_) => {}
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().next().map(str::to_string));
    if uid.as_deref() != Some("0") {
        return Some(format!("network namespaces need root (uid {})", uid.unwrap_or_else(|| "unknown".into())));
    }
    None
}

/// Where a client reaches a replica: a veth pair from the client's namespace (None: the
/// root namespace) into the replica's, one /30.
struct ClientLink {
    /// The veth end on the client's side (its name is unique in the root namespace too).
    outer: String,
    outer_ns: Option<String>,
    replica_addr: String,
}

/// The namespaces and links of one run. Removed on drop, panics included.
struct Net {
    suffix: String,
    /// Second octet of every address: 10.X.1.0/24 peer, 10.X.2.0/24 client links.
    x: u8,
    namespaces: Vec<String>,
    /// (client, replica) -> link; clients: "h" (this test), "a", "b" (executors).
    links: BTreeMap<(char, u64), ClientLink>,
}

impl Net {
    fn replica_ns(&self, id: u64) -> String {
        format!("fl-r{id}-{}", self.suffix)
    }

    fn executor_ns(&self, cluster: char) -> String {
        format!("fl-e{cluster}-{}", self.suffix)
    }

    fn bridge_ns(&self) -> String {
        format!("fl-br-{}", self.suffix)
    }

    fn peer_url(&self, id: u64) -> String {
        format!("http://10.{}.1.{id}:{PEER_PORT}", self.x)
    }

    fn url(&self, client: char, id: u64) -> String {
        format!("http://{}:{PORT}", self.links[&(client, id)].replica_addr)
    }

    /// Creates the namespaces; Err when `ip netns add` is refused (the test then skips).
    fn create(ids: &[u64]) -> Result<Net, String> {
        let suffix = std::process::id().to_string();
        let used = format!("{}{}", ip_output(&["-4", "addr"]), ip_output(&["-4", "route"]));
        let start = 16 + (std::process::id() % 200) as u8;
        let x = (0..235u8)
            .map(|i| 16 + (start - 16 + i) % 235)
            .find(|x| !used.contains(&format!("10.{x}.")))
            .ok_or("no free 10.X.0.0/16 in the root namespace")?;
        let mut net = Net { suffix, x, namespaces: Vec::new(), links: BTreeMap::new() };
        let bridge = net.bridge_ns();
        ip(&["netns", "add", &bridge])?;
        net.namespaces.push(bridge.clone());
        let others: Vec<String> = ids.iter().map(|id| net.replica_ns(*id)).chain(['a', 'b'].map(|c| net.executor_ns(c))).collect();
        for ns in others {
            ip(&["netns", "add", &ns])?;
            ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
            net.namespaces.push(ns);
        }
        ip_ok(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        ip_ok(&["-n", &bridge, "link", "set", "br0", "up"]);
        let mut index = 0u32;
        for &id in ids {
            let rns = net.replica_ns(id);
            let peer = format!("p{id}");
            ip_ok(&["-n", &bridge, "link", "add", &peer, "type", "veth", "peer", "name", "peer0", "netns", &rns]);
            ip_ok(&["-n", &bridge, "link", "set", &peer, "master", "br0", "up"]);
            ip_ok(&["-n", &rns, "addr", "add", &format!("10.{x}.1.{id}/24"), "dev", "peer0"]);
            ip_ok(&["-n", &rns, "link", "set", "peer0", "up"]);
            for client in ['h', 'a', 'b'] {
                let outer = format!("c{client}{id}-{}", net.suffix);
                let outer_ns = (client != 'h').then(|| net.executor_ns(client));
                let inner = format!("c{client}");
                let (outer_ip, replica_ip) = (format!("10.{x}.2.{}", 4 * index + 1), format!("10.{x}.2.{}", 4 * index + 2));
                index += 1;
                let on_outer = |args: &[&str]| match &outer_ns {
                    Some(ns) => ip_ok(&[&["-n", ns.as_str()], args].concat()),
                    None => ip_ok(args),
                };
                on_outer(&["link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &rns]);
                on_outer(&["addr", "add", &format!("{outer_ip}/30"), "dev", &outer]);
                on_outer(&["link", "set", &outer, "up"]);
                ip_ok(&["-n", &rns, "addr", "add", &format!("{replica_ip}/30"), "dev", &inner]);
                ip_ok(&["-n", &rns, "link", "set", &inner, "up"]);
                net.links.insert((client, id), ClientLink { outer, outer_ns, replica_addr: replica_ip });
            }
        }
        Ok(net)
    }

    fn set_peer_link(&self, id: u64, up: bool) {
        ip_ok(&["-n", &self.bridge_ns(), "link", "set", &format!("p{id}"), if up { "up" } else { "down" }]);
    }

    fn set_client_link(&self, client: char, id: u64, up: bool) {
        let l = &self.links[&(client, id)];
        let state = if up { "up" } else { "down" };
        match &l.outer_ns {
            Some(ns) => ip_ok(&["-n", ns, "link", "set", &l.outer, state]),
            None => ip_ok(&["link", "set", &l.outer, state]),
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        // Deleting a namespace destroys its veth pairs, but asynchronously: remove the
        // root-namespace ends now so a quick rerun with the same pid cannot collide.
        for l in self.links.values().filter(|l| l.outer_ns.is_none()) {
            let _ = ip(&["link", "del", &l.outer]);
        }
    }
}

/// A child process, killed on drop.
struct Proc {
    name: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes, then the network, then the work directory: dropped in that order.
struct Harness {
    procs: std::sync::Mutex<Vec<Proc>>,
    net: Net,
    dir: Option<tempfile::TempDir>,
    bin: PathBuf,
}

impl Harness {
    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the work directory").path()
    }

    /// Starts `flotilla ARGS` inside namespace `ns`, logging to DIR/NAME.log.
    fn spawn(&mut self, name: &str, ns: &str, args: &[String]) {
        let log = File::create(self.dir().join(format!("{name}.log"))).expect("a log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&self.bin)
            .args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn,h2=warn,tower=warn,hyper=warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.procs.lock().expect("the process list").push(Proc { name: name.into(), child });
    }

    fn assert_running(&self) {
        for p in self.procs.lock().expect("the process list").iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("{} exited early ({status}); see its log", p.name);
            }
        }
    }

    fn history(&self, cluster: char) -> Vec<RunRecord> {
        let path = self.dir().join(format!("history-{cluster}.jsonl"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("history {cluster}: {e}: {l}"))).collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if let Some(dir) = self.dir.take() {
            if std::thread::panicking() {
                let kept = dir.keep();
                eprintln!("partition test failed: logs and run histories kept in {}", kept.display());
            }
        }
    }
}

async fn channel(url: &str) -> Option<Channel> {
    let endpoint = Endpoint::from_shared(url.to_string()).ok()?.connect_timeout(Duration::from_secs(1)).timeout(Duration::from_secs(3));
    endpoint.connect().await.ok()
}

async fn replicas(url: &str) -> Option<v1::ListReplicasResponse> {
    let c = channel(url).await?;
    ReplicasClient::new(c).list_replicas(v1::ListReplicasRequest {}).await.ok().map(|r| r.into_inner())
}

async fn list_tasks(url: &str) -> Option<Vec<v1::Task>> {
    let c = channel(url).await?;
    let req = v1::ListTasksRequest { queue: QUEUE.into(), task_set: TASK_SET.into(), limit: 1000, ..Default::default() };
    TasksClient::new(c).list_tasks(req).await.ok().map(|r| r.into_inner().tasks)
}

/// Every event of the task set so far (the stream stays open: read until it is quiet).
async fn events(url: &str) -> Vec<v1::TaskEvent> {
    let Some(c) = channel(url).await else { return Vec::new() };
    let req = v1::WatchRequest { queue: QUEUE.into(), task_set: TASK_SET.into(), from_seq: 1 };
    let Ok(stream) = TasksClient::new(c).watch(req).await else { return Vec::new() };
    let mut stream = stream.into_inner();
    let mut out = Vec::new();
    while let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
        out.push(e);
    }
    out
}

/// Polls `f` every 250 ms until it returns Some, or panics naming `what` at the deadline.
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(timeout: Duration, what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The leader every replica agrees on, as the observer sees them.
async fn agreed_leader(net: &Net, ids: &[u64]) -> Option<(u64, u64)> {
    let mut seen = BTreeSet::new();
    let mut term = 0;
    for &id in ids {
        let r = replicas(&net.url('h', id)).await?;
        seen.insert(r.leader_id?);
        term = term.max(r.term);
    }
    (seen.len() == 1).then(|| (*seen.first().expect("one leader"), term))
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

/// Seconds since the cut, for the timeline.
fn rel(ms: u64, cut: u64) -> String {
    format!("{:+7.1}s", (ms as f64 - cut as f64) / 1000.0)
}

fn span(r: &RunRecord, cut: u64) -> String {
    format!(
        "[{} .. {}]",
        rel(r.started_unix_ms, cut).trim(),
        r.ended_unix_ms.map_or("still running".into(), |e| rel(e, cut).trim().to_string())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_partitioned_with_its_cluster_never_runs_a_task_twice_and_the_heal_stops_nothing_healthy() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED leader_partitioned_with_its_cluster_...: {reason}");
        return;
    }
    let ids = [1u64, 2, 3];
    let net = match Net::create(&ids) {
        Ok(n) => n,
        Err(e) => {
            println!("SKIPPED leader_partitioned_with_its_cluster_...: cannot create network namespaces: {e}");
            return;
        }
    };
    let dir = tempfile::Builder::new().prefix("flotilla-partition-").tempdir().expect("a work directory");
    let mut h = Harness { procs: Default::default(), net, dir: Some(dir), bin: flotilla_tests::flotilla_bin() };
    let clusters_file = h.dir().join("clusters.toml");
    std::fs::write(&clusters_file, cluster_toml("a", 1) + "\n" + &cluster_toml("b", 2)).expect("the clusters file");
    let mut timeline: Vec<(u64, String)> = Vec::new();

    let peers = ids.iter().map(|id| format!("{id}={}", h.net.peer_url(*id))).collect::<Vec<_>>().join(",");
    for &id in &ids {
        let args: Vec<String> = [
            "server",
            "--id",
            &id.to_string(),
            "--listen",
            &format!("0.0.0.0:{PORT}"),
            "--peer-listen",
            &format!("0.0.0.0:{PEER_PORT}"),
            // Namespaces of this test only: no authentication, no TLS.
            "--insecure",
            "--http",
            "127.0.0.1:8080",
            "--data-dir",
            &h.dir().join(format!("replica-{id}")).display().to_string(),
            "--peers",
            &peers,
            "--cluster-lost-after",
            &format!("{}s", CLUSTER_LOST_AFTER.as_secs()),
        ]
        .map(String::from)
        .to_vec();
        let ns = h.net.replica_ns(id);
        h.spawn(&format!("replica-{id}"), &ns, &args);
    }
    let (leader, term) = wait_for(Duration::from_secs(60), "an agreed leader", || agreed_leader(&h.net, &ids)).await;
    let others: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
    h.assert_running();

    // Executor A reaches the leader first; executor B the others first (both know all three).
    let executor_args = |h: &Harness, cluster: char, order: &[u64]| -> Vec<String> {
        let servers = order.iter().map(|id| h.net.url(cluster, *id)).collect::<Vec<_>>().join(",");
        [
            "--server",
            &servers,
            "executor",
            "--cluster",
            &cluster.to_string(),
            "--sim",
            &clusters_file.display().to_string(),
            "--sim-history",
            &h.dir().join(format!("history-{cluster}.jsonl")).display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    };
    let a_order: Vec<u64> = [leader].into_iter().chain(others.iter().copied()).collect();
    let b_order: Vec<u64> = others.iter().copied().chain([leader]).collect();
    let args = executor_args(&h, 'a', &a_order);
    let ns = h.net.executor_ns('a');
    h.spawn("executor-a", &ns, &args);

    let url = h.net.url('h', leader);
    let c = channel(&url).await.expect("the leader answers");
    let spec = v1::QueueSpec { name: QUEUE.into(), weight: 1.0, ..Default::default() };
    QueuesClient::new(c.clone()).create_queue(v1::CreateQueueRequest { queue: Some(spec) }).await.expect("queue created");
    let template = v1::TaskTemplate {
        name: "long".into(),
        count: Some(TASKS as u32),
        image: "busybox".into(),
        resources: [("cpu".to_string(), "1".to_string()), ("memory".to_string(), "1Gi".to_string())].into(),
        sim: Some(v1::SimTemplate { duration: TASK_DURATION.into(), ..Default::default() }),
        ..Default::default()
    };
    let req =
        v1::SubmitTasksRequest { queue: QUEUE.into(), task_set: TASK_SET.into(), tasks: vec![template], client_request_id: "p1".into() };
    let task_ids = TasksClient::new(c).submit_tasks(req).await.expect("submitted").into_inner().task_ids;
    assert_eq!(task_ids.len(), TASKS);
    timeline.push((
        unix_ms(),
        format!("{TASKS} tasks of {TASK_DURATION} submitted; replica {leader} leads (term {term}); only executor A runs"),
    ));

    wait_for(Duration::from_secs(60), "every task running on A", || async {
        h.assert_running();
        let tasks = list_tasks(&url).await?;
        (tasks.iter().filter(|t| t.state == "running" && t.cluster == "a").count() == TASKS).then_some(())
    })
    .await;
    timeline.push((unix_ms(), format!("all {TASKS} tasks running on A")));
    let args = executor_args(&h, 'b', &b_order);
    let ns = h.net.executor_ns('b');
    h.spawn("executor-b", &ns, &args);
    wait_for(Duration::from_secs(30), "cluster B reporting", || async {
        h.assert_running();
        let c = channel(&url).await?;
        let clusters = ClustersClient::new(c).list_clusters(v1::ListClustersRequest {}).await.ok()?.into_inner().clusters;
        clusters.iter().any(|c| c.name == "b").then_some(())
    })
    .await;
    timeline.push((unix_ms(), "executor B started and reporting (idle: every task is on A)".into()));
    h.assert_running();

    // The cut: {leader, executor A} | {the others, executor B}; the observer sees all.
    let cut = unix_ms();
    h.net.set_peer_link(leader, false);
    for &o in &others {
        h.net.set_client_link('a', o, false);
    }
    h.net.set_client_link('b', leader, false);
    timeline.push((
        cut,
        format!(
            "PARTITION: replica {leader} (leader) and executor A cut from replicas {} and executor B",
            others.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        ),
    ));
    let open_at_cut: BTreeSet<(u64, u32)> =
        h.history('a').iter().filter(|r| r.ended_unix_ms.is_none()).map(|r| (r.task_id.0, r.attempt)).collect();

    // Hold it until cluster_lost_after + a margin after the majority has a new leader.
    let mut elected: Option<u64> = None;
    let mut old_stepped_down = false;
    let hard_end = Instant::now() + CLUSTER_LOST_AFTER + PARTITION_MARGIN + Duration::from_secs(20);
    let mut hold_until = hard_end;
    let mut new_leader = others[0];
    while Instant::now() < hold_until {
        h.assert_running();
        if elected.is_none() {
            if let Some((l, t)) = agreed_leader(&h.net, &others).await {
                if l != leader {
                    elected = Some(unix_ms());
                    new_leader = l;
                    hold_until = hold_until.min(Instant::now() + CLUSTER_LOST_AFTER + PARTITION_MARGIN);
                    timeline.push((unix_ms(), format!("replicas {others:?} elected replica {l} (term {t})")));
                }
            }
        }
        if !old_stepped_down {
            if let Some(r) = replicas(&h.net.url('h', leader)).await {
                if r.leader_id != Some(leader) {
                    old_stepped_down = true;
                    timeline.push((
                        unix_ms(),
                        format!("replica {leader} no longer claims leadership (sees leader {:?}, term {})", r.leader_id, r.term),
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if !old_stepped_down {
        timeline.push((unix_ms(), format!("replica {leader} still claims to lead at the end of the partition")));
    }
    if elected.is_none() {
        timeline.push((unix_ms(), format!("replicas {others:?} elected no new leader during the partition")));
    }

    // What the majority sees as running just before the heal: those must run on undisturbed.
    let healthy: Vec<v1::Task> =
        list_tasks(&h.net.url('h', new_leader)).await.unwrap_or_default().into_iter().filter(|t| t.state == "running").collect();
    let heal = unix_ms();
    h.net.set_peer_link(leader, true);
    for &o in &others {
        h.net.set_client_link('a', o, true);
    }
    h.net.set_client_link('b', leader, true);
    let healed = Instant::now();
    while !old_stepped_down && healed.elapsed() < Duration::from_secs(15) {
        if let Some(r) = replicas(&h.net.url('h', leader)).await {
            if r.leader_id.is_some_and(|l| l != leader) {
                old_stepped_down = true;
                timeline.push((
                    unix_ms(),
                    format!("after the heal replica {leader} follows replica {} (term {})", r.leader_id.unwrap_or_default(), r.term),
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    timeline.push((
        heal,
        format!(
            "HEAL (the majority sees {} running: {} on A, {} on B)",
            healthy.len(),
            healthy.iter().filter(|t| t.cluster == "a").count(),
            healthy.iter().filter(|t| t.cluster == "b").count()
        ),
    ));

    // Every task terminal, as any replica reports it.
    let done = wait_for(Duration::from_secs(120), "every task terminal", || async {
        h.assert_running();
        for &id in &ids {
            if let Some(tasks) = list_tasks(&h.net.url('h', id)).await {
                if tasks.len() == TASKS && tasks.iter().all(|t| is_terminal(&t.state)) {
                    return Some(tasks);
                }
            }
        }
        None
    })
    .await;
    timeline.push((unix_ms(), "every task terminal".into()));
    // The history files are rewritten every 200 ms: wait until both show every run closed.
    let (hist_a, hist_b) = wait_for(Duration::from_secs(10), "closed run histories", || async {
        let (a, b) = (h.history('a'), h.history('b'));
        a.iter().chain(&b).all(|r| r.ended_unix_ms.is_some()).then_some((a, b))
    })
    .await;
    let mut all_events = Vec::new();
    for &id in [new_leader, leader].iter().chain(&others) {
        all_events = events(&h.net.url('h', id)).await;
        if !all_events.is_empty() {
            break;
        }
    }

    // The timeline from the clusters' own records and the events.
    // A's runs that were open at the cut, and when and how they ended.
    let a_runs: Vec<&RunRecord> = hist_a.iter().filter(|r| open_at_cut.contains(&(r.task_id.0, r.attempt))).collect();
    let ends = |during: bool| -> Vec<(u64, String)> {
        let mut v: Vec<(u64, String)> = a_runs
            .iter()
            .filter_map(|r| r.ended_unix_ms.map(|e| (e, r.ended_by.clone().unwrap_or_default())))
            .filter(|(e, _)| (*e < heal) == during)
            .collect();
        v.sort();
        v
    };
    let describe = |v: &[(u64, String)]| {
        let mut how: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, by) in v {
            *how.entry(by.as_str()).or_default() += 1;
        }
        how.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
    };
    let during = ends(true);
    match (during.first(), during.last()) {
        (Some(first), Some(last)) => {
            timeline.push((first.0, format!("cluster A: the first of its {} runs open at the cut ended", a_runs.len())));
            timeline.push((last.0, format!("cluster A: {} runs ended during the partition ({})", during.len(), describe(&during))));
        }
        _ => timeline.push((heal, format!("cluster A ended none of its {} runs during the partition", a_runs.len()))),
    }
    let after = ends(false);
    if let (Some(first), Some(last)) = (after.first(), after.last()) {
        timeline.push((
            first.0,
            format!("cluster A: the first of the rest ended after the heal, {} in all ({})", after.len(), describe(&after)),
        ));
        timeline.push((last.0, "cluster A: its last run open at the cut ended".into()));
    }
    let mut b_starts: Vec<u64> = hist_b.iter().map(|r| r.started_unix_ms).collect();
    b_starts.sort();
    if let (Some(first), Some(last)) = (b_starts.first(), b_starts.last()) {
        timeline.push((*first, format!("cluster B started its first run (of {} runs)", b_starts.len())));
        timeline.push((*last, "cluster B started its last run".into()));
    }
    // Requeues, by reason: when the first came and how many.
    let mut requeues: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
    for e in all_events.iter().filter(|e| e.kind == "requeued") {
        let r = requeues.entry(e.reason.as_str()).or_insert((e.time_ms, 0));
        r.0 = r.0.min(e.time_ms);
        r.1 += 1;
    }
    for (reason, (first, count)) in requeues {
        timeline.push((first, format!("{count} tasks requeued: {reason}")));
    }
    timeline.sort_by_key(|(t, _)| *t);
    println!("\n=== partition timeline (t = 0 at the cut; replica {leader} led; new leader {new_leader}) ===");
    for (t, what) in &timeline {
        println!("{}  {what}", rel(*t, cut));
    }

    let mut violations = Vec::new();
    // 1. No two runs of one task overlap, whatever their attempts and clusters.
    let mut by_task: HashMap<u64, Vec<(char, &RunRecord)>> = HashMap::new();
    for (cluster, hist) in [('a', &hist_a), ('b', &hist_b)] {
        for r in hist.iter() {
            by_task.entry(r.task_id.0).or_default().push((cluster, r));
        }
    }
    let mut overlaps = 0;
    let mut overlap_ms = 0;
    for (task, runs) in by_task.iter().collect::<BTreeMap<_, _>>() {
        for (i, (c1, r1)) in runs.iter().enumerate() {
            for (c2, r2) in &runs[i + 1..] {
                let (e1, e2) = (r1.ended_unix_ms.unwrap_or(u64::MAX), r2.ended_unix_ms.unwrap_or(u64::MAX));
                let from = r1.started_unix_ms.max(r2.started_unix_ms);
                let until = e1.min(e2);
                if from < until {
                    overlaps += 1;
                    overlap_ms += until - from;
                    if overlaps <= 5 {
                        violations.push(format!(
                            "task {task} ran twice at once for {:.1}s: attempt {} on {c1}/{} {} and attempt {} on {c2}/{} {}",
                            (until - from) as f64 / 1000.0,
                            r1.attempt,
                            r1.node,
                            span(r1, cut),
                            r2.attempt,
                            r2.node,
                            span(r2, cut)
                        ));
                    }
                }
            }
        }
    }
    if overlaps > 5 {
        violations
            .push(format!("... {overlaps} overlapping pairs of runs in all, {:.0} task-seconds run twice", overlap_ms as f64 / 1000.0));
    }
    println!("overlapping runs of one task: {overlaps} ({:.0} task-seconds)", overlap_ms as f64 / 1000.0);

    // 2. Every task succeeded exactly once: state, events, and the clusters' own records.
    for t in &done {
        let succeeded_events = all_events.iter().filter(|e| e.task_id == t.id && e.kind == "succeeded").count();
        let succeeded_runs =
            by_task.get(&t.id).map_or(0, |runs| runs.iter().filter(|(_, r)| r.ended_by.as_deref() == Some("succeeded")).count());
        if t.state != "succeeded" || succeeded_events != 1 || succeeded_runs != 1 {
            violations.push(format!(
                "task {}: state {} ({}), {succeeded_events} succeeded events, {succeeded_runs} runs that succeeded in the clusters' records",
                t.id, t.state, t.reason
            ));
        }
    }

    // 3. The heal stopped nothing the majority saw running healthily.
    for t in &healthy {
        let cluster_hist = if t.cluster == "a" { &hist_a } else { &hist_b };
        let run = cluster_hist.iter().find(|r| r.task_id.0 == t.id && r.attempt == t.attempt && r.started_unix_ms <= heal);
        let after: Vec<String> = all_events
            .iter()
            .filter(|e| e.task_id == t.id && e.attempt == t.attempt && e.time_ms >= heal)
            .filter(|e| !matches!(e.kind.as_str(), "leased" | "pending" | "running" | "succeeded"))
            .map(|e| format!("{} ({})", e.kind, e.reason))
            .collect();
        match run {
            Some(r) if r.ended_by.as_deref() == Some("succeeded") && after.is_empty() => {}
            Some(r) => violations.push(format!(
                "task {} attempt {} running healthily on {} at the heal was ended by it: {} {}, events after the heal: {after:?}",
                t.id,
                t.attempt,
                t.cluster,
                r.ended_by.as_deref().unwrap_or("-"),
                span(r, cut)
            )),
            None => violations.push(format!(
                "task {} attempt {}: running on {} at the heal by the majority's state, but that cluster never ran it",
                t.id, t.attempt, t.cluster
            )),
        }
    }

    println!("=== {} violation(s) of invariant 2 ===", violations.len());
    for v in &violations {
        println!("  {v}");
    }
    assert!(
        violations.is_empty(),
        "invariant 2 under a partition: {} violation(s), see the timeline above:\n{}",
        violations.len(),
        violations.join("\n")
    );
}
