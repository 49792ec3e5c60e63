//! How replicas talk: openraft's RPCs over the `flotilla.raft.v1.Raft` gRPC service, JSON in
//! a bytes field, on lazily connected channels reused per peer. Also the test hook that drops
//! traffic between chosen replicas.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::raft::raft_client::RaftClient;
use flotilla_api::raft::RaftPayload;
use flotilla_store::raft::{Node, NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

/// gRPC metadata naming the sending replica, so the receiver can apply a [`NetworkFault`].
pub(crate) const FROM_HEADER: &str = "flotilla-raft-from";
/// Bound on one Raft message: a snapshot chunk or a batch of entries (each entry is bounded
/// by the group commit's byte limit, and a batch by `max_payload_entries`).
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Test hook: drops Raft traffic (including forwarded proposals) between chosen replicas.
/// Shared by every replica of a test group; checked by the sender before sending and by the
/// receiver before handling, so a cut is symmetric even if only one side consults it.
#[derive(Clone, Default)]
pub struct NetworkFault {
    inner: Arc<Mutex<Cuts>>,
}

#[derive(Default, Debug)]
struct Cuts {
    isolated: BTreeSet<NodeId>,
    /// (from, to) pairs whose traffic is dropped, one direction each.
    blocked: BTreeSet<(NodeId, NodeId)>,
}

impl NetworkFault {
    pub fn new() -> NetworkFault {
        NetworkFault::default()
    }

    /// Cuts `id` off from every other replica, both directions.
    pub fn isolate(&self, id: NodeId) {
        self.cuts().isolated.insert(id);
    }

    /// Drops traffic from `from` to `to` (one direction).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.cuts().blocked.insert((from, to));
    }

    /// Restores all traffic.
    pub fn heal(&self) {
        let mut cuts = self.cuts();
        cuts.isolated.clear();
        cuts.blocked.clear();
    }

    /// True when a message from `from` to `to` must be dropped.
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        let cuts = self.cuts();
        from != to && (cuts.isolated.contains(&from) || cuts.isolated.contains(&to) || cuts.blocked.contains(&(from, to)))
    }

    fn cuts(&self) -> std::sync::MutexGuard<'_, Cuts> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for NetworkFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cuts = self.cuts();
        f.debug_struct("NetworkFault").field("isolated", &cuts.isolated).field("blocked", &cuts.blocked).finish()
    }
}

/// Why a message did not get an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// Nothing was delivered: dropped by the test fault before sending, a bad address, or a
    /// failed connection. The receiver certainly did not act on it.
    #[error("{0}")]
    NotSent(String),
    /// The request may have been delivered and acted on, but no answer came back.
    #[error("{0}")]
    NoAnswer(String),
    /// The answer could not be decoded (a version mismatch between replicas).
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

/// Lazily connected channels to peers, by URL, shared by Raft replication, forwarding and
/// bootstrap. A channel reconnects by itself after a peer restarts.
#[derive(Clone)]
pub(crate) struct Peers {
    me: NodeId,
    fault: Option<NetworkFault>,
    dial: flotilla_api::dial::Dial,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    pub(crate) fn new(me: NodeId, fault: Option<NetworkFault>, dial: flotilla_api::dial::Dial) -> Peers {
        Peers { me, fault, dial, channels: Arc::default() }
    }

    pub(crate) fn fault(&self) -> Option<&NetworkFault> {
        self.fault.as_ref()
    }

    fn client(&self, url: &str) -> Result<RaftClient<Channel>, SendError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match channels.get(url) {
            Some(c) => c.clone(),
            None => {
                let endpoint = Endpoint::from_shared(url.to_string())
                    .map_err(|e| SendError::NotSent(format!("bad replica address {url:?}: {e}")))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true);
                let channel = self.dial.connect_lazy(endpoint);
                channels.insert(url.to_string(), channel.clone());
                channel
            }
        };
        Ok(RaftClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Sends `body` (JSON-encoded) to `rpc` on replica `to` at `url`, and decodes the answer.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        to: NodeId,
        url: &str,
        rpc: Rpc,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, SendError> {
        if let Some(fault) = &self.fault {
            if fault.is_cut(self.me, to) {
                return Err(SendError::NotSent(format!("traffic from replica {} to {to} is cut (test network fault)", self.me)));
            }
        }
        let data = serde_json::to_vec(body).map_err(|e| SendError::NotSent(format!("cannot encode {rpc:?}: {e}")))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(timeout);
        let from = self.me.to_string().parse().map_err(|e| SendError::NotSent(format!("bad metadata: {e}")))?;
        request.metadata_mut().insert(FROM_HEADER, from);
        let mut client = self.client(url)?;
        let result = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
            Rpc::Propose => client.propose(request).await,
            Rpc::Hello => client.hello(request).await,
        };
        let payload = result.map_err(|status| classify(to, rpc, status))?.into_inner();
        serde_json::from_slice(&payload.data).map_err(|e| SendError::BadAnswer(format!("{rpc:?} answer from replica {to}: {e}")))
    }
}

/// A connection that was never made (refused, timed out connecting) means the request was
/// not delivered; anything else after sending leaves the outcome unknown.
fn classify(to: NodeId, rpc: Rpc, status: tonic::Status) -> SendError {
    let message = format!("{rpc:?} to replica {to}: {status}");
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&status);
    while let Some(e) = source {
        let text = e.to_string();
        if text.contains("tcp connect error") || text.contains("Connection refused") || text.contains("client error (Connect)") {
            return SendError::NotSent(message);
        }
        source = e.source();
    }
    if status.code() == tonic::Code::Unavailable && status.message().contains("network fault") {
        // The receiver dropped it (test fault) without acting on it.
        return SendError::NotSent(message);
    }
    SendError::NoAnswer(message)
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Propose,
    Hello,
}

/// Builds one [`Network`] per replication target.
pub(crate) struct NetworkFactory {
    pub(crate) peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Network {
        Network { peers: self.peers.clone(), target, url: node.addr.clone() }
    }
}

/// The connection openraft uses to one replica.
pub(crate) struct Network {
    peers: Peers,
    target: NodeId,
    url: String,
}

impl Network {
    async fn send<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<NodeId, E>> =
            self.peers.call(self.target, &self.url, rpc, req, option.hard_ttl()).await.map_err(|e| match e {
                SendError::NotSent(_) => RPCError::Unreachable(Unreachable::new(&e)),
                SendError::NoAnswer(_) | SendError::BadAnswer(_) => RPCError::Network(NetworkError::new(&e)),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.send(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>> {
        self.send(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.send(Rpc::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // An unreachable replica is retried every 200 ms (openraft's default is 500 ms), so a
        // restarted replica catches up quickly without flooding a dead address.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
