//! What the unit tests of several modules share.

use flotilla_model::{Node, Queue, SchedTask};

use crate::{schedule, schedule_backlog, Backlog, Config, Decisions, Input, Running};

/// Both entry points ([`schedule`] and [`schedule_backlog`]) on one queue `q` holding
/// `queued`; asserts they agree and returns the full cycle's decisions.
pub(crate) fn both(nodes: Vec<Node>, queued: Vec<SchedTask>) -> Decisions {
    both_on(vec![Queue::new("q", 1.0)], nodes, queued, vec![])
}

/// Both entry points on the same input, the queued tasks given to the backlog path through
/// a [`Backlog`]; asserts they agree on leases and preemptions and returns the full cycle's
/// decisions.
pub(crate) fn both_on(queues: Vec<Queue>, nodes: Vec<Node>, queued: Vec<SchedTask>, running: Vec<Running>) -> Decisions {
    let input = Input { queues, nodes, queued: queued.clone(), running, config: Config::default(), held_queues: Default::default() };
    let mut backlog = Backlog::default();
    for t in queued {
        backlog.insert(t);
    }
    let direct = schedule(&input);
    let lazy = schedule_backlog(&Input { queued: Vec::new(), ..input.clone() }, &backlog);
    assert_eq!(direct.leases, lazy.leases, "schedule and schedule_backlog disagree on leases");
    assert_eq!(direct.preemptions, lazy.preemptions, "schedule and schedule_backlog disagree on preemptions");
    direct
}
