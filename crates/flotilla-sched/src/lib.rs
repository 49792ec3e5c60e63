//! Flotilla's scheduling algorithm: data in, decisions out.
//!
//! [`schedule`] takes a snapshot of the federation ([`Input`]: queues, queued tasks,
//! running tasks, nodes) and returns [`Decisions`]: which queued tasks start on which
//! node (leases), which running tasks must yield (preemptions), why every other task
//! stays queued, and each queue's fair share.
//!
//! This crate is pure, synchronous and deterministic: no I/O, no async, no clocks, no
//! randomness, no gRPC, Raft or Kubernetes types. The same input always gives the same
//! output, which is what lets the leader replay, test and benchmark it.
//!
//! It is not for applying decisions (that is the store's lease command) nor for deciding
//! *when* to schedule (that is the server's leader loop).
//!
//! # The model
//!
//! A cycle first builds a node index (see the private `index` module): every schedulable
//! node's free resources (capacity minus what Flotilla does not manage, minus running
//! tasks), kept in ordered sets per GPU model so that the tightest node with room for a
//! task is found in about O(log n). Queued tasks are grouped by *shape* (resources plus
//! placement constraints); gangs become one unit of their queue.
//!
//! Fairness is weighted dominant-resource fairness over the whole federation. Each
//! queue's fair share is computed up front by demand-capped water-filling on dominant
//! shares. Then the queue with the lowest dominant share ÷ weight takes a turn: its next
//! unit (highest priority, then earliest submitted) is checked against the queue's limit
//! and its limits per priority class (all gang members counted), placed on the best node
//! (or, for a gang, the best topology domain with room for every member), and the queue's
//! share grows. A unit that cannot be placed stays queued with a
//! reason and the queue moves on to its next unit, so one oversized task never blocks
//! the rest. Queues of weight zero take turns only after every weighted queue is done.
//! A shape that failed to fit is not searched again until capacity is freed.
//!
//! When a unit does not fit on free capacity, it may preempt: a higher priority evicts
//! lower-priority preemptible tasks (*urgency*), and a queue below its fair share evicts
//! from queues above theirs (*reclaim*), never below a victim queue's guarantee or its
//! protected share (a fraction of its fair share, 1.0 unless configured), within each queue's disruption budget and the cycle's eviction bound. A
//! running gang is evicted whole. The unit is then leased onto the freed room in the
//! same cycle (see `Cycle::apply` for why that is safe).
//!
//! [`schedule`] reads every queued task of its input. [`schedule_backlog`] decides the same
//! over a [`Backlog`] its owner keeps between cycles, pulling each queue's units lazily and
//! skipping, as a group, the tasks of a priority and shape that just failed to fit: its cost
//! follows what can be placed, not how many tasks wait (see the `backlog` and `lazy` modules).
//!
//! Everything iterates in a fixed order (nodes by cluster and name, queues in input
//! order, tasks by priority and submit order), so decisions are deterministic. At the
//! end the cycle recounts every node that received a lease and asserts none holds more
//! than its allocatable resources.
//!
//! ```
//! use flotilla_model::*;
//! use flotilla_sched::{schedule, Input};
//! let node = Node { cluster: "c".into(), name: "n1".into(), allocatable: Resources::new(8000, 64 << 30, 8),
//!     reserved: Resources::default(), topology: Topology::default(), gpu_model: Some("H100".into()),
//!     instance_type: String::new(), spot: false, price_per_hour_usd: 30.0, labels: Default::default(),
//!     taints: vec![], unschedulable: false };
//! let task = SchedTask { id: TaskId(1), queue: "q".into(), priority: 100, preemptible: true,
//!     priority_class: "default".into(), submit_seq: 1,
//!     resources: Resources::new(1000, 1 << 30, 1), gang: None, placement: Placement::default(),
//!     avoid_nodes: vec![], avoid_clusters: vec![] };
//! let input = Input { queues: vec![Queue::new("q", 1.0)], nodes: vec![node], queued: vec![task], ..Input::default() };
//! let decisions = schedule(&input);
//! assert_eq!(decisions.leases.len(), 1);
//! ```

mod amount;
mod backlog;
mod class_limits;
mod cycle;
mod drain;
mod fairness;
mod gang;
mod index;
mod lazy;
mod placement;
mod plan;
mod preempt;
mod reasons;

pub use backlog::Backlog;
pub use drain::drain_preemptions;
use std::collections::BTreeMap;

use flotilla_model::{Node, NodeRef, Queue, Resources, SchedTask, TaskId};
use serde::{Deserialize, Serialize};

