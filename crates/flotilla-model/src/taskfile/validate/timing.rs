//! Time and retries: `retry`, `maxRuntime`, `pendingTimeout`, `terminationGrace`,
//! `progressDeadline`, and `sim`.

use super::parse_duration_ms;
use crate::taskfile::{FieldError, TaskTemplate};
use crate::{parse_bytes, quote, RetryPolicy, SimSpec, MAX_ATTEMPTS_CAP, MAX_BACKOFF_MS};

/// The durations of a task's life, as validated.
pub(super) struct Durations {
    pub max_runtime_ms: Option<u64>,
    pub pending_timeout_ms: Option<u64>,
    pub termination_grace_ms: u64,
}

pub(super) fn retry(p: &str, t: &TaskTemplate, errors: &mut Vec<FieldError>) -> RetryPolicy {
    let mut retry = RetryPolicy::default();
    let Some(r) = &t.retry else { return retry };
    if let Some(n) = r.max_attempts {
        if n == 0 || n > MAX_ATTEMPTS_CAP {
            errors.push(FieldError::new(format!("{p}.retry.maxAttempts"), format!("{n} must be between 1 and {MAX_ATTEMPTS_CAP}")));
        }
        retry.max_attempts = n;
    }
    if let Some(b) = &r.backoff {
        match parse_duration_ms(b) {
            Ok(ms) => retry.backoff_ms = ms.min(MAX_BACKOFF_MS),
            Err(e) => errors.push(FieldError::new(format!("{p}.retry.backoff"), e)),
        }
    }
    if let Some(b) = &r.max_backoff {
        match parse_duration_ms(b) {
            Ok(ms) => retry.max_backoff_ms = ms.min(MAX_BACKOFF_MS),
            Err(e) => errors.push(FieldError::new(format!("{p}.retry.maxBackoff"), e)),
        }
    }
    if let Some(g) = r.oom_memory_growth {
        if !(g > 1.0 && g <= 4.0) {
            errors.push(FieldError::new(format!("{p}.retry.oomMemoryGrowth"), format!("{g} must be above 1 and at most 4")));
        }
        retry.oom_memory_growth = Some(g);
    }
    retry
}

pub(super) fn durations(p: &str, t: &TaskTemplate, errors: &mut Vec<FieldError>) -> Durations {
    let max_runtime_ms = t.max_runtime.as_ref().and_then(|s| match parse_duration_ms(s) {
        Ok(0) => {
            errors.push(FieldError::new(format!("{p}.maxRuntime"), "must be longer than zero"));
            None
        }
        Ok(ms) => Some(ms),
        Err(e) => {
            errors.push(FieldError::new(format!("{p}.maxRuntime"), e));
            None
        }
    });
    let pending_timeout_ms = t.pending_timeout.as_ref().and_then(|s| match parse_duration_ms(s) {
        Ok(ms) if ms < 1_000 => {
            errors.push(FieldError::new(format!("{p}.pendingTimeout"), format!("{} must be at least 1s", quote(s))));
            None
        }
        Ok(ms) => Some(ms),
        Err(e) => {
            errors.push(FieldError::new(format!("{p}.pendingTimeout"), e));
            None
        }
    });
    let termination_grace_ms = match &t.termination_grace {
        Some(s) => parse_duration_ms(s).unwrap_or_else(|e| {
            errors.push(FieldError::new(format!("{p}.terminationGrace"), e));
            0
        }),
        None => crate::task::DEFAULT_TERMINATION_GRACE_MS,
    };
    Durations { max_runtime_ms, pending_timeout_ms, termination_grace_ms }
}

/// What a simulated cluster does with the task.
pub(super) fn sim(p: &str, t: &TaskTemplate, errors: &mut Vec<FieldError>) -> Option<SimSpec> {
    t.sim.as_ref().map(|s| SimSpec {
        duration_ms: s.duration.as_ref().map_or(0, |d| {
            parse_duration_ms(d).unwrap_or_else(|e| {
                errors.push(FieldError::new(format!("{p}.sim.duration"), e));
                0
            })
        }),
        exit_code: s.exit_code,
        memory_peak_bytes: s.memory_peak.as_ref().and_then(|m| match parse_bytes(m) {
            Ok(b) => Some(b),
            Err(e) => {
                errors.push(FieldError::new(format!("{p}.sim.memoryPeak"), e.to_string()));
                None
            }
        }),
        progress_every_ms: sim_duration(p, "progressEvery", s.progress_every.as_deref(), errors),
        stall_after_ms: sim_duration(p, "stallAfter", s.stall_after.as_deref(), errors),
    })
}

/// Shortest and longest `progressDeadline`: shorter would stop tasks for a slow call,
/// longer is no deadline for an agent.
pub const MIN_PROGRESS_DEADLINE_MS: u64 = 5_000;
pub const MAX_PROGRESS_DEADLINE_MS: u64 = 7 * 24 * 3600 * 1000;

pub(super) fn progress_deadline(p: &str, t: &TaskTemplate, errors: &mut Vec<FieldError>) -> Option<u64> {
    let s = t.progress_deadline.as_deref()?;
    match parse_duration_ms(s) {
        Ok(ms) if (MIN_PROGRESS_DEADLINE_MS..=MAX_PROGRESS_DEADLINE_MS).contains(&ms) => Some(ms),
        Ok(_) => {
            errors.push(FieldError::new(format!("{p}.progressDeadline"), format!("{} must be between 5s and 7d", quote(s))));
            None
        }
        Err(e) => {
            errors.push(FieldError::new(format!("{p}.progressDeadline"), e));
            None
        }
    }
}

/// `sim.progressEvery` / `sim.stallAfter`: a duration longer than zero.
fn sim_duration(p: &str, field: &str, s: Option<&str>, errors: &mut Vec<FieldError>) -> Option<u64> {
    let s = s?;
    match parse_duration_ms(s) {
        Ok(0) => {
            errors.push(FieldError::new(format!("{p}.sim.{field}"), "must be longer than zero"));
            None
        }
        Ok(ms) => Some(ms),
        Err(e) => {
            errors.push(FieldError::new(format!("{p}.sim.{field}"), e));
            None
        }
    }
}
