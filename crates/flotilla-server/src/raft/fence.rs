//! Fenced leadership: a leader acts on leases only while a majority recently confirmed it.
//!
//! openraft 0.9 has no leader lease of its own: a leader cut off from its followers keeps
//! `ServerState::Leader` until it hears of a higher term, which may be never. Anything it
//! answers from its local state in that time (an executor's `Sync`, a scheduling cycle) can
//! contradict what the majority's new leader decides. So a replica serves lease-granting
//! calls only inside a *leadership lease*:
//!
//! * Every heartbeat interval the leader reads its clock (`t`) and asks openraft to confirm
//!   its leadership with a quorum (`Raft::get_read_log_id`, one AppendEntries round to every
//!   voter). When a majority acknowledges, no other leader can be elected before
//!   `t + election_timeout_min`: each acknowledging follower received the heartbeat after
//!   `t` and neither starts an election nor grants a vote (openraft rejects votes inside its
//!   own lease of `election_timeout_max`) for at least `election_timeout_min` after it.
//! * The lease held here is shorter, `t + leader_lease` with `leader_lease` ≤ 3/4 of
//!   `election_timeout_min`, which leaves room for clocks that run at different rates (the
//!   only clock assumption: drift *rates* are bounded; no synchronised clocks).
//! * The lease also requires that this leader has applied an entry of its own term (the
//!   blank entry openraft commits on election): before that, its state may lack entries
//!   that the previous leader committed.
//!
//! The confirmations are batched: one quorum round per heartbeat interval however many
//! calls wait on the lease.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::replica::Replica;

/// The newest quorum confirmation of this replica's leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confirmation {
    pub term: u64,
    /// When the confirming round was started (before any heartbeat was sent).
    pub at: Instant,
}

/// Why a replica may not act as leader now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    #[error("this replica is not the leader")]
    NotLeader,
    #[error("this leader has not applied an entry of its term {term} yet")]
    NotCaughtUp { term: u64 },
    #[error("a majority has not confirmed this replica's leadership within {lease_ms} ms")]
    NotConfirmed { lease_ms: u64 },
}

/// The leadership lease of one replica. Cheap to query; updated by [`run`].
pub struct Fence {
    lease: Duration,
    confirmed: watch::Sender<Option<Confirmation>>,
}

impl Fence {
    pub fn new(lease: Duration) -> Fence {
        Fence { lease, confirmed: watch::channel(None).0 }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The term this replica may act in now, if its lease holds at `now`.
    pub fn check(&self, replica: &Replica, now: Instant) -> Result<u64, FenceError> {
        if !replica.is_leader() {
            return Err(FenceError::NotLeader);
        }
        let term = replica.current_term();
        if crate::planted::SKIP_FENCE.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(term);
        }
        if replica.last_applied_term() != Some(term) {
            return Err(FenceError::NotCaughtUp { term });
        }
        match *self.confirmed.borrow() {
            Some(c) if c.term == term && now < c.at + self.lease => Ok(term),
            _ => Err(FenceError::NotConfirmed { lease_ms: self.lease.as_millis() as u64 }),
        }
    }

    /// Like [`check`](Self::check), but waits up to `wait` for the next confirmation (a new
    /// leader's first round, or a round that is late by a heartbeat).
    pub async fn acquire(&self, replica: &Replica, wait: Duration) -> Result<u64, FenceError> {
        let deadline = Instant::now() + wait;
        let mut rx = self.confirmed.subscribe();
        loop {
            let error = match self.check(replica, Instant::now()) {
                Ok(term) => return Ok(term),
                Err(FenceError::NotLeader) => return Err(FenceError::NotLeader),
                Err(e) => e,
            };
            let mut applied = replica.applied();
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return Err(error) },
                _ = applied.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Err(error),
            }
        }
    }

    fn record(&self, confirmation: Option<Confirmation>) {
        self.confirmed.send_if_modified(|c| {
            // Never move a confirmation back in time (rounds may end out of order).
            let newer = match (&*c, &confirmation) {
                (Some(old), Some(new)) => new.term > old.term || (new.term == old.term && new.at > old.at),
                (None, None) => false,
                _ => true,
            };
            if newer {
                *c = confirmation;
            }
            newer
        });
    }
}

/// Confirms this replica's leadership once per `every` while it leads; returns when the
/// replica is dropped or `shutdown` turns true.
pub(crate) async fn run(replica: std::sync::Weak<Replica>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let Some(replica) = replica.upgrade() else { return };
        let replica: Arc<Replica> = replica;
        if !replica.is_leader() {
            replica.fence().record(None);
            continue;
        }
        let term = replica.current_term();
        let at = Instant::now();
        // A round that takes longer than the lease confirms nothing useful.
        let confirmed = matches!(tokio::time::timeout(replica.fence().lease(), replica.raft().get_read_log_id()).await, Ok(Ok(_)));
        if confirmed && replica.current_term() == term {
            replica.fence().record(Some(Confirmation { term, at }));
        }
    }
}
