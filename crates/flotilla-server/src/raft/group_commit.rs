//! Group commit: many concurrent proposals become one Raft entry.
//!
//! A durable commit costs about a millisecond of fdatasync whatever its size, so committing
//! one command per entry caps a replica near 1,000 commands per second. Every proposal goes
//! into one bounded queue instead; a batcher waits for a free in-flight slot, takes whatever
//! is waiting (up to `max_commands` and `max_bytes`, lingering up to `linger` for more), and
//! hands the batch to [`Replica`](super::Replica) to commit as one entry while the next batch
//! forms. Under load batches grow by themselves; an idle replica adds only `linger`.

use std::sync::Arc;
use std::time::Duration;

use flotilla_store::{Command, CommandResult};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::replica::{ProposeError, Replica};

/// Bounds of one group-committed entry.
#[derive(Clone, Debug)]
pub struct GroupCommitConfig {
    /// Most commands in one entry.
    pub max_commands: usize,
    /// Most encoded command bytes in one entry (a single larger proposal still goes alone).
    pub max_bytes: usize,
    /// How long a batch waits for more proposals once it has one.
    pub linger: Duration,
    /// Entries proposed and not yet committed at once; further proposals wait and batch up.
    pub max_in_flight: usize,
    /// Proposals waiting to be batched; callers wait (back-pressure) when it is full.
    pub max_queued: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            max_commands: 1024,
            max_bytes: 512 * 1024,
            linger: Duration::from_millis(1),
            max_in_flight: 4,
            max_queued: 4096,
        }
    }
}

/// Where a proposal came from: a follower's forwarded batch must not be forwarded again, and
/// the leader loop's decisions are committed by their own replica or not at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Local,
    Forwarded,
    LeaderOnly,
}

pub(crate) type Answer = Result<Vec<CommandResult>, ProposeError>;

/// One caller's commands, answered together.
pub(crate) struct Pending {
    pub commands: Vec<Command>,
    pub bytes: usize,
    pub origin: Origin,
    pub enqueued: Instant,
    pub tx: oneshot::Sender<Answer>,
}

impl Pending {
    pub(crate) fn answer(self, answer: Answer) {
        // The caller may have given up waiting; nothing to do then.
        let _ = self.tx.send(answer);
    }
}

/// The encoded size of a command, without allocating.
pub(crate) fn encoded_len(command: &Command) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Serializing plain data into a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, command);
    counter.0
}

/// Forms batches until `shutdown` turns true or every sender is gone.
pub(crate) async fn run(
    replica: std::sync::Weak<Replica>,
    config: GroupCommitConfig,
    mut rx: mpsc::Receiver<Pending>,
    mut shutdown: watch::Receiver<bool>,
) {
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut carry: Option<Pending> = None;
    loop {
        let permit: OwnedSemaphorePermit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let first = match carry.take() {
            Some(p) => p,
            None => tokio::select! {
                p = rx.recv() => match p { Some(p) => p, None => break },
                _ = shutdown.wait_for(|stop| *stop) => break,
            },
        };
        let mut commands = first.commands.len();
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        let linger_until = Instant::now() + config.linger;
        while commands < config.max_commands && bytes < config.max_bytes {
            let next = match rx.try_recv() {
                Ok(p) => p,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => match tokio::time::timeout_at(linger_until, rx.recv()).await {
                    Ok(Some(p)) => p,
                    Ok(None) | Err(_) => break,
                },
            };
            if commands + next.commands.len() > config.max_commands || bytes + next.bytes > config.max_bytes {
                carry = Some(next);
                break;
            }
            commands += next.commands.len();
            bytes += next.bytes;
            batch.push(next);
        }
        let Some(replica) = replica.upgrade() else { break };
        tokio::spawn(async move {
            replica.commit_batch(batch).await;
            drop(permit);
        });
    }
    // Proposals never taken into a batch were not proposed: say so.
    if let Some(p) = carry {
        p.answer(Err(ProposeError::ShuttingDown));
    }
    rx.close();
    while let Ok(p) = rx.try_recv() {
        p.answer(Err(ProposeError::ShuttingDown));
    }
}
