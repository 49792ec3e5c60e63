//! Progress deadlines: stopping attempts that stopped making progress.
//!
//! A task with `progressDeadline` must signal progress while it runs. The executor enforces
//! the deadline itself, the same way for every backend: [`ProgressTracker`] remembers, per
//! attempt it started, when the attempt began running and when it last signalled; the sync
//! loop stops an attempt silent for its deadline and reports it failed as
//! [`FailureKind::NoProgress`](flotilla_model::FailureKind::NoProgress) ("no progress for 10m").
//!
//! Signals come from one of two places:
//! - **HTTP** (the Kubernetes backend): with `flotilla executor --progress-url URL`, each such
//!   attempt's container gets `FLOTILLA_PROGRESS_URL` and a random per-attempt
//!   `FLOTILLA_PROGRESS_TOKEN`; `POST $FLOTILLA_PROGRESS_URL` with
//!   `Authorization: Bearer $FLOTILLA_PROGRESS_TOKEN` is one signal ([`ProgressTracker::signal`],
//!   served by the executor's HTTP port). Only the token's SHA-256 digest is kept; tokens are
//!   never logged. Unknown tokens change nothing; one signal per attempt per second is taken.
//! - **The backend itself** (the simulated backend): [`ClusterBackend::progress_signals`]
//!   returns a counter per attempt, and a counter that grew is a signal.
//!
//! Without either (a Kubernetes executor without `--progress-url`) the deadline is not
//! enforced: the attempt runs and a warning says so once per attempt.
//!
//! [`ClusterBackend::progress_signals`]: crate::backend::ClusterBackend::progress_signals

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use flotilla_api::v1::LeasedTask;
use flotilla_model::TaskId;
use tokio::time::Instant;

use crate::backend::{Attempt, AttemptPhase};

/// Environment variables a tracked attempt's container gets.
pub const ENV_PROGRESS_URL: &str = "FLOTILLA_PROGRESS_URL";
pub const ENV_PROGRESS_TOKEN: &str = "FLOTILLA_PROGRESS_TOKEN";
/// Most attempts tracked at once; beyond it new attempts run without a deadline (and a warning).
pub const MAX_TRACKED: usize = 100_000;
/// Signals closer together than this are refused (429), per attempt.
pub const MIN_SIGNAL_GAP: Duration = Duration::from_secs(1);
/// Largest request body the progress endpoint reads (the body is ignored).
pub const MAX_SIGNAL_BODY_BYTES: usize = 1024;

type Key = (TaskId, u32);

/// Why a progress signal was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalError {
    /// No attempt holds this token (never issued, or its attempt ended): 401.
    Unknown,
    /// Signalled again within [`MIN_SIGNAL_GAP`]: 429.
    TooSoon,
}

struct Entry {
    deadline: Duration,
    /// The signal counter last seen from the backend.
    backend_signals: u64,
    token_digest: Option<[u8; 32]>,
    running_since: Option<Instant>,
    last_signal: Option<Instant>,
    last_call: Option<Instant>,
    /// Already reported overdue (stopping).
    overdue: bool,
}

#[derive(Default)]
struct Inner {
    attempts: HashMap<Key, Entry>,
    by_token: HashMap<[u8; 32], Key>,
}

/// Progress of the attempts this executor process started; shared by the sync loop and the
/// HTTP endpoint. See the module docs.
#[derive(Default)]
pub struct ProgressTracker {
    /// The URL pods reach the executor's progress endpoint at; `None`: no HTTP signals.
    url: Option<String>,
    inner: Mutex<Inner>,
}

/// An attempt silent for its deadline: stop it and report it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overdue {
    pub task_id: TaskId,
    pub attempt: u32,
    pub deadline: Duration,
}

impl Overdue {
    /// "no progress for 10m": the failure's message.
    pub fn message(&self) -> String {
        format!("no progress for {}", humantime::format_duration(self.deadline))
    }
}

