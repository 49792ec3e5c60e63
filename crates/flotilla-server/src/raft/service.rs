//! The receiving side of replica-to-replica traffic.

use std::sync::Arc;

use flotilla_api::raft::raft_server::{Raft as RaftRpc, RaftServer};
use flotilla_api::raft::RaftPayload;
use flotilla_store::raft::TypeConfig;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::network::{FROM_HEADER, MAX_MESSAGE_BYTES};
use super::replica::Replica;
use super::{HelloReply, HelloRequest, ProposeRequest};

/// The `flotilla.raft.v1.Raft` gRPC service of one replica. Mount it with
/// [`Replica::raft_service`] on the same server as the public API.
pub struct RaftService {
    replica: Arc<Replica>,
}

impl RaftService {
    pub(crate) fn server(replica: Arc<Replica>) -> RaftServer<RaftService> {
        RaftServer::new(RaftService { replica }).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Decodes a request, dropping it if the test network fault cuts its sender off.
    fn open<T: DeserializeOwned>(&self, request: Request<RaftPayload>) -> Result<T, Status> {
        if self.replica.is_stopped() {
            return Err(Status::unavailable(format!("replica {} is stopped", self.replica.id())));
        }
        let from: Option<u64> = request.metadata().get(FROM_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        if let (Some(fault), Some(from)) = (self.replica.peers().fault(), from) {
            if fault.is_cut(from, self.replica.id()) {
                return Err(Status::unavailable(format!("dropped by test network fault: replica {from} is cut off")));
            }
        }
        serde_json::from_slice(&request.into_inner().data).map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
    }
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data = serde_json::to_vec(value).map_err(|e| Status::internal(format!("cannot encode Raft reply: {e}")))?;
    Ok(Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = self.open(request)?;
        reply(&self.replica.raft().append_entries(req).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: VoteRequest<u64> = self.open(request)?;
        reply(&self.replica.raft().vote(req).await)
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: InstallSnapshotRequest<TypeConfig> = self.open(request)?;
        reply(&self.replica.raft().install_snapshot(req).await)
    }

    async fn propose(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: ProposeRequest = self.open(request)?;
        reply(&self.replica.handle_forwarded(req.commands).await)
    }

    async fn hello(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let _: HelloRequest = self.open(request)?;
        let initialized = self.replica.raft().is_initialized().await.unwrap_or(false);
        reply(&HelloReply { id: self.replica.id(), initialized })
    }
}
