//! The gRPC services of a replica, all on one port with Raft traffic.

mod clusters;
pub use clusters::list as clusters_list;
mod executor;
mod queues;
mod replicas;
mod tasks;

use std::sync::Arc;

use flotilla_api::v1::{
    clusters_server::ClustersServer, executor_server::ExecutorServer, queues_server::QueuesServer, tasks_server::TasksServer,
};
use tonic::transport::server::Router;

use crate::Context;

/// Largest gRPC message accepted: a full submission (10,000 tasks) fits.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub fn router(ctx: Arc<Context>) -> Router {
    tonic::transport::Server::builder()
        .add_service(QueuesServer::new(queues::QueuesService(ctx.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(
            TasksServer::new(tasks::TasksService(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(ClustersServer::new(clusters::ClustersService(ctx.clone())))
        .add_service(
            ExecutorServer::new(executor::ExecutorService::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(flotilla_api::v1::replicas_server::ReplicasServer::new(replicas::ReplicasService::new(ctx.clone())))
        .add_service(ctx.replica.raft_service())
}
