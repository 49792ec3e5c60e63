//! `flotilla.v1.Replicas`: list, add and remove members of the Raft group.
//!
//! Changes run on the leader, one at a time: a follower forwards them there (once; a
//! forwarded change that reaches a non-leader is refused as unavailable, so the client
//! retries). Adding is two steps: add a learner and wait until it has caught up (it has
//! acknowledged the entry that added it and is within a few entries of the leader's log),
//! then make it a voter (`change_membership(voters ∪ {id}, retain = false)`). A learner that
//! does not catch up in time is removed again and the add fails, voters unchanged: a voter
//! that cannot be reached would otherwise take the group's majority with it. A replica left
//! a learner by an add whose leader stepped down is resumed by running the add again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::v1::{self, replicas_server::Replicas};
use flotilla_model::quote;
use flotilla_store::raft::{Node, NodeId};
use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tonic::{Code, Request, Response, Status};

use crate::auth::{audit, Caller};
use crate::Context;

/// How long the leader waits for a new learner to catch up. Below the 30 s limit of a
/// forwarded call (`Context::leader_channel`), so a forwarding follower gets the answer.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(20);
/// How far behind the leader's log a learner may be and still count as caught up.
const CATCH_UP_LAG_ENTRIES: u64 = 64;
/// How long one membership change (joint, then uniform configuration) may take.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);
/// Marks a call forwarded by a follower: it is never forwarded again.
const FORWARDED: &str = "x-flotilla-forwarded";

pub struct ReplicasService {
    ctx: Arc<Context>,
}

impl ReplicasService {
    pub fn new(ctx: Arc<Context>) -> ReplicasService {
        ReplicasService { ctx }
    }

