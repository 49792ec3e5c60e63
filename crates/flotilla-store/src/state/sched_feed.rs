//! A feed of the tasks whose schedulability may have changed, for the leader's backlog.
//!
//! The leader keeps its scheduling backlog (`flotilla_sched::Backlog`) between cycles
//! instead of rebuilding it from every queued task. Each apply notes here the ids of the
//! tasks it touched in a way the scheduler cares about (state, dependencies, a stopping
//! attempt); pausing or resuming a task set or changing a priority class, which changes many
//! tasks at once, asks every reader to rebuild instead. A reader keeps a [`FeedCursor`] and reads the ids noted
//! since ([`SchedFeed::since`]), or learns that it must rebuild: the feed was trimmed past
//! its cursor, a task set was paused or resumed, or the state was replaced wholesale (a
//! snapshot was installed), which starts a new feed.
//!
//! The feed is not part of the replicated state: it is never serialized, compares equal
//! whatever it holds, and is bounded ([`MAX_FEED_IDS`]) on every replica, read or not.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_model::TaskId;

/// Most ids kept (8 bytes each). A reader that falls further behind rebuilds.
pub const MAX_FEED_IDS: usize = 4_000_000;

/// Numbers feeds within the process, so that a reader notices a replaced state.
static NEXT_FEED: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub struct SchedFeed {
    instance: u64,
    /// Position of `ids[0]` since the feed began.
    base: u64,
    ids: VecDeque<TaskId>,
    /// Task sets paused or resumed since the feed began.
    resets: u64,
}

/// Where a reader is in a feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedCursor {
    instance: u64,
    position: u64,
    resets: u64,
}

impl Default for SchedFeed {
    fn default() -> Self {
        SchedFeed { instance: NEXT_FEED.fetch_add(1, Ordering::Relaxed), base: 0, ids: VecDeque::new(), resets: 0 }
    }
}

/// A copy of the state (a snapshot being built, a test's copy) is not the live state: it
/// starts a feed of its own, empty, rather than copying up to [`MAX_FEED_IDS`] ids.
impl Clone for SchedFeed {
    fn clone(&self) -> Self {
        SchedFeed::default()
    }
}

/// Not part of the replicated value: two states are equal whatever their feeds hold.
impl PartialEq for SchedFeed {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl SchedFeed {
    pub(super) fn touch(&mut self, id: TaskId) {
        if self.ids.len() >= MAX_FEED_IDS {
            self.ids.pop_front();
            self.base += 1;
        }
        self.ids.push_back(id);
    }

    /// Many tasks changed at once: readers rebuild.
    pub(super) fn reset(&mut self) {
        self.resets += 1;
    }

    /// The position after everything noted so far.
    pub fn cursor(&self) -> FeedCursor {
        FeedCursor { instance: self.instance, position: self.base + self.ids.len() as u64, resets: self.resets }
    }

    /// Ids noted since `cursor` (an id may repeat), or `None` when the reader must rebuild.
    pub fn since(&self, cursor: &FeedCursor) -> Option<impl Iterator<Item = TaskId> + '_> {
        if cursor.instance != self.instance || cursor.resets != self.resets || cursor.position < self.base {
            return None;
        }
        let skip = usize::try_from(cursor.position - self.base).ok()?;
        Some(self.ids.range(skip.min(self.ids.len())..).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_gets_the_ids_noted_since_its_cursor() {
        let mut feed = SchedFeed::default();
        feed.touch(TaskId(1));
        let c = feed.cursor();
        feed.touch(TaskId(2));
        feed.touch(TaskId(3));
        assert_eq!(feed.since(&c).map(|i| i.collect::<Vec<_>>()), Some(vec![TaskId(2), TaskId(3)]));
        assert_eq!(feed.since(&feed.cursor()).map(|i| i.count()), Some(0));
    }

    #[test]
    fn a_reset_another_feed_or_a_copy_makes_the_reader_rebuild() {
        let mut feed = SchedFeed::default();
        let c = feed.cursor();
        feed.reset();
        assert!(feed.since(&c).is_none());
        assert!(SchedFeed::default().since(&feed.cursor()).is_none());
        feed.touch(TaskId(1));
        assert!(feed.clone().since(&feed.cursor()).is_none(), "a copy is another feed");
    }
}
