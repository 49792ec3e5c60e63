//! Membership changes through the public `flotilla.v1.Replicas` API, on full servers
//! (`flotilla_server::start`) on loopback ports in one process: a fourth replica with an
//! empty data directory is added through a follower (forwarded to the leader), catches up
//! and becomes a voter; then the old leader is removed and the remaining three elect a new
//! leader and keep committing. Bad requests are refused with the field named.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_api::v1::{self, queues_client::QueuesClient, replicas_client::ReplicasClient, tasks_client::TasksClient};
use flotilla_server::{ServerConfig, ServerHandle};
use tonic::transport::Channel;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);
const QUEUE: &str = "members";

/// The tests run one at a time: several replicas need the machine's two cores to keep their
/// election timeouts.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

use flotilla_tests::{free_addr, peer_listen_of};

/// Replica `id` with its client port at `listen` and its peer port where `peers` says.
async fn start(id: u64, listen: SocketAddr, peers: &BTreeMap<u64, String>, root: &Path) -> ServerHandle {
    let mut config = ServerConfig::single(listen, root.join(format!("replica-{id}")));
    config.id = id;
    config.peer_listen = peer_listen_of(&peers[&id]);
    config.peers = peers.clone();
    flotilla_server::start(config).await.unwrap_or_else(|e| panic!("replica {id} starts: {e:#}"))
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

async fn list(url: &str) -> v1::ListReplicasResponse {
    ReplicasClient::new(channel(url).await).list_replicas(v1::ListReplicasRequest {}).await.expect("ListReplicas").into_inner()
}

fn voters(r: &v1::ListReplicasResponse) -> BTreeSet<u64> {
    r.replicas.iter().filter(|m| m.role == "voter").map(|m| m.id).collect()
}

/// Waits until every one of `servers` names the same leader, one of `among`.
async fn agreed_leader(servers: &BTreeMap<u64, ServerHandle>, among: &BTreeSet<u64>) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let leaders: BTreeSet<Option<u64>> = servers.values().map(|s| s.ctx.replica.leader_id()).collect();
        if let [Some(l)] = leaders.iter().copied().collect::<Vec<_>>()[..] {
            if among.contains(&l) && servers[&l].ctx.is_leader() {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader among {among:?}: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(url: &str, task_set: &str, count: u32) -> usize {
    let template = flotilla_tests::simple_template(count);
    let req = v1::SubmitTasksRequest {
        queue: QUEUE.into(),
        task_set: task_set.into(),
        tasks: vec![flotilla_api::template_to_proto(&template)],
        client_request_id: format!("membership-{task_set}"),
    };
    TasksClient::new(channel(url).await).submit_tasks(req).await.expect("submit").into_inner().task_ids.len()
}

/// Waits until each of `ids` has applied `count` tasks.
async fn converged(servers: &BTreeMap<u64, ServerHandle>, ids: &BTreeSet<u64>, count: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let counts: BTreeMap<u64, usize> = ids.iter().map(|id| (*id, servers[id].ctx.read(|s| s.task_count()))).collect();
        if counts.values().all(|c| *c == count) {
            return;
        }
        assert!(Instant::now() < deadline, "replicas did not converge on {count} tasks: {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `ListReplicas` on `url` until its voters are `expected`.
async fn wait_voters(url: &str, expected: &BTreeSet<u64>) -> v1::ListReplicasResponse {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = list(url).await;
        if voters(&r) == *expected && r.replicas.iter().all(|m| m.role == "voter") {
            return r;
        }
        assert!(Instant::now() < deadline, "{url}: voters are not {expected:?}: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_through_a_follower_then_remove_the_leader() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    let addrs: BTreeMap<u64, SocketAddr> = (1..=4).map(|id| (id, free_addr())).collect();
    let urls: BTreeMap<u64, String> = addrs.iter().map(|(id, a)| (*id, format!("http://{a}"))).collect();
    // The membership names peer ports.
    let peer_urls: BTreeMap<u64, String> = (1..=4).map(|id| (id, format!("http://{}", free_addr()))).collect();
    let peers3: BTreeMap<u64, String> = peer_urls.iter().filter(|(id, _)| **id <= 3).map(|(i, u)| (*i, u.clone())).collect();

    let mut servers = BTreeMap::new();
    for id in 1..=3 {
        servers.insert(id, start(id, addrs[&id], &peers3, root.path()).await);
    }
    let old = BTreeSet::from([1, 2, 3]);
    let leader = agreed_leader(&servers, &old).await;
    let follower = *old.iter().find(|id| **id != leader).unwrap();
    // Through the leader: a follower answers CreateQueue from its own state, which may not
    // have applied the forwarded entry yet ("queue vanished after commit").
    QueuesClient::new(channel(&urls[&leader]).await)
        .create_queue(v1::CreateQueueRequest { queue: Some(v1::QueueSpec { name: QUEUE.into(), weight: 1.0, ..Default::default() }) })
        .await
        .expect("create queue");
    // SubmitTasks checks the queue against the answering replica's own state.
    let deadline = Instant::now() + WAIT;
    while !servers.values().all(|s| s.ctx.read(|st| st.queue(QUEUE).is_some())) {
        assert!(Instant::now() < deadline, "the queue did not reach every replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut total = submit(&urls[&follower], "before-join", 5).await;
    assert_eq!(total, 5);

    // Replica 4: empty data directory, --peers naming every member and itself.
    servers.insert(4, start(4, addrs[&4], &peer_urls, root.path()).await);
    let before = list(&urls[&follower]).await;
    assert_eq!(voters(&before), old);
    assert_eq!(before.answered_by, follower);
    assert_eq!(before.leader_id, Some(leader));
    assert!(before.replicas.iter().any(|m| m.id == leader && m.is_leader));

    // Bad requests, through the follower: refused with the field named.
    let mut via_follower = ReplicasClient::new(channel(&urls[&follower]).await);
    let e = via_follower.add_replica(v1::AddReplicaRequest { id: 5, url: "ftp://127.0.0.1:1".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("url:"), "{e:?}");
    let e = via_follower.add_replica(v1::AddReplicaRequest { id: 5, url: "127.0.0.1:1".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("url:"), "{e:?}");
    let e = via_follower.add_replica(v1::AddReplicaRequest { id: 0, url: peer_urls[&4].clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("id:"), "{e:?}");
    let e = via_follower.add_replica(v1::AddReplicaRequest { id: 2, url: peer_urls[&2].clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().starts_with("id:"), "{e:?}");
    let e = via_follower.add_replica(v1::AddReplicaRequest { id: 5, url: peer_urls[&1].clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().starts_with("url:"), "{e:?}");
    let e = via_follower.remove_replica(v1::RemoveReplicaRequest { id: 9 }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().starts_with("id:"), "{e:?}");
    let e = via_follower.remove_replica(v1::RemoveReplicaRequest { id: 0 }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(voters(&list(&urls[&leader]).await), old, "refused requests changed nothing");

    // Add replica 4 through the follower: forwarded to the leader, learner, then voter.
    let added =
        via_follower.add_replica(v1::AddReplicaRequest { id: 4, url: peer_urls[&4].clone() }).await.expect("AddReplica").into_inner();
    let all = BTreeSet::from([1, 2, 3, 4]);
    let ids: BTreeSet<u64> = added.replicas.iter().map(|m| m.id).collect();
    assert_eq!(ids, all, "{added:?}");
    assert!(added.replicas.iter().all(|m| m.role == "voter"), "{added:?}");
    let seen_by_new = wait_voters(&urls[&4], &all).await;
    assert_eq!(seen_by_new.answered_by, 4);
    assert_eq!(seen_by_new.leader_id, Some(leader));
    assert_eq!(seen_by_new.replicas.iter().find(|m| m.id == 4).map(|m| m.url.as_str()), Some(peer_urls[&4].as_str()));
    wait_voters(&urls[&leader], &all).await;
    converged(&servers, &all, total).await;

    // The new voter takes writes (forwarded) and keeps up with the others.
    total += submit(&urls[&4], "after-join", 3).await;
    converged(&servers, &all, total).await;
    let e = via_follower.add_replica(v1::AddReplicaRequest { id: 4, url: peer_urls[&4].clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "adding a voter again: {e:?}");

    // Remove the leader, through replica 4. openraft commits the new membership with the old
    // leader still leading, then the old leader steps down and the rest elect a new one.
    let removed = leader;
    let rest: BTreeSet<u64> = all.iter().copied().filter(|id| *id != removed).collect();
    let left = ReplicasClient::new(channel(&urls[&4]).await)
        .remove_replica(v1::RemoveReplicaRequest { id: removed })
        .await
        .expect("RemoveReplica")
        .into_inner();
    assert_eq!(left.replicas.iter().map(|m| m.id).collect::<BTreeSet<_>>(), rest, "{left:?}");
    let old_leader = servers.remove(&removed).unwrap();
    for id in &rest {
        wait_voters(&urls[id], &rest).await;
    }
    let new_leader = agreed_leader(&servers, &rest).await;
    assert_ne!(new_leader, removed);
    assert!(!old_leader.ctx.is_leader(), "the removed leader stepped down");
    let survivor = *rest.iter().find(|id| **id != new_leader).unwrap();
    total += submit(&urls[&survivor], "after-remove", 4).await;
    converged(&servers, &rest, total).await;
    assert!(old_leader.ctx.read(|s| s.task_count()) < total, "the removed replica no longer receives entries");
    let e =
        ReplicasClient::new(channel(&urls[&survivor]).await).remove_replica(v1::RemoveReplicaRequest { id: removed }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "removing it again: {e:?}");

    old_leader.shutdown().await;
    for (_, s) in servers {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_voter_cannot_be_removed() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    let server = flotilla_server::start(ServerConfig::single(free_addr(), root.path().join("data"))).await.expect("server starts");
    server.wait_for_leader(WAIT).await.expect("a leader");
    let url = format!("http://{}", server.local_addr);
    let deadline = Instant::now() + WAIT;
    while !server.ctx.is_leader() {
        assert!(Instant::now() < deadline, "replica 1 never led");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let e = ReplicasClient::new(channel(&url).await).remove_replica(v1::RemoveReplicaRequest { id: 1 }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("last voter"), "{e:?}");
    assert_eq!(voters(&list(&url).await), BTreeSet::from([1]));
    server.shutdown().await;
}

/// Issue 12: an AddReplica of an address nobody listens on used to make the dead peer a
/// voter at once (openraft's learner step counts an empty replication as caught up when the
/// log is short), after which no write and no membership change could commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adding_an_unreachable_replica_fails_and_leaves_the_group_writable_and_changeable() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    let (addr1, addr2) = (free_addr(), free_addr());
    let url1 = format!("http://{addr1}");
    let (peer1, peer2) = (format!("http://{}", free_addr()), format!("http://{}", free_addr()));
    let peers1 = BTreeMap::from([(1, peer1.clone())]);
    let mut servers = BTreeMap::from([(1, start(1, addr1, &peers1, root.path()).await)]);
    agreed_leader(&servers, &BTreeSet::from([1])).await;
    QueuesClient::new(channel(&url1).await)
        .create_queue(v1::CreateQueueRequest { queue: Some(v1::QueueSpec { name: QUEUE.into(), weight: 1.0, ..Default::default() }) })
        .await
        .expect("create queue");

    // Nobody listens at `dead` (bound, then released).
    let dead = format!("http://{}", free_addr());
    let mut replicas = ReplicasClient::new(channel(&url1).await);
    // Bounded by the server's catch-up limit; the outer limit only keeps a regression from hanging.
    let refused = tokio::time::timeout(Duration::from_secs(120), replicas.add_replica(v1::AddReplicaRequest { id: 2, url: dead.clone() }))
        .await
        .expect("AddReplica of an unreachable address answers")
        .expect_err("an unreachable replica is not added");
    assert!(matches!(refused.code(), Code::Unavailable | Code::FailedPrecondition), "{refused:?}");
    assert!(refused.message().contains(&dead), "the error names the address: {refused:?}");
    let after = list(&url1).await;
    assert_eq!(voters(&after), BTreeSet::from([1]), "the voters are unchanged: {after:?}");
    assert!(after.replicas.iter().all(|m| m.id == 1), "the failed learner was removed: {after:?}");

    // Still writable, and membership can still change: a real replica 2 joins, then leaves.
    let mut total = submit(&url1, "after-refusal", 2).await;
    converged(&servers, &BTreeSet::from([1]), total).await;
    let peers2 = BTreeMap::from([(1, peer1.clone()), (2, peer2.clone())]);
    servers.insert(2, start(2, addr2, &peers2, root.path()).await);
    let added = replicas.add_replica(v1::AddReplicaRequest { id: 2, url: peer2.clone() }).await.expect("AddReplica").into_inner();
    assert!(added.replicas.iter().all(|m| m.role == "voter") && added.replicas.len() == 2, "{added:?}");
    total += submit(&url1, "after-join", 2).await;
    converged(&servers, &BTreeSet::from([1, 2]), total).await;
    replicas.remove_replica(v1::RemoveReplicaRequest { id: 2 }).await.expect("RemoveReplica");
    wait_voters(&url1, &BTreeSet::from([1])).await;
    total += submit(&url1, "after-leave", 1).await;
    converged(&servers, &BTreeSet::from([1]), total).await;
    for (_, s) in servers {
        s.shutdown().await;
    }
}
