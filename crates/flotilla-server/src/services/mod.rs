//! The gRPC services of a replica, on two ports.
//!
//! - The **client port** ([`client_router`]): `Queues`, `Tasks`, `Clusters`, `Executor`,
//!   `Replicas` and `PriorityClasses`, for users, the CLI and executors; Armada's API ([`crate::armada`]), KEDA's
//!   external scaler ([`crate::keda`]), gRPC health and reflection ([`crate::health`]).
//!   Never the Raft service.
//! - The **probe port** ([`probe_router`], only with `--probe-listen`): health and the
//!   scaler, plaintext and without credentials.
//! - The **peer port** ([`peer_router`]): the internal `flotilla.raft.v1.Raft` service
//!   (AppendEntries, Vote, InstallSnapshot, forwarded proposals, the bootstrap Hello) and the
//!   public services a follower forwards to the leader (`Executor.Sync`, `Replicas`,
//!   `Clusters.ListClusters`): a follower dials the leader's membership URL, which names its
//!   peer port. With `--peer-tls-*` only holders of a certificate from the peer CA connect.

mod clusters;
pub use clusters::list as clusters_list;
mod executor;
pub(crate) mod priority_classes;
pub(crate) mod queues;
mod replicas;
pub(crate) mod tasks;

use std::sync::Arc;

use flotilla_api::v1::{
    clusters_server::ClustersServer, executor_server::ExecutorServer, queues_server::QueuesServer, replicas_server::ReplicasServer,
    tasks_server::TasksServer,
};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};
use tower::util::MapResponseLayer;

use crate::auth::{AuthLayer, Port};
use crate::Context;

/// Largest gRPC message accepted: a full submission (10,000 tasks) fits.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The response mapping every service goes through: see [`decode_errors_are_invalid_argument`].
type Layers = Stack<AuthLayer, Stack<MapResponseLayer<fn(http::Response<Body>) -> http::Response<Body>>, Identity>>;

/// The services of the client port: callers are authenticated (`Port::Client`).
pub fn client_router(ctx: Arc<Context>) -> Router<Layers> {
    let reflection = crate::health::reflection();
    builder(&ctx, Port::Client)
        .add_service(QueuesServer::new(queues::QueuesService(ctx.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(
            TasksServer::new(tasks::TasksService(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(clusters_server(&ctx))
        .add_service(executor_server(&ctx))
        .add_service(replicas_server(&ctx))
        .add_service(crate::armada::queue_server(&ctx))
        .add_service(crate::armada::submit_server(&ctx))
        .add_service(crate::armada::event_server(&ctx))
        .add_service(crate::keda::server(&ctx))
        .add_service(crate::health::server(&ctx))
        .add_service(flotilla_api::v1::priority_classes_server::PriorityClassesServer::new(priority_classes::PriorityClassesService(
            ctx.clone(),
        )))
        .add_service(reflection.0)
        .add_service(reflection.1)
}

/// The plaintext port without credentials (`--probe-listen`): health for kubelet probes and
/// KEDA's scaler, both read-only. No auth layer: nothing here acts or reveals more than
/// whether the replica serves and how deep a named queue is.
pub fn probe_router(ctx: Arc<Context>) -> Router {
    tonic::transport::Server::builder().add_service(crate::health::server(&ctx)).add_service(crate::keda::open_server(&ctx))
}

/// The services of the peer port: Raft, and what followers forward to the leader (capacity,
/// executor calls, and `Tasks.Logs`, authorised by the follower that took the call). Every
/// caller is a replica (`Port::Peer`): mutual TLS decides who may connect.
pub fn peer_router(ctx: Arc<Context>) -> Router<Layers> {
    builder(&ctx, Port::Peer)
        .add_service(ctx.replica.raft_service())
        .add_service(TasksServer::new(tasks::TasksService(ctx.clone())).max_encoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(clusters_server(&ctx))
        .add_service(executor_server(&ctx))
        .add_service(replicas_server(&ctx))
}

fn builder(ctx: &Arc<Context>, port: Port) -> tonic::transport::Server<Layers> {
    tonic::transport::Server::builder()
        .layer(MapResponseLayer::new(decode_errors_are_invalid_argument as fn(_) -> _))
        .layer(AuthLayer::new(ctx.auth.clone(), port))
}

fn clusters_server(ctx: &Arc<Context>) -> ClustersServer<clusters::ClustersService> {
    ClustersServer::new(clusters::ClustersService(ctx.clone()))
}

fn executor_server(ctx: &Arc<Context>) -> ExecutorServer<executor::ExecutorService> {
    ExecutorServer::new(executor::ExecutorService::new(ctx.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn replicas_server(ctx: &Arc<Context>) -> ReplicasServer<replicas::ReplicasService> {
    ReplicasServer::new(replicas::ReplicasService::new(ctx.clone()))
}

/// What tonic says when prost cannot decode a request (bad UTF-8 in a `string` field, a
/// truncated message): tonic_prost's decoder returns it as INTERNAL.
const DECODE_ERROR_PREFIX: &str = "failed to decode Protobuf message";

/// A request prost cannot decode is the caller's bad input, not a fault of the server: the
/// INTERNAL status tonic answers it with becomes INVALID_ARGUMENT, message kept (it names the
/// field, e.g. "SubmitTasksRequest.queue: invalid string value: data is not UTF-8 encoded").
/// A unary request is decoded before the handler runs, so the status is in the headers of a
/// trailers-only response, where this mapping sees it. Interceptors run before decoding and
/// cannot; changing the codec would change what clients report about bad responses too.
fn decode_errors_are_invalid_argument(mut res: http::Response<Body>) -> http::Response<Body> {
    let Some(status) = tonic::Status::from_header_map(res.headers()) else { return res };
    if status.code() != tonic::Code::Internal || !status.message().starts_with(DECODE_ERROR_PREFIX) {
        return res;
    }
    let invalid = tonic::Status::invalid_argument(status.message());
    if let Err(e) = invalid.add_header(res.headers_mut()) {
        tracing::warn!(error = %e, "could not rewrite a decode error as INVALID_ARGUMENT");
    }
    res
}

/// Decides per queue whether one caller may do one verb there, remembering each answer: for
/// filtering listings and batches of tasks by what the caller may see or do.
pub(crate) struct QueueCheck<'a> {
    authorizer: crate::auth::Authorizer,
    caller: &'a crate::auth::Caller,
    verb: flotilla_model::Verb,
    everything: bool,
    seen: std::collections::HashMap<String, bool>,
}

impl<'a> QueueCheck<'a> {
    pub(crate) fn new(ctx: &Context, caller: &'a crate::auth::Caller, verb: flotilla_model::Verb) -> QueueCheck<'a> {
        let authorizer = ctx.authorizer();
        let everything = authorizer.is_admin(caller) || (verb == flotilla_model::Verb::Watch && authorizer.is_viewer(caller));
        QueueCheck { authorizer, caller, verb, everything, seen: std::collections::HashMap::new() }
    }

    pub(crate) fn allows(&mut self, state: &flotilla_store::State, queue: &str) -> bool {
        if self.everything {
            return true;
        }
        if let Some(known) = self.seen.get(queue) {
            return *known;
        }
        let permits = state.queue(queue).map(|q| q.permits.as_slice()).unwrap_or_default();
        let ok = self.authorizer.allows(self.caller, queue, permits, self.verb);
        self.seen.insert(queue.to_string(), ok);
        ok
    }
}