/// Shows the URL and how many attempts are tracked, never a token or digest.
impl std::fmt::Debug for ProgressTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressTracker").field("url", &self.url).field("tracked", &self.tracked()).finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl ProgressTracker {
    /// A tracker whose attempts signal over HTTP at `url` (`None`: only backend signals).
    pub fn new(url: Option<String>) -> ProgressTracker {
        ProgressTracker { url, inner: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before an attempt starts: tracks it when it has a deadline and a way to signal, and
    /// gives its container the URL and token. `backend_signals`: the backend signals itself.
    pub fn register(&self, task: &mut LeasedTask, backend_signals: bool) {
        // Only this tracker sets these: a task's own values never pass for them.
        task.env.remove(ENV_PROGRESS_URL);
        task.env.remove(ENV_PROGRESS_TOKEN);
        if task.progress_deadline_ms == 0 {
            return;
        }
        let key = (TaskId(task.task_id), task.attempt);
        let mut inner = self.lock();
        if inner.attempts.contains_key(&key) {
            // A repeated start (the scheduler asks until it sees the attempt) is a no-op in
            // every backend once created: the container keeps the token it got first. One not
            // created yet gets a new token and the old one stops working.
            if let Some(d) = inner.attempts.remove(&key).and_then(|e| e.token_digest) {
                inner.by_token.remove(&d);
            }
        }
        if inner.attempts.len() >= MAX_TRACKED {
            tracing::warn!(task_id = task.task_id, attempt = task.attempt, "progress deadline not enforced: too many attempts tracked");
            return;
        }
        let token_digest = match (&self.url, backend_signals) {
            (Some(url), _) => {
                let Some(token) = random_token() else {
                    tracing::warn!(task_id = task.task_id, "progress deadline not enforced: the system random source failed");
                    return;
                };
                task.env.insert(ENV_PROGRESS_URL.to_string(), url.clone());
                let d = digest(&token);
                task.env.insert(ENV_PROGRESS_TOKEN.to_string(), token);
                Some(d)
            }
            (None, true) => None,
            (None, false) => {
                tracing::warn!(
                    task_id = task.task_id,
                    attempt = task.attempt,
                    "progress deadline not enforced: this executor has no --progress-url for tasks to signal to"
                );
                return;
            }
        };
        if let Some(d) = token_digest {
            inner.by_token.insert(d, key);
        }
        inner.attempts.insert(
            key,
            Entry {
                deadline: Duration::from_millis(task.progress_deadline_ms),
                backend_signals: 0,
                token_digest,
                running_since: None,
                last_signal: None,
                last_call: None,
                overdue: false,
            },
        );
    }

    /// One HTTP signal: `token` from the `Authorization: Bearer` header.
    pub fn signal(&self, token: &str, now: Instant) -> Result<(), SignalError> {
        let mut inner = self.lock();
        let key = *inner.by_token.get(&digest(token)).ok_or(SignalError::Unknown)?;
        let e = inner.attempts.get_mut(&key).ok_or(SignalError::Unknown)?;
        if e.last_call.is_some_and(|t| now.saturating_duration_since(t) < MIN_SIGNAL_GAP) {
            return Err(SignalError::TooSoon);
        }
        e.last_call = Some(now);
        e.last_signal = Some(now);
        Ok(())
    }

    /// What the cluster shows now: running attempts start their clock, and attempts that
    /// finished or are gone are forgotten (their tokens stop working).
    pub fn observe(&self, attempts: &[Attempt], backend_signals: Option<&[(TaskId, u32, u64)]>, now: Instant) {
        let mut inner = self.lock();
        if inner.attempts.is_empty() {
            return;
        }
        let phases: HashMap<Key, AttemptPhase> = attempts.iter().map(|a| ((a.task_id, a.attempt), a.phase)).collect();
        let signals: HashMap<Key, u64> = backend_signals.unwrap_or_default().iter().map(|(t, a, n)| ((*t, *a), *n)).collect();
        let mut gone = Vec::new();
        for (key, e) in inner.attempts.iter_mut() {
            match phases.get(key) {
                Some(AttemptPhase::Pending) => {}
                Some(AttemptPhase::Running) => {
                    e.running_since.get_or_insert(now);
                    if let Some(n) = signals.get(key).copied().filter(|n| *n > e.backend_signals) {
                        e.backend_signals = n;
                        e.last_signal = Some(now);
                    }
                }
                // Finished, or gone: nothing to enforce any more. (A start not yet created
                // is not gone: it has no running clock either, so it waits here.)
                Some(_) => gone.push(*key),
                None if e.running_since.is_some() => gone.push(*key),
                None => {}
            }
        }
        for key in gone {
            if let Some(e) = inner.attempts.remove(&key) {
                if let Some(d) = e.token_digest {
                    inner.by_token.remove(&d);
                }
            }
        }
    }

    /// Attempts silent for their deadline since they began running or last signalled; each
    /// is returned once.
    pub fn overdue(&self, now: Instant) -> Vec<Overdue> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for ((task_id, attempt), e) in inner.attempts.iter_mut() {
            let Some(since) = e.running_since else { continue };
            let quiet_since = e.last_signal.map_or(since, |s| s.max(since));
            if !e.overdue && now.saturating_duration_since(quiet_since) >= e.deadline {
                e.overdue = true;
                out.push(Overdue { task_id: *task_id, attempt: *attempt, deadline: e.deadline });
            }
        }
        out.sort_by_key(|o| (o.task_id, o.attempt));
        out
    }

    /// Attempts tracked now (a metric; bounded by [`MAX_TRACKED`]).
    pub fn tracked(&self) -> usize {
        self.lock().attempts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leased(id: u64, deadline_ms: u64) -> LeasedTask {
        LeasedTask { task_id: id, attempt: 1, progress_deadline_ms: deadline_ms, ..Default::default() }
    }

    fn running(id: u64) -> Attempt {
        Attempt { task_id: TaskId(id), attempt: 1, node: "n".into(), phase: AttemptPhase::Running }
    }

    #[test]
    fn a_silent_attempt_is_overdue_after_its_deadline_from_when_it_began_running_and_a_signalling_one_is_not() {
        let mut now = Instant::now();
        let t = ProgressTracker::new(Some("http://executor:8080/progress".into()));
        let (mut quiet, mut busy) = (leased(1, 10_000), leased(2, 10_000));
        t.register(&mut quiet, false);
        t.register(&mut busy, false);
        let token = busy.env.get(ENV_PROGRESS_TOKEN).cloned().expect("a token in the env");
        assert_eq!(token.len(), 64);
        assert_eq!(busy.env.get(ENV_PROGRESS_URL).map(String::as_str), Some("http://executor:8080/progress"));
        assert_ne!(quiet.env.get(ENV_PROGRESS_TOKEN), Some(&token), "each attempt has its own token");
        now += Duration::from_secs(60);
        assert!(t.overdue(now).is_empty(), "the clock starts when the attempt runs, not when it is leased");
        t.observe(&[running(1), running(2)], None, now);
        for _ in 0..4 {
            now += Duration::from_secs(4);
            assert_eq!(t.signal(&token, now), Ok(()));
            assert_eq!(t.signal(&token, now), Err(SignalError::TooSoon), "rate-limited per attempt");
        }
        let overdue = t.overdue(now);
        assert_eq!(overdue, vec![Overdue { task_id: TaskId(1), attempt: 1, deadline: Duration::from_secs(10) }]);
        assert_eq!(overdue[0].message(), "no progress for 10s");
        assert!(t.overdue(now).is_empty(), "reported once");
        assert_eq!(t.signal("not-a-token", now), Err(SignalError::Unknown));
        // The attempt ended: its token stops working.
        t.observe(&[], None, now);
        now += Duration::from_secs(2);
        assert_eq!(t.signal(&token, now), Err(SignalError::Unknown));
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn backend_signals_count_when_their_counter_grows_and_without_a_url_or_signals_nothing_is_enforced() {
        let mut now = Instant::now();
        let t = ProgressTracker::new(None);
        let mut sim = leased(1, 10_000);
        t.register(&mut sim, true);
        assert!(sim.env.is_empty(), "no URL, no env");
        let mut unenforced = leased(2, 10_000);
        t.register(&mut unenforced, false);
        let mut none = leased(3, 0);
        t.register(&mut none, true);
        assert_eq!(t.tracked(), 1, "only the attempt whose backend signals is tracked");
        t.observe(&[running(1)], Some(&[(TaskId(1), 1, 1)]), now);
        for n in 2..=4 {
            now += Duration::from_secs(6);
            t.observe(&[running(1)], Some(&[(TaskId(1), 1, n)]), now);
            assert!(t.overdue(now).is_empty());
        }
        // The counter stops growing: silent from the last growth on.
        now += Duration::from_secs(6);
        t.observe(&[running(1)], Some(&[(TaskId(1), 1, 4)]), now);
        assert!(t.overdue(now).is_empty());
        now += Duration::from_secs(4);
        assert_eq!(t.overdue(now).len(), 1);
    }
}
