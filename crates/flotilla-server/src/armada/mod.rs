//! Armada's gRPC API (`api.QueueService`, `api.Submit`, `api.Event`) on the client port, so
//! that Armada's clients (the `armada-client` Python package) work against Flotilla.
//!
//! This is a translation layer, not a second scheduler front end: every call becomes the
//! matching `flotilla.v1` call ([`crate::services`]) made with the caller's identity, so
//! validation (all or nothing, errors naming the field), authorization (cluster roles and
//! queue permits), audit lines and Raft proposals are exactly those of `flotilla.v1`. What
//! Flotilla cannot honour is refused with INVALID_ARGUMENT naming the Armada field.
//! docs/armada.md is the user's guide to the mapping.

mod events;
mod jobs;
mod queues;
mod submit;

use std::sync::Arc;

use flotilla_api::armada::api::{
    event_server::EventServer, health_check_response::ServingStatus, queue_service_server::QueueServiceServer, submit_server::SubmitServer,
    HealthCheckResponse,
};
use tonic::Request;

use crate::auth::Caller;
use crate::services::MAX_MESSAGE_BYTES;
use crate::Context;

pub fn queue_server(ctx: &Arc<Context>) -> QueueServiceServer<queues::QueueService> {
    QueueServiceServer::new(queues::QueueService(ctx.clone()))
}

pub fn submit_server(ctx: &Arc<Context>) -> SubmitServer<submit::SubmitService> {
    SubmitServer::new(submit::SubmitService(ctx.clone())).max_decoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn event_server(ctx: &Arc<Context>) -> EventServer<events::EventService> {
    EventServer::new(events::EventService(ctx.clone())).max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The `flotilla.v1` request an Armada call becomes: same caller, so the same checks.
fn as_v1<T>(caller: &Caller, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.extensions_mut().insert(caller.clone());
    req
}

/// Armada's `Health`: serving once this replica knows a leader (it can then take writes).
fn health(ctx: &Context) -> HealthCheckResponse {
    let status = if ctx.replica.leader_id().is_some() { ServingStatus::Serving } else { ServingStatus::NotServing };
    HealthCheckResponse { status: status as i32 }
}
