//! What the unit tests of several modules share.

use flotilla_model::{Node, Queue, SchedTask};

use crate::{schedule, schedule_backlog, Backlog, Config, Decisions, Input};

/// Both entry points ([`schedule`] and [`schedule_backlog`]) on one queue `q` holding
/// `queued`; asserts they agree on leases and returns the full cycle's decisions.
pub(crate) fn both(nodes: Vec<Node>, queued: Vec<SchedTask>) -> Decisions {
    let input = Input {
        queues: vec![Queue::new("q", 1.0)],
        nodes,
        queued: queued.clone(),
        running: vec![],
        config: Config::default(),
        held_queues: Default::default(),
    };
    let mut backlog = Backlog::default();
    for t in queued {
        backlog.insert(t);
    }
    let direct = schedule(&input);
    let lazy = schedule_backlog(&Input { queued: Vec::new(), ..input.clone() }, &backlog);
    assert_eq!(direct.leases, lazy.leases, "schedule and schedule_backlog disagree");
    direct
}