    /// The members as this replica's Raft metrics show them.
    fn members(&self) -> Vec<v1::ReplicaMember> {
        let metrics = self.ctx.replica.raft_metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| v1::ReplicaMember {
                id: *id,
                url: node.addr.clone(),
                role: if voters.contains(id) { "voter" } else { "learner" }.into(),
                is_leader: m.current_leader == Some(*id),
            })
            .collect()
    }

    /// A channel to the leader for a change this replica cannot make, or why there is none.
    fn forward_channel<T>(&self, req: &Request<T>) -> Result<tonic::transport::Channel, Status> {
        if req.metadata().get(FORWARDED).is_some() {
            return Err(Status::unavailable(format!(
                "replica {} is not the leader (it names {:?}); a forwarded membership change is not forwarded again, retry",
                self.ctx.replica.id(),
                self.ctx.replica.leader_id()
            )));
        }
        self.ctx.leader_channel().ok_or_else(|| Status::unavailable("no Raft leader is known yet; retry in a moment"))
    }

    /// Waits (briefly) until this replica's metrics show the membership `done` describes.
    async fn settle(&self, done: impl Fn(&BTreeSet<NodeId>, &BTreeSet<NodeId>) -> bool) {
        let mut rx = self.ctx.replica.raft_metrics();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            rx.wait_for(|m| {
                let ms = m.membership_config.membership();
                done(&ms.voter_ids().collect(), &ms.learner_ids().collect())
            }),
        )
        .await;
    }

    /// Waits (at most [`CATCH_UP_TIMEOUT`]) until learner `id` has acknowledged the entry at
    /// `added_at` that made it a learner and is within [`CATCH_UP_LAG_ENTRIES`] of the
    /// leader's log. False if it does not, or this replica stops leading.
    async fn caught_up(&self, id: NodeId, added_at: u64) -> bool {
        let mut rx = self.ctx.replica.raft_metrics();
        let waited = tokio::time::timeout(
            CATCH_UP_TIMEOUT,
            rx.wait_for(|m| {
                let Some(replication) = &m.replication else { return true };
                replication.get(&id).and_then(|matched| matched.as_ref()).is_some_and(|matched| {
                    matched.index >= added_at && m.last_log_index.unwrap_or(0).saturating_sub(matched.index) <= CATCH_UP_LAG_ENTRIES
                })
            }),
        )
        .await;
        // A leader's metrics carry `replication`; without it this replica stopped leading.
        matches!(waited, Ok(Ok(m)) if m.replication.is_some())
    }

    async fn add_on_leader(&self, id: NodeId, url: String) -> Result<(), Status> {
        let _change = self.ctx.membership_changes.lock().await;
        let (voters, learners, nodes) = {
            let metrics = self.ctx.replica.raft_metrics();
            let m = metrics.borrow();
            let ms = m.membership_config.membership();
            let nodes: Vec<(NodeId, String)> = ms.nodes().map(|(i, n)| (*i, n.addr.clone())).collect();
            (ms.voter_ids().collect::<BTreeSet<_>>(), ms.learner_ids().collect::<BTreeSet<_>>(), nodes)
        };
        if voters.contains(&id) {
            return Err(Status::already_exists(format!("id: replica {id} is already a voter (voters: {voters:?})")));
        }
        if let Some((other, _)) = nodes.iter().find(|(i, u)| *i != id && *u == url) {
            return Err(Status::already_exists(format!("url: {url} is already the address of replica {other}")));
        }
        if let Some((_, stored)) = nodes.iter().find(|(i, _)| *i == id) {
            if *stored != url {
                return Err(Status::already_exists(format!(
                    "id: replica {id} is already a learner at {stored}; remove it first, or add it with that url"
                )));
            }
            tracing::info!(id, url, "replica is already a learner: resuming its addition");
        }
        tracing::info!(id, url, ?voters, ?learners, "adding a replica as a learner");
        let added_at = match tokio::time::timeout(CHANGE_TIMEOUT, self.ctx.replica.add_learner(id, url.clone())).await {
            Ok(result) => result.map_err(|e| change_error(&format!("adding replica {id} as a learner"), e))?,
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "adding replica {id} as a learner did not commit within {CHANGE_TIMEOUT:?}: a majority of the voters may be unreachable"
                )))
            }
        };
        if !self.caught_up(id, added_at).await {
            if !self.ctx.replica.is_leader() {
                return Err(Status::unavailable(format!(
                    "replica {id} is a learner, but leadership moved before it caught up; run the add again to resume"
                )));
            }
            tracing::warn!(id, url, "the new learner did not catch up: removing it");
            let raft = self.ctx.replica.raft();
            let removed =
                tokio::time::timeout(CHANGE_TIMEOUT, raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)).await;
            let removed = match removed {
                Ok(Ok(_)) => "it was removed again and the voters are unchanged".to_string(),
                Ok(Err(e)) => format!("removing it again failed ({e}): remove replica {id}; the voters are unchanged"),
                Err(_) => {
                    format!("removing it again did not commit within {CHANGE_TIMEOUT:?}: remove replica {id}; the voters are unchanged")
                }
            };
            self.settle(|v, l| !v.contains(&id) && !l.contains(&id)).await;
            return Err(Status::unavailable(format!(
                "url: replica {id} at {url} did not catch up as a learner within {CATCH_UP_TIMEOUT:?} (is it running and reachable \
                 there?); {removed}"
            )));
        }
        if !self.ctx.replica.is_leader() {
            return Err(Status::unavailable(format!(
                "replica {id} is a learner, but leadership moved before it became a voter; run the add again to resume"
            )));
        }
        let mut new_voters = voters;
        new_voters.insert(id);
        tracing::info!(id, voters = ?new_voters, "making the new replica a voter");
        match tokio::time::timeout(CHANGE_TIMEOUT, self.ctx.replica.change_membership(new_voters.clone(), false)).await {
            Ok(result) => result.map_err(|e| change_error(&format!("making replica {id} a voter"), e))?,
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "making replica {id} a voter did not commit within {CHANGE_TIMEOUT:?}: a majority of the voters may be unreachable"
                )))
            }
        }
        self.settle(|v, _| v.contains(&id)).await;
        Ok(())
    }

    async fn remove_on_leader(&self, id: NodeId) -> Result<(), Status> {
        let _change = self.ctx.membership_changes.lock().await;
        let (voters, learners) = {
            let metrics = self.ctx.replica.raft_metrics();
            let m = metrics.borrow();
            let ms = m.membership_config.membership();
            (ms.voter_ids().collect::<BTreeSet<_>>(), ms.learner_ids().collect::<BTreeSet<_>>())
        };
        let change: ChangeFuture<'_> = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition(format!("id: replica {id} is the last voter; a group needs at least one")));
            }
            let rest: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
            tracing::info!(id, voters = ?rest, leader = self.ctx.replica.id(), "removing a voter");
            Box::pin(self.ctx.replica.change_membership(rest, false))
        } else if learners.contains(&id) {
            tracing::info!(id, "removing a learner");
            let raft = self.ctx.replica.raft();
            Box::pin(async move {
                raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await?;
                Ok(())
            })
        } else {
            let members: Vec<NodeId> = voters.union(&learners).copied().collect();
            return Err(Status::not_found(format!("id: replica {id} is not a member (members: {members:?})")));
        };
        match tokio::time::timeout(CHANGE_TIMEOUT, change).await {
            Ok(result) => result.map_err(|e| change_error(&format!("removing replica {id}"), e))?,
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "removing replica {id} did not commit within {CHANGE_TIMEOUT:?}: a majority of the old or the new voters may be unreachable"
                )))
            }
        }
        self.settle(|v, l| !v.contains(&id) && !l.contains(&id)).await;
        Ok(())
    }
}

/// The membership-change future of [`ReplicasService::remove_on_leader`]: a voter goes
/// through `Replica::change_membership`, a learner through openraft directly.
type ChangeFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + 'a>>;

