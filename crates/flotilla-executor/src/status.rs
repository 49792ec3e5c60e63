//! What an executor has been doing, for its health check and metrics.
//!
//! Plain atomics updated by the sync loop; `flotilla executor --http` serves them as
//! `/healthz` and Prometheus text at `/metrics`. No locks, nothing that can block the loop.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::backend::unix_now_ms;

#[derive(Debug)]
pub struct ExecutorStatus {
    started_ms: u64,
    last_sync_ok_ms: AtomicU64,
    syncs_ok: AtomicU64,
    syncs_failed: AtomicU64,
    events_reported: AtomicU64,
    report_failures: AtomicU64,
    starts: AtomicU64,
    start_failures: AtomicU64,
    stops: AtomicU64,
    stop_failures: AtomicU64,
}

impl Default for ExecutorStatus {
    fn default() -> Self {
        ExecutorStatus {
            started_ms: unix_now_ms(),
            last_sync_ok_ms: AtomicU64::new(0),
            syncs_ok: AtomicU64::new(0),
            syncs_failed: AtomicU64::new(0),
            events_reported: AtomicU64::new(0),
            report_failures: AtomicU64::new(0),
            starts: AtomicU64::new(0),
            start_failures: AtomicU64::new(0),
            stops: AtomicU64::new(0),
            stop_failures: AtomicU64::new(0),
        }
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl ExecutorStatus {
    pub(crate) fn sync_ok(&self) {
        inc(&self.syncs_ok);
        self.last_sync_ok_ms.store(unix_now_ms(), Ordering::Relaxed);
    }
    pub(crate) fn sync_failed(&self) {
        inc(&self.syncs_failed);
    }
    pub(crate) fn reported(&self, n: usize) {
        self.events_reported.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn report_failed(&self) {
        inc(&self.report_failures);
    }
    pub(crate) fn started(&self, ok: bool) {
        inc(if ok { &self.starts } else { &self.start_failures });
    }
    pub(crate) fn stopped(&self, ok: bool) {
        inc(if ok { &self.stops } else { &self.stop_failures });
    }

    /// Time since the last successful Sync, or since the executor started if none yet.
    pub fn since_last_sync(&self) -> Duration {
        let last = self.last_sync_ok_ms.load(Ordering::Relaxed).max(self.started_ms);
        Duration::from_millis(unix_now_ms().saturating_sub(last))
    }

    /// Healthy while syncs succeed: `Err` says why not. A scheduler group that is down makes
    /// every executor unhealthy too, so keep `unhealthy_after` well above a leader election.
    pub fn health(&self, unhealthy_after: Duration) -> Result<String, String> {
        let age = self.since_last_sync();
        let line = format!("last successful sync {:.1}s ago", age.as_secs_f64());
        if age > unhealthy_after {
            Err(format!("{line} (more than {}s)", unhealthy_after.as_secs()))
        } else {
            Ok(line)
        }
    }

    /// Prometheus text exposition, labelled with the cluster.
    pub fn render_metrics(&self, cluster: &str) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP flotilla_executor_{name} {help}\n# TYPE flotilla_executor_{name} {kind}");
            let _ = writeln!(out, "flotilla_executor_{name}{{cluster=\"{cluster}\"}} {value}");
        };
        metric(
            "sync_age_seconds",
            "gauge",
            "Seconds since the last successful Sync.",
            format!("{:.3}", self.since_last_sync().as_secs_f64()),
        );
        metric("syncs_total", "counter", "Successful Sync calls.", get(&self.syncs_ok).to_string());
        metric("sync_failures_total", "counter", "Sync calls that failed or were skipped.", get(&self.syncs_failed).to_string());
        metric("events_reported_total", "counter", "Attempt events acknowledged by the scheduler.", get(&self.events_reported).to_string());
        metric(
            "report_failures_total",
            "counter",
            "ReportEvents calls that failed (events are resent).",
            get(&self.report_failures).to_string(),
        );
        metric("starts_total", "counter", "Attempts started.", get(&self.starts).to_string());
        metric("start_failures_total", "counter", "Starts that failed or timed out.", get(&self.start_failures).to_string());
        metric("stops_total", "counter", "Attempts stopped.", get(&self.stops).to_string());
        metric("stop_failures_total", "counter", "Stops that failed or timed out.", get(&self.stop_failures).to_string());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_the_last_successful_sync() {
        let s = ExecutorStatus::default();
        assert!(s.health(Duration::from_secs(60)).is_ok(), "healthy during the start-up grace");
        s.sync_failed();
        s.sync_ok();
        s.started(true);
        s.started(false);
        assert!(s.health(Duration::from_secs(60)).unwrap().starts_with("last successful sync"));
        let text = s.render_metrics("eks");
        assert!(text.contains("flotilla_executor_syncs_total{cluster=\"eks\"} 1"), "{text}");
        assert!(text.contains("flotilla_executor_start_failures_total{cluster=\"eks\"} 1"), "{text}");
        assert!(text.contains("flotilla_executor_sync_failures_total{cluster=\"eks\"} 1"), "{text}");
    }
}
