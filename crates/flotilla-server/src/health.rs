//! `grpc.health.v1.Health` and gRPC server reflection.
//!
//! Health answers per service: the whole server (`""`) and every public API service are
//! SERVING once this replica knows a leader (it can then take writes and forward them), and
//! NOT_SERVING before. [`LIVENESS`] is SERVING while the process serves at all: a liveness
//! probe must not restart replicas that merely wait for a quorum. Health needs no credentials
//! (Kubernetes' gRPC probes send none); [`crate::auth::AuthLayer`] lets it through.
//!
//! Reflection (what `grpcurl list` and `describe` read) serves the descriptors of every
//! public service, generated from the same `proto/` files as the code. It is authenticated
//! like every other call on the client port: with auth on, `grpcurl -H 'authorization: Bearer
//! …'`. The schema is public (it is in the repository), but an open door on an authenticated
//! port is one more thing to reason about.

use std::sync::Arc;
use std::time::Duration;

use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

use crate::Context;

/// The health service name that is SERVING while the process serves gRPC: for liveness probes.
pub const LIVENESS: &str = "liveness";

/// The services whose health follows leadership, with the whole server (`""`).
pub const SERVICES: [&str; 11] = [
    "",
    "flotilla.v1.Queues",
    "flotilla.v1.Tasks",
    "flotilla.v1.Clusters",
    "flotilla.v1.Executor",
    "flotilla.v1.Replicas",
    "api.QueueService",
    "api.Submit",
    "api.Event",
    "externalscaler.ExternalScaler",
    "flotilla.v1.PriorityClasses",
];

/// How often leadership is looked at.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// A reporter that says NOT_SERVING for every service until [`follow_leader`] sees a leader.
pub async fn reporter() -> HealthReporter {
    let reporter = HealthReporter::new();
    // `new` starts "" as SERVING; nothing is served until a leader is known.
    reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
    for s in SERVICES {
        reporter.set_service_status(s, ServingStatus::NotServing).await;
    }
    reporter
}

pub fn server(ctx: &Context) -> HealthServer<HealthService> {
    HealthServer::new(HealthService::from_health_reporter(ctx.health.clone()))
}

/// Keeps the statuses in step with whether a leader is known; runs until the replica stops.
pub async fn follow_leader(ctx: Arc<Context>) {
    let mut serving = false;
    loop {
        let now = ctx.replica.leader_id().is_some();
        if now != serving {
            serving = now;
            let status = if now { ServingStatus::Serving } else { ServingStatus::NotServing };
            for s in SERVICES {
                ctx.health.set_service_status(s, status).await;
            }
            tracing::info!(serving, "gRPC health changed");
        }
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
}

/// Server reflection, v1 and v1alpha (grpcurl asks for either, depending on its version).
pub fn reflection() -> (
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
) {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(flotilla_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder().build_v1().expect("the descriptors generated from proto/ are consistent");
    let v1alpha = builder().build_v1alpha().expect("the descriptors generated from proto/ are consistent");
    (v1, v1alpha)
}