/// Maps a failed membership change to a status: leadership moved (retry), or openraft
/// refused the change, or Raft stopped.
fn change_error(what: &str, e: anyhow::Error) -> Status {
    match e.downcast_ref::<RaftError<NodeId, ClientWriteError<NodeId, Node>>>() {
        Some(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Status::unavailable(format!("{what}: leadership moved to {:?} before the change committed; retry", f.leader_id))
        }
        Some(RaftError::APIError(ClientWriteError::ChangeMembershipError(c))) => Status::failed_precondition(format!("{what}: {c}")),
        _ => Status::unavailable(format!("{what}: {e:#}")),
    }
}

fn validate_id(id: u64) -> Result<(), Status> {
    if id == 0 {
        return Err(Status::invalid_argument("id: replica ids start at 1"));
    }
    Ok(())
}

/// A member's URL names its peer port: `https://` when the group speaks mutual TLS
/// (`--peer-tls-cert`), `http://` when it does not.
fn validate_url(url: &str, peer_tls: bool) -> Result<(), Status> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Status::invalid_argument(format!("url: {} must start with http:// or https://", quote(url))));
    }
    if peer_tls != url.starts_with("https://") {
        let (want, why) =
            if peer_tls { ("https://", "the replicas speak mutual TLS") } else { ("http://", "the replicas' peer ports are plaintext") };
        return Err(Status::invalid_argument(format!("url: {} must start with {want}: {why}", quote(url))));
    }
    let parsed: Result<tonic::codegen::http::Uri, _> = url.parse();
    match parsed {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        Ok(_) => Err(Status::invalid_argument(format!("url: {} has no host", quote(url)))),
        Err(e) => Err(Status::invalid_argument(format!("url: {} is not a URL: {e}", quote(url)))),
    }
}

/// Sends `req` to the leader, marked as forwarded.
fn forwarded<T>(req: T) -> Request<T> {
    let mut req = Request::new(req);
    req.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    req
}

#[tonic::async_trait]
impl Replicas for ReplicasService {
    async fn list_replicas(&self, req: Request<v1::ListReplicasRequest>) -> Result<Response<v1::ListReplicasResponse>, Status> {
        self.ctx.authorizer().require_viewer(&Caller::of(&req), "ListReplicas")?;
        let m = self.ctx.replica.metrics();
        Ok(Response::new(v1::ListReplicasResponse {
            replicas: self.members(),
            answered_by: m.id,
            term: m.term,
            leader_id: m.leader,
            commit_index: m.commit_index,
            applied_index: m.last_applied_index,
            installation_id: self.ctx.read(|s| s.installation_id().to_string()),
        }))
    }

    async fn add_replica(&self, req: Request<v1::AddReplicaRequest>) -> Result<Response<v1::AddReplicaResponse>, Status> {
        let caller = Caller::of(&req);
        let target = format!("replica/{}", req.get_ref().id);
        let result = self.add(&caller, req).await;
        audit(&caller, "AddReplica", &target, &result);
        result
    }

    async fn remove_replica(&self, req: Request<v1::RemoveReplicaRequest>) -> Result<Response<v1::RemoveReplicaResponse>, Status> {
        let caller = Caller::of(&req);
        let target = format!("replica/{}", req.get_ref().id);
        let result = self.remove(&caller, req).await;
        audit(&caller, "RemoveReplica", &target, &result);
        result
    }
}

impl ReplicasService {
    async fn add(&self, caller: &Caller, req: Request<v1::AddReplicaRequest>) -> Result<Response<v1::AddReplicaResponse>, Status> {
        self.ctx.authorizer().require_admin(caller, "AddReplica")?;
        let url = req.get_ref().url.trim().to_string();
        let id = req.get_ref().id;
        validate_id(id)?;
        validate_url(&url, self.ctx.config.peer_tls.is_some())?;
        if !self.ctx.is_leader() {
            let channel = self.forward_channel(&req)?;
            let forward = v1::AddReplicaRequest { id, url };
            return v1::replicas_client::ReplicasClient::new(channel).add_replica(forwarded(forward)).await.map_err(from_leader);
        }
        self.add_on_leader(id, url).await?;
        Ok(Response::new(v1::AddReplicaResponse { replicas: self.members() }))
    }

    async fn remove(&self, caller: &Caller, req: Request<v1::RemoveReplicaRequest>) -> Result<Response<v1::RemoveReplicaResponse>, Status> {
        self.ctx.authorizer().require_admin(caller, "RemoveReplica")?;
        let id = req.get_ref().id;
        validate_id(id)?;
        if !self.ctx.is_leader() {
            let channel = self.forward_channel(&req)?;
            return v1::replicas_client::ReplicasClient::new(channel)
                .remove_replica(forwarded(v1::RemoveReplicaRequest { id }))
                .await
                .map_err(from_leader);
        }
        self.remove_on_leader(id).await?;
        Ok(Response::new(v1::RemoveReplicaResponse { replicas: self.members() }))
    }
}

/// The leader's answer passes through; a failure to reach it becomes "unavailable" so that
/// clients retry (possibly on another replica).
fn from_leader(s: Status) -> Status {
    match s.code() {
        Code::Unknown if s.message().contains("transport") => Status::unavailable(format!("forwarding to the leader: {}", s.message())),
        _ => s,
    }
}