/// Bounds on one scheduling cycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Most leases one cycle may hand out (keeps one Raft entry bounded).
    pub max_leases_per_cycle: usize,
    /// Most running tasks one cycle may preempt, over all queues.
    pub max_evictions_per_cycle: usize,
    /// Most distinct reasons kept per cycle; tasks beyond it share a generic reason.
    pub max_reasons: usize,
    /// The fraction of its fair share (0..=1) below which fair-share reclaim never takes
    /// from a queue, for queues that set none (`Queue::protected_fraction`). 1.0 (the
    /// default): a queue keeps all of its fair share; lower lets queues far below their
    /// share reclaim sooner from queues a little below theirs.
    #[serde(default = "default_protected_fraction")]
    pub protected_fraction: f64,
}

pub use flotilla_model::DEFAULT_PROTECTED_FRACTION;

fn default_protected_fraction() -> f64 {
    DEFAULT_PROTECTED_FRACTION
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_leases_per_cycle: 100_000,
            max_evictions_per_cycle: 256,
            max_reasons: 100_000,
            protected_fraction: DEFAULT_PROTECTED_FRACTION,
        }
    }
}

/// A task that holds resources on a node now (leased, pending or running).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Running {
    pub task: SchedTask,
    pub node: NodeRef,
}

/// Everything one scheduling decision needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub queues: Vec<Queue>,
    /// Every node of every healthy cluster.
    pub nodes: Vec<Node>,
    /// Tasks waiting to be scheduled, in any order (the scheduler orders them per queue:
    /// priority first, then `submit_seq`). Gang members all appear here or none do.
    pub queued: Vec<SchedTask>,
    pub running: Vec<Running>,
    pub config: Config,
    /// Queues that take no new leases this cycle, with the reason their queued tasks get
    /// (a daily budget spent, for example). Their running tasks still count and may still
    /// be preempted.
    #[serde(default)]
    pub held_queues: BTreeMap<String, String>,
}

/// The scheduler's committed choice: task `task` starts on `node`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub task: TaskId,
    pub node: NodeRef,
}

/// A running task that must yield, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preemption {
    pub task: TaskId,
    pub reason: String,
}

/// Why a queued task stayed queued ("no node with 8 free H100 GPUs in one rack").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unscheduled {
    pub task: TaskId,
    pub reason: String,
}

/// A queue's share of the federation, as fractions of total capacity of its dominant resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueShare {
    pub queue: String,
    /// What weighted, demand-capped DRF entitles the queue to (0.0..=1.0).
    pub fair_share: f64,
    /// What it holds after this cycle's decisions (0.0..=1.0).
    pub actual_share: f64,
    /// Resources held after this cycle's decisions.
    pub allocated: Resources,
    /// Resources its queued tasks still ask for after this cycle.
    pub demand: Resources,
}

/// Counters for metrics and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub tasks_considered: usize,
    pub placement_attempts: usize,
    /// Tasks skipped because an identical shape already failed to fit this cycle.
    pub shapes_skipped: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Decisions {
    pub leases: Vec<Lease>,
    pub preemptions: Vec<Preemption>,
    /// One entry per queued task that got no lease.
    pub unscheduled: Vec<Unscheduled>,
    /// One entry per queue in `Input::queues`, in that order.
    pub queue_shares: Vec<QueueShare>,
    pub stats: Stats,
}

/// Decides which queued tasks start where and which running tasks yield.
///
/// Never panics on any input the model types can hold; tasks that cannot be placed
/// stay queued with a reason.
pub fn schedule(input: &Input) -> Decisions {
    cycle::Cycle::new(input).run()
}

/// Decides like [`schedule`], but over the queued tasks of `backlog` (`input.queued` is
/// not read), visiting only what it can use: its cost follows the tasks placed and the
/// backlog's groups, not the number of queued tasks (see [`Backlog`]).
///
/// Leases, preemptions and queue shares are those [`schedule`] gives for the same tasks
/// when no queued task is also running. `unscheduled` holds only the tasks the cycle
/// looked at (and members of gangs that cannot form a unit); the others keep the reason
/// an earlier cycle gave them. `stats` count what this cycle did.
pub fn schedule_backlog(input: &Input, backlog: &Backlog) -> Decisions {
    cycle::Cycle::from_backlog(input, backlog).run()
}

#[cfg(test)]
mod affinity_tests;
#[cfg(test)]
mod class_limit_tests;
#[cfg(test)]
mod gang_tests;
#[cfg(test)]
mod gpu_sharing_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
