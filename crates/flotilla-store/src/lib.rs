//! Flotilla's replicated state: the commands, the deterministic state machine they
//! change, and the Raft (openraft) log and state-machine storage on redb.
//!
//! * [`command`]: [`Command`]s and the [`Request`] batch one Raft entry carries.
//! * [`state`]: [`State`], applied deterministically on every replica. Pure data: no I/O.
//! * [`raft`]: openraft type config, the redb-backed log store and the state-machine
//!   store with snapshots.
//!
//! This crate is not for networking (Raft traffic, forwarding, group commit) nor for
//! deciding anything: the server proposes commands, this crate records and applies them.
//!
//! ```
//! use flotilla_store::{Command, Request, State, CommandResult};
//! let mut state = State::default();
//! let req = Request { now_ms: 1, commands: vec![Command::PutQueue { queue: flotilla_model::Queue::new("research", 1.0), create: true }] };
//! assert_eq!(state.apply(&req).results, vec![CommandResult::Ok]);
//! assert!(state.queue("research").is_some());
//! ```

mod blocking;
pub mod command;
pub mod cost;
pub mod planted;
pub mod raft;
pub mod state;

pub use blocking::run_blocking;
pub use command::{
    AttemptEvent, CancelTarget, Command, CommandResult, LeaseDecision, PreemptDecision, RejectKind, Request, Response, ScheduleDecisions,
};
pub use cost::{LeaseCost, QueueCost};
pub use flotilla_model::is_installation_id;
pub use state::{
    ClusterDrain, ClusterRecord, ClusterState, DispatchStats, DrainState, EventKind, Limits, State, TaskEvent, TaskRecord, TaskSetKey,
};
