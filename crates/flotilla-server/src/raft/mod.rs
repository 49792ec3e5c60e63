//! The replica's Raft layer: joins the group, carries Raft traffic over gRPC, and turns
//! commands into committed Raft entries.
//!
//! # Model
//!
//! * [`network`]: openraft's three RPCs (and two of ours: `Propose`, `Hello`) as JSON in the
//!   `flotilla.raft.v1.Raft` gRPC service, served on the public API's port. Channels to peers
//!   connect lazily and are reused. [`NetworkFault`] is the test hook that cuts replicas off.
//! * [`group_commit`]: every proposal goes into one queue. A batcher takes whatever is
//!   waiting (bounded by count and bytes, after a short linger) and proposes it as one Raft
//!   entry stamped with the leader's clock, so one fsync covers many commands. On a follower
//!   the batch is forwarded to the leader with `Propose` and joins the leader's batches.
//! * [`fence`]: the leadership lease. A leader grants or ends leases only while a majority
//!   confirmed it within the last lease; leader-only commands carry its term and are never
//!   forwarded.
//! * [`Replica`]: opens the store, starts openraft, bootstraps the group (the lowest id
//!   initialises it once a majority of `--peers` answers), and exposes propose, reads,
//!   leadership and metrics to the rest of the server.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use flotilla_server::raft::{Replica, ReplicaConfig};
//! let peers = [(1, "http://127.0.0.1:7001".to_string())].into();
//! let replica = Replica::open(ReplicaConfig::new(1, peers, "/tmp/flotilla-1".into(), None)).await?;
//! // Mount `replica.raft_service()` on the gRPC server listening on 127.0.0.1:7001, then:
//! replica.bootstrap();
//! let result = replica.propose(flotilla_store::Command::PutQueue {
//!     queue: flotilla_model::Queue::new("research", 1.0), create: true }).await?;
//! # let _ = result; replica.shutdown().await; Ok(()) }
//! ```

pub mod fence;
pub mod group_commit;
pub mod network;
mod replica;
mod service;

use flotilla_store::{Command, CommandResult};
use serde::{Deserialize, Serialize};

pub use fence::FenceError;
pub use group_commit::GroupCommitConfig;
pub use network::NetworkFault;
pub use replica::{ProposeError, ReadError, Replica, ReplicaConfig, ReplicaMetrics, Role};
pub use service::RaftService;

/// A follower's batch of commands for the leader (`Propose`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ProposeRequest {
    pub commands: Vec<Command>,
}

/// The leader's answer to `Propose`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ProposeReply {
    /// Committed and applied: one result per command, in order, and the leader's applied
    /// index at that moment, so the follower can wait until its own state includes the entry.
    Applied { results: Vec<CommandResult>, applied_index: u64 },
    /// Not proposed: the receiver is not the leader (it names the leader if it knows it).
    NotLeader { leader_id: Option<u64> },
    /// Proposed, but whether it committed is unknown (the leader lost leadership or stopped).
    Indeterminate(String),
}

/// Bootstrap probe.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HelloRequest {}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HelloReply {
    pub id: u64,
    /// This replica already belongs to an initialised group.
    pub initialized: bool,
}
