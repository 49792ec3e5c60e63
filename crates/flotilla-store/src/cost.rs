//! What attempts cost, in integers so that every replica sums exactly the same.
//!
//! An attempt costs its node's price per hour × the hours it ran × its share of the node:
//! the task's dominant resource share of the node's allocatable (CPU, memory or GPUs,
//! whichever it takes most of). Nodes are the leader's soft state, so the leader stamps the
//! price and the share into the lease it commits ([`LeaseCost`]); the state machine times
//! the attempt with the entries' clock (from its `running` event to the event that ends it:
//! success, failure, preemption, a lost cluster or a cancel) and adds the cost to the task,
//! its task set and its queue. A pending pod costs nothing.
//!
//! Units: prices in micro-dollars per hour, shares in parts per million, sums in
//! nano-dollars (`u64`: about 18 billion dollars before it wraps; additions saturate).

use flotilla_model::Resources;
use serde::{Deserialize, Serialize};

pub const NANO_USD_PER_USD: u64 = 1_000_000_000;
pub const MS_PER_DAY: u64 = 86_400_000;
const MS_PER_HOUR: u128 = 3_600_000;
const PPM: u128 = 1_000_000;
/// The highest price a lease may carry (per node-hour): anything above is a bad report.
pub const MAX_PRICE_PER_HOUR_USD: f64 = 1_000_000.0;

/// The price and share of one attempt, stamped by the leader into its lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseCost {
    pub price_micro_usd_per_hour: u64,
    pub share_ppm: u32,
}

impl LeaseCost {
    /// From a node's price and a share in 0..=1; out-of-range or non-finite inputs are
    /// clamped (a NaN price costs nothing).
    pub fn new(price_per_hour_usd: f64, share: f64) -> LeaseCost {
        let price = if price_per_hour_usd.is_finite() { price_per_hour_usd.clamp(0.0, MAX_PRICE_PER_HOUR_USD) } else { 0.0 };
        let share = if share.is_finite() { share.clamp(0.0, 1.0) } else { 0.0 };
        LeaseCost { price_micro_usd_per_hour: (price * 1e6).round() as u64, share_ppm: (share * 1e6).round() as u32 }
    }

    /// The lease for `task` on a node with `allocatable` and a price per hour.
    pub fn of(task: &Resources, allocatable: &Resources, price_per_hour_usd: f64) -> LeaseCost {
        LeaseCost::new(price_per_hour_usd, dominant_share(task, allocatable))
    }

    pub fn is_zero(&self) -> bool {
        self.price_micro_usd_per_hour == 0 || self.share_ppm == 0
    }

    /// Cost of running `run_ms` under this lease, in nano-dollars (rounded down).
    pub fn cost_nano_usd(&self, run_ms: u64) -> u64 {
        // µ$/h × ms × ppm / (ms/h × ppm) = µ$; × 1,000 = n$.
        let n = u128::from(self.price_micro_usd_per_hour) * u128::from(run_ms) * u128::from(self.share_ppm) * 1000 / (MS_PER_HOUR * PPM);
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// Dollars per hour this attempt costs while it runs.
    pub fn usd_per_hour(&self) -> f64 {
        self.price_micro_usd_per_hour as f64 / 1e6 * f64::from(self.share_ppm) / 1e6
    }
}

/// The largest fraction of `allocatable` that `task` asks for, over CPU, memory and GPUs
/// (0 for a resource the node does not have), at most 1.
pub fn dominant_share(task: &Resources, allocatable: &Resources) -> f64 {
    let frac = |want: u64, have: u64| if have == 0 { 0.0 } else { want as f64 / have as f64 };
    frac(task.cpu_millis, allocatable.cpu_millis)
        .max(frac(task.memory_bytes, allocatable.memory_bytes))
        .max(frac(task.gpu, allocatable.gpu))
        .min(1.0)
}

/// Nano-dollars as dollars.
pub fn usd(nano_usd: u64) -> f64 {
    nano_usd as f64 / NANO_USD_PER_USD as f64
}

/// The UTC day (days since the epoch) of a time in ms.
pub fn utc_day(time_ms: u64) -> u64 {
    time_ms / MS_PER_DAY
}

/// What a queue has spent: in all, and on the UTC day of its latest ended attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCost {
    pub total_nano_usd: u64,
    /// `utc_day` of `day_nano_usd`.
    pub day: u64,
    pub day_nano_usd: u64,
}

impl QueueCost {
    /// Adds an attempt that ended at `now_ms`; an attempt counts wholly on the day it ended.
    pub fn add(&mut self, now_ms: u64, nano_usd: u64) {
        self.total_nano_usd = self.total_nano_usd.saturating_add(nano_usd);
        let day = utc_day(now_ms);
        if day != self.day {
            self.day = day;
            self.day_nano_usd = 0;
        }
        self.day_nano_usd = self.day_nano_usd.saturating_add(nano_usd);
    }

    /// What ended attempts cost on `day`.
    pub fn spent_on(&self, day: u64) -> u64 {
        if day == self.day {
            self.day_nano_usd
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_cost_is_price_times_hours_times_share() {
        // A quarter of a $3.60/h node for half an hour: $0.45.
        let c = LeaseCost::new(3.6, 0.25);
        assert_eq!(c.cost_nano_usd(1_800_000), 450_000_000);
        assert!((c.usd_per_hour() - 0.9).abs() < 1e-9);
        // Two GPUs of eight dominate a small CPU and memory request.
        let share = dominant_share(&Resources::new(1000, 1 << 30, 2), &Resources::new(96_000, 1 << 40, 8));
        assert_eq!(share, 0.25);
        assert_eq!(LeaseCost::of(&Resources::new(1000, 0, 0), &Resources::new(0, 0, 0), 5.0).share_ppm, 0);
    }

    #[test]
    fn bad_prices_and_shares_are_clamped_not_trusted() {
        assert_eq!(LeaseCost::new(f64::NAN, 0.5).price_micro_usd_per_hour, 0);
        assert_eq!(LeaseCost::new(-3.0, 0.5).price_micro_usd_per_hour, 0);
        assert_eq!(LeaseCost::new(1e12, 2.0), LeaseCost { price_micro_usd_per_hour: 1_000_000_000_000, share_ppm: 1_000_000 });
        // The largest lease over a century stays within u64.
        let years = LeaseCost::new(1e12, 1.0).cost_nano_usd(100 * 365 * MS_PER_DAY);
        assert!(years > 0);
    }

    #[test]
    fn a_queue_day_restarts_at_utc_midnight() {
        let mut q = QueueCost::default();
        q.add(MS_PER_DAY * 10 + 5, 7);
        q.add(MS_PER_DAY * 10 + 9, 3);
        assert_eq!((q.spent_on(10), q.spent_on(11)), (10, 0));
        q.add(MS_PER_DAY * 11, 4);
        assert_eq!((q.total_nano_usd, q.spent_on(11), q.spent_on(10)), (14, 4, 0));
    }
}
