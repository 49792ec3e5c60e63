//! The wall clock a replica stamps entries with.
//!
//! Safety never rests on it: leases and silence are measured on the monotonic clock. It
//! dates events, computes retry backoffs and retention. The fault simulator gives each
//! replica a clock that follows virtual time and can jump, to check exactly that.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// The system clock, or a simulated one.
#[derive(Clone, Debug, Default)]
pub struct WallClock(Option<Arc<Simulated>>);

#[derive(Debug)]
struct Simulated {
    origin: Instant,
    origin_unix_ms: u64,
    offset_ms: AtomicI64,
}

impl WallClock {
    pub fn system() -> WallClock {
        WallClock(None)
    }

    /// A clock that reads `origin_unix_ms` now and moves with Tokio's (possibly paused) time.
    pub fn simulated(origin_unix_ms: u64) -> WallClock {
        WallClock(Some(Arc::new(Simulated { origin: Instant::now(), origin_unix_ms, offset_ms: AtomicI64::new(0) })))
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            None => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            Some(s) => {
                let elapsed = s.origin.elapsed().as_millis() as i64;
                (s.origin_unix_ms as i64 + elapsed + s.offset_ms.load(Ordering::Relaxed)).max(0) as u64
            }
        }
    }

    /// Steps a simulated clock by `by_ms` (either way); no effect on the system clock.
    pub fn jump(&self, by_ms: i64) {
        if let Some(s) = &self.0 {
            s.offset_ms.fetch_add(by_ms, Ordering::Relaxed);
        }
    }
}
