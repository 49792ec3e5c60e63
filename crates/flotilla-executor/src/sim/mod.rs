//! The simulated backend: nodes from a clusters file, pods that live on a clock.
//!
//! A [`SimCluster`] is a cheap, cloneable handle to one simulated cluster. Its state lives
//! behind the handle, not in the executor loop, so a test can stop an executor and start a
//! new one on the same cluster: the pods the old one started are still there, still running,
//! and the new loop must reconcile them.
//!
//! Pods cost no task and no timer each. Every pod transition is a deadline in one binary
//! heap; every call into the cluster first advances the clock and pops the deadlines that
//! passed, in time order. Ten thousand pods cost ten thousand heap entries.
//!
//! A pod's life: `pending` for the cluster's `pending` time, then `running`, then after the
//! task's simulated duration (`LeasedTask.sim_duration_ms`, else the cluster's
//! `default_duration`) it ends:
//! - OOM-killed half-way through when `sim_memory_peak_bytes` exceeds the memory limit (the
//!   lease's limit, else its request);
//! - else, with the cluster's injected fault probabilities, failed (exit 1), OOM-killed or
//!   evicted at a random point of its run;
//! - else failed with `sim_exit_code` when that is non-zero, else succeeded;
//! - and in every case `DeadlineExceeded` if that would take longer than `max_runtime_ms`.
//!
//! A task with `sim.progressEvery` signals progress (a counter per attempt, read through
//! `ClusterBackend::progress_signals`) every that long of simulated running time, until
//! `sim.stallAfter`; the executor's progress deadline logic (`crate::progress`) does the rest.
//!
//! Events wait in the cluster until an executor acknowledges them (at most three per started
//! attempt), and finished pods stay, like finished Jobs, until the scheduler stops them.
//!
//! The dice are thrown when the attempt starts, from one seeded generator per cluster, so a
//! seed and an order of starts give the same outcomes every run.
//!
//! The cluster keeps its own run history ([`SimCluster::run_history`]): one [`RunRecord`] per
//! pod, from its creation until it stopped holding its node (a terminal transition, or removal
//! by [`SimCluster::stop_attempt`]), in wall-clock milliseconds. It is the cluster's record, not
//! the scheduler's, so tests can check that a task never ran in two places at once.
//!
//! Every attempt has synthetic output ([`SimCluster::logs`]) made from its run record: a line
//! when it starts (a gang member's also one `flotilla-sim: env KEY=VALUE` line per
//! `FLOTILLA_GANG_*` variable a pod of it would have), one per second of (real) run time for its first ten minutes, and one when
//! it ends; kept for `keep_finished` after the end, like a finished Job, so `flotilla logs`
//! works in `flotilla dev`.
//!
//! The clock follows `tokio::time::Instant`: the same as `std::time::Instant` in a normal
//! runtime, and virtual time under Tokio's paused clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flotilla_api::v1::LeasedTask;
use flotilla_model::{AttemptStatus, FailureKind, Node, TaskId};
use futures::future::BoxFuture;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::backend::{unix_now_ms, Attempt, AttemptEvent, AttemptPhase, BackendError, ClusterBackend, LogOptions, LogStream};
pub mod config;

use crate::config::ConfigError;
use config::{ClusterConfig, ClustersFile, Faults};

/// Exit code of an OOM-killed container (SIGKILL).
const OOM_EXIT_CODE: i32 = 137;

/// Run records a cluster keeps; older ones are dropped (and counted).
pub const RUN_HISTORY_LIMIT: usize = 100_000;

/// One pod's stay on its node, as the simulated cluster saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub task_id: TaskId,
    pub attempt: u32,
    pub node: String,
    /// When the pod was created (it holds the node from then on, pending or running).
    pub started_unix_ms: u64,
    /// When it stopped holding the node; `None` while it still does.
    pub ended_unix_ms: Option<u64>,
    /// How it ended: `succeeded`, `failed:<kind>` (e.g. `failed:evicted`) or `stopped`
    /// (removed before it finished); `None` while it still holds the node.
    pub ended_by: Option<String>,
    /// A gang member's place in its gang, for the `FLOTILLA_GANG_*` lines of its output.
    /// Not in the history file.
    #[serde(skip)]
    pub gang: Option<Box<SimGangMember>>,
}

/// What a simulated gang member was leased with: enough to give it the variables a
/// Kubernetes pod gets ([`crate::gang::member`]). At most 16 roles, so small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimGangMember {
    name: String,
    queue: String,
    id: u64,
    size: u32,
    rank: u32,
    roles: Vec<(String, u32)>,
}

impl SimGangMember {
    fn of(task: &LeasedTask) -> Option<Box<SimGangMember>> {
        (task.gang_size > 0).then(|| {
            Box::new(SimGangMember {
                name: task.name.clone(),
                queue: task.queue.clone(),
                id: task.gang_id,
                size: task.gang_size,
                rank: task.gang_rank,
                roles: task.gang_roles.iter().map(|r| (r.name.clone(), r.count)).collect(),
            })
        })
    }

    /// The variables the member's pod would have, with the names a cluster of this
    /// installation would give (`flotilla-<queue>` namespace, the gang's Service).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let task = LeasedTask {
            name: self.name.clone(),
            queue: self.queue.clone(),
            gang_id: self.id,
            gang_size: self.size,
            gang_rank: self.rank,
            gang_roles: self.roles.iter().map(|(name, count)| flotilla_api::v1::GangRole { name: name.clone(), count: *count }).collect(),
            ..Default::default()
        };
        let namespace = format!("{SIM_NAMESPACE_PREFIX}{}", self.queue);
        crate::gang::member(&task, &crate::gang::service_name(SIM_INSTALLATION, self.id), &namespace).map(|m| m.env).unwrap_or_default()
    }
}

/// The namespace prefix and installation the simulated gang names use (a kube backend's defaults).
const SIM_NAMESPACE_PREFIX: &str = "flotilla-";
const SIM_INSTALLATION: &str = "sim";

/// How a simulated cluster is built, beyond its clusters-file entry.
#[derive(Clone, Debug, Default)]
pub struct SimOptions {
    /// Overrides the file's `seed`. With neither, the seed comes from the system clock.
    pub seed: Option<u64>,
    /// Overrides the file's `speed`.
    pub speed: Option<f64>,
    /// Time moves only through [`SimCluster::advance`]: for tests that must not sleep.
    pub manual_clock: bool,
    /// The wall-clock time the cluster's clock starts at; `None`: now. The fault simulator
    /// pins it so that a seed reproduces the same history.
    pub origin_unix_ms: Option<u64>,
    /// How long a finished attempt's output stays readable; `None`: 15 minutes.
    pub keep_finished: Option<Duration>,
}

/// Most lines of synthetic output per attempt, besides its first and last.
const MAX_SIM_LOG_LINES: u64 = 600;
/// How often a followed simulated log looks for new output.
const SIM_LOG_POLL: Duration = Duration::from_millis(500);
const DEFAULT_KEEP_FINISHED: Duration = Duration::from_secs(15 * 60);

/// A handle to one simulated cluster. Clones share the cluster.
#[derive(Clone)]
pub struct SimCluster {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    nodes: Vec<Node>,
    node_names: HashSet<String>,
    pending_ms: u64,
    default_duration_ms: u64,
    faults: Faults,
    clock: Clock,
    state: Mutex<State>,
    keep_finished: Duration,
}

/// Simulated time in milliseconds: `speed` × real time since creation (zero for a manual
/// clock) plus whatever [`SimCluster::advance`] added.
struct Clock {
    origin: Instant,
    origin_unix_ms: u64,
    speed: f64,
    offset_ms: AtomicU64,
}

impl Clock {
    fn now_ms(&self) -> u64 {
        let real = (self.origin.elapsed().as_secs_f64() * 1000.0 * self.speed) as u64;
        real.saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// The wall-clock time at which simulated time reaches `sim_ms`.
    fn unix_ms_at(&self, sim_ms: u64) -> u64 {
        let real_ms = if self.speed > 0.0 { sim_ms as f64 / self.speed } else { sim_ms as f64 };
        self.origin_unix_ms.saturating_add(real_ms as u64)
    }
}

struct State {
    pods: HashMap<(TaskId, u32), Pod>,
    /// Next transition of each pod, earliest first; entries of stopped pods are skipped.
    timers: BinaryHeap<Reverse<(u64, u64)>>,
    /// Pod of each timer serial.
    timer_pods: HashMap<u64, (TaskId, u32)>,
    events: VecDeque<AttemptEvent>,
    rng: SmallRng,
    next_serial: u64,
    /// Run records in pod-serial order: the record of pod `s` is at `s - history_first_serial`.
    history: VecDeque<RunRecord>,
    history_first_serial: u64,
    history_dropped: u64,
    /// Bumped on every history change (the history file is rewritten only when it moved).
    history_version: u64,
}

impl State {
    fn record_start(&mut self, record: RunRecord) {
        if self.history.len() >= RUN_HISTORY_LIMIT {
            self.history.pop_front();
            self.history_first_serial += 1;
            self.history_dropped += 1;
        }
        self.history.push_back(record);
        self.history_version += 1;
    }

    /// Closes the record of pod `serial` (no-op when dropped or already closed).
    fn record_end(&mut self, serial: u64, unix_ms: u64, ended_by: String) {
        let Some(index) = serial.checked_sub(self.history_first_serial) else { return };
        if let Some(r) = self.history.get_mut(index as usize) {
            if r.ended_unix_ms.is_none() {
                r.ended_unix_ms = Some(unix_ms);
                r.ended_by = Some(ended_by);
                self.history_version += 1;
            }
        }
    }
}

/// `ended_by` of a terminal status.
fn ended_by(status: &AttemptStatus) -> String {
    match status {
        AttemptStatus::Failed { kind, .. } => match serde_json::to_value(kind) {
            Ok(serde_json::Value::String(k)) => format!("failed:{k}"),
            _ => format!("failed:{kind:?}"),
        },
        other => format!("{other:?}").to_lowercase(),
    }
}

struct Pod {
    serial: u64,
    node: String,
    status: AttemptStatus,
    /// How long it runs once running, and how it ends.
    run_ms: u64,
    end: AttemptStatus,
    /// When it began running (simulated ms).
    running_at_ms: Option<u64>,
    /// `(every_ms, stall_after_ms)`: signals progress every `every_ms` until `stall_after_ms`
    /// after it began running (0: never stops). See `crate::progress`.
    progress: Option<(u64, u64)>,
}

impl Pod {
    /// Progress signals sent by simulated time `now_ms`: one per `every_ms` of running, up
    /// to the stall.
    fn progress_signals(&self, now_ms: u64) -> Option<u64> {
        let (every_ms, stall_after_ms) = self.progress?;
        let running_for = now_ms.saturating_sub(self.running_at_ms?);
        let signalling_for = if stall_after_ms == 0 { running_for } else { running_for.min(stall_after_ms) };
        Some(signalling_for / every_ms.max(1))
    }
}

impl SimCluster {
    /// A simulated cluster from its clusters-file entry.
    pub fn new(config: &ClusterConfig, options: SimOptions) -> Result<SimCluster, String> {
        let nodes = config.nodes()?;
        let speed = options.speed.unwrap_or(config.speed);
        if !(speed.is_finite() && speed > 0.0) {
            return Err(format!("cluster {:?}: speed {speed} must be a positive number", config.name));
        }
        let seed = options.seed.or(config.seed).unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
            nanos ^ name_hash(&config.name)
        });
        Ok(SimCluster {
            inner: Arc::new(Inner {
                name: config.name.clone(),
                node_names: nodes.iter().map(|n| n.name.clone()).collect(),
                nodes,
                pending_ms: config.pending.as_millis() as u64,
                default_duration_ms: config.default_duration.as_millis() as u64,
                faults: config.faults.clone(),
                keep_finished: options.keep_finished.unwrap_or(DEFAULT_KEEP_FINISHED),
                clock: Clock {
                    origin: Instant::now(),
                    origin_unix_ms: options.origin_unix_ms.unwrap_or_else(unix_now_ms),
                    speed: if options.manual_clock { 0.0 } else { speed },
                    offset_ms: AtomicU64::new(0),
                },
                state: Mutex::new(State {
                    pods: HashMap::new(),
                    timers: BinaryHeap::new(),
                    timer_pods: HashMap::new(),
                    events: VecDeque::new(),
                    rng: SmallRng::seed_from_u64(seed),
                    next_serial: 0,
                    history: VecDeque::new(),
                    history_first_serial: 0,
                    history_dropped: 0,
                    history_version: 0,
                }),
            }),
        })
    }

    /// Cluster `name` of a clusters file.
    pub fn from_file(file: &ClustersFile, name: &str, options: SimOptions) -> Result<SimCluster, ConfigError> {
        let err = |message: String| ConfigError { path: file.path.clone(), message };
        let config =
            file.cluster(name).ok_or_else(|| err(format!("no cluster named {name:?} (clusters: {})", file.cluster_names().join(", "))))?;
        SimCluster::new(config, options).map_err(err)
    }

    /// Every cluster of a clusters file (dev mode, end-to-end tests, benchmarks). A seed in
    /// `options` is mixed with each cluster's name so clusters do not throw the same dice.
    pub fn federation(file: &ClustersFile, options: SimOptions) -> Result<Vec<SimCluster>, ConfigError> {
        file.clusters
            .iter()
            .map(|c| {
                let options = SimOptions { seed: options.seed.map(|s| s ^ name_hash(&c.name)), ..options.clone() };
                SimCluster::new(c, options).map_err(|message| ConfigError { path: file.path.clone(), message })
            })
            .collect()
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Moves simulated time forward by `by` (on top of the real clock, if any).
    pub fn advance(&self, by: Duration) {
        self.inner.clock.offset_ms.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    /// Simulated milliseconds since the cluster was created.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// The simulated nodes.
    pub fn sim_nodes(&self) -> &[Node] {
        &self.inner.nodes
    }

    /// The attempts now in the cluster.
    pub fn current_attempts(&self) -> Vec<Attempt> {
        let state = self.advanced();
        let mut out: Vec<Attempt> = state
            .pods
            .iter()
            .map(|((task_id, attempt), pod)| Attempt {
                task_id: *task_id,
                attempt: *attempt,
                node: pod.node.clone(),
                phase: AttemptPhase::of(&pod.status),
            })
            .collect();
        out.sort_by_key(|a| (a.task_id, a.attempt));
        out
    }

    /// Progress signals of running attempts that signal (`sim.progressEvery`), as counters.
    pub fn progress_counters(&self) -> Vec<(TaskId, u32, u64)> {
        let state = self.advanced();
        let now = self.inner.clock.now_ms();
        let mut out: Vec<(TaskId, u32, u64)> =
            state.pods.iter().filter_map(|((t, a), pod)| pod.progress_signals(now).map(|n| (*t, *a, n))).collect();
        out.sort();
        out
    }

    /// Starts an attempt (no-op when it exists). See the module docs for how it ends.
    pub fn start_attempt(&self, task: &LeasedTask) {
        let inner = &self.inner;
        let mut state = self.advanced();
        let key = (TaskId(task.task_id), task.attempt);
        if state.pods.contains_key(&key) {
            return;
        }
        let now = inner.clock.now_ms();
        if !inner.node_names.contains(&task.node) {
            tracing::warn!(cluster = %inner.name, task_id = task.task_id, attempt = task.attempt, node = %task.node, "lease names an unknown node");
            let status = AttemptStatus::Failed {
                kind: FailureKind::StartFailed,
                exit_code: None,
                message: format!("node {:?} is not in cluster {:?}", task.node, inner.name),
            };
            state.events.push_back(AttemptEvent {
                task_id: key.0,
                attempt: key.1,
                node: task.node.clone(),
                status,
                time_ms: inner.clock.unix_ms_at(now),
            });
            return;
        }
        let (run_ms, end) = plan_run(task, inner.default_duration_ms, &inner.faults, &mut state.rng);
        let serial = state.next_serial;
        state.next_serial += 1;
        let progress = task.sim_progress.as_ref().map(|p| (p.every_ms.max(1), p.stall_after_ms));
        let pod = Pod { serial, node: task.node.clone(), status: AttemptStatus::Pending, run_ms, end, running_at_ms: None, progress };
        state.pods.insert(key, pod);
        state.record_start(RunRecord {
            task_id: key.0,
            attempt: key.1,
            node: task.node.clone(),
            started_unix_ms: inner.clock.unix_ms_at(now),
            ended_unix_ms: None,
            ended_by: None,
            gang: SimGangMember::of(task),
        });
        state.events.push_back(AttemptEvent {
            task_id: key.0,
            attempt: key.1,
            node: task.node.clone(),
            status: AttemptStatus::Pending,
            time_ms: inner.clock.unix_ms_at(now),
        });
        state.timers.push(Reverse((now.saturating_add(inner.pending_ms), serial)));
        state.timer_pods.insert(serial, key);
    }

    /// Removes an attempt (no-op when missing). Like deleting a Job: no event follows.
    pub fn stop_attempt(&self, task_id: TaskId, attempt: u32) {
        let mut state = self.advanced();
        if let Some(pod) = state.pods.remove(&(task_id, attempt)) {
            // Its heap entry, if any, is skipped when popped.
            state.timer_pods.remove(&pod.serial);
            let now = self.inner.clock.unix_ms_at(self.inner.clock.now_ms());
            state.record_end(pod.serial, now, "stopped".into());
        }
    }

    /// Every run record kept (the last [`RUN_HISTORY_LIMIT`]), oldest pod first.
    pub fn run_history(&self) -> Vec<RunRecord> {
        self.advanced().history.iter().cloned().collect()
    }

    /// How many run records were dropped to keep the history bounded.
    pub fn run_history_dropped(&self) -> u64 {
        self.advanced().history_dropped
    }

    /// Writes the run history to `path` as JSON lines, one [`RunRecord`] each (open runs
    /// included), through `PATH.tmp` and a rename, so a reader never sees a partial file.
    pub fn write_run_history(&self, path: &Path) -> std::io::Result<()> {
        let records = self.run_history();
        let mut text = String::with_capacity(records.len() * 128);
        for r in &records {
            text.push_str(&serde_json::to_string(r).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    /// Rewrites the history file at `path` every `every` when the history changed, until
    /// the returned task is aborted (`flotilla executor --sim-history`).
    pub fn spawn_history_writer(&self, path: PathBuf, every: Duration) -> tokio::task::JoinHandle<()> {
        let sim = self.clone();
        tokio::spawn(async move {
            let mut written = None;
            loop {
                let version = sim.inner.state.lock().unwrap_or_else(|e| e.into_inner()).history_version;
                if written != Some(version) {
                    match sim.write_run_history(&path) {
                        Ok(()) => written = Some(version),
                        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot write the run history"),
                    }
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Up to `max` events not yet acknowledged, oldest first.
    pub fn peek_events(&self, max: usize) -> Vec<AttemptEvent> {
        self.advanced().events.iter().take(max).cloned().collect()
    }

    /// Removes `events` from the front of the queue. Events that are not at the front
    /// (acknowledged already, e.g. by an executor loop that was replaced) are ignored.
    pub fn ack(&self, events: &[AttemptEvent]) {
        let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        for e in events {
            if state.events.front() == Some(e) {
                state.events.pop_front();
            } else {
                break;
            }
        }
    }

    /// Takes up to `max` events, oldest first (peek and acknowledge at once).
    pub fn take_events(&self, max: usize) -> Vec<AttemptEvent> {
        let events = self.peek_events(max);
        self.ack(&events);
        events
    }

    /// Locks the state after applying every transition due by now.
    fn advanced(&self) -> MutexGuard<'_, State> {
        let inner = &self.inner;
        let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = inner.clock.now_ms();
        let state_ref = &mut *state;
        while let Some(Reverse((at, serial))) = state_ref.timers.peek().copied() {
            if at > now {
                break;
            }
            state_ref.timers.pop();
            let Some(key) = state_ref.timer_pods.remove(&serial) else { continue };
            let Some(pod) = state_ref.pods.get_mut(&key) else { continue };
            debug_assert_eq!(pod.serial, serial);
            let next_status = match pod.status {
                AttemptStatus::Pending => {
                    pod.running_at_ms = Some(at);
                    state_ref.timers.push(Reverse((at.saturating_add(pod.run_ms), serial)));
                    state_ref.timer_pods.insert(serial, key);
                    AttemptStatus::Running
                }
                AttemptStatus::Running => pod.end.clone(),
                // Terminal pods have no timer.
                AttemptStatus::Succeeded | AttemptStatus::Failed { .. } => continue,
            };
            pod.status = next_status.clone();
            let node = pod.node.clone();
            if next_status.is_terminal() {
                state_ref.record_end(serial, inner.clock.unix_ms_at(at), ended_by(&next_status));
            }
            state_ref.events.push_back(AttemptEvent {
                task_id: key.0,
                attempt: key.1,
                node,
                status: next_status,
                time_ms: inner.clock.unix_ms_at(at),
            });
        }
        state
    }
}

/// How long an attempt runs and how it ends.
fn plan_run(task: &LeasedTask, default_duration_ms: u64, faults: &Faults, rng: &mut SmallRng) -> (u64, AttemptStatus) {
    let duration_ms = if task.sim_duration_ms > 0 { task.sim_duration_ms } else { default_duration_ms };
    let memory_limit = [task.limits.as_ref(), task.requests.as_ref()].into_iter().flatten().map(|r| r.memory_bytes).find(|m| *m > 0);
    // Always throw both dice so one task's shape does not shift the others' outcomes.
    let roll: f64 = rng.random();
    let at_fraction: f64 = rng.random();
    let failed = |kind, exit_code, message: String| AttemptStatus::Failed { kind, exit_code, message };
    let (mut run_ms, mut end) = match memory_limit {
        Some(limit) if task.sim_memory_peak_bytes > limit => (
            duration_ms / 2,
            failed(
                FailureKind::OomKilled,
                Some(OOM_EXIT_CODE),
                format!("memory peaked at {} bytes over the limit of {limit} bytes", task.sim_memory_peak_bytes),
            ),
        ),
        _ => {
            let at_ms = (duration_ms as f64 * at_fraction) as u64;
            // The faults split [0, 1) into consecutive ranges: OOM, error, eviction, none.
            let oom_below = faults.oom_rate;
            let error_below = oom_below + faults.failure_rate;
            let eviction_below = error_below + faults.eviction_rate;
            if roll < oom_below {
                (at_ms, failed(FailureKind::OomKilled, Some(OOM_EXIT_CODE), "injected fault: OOM-killed".into()))
            } else if roll < error_below {
                (at_ms, failed(FailureKind::Error, Some(1), "injected fault: exited 1".into()))
            } else if roll < eviction_below {
                (at_ms, failed(FailureKind::Evicted, None, "injected fault: evicted".into()))
            } else {
                match task.sim_exit_code {
                    Some(code) if code != 0 => (duration_ms, failed(FailureKind::Error, Some(code), format!("exited {code}"))),
                    _ => (duration_ms, AttemptStatus::Succeeded),
                }
            }
        }
    };
    if task.max_runtime_ms > 0 && run_ms > task.max_runtime_ms {
        run_ms = task.max_runtime_ms;
        end = failed(FailureKind::DeadlineExceeded, None, format!("ran longer than its max runtime of {} ms", task.max_runtime_ms));
    }
    (run_ms, end)
}

/// FNV-1a: a stable hash of a cluster name for seeds.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

impl ClusterBackend for SimCluster {
    fn cluster(&self) -> &str {
        &self.inner.name
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<Node>, BackendError>> {
        Box::pin(async move { Ok(self.inner.nodes.clone()) })
    }

    fn attempts(&self) -> BoxFuture<'_, Result<Vec<Attempt>, BackendError>> {
        Box::pin(async move { Ok(self.current_attempts()) })
    }

    fn start(&self, task: LeasedTask) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.start_attempt(&task);
            Ok(())
        })
    }

    fn stop(&self, task_id: TaskId, attempt: u32) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            self.stop_attempt(task_id, attempt);
            Ok(())
        })
    }

    fn progress_signals(&self) -> Option<Vec<(TaskId, u32, u64)>> {
        Some(self.progress_counters())
    }

    fn pending_events(&self, max: usize) -> BoxFuture<'_, Result<Vec<AttemptEvent>, BackendError>> {
        Box::pin(async move { Ok(self.peek_events(max)) })
    }

    fn ack_events(&self, events: &[AttemptEvent]) {
        self.ack(events);
    }

    fn logs(&self, task_id: TaskId, attempt: u32, options: LogOptions) -> BoxFuture<'_, Result<LogStream, BackendError>> {
        Box::pin(async move { self.log_stream(task_id, attempt, options) })
    }
}

impl SimCluster {
    /// The cluster's wall-clock time (its run records' clock).
    fn wall_now_ms(&self) -> u64 {
        self.inner.clock.unix_ms_at(self.inner.clock.now_ms())
    }

    /// The run record of an attempt whose output is still kept.
    fn kept_record(&self, task_id: TaskId, attempt: u32) -> Result<RunRecord, BackendError> {
        let keep_ms = self.inner.keep_finished.as_millis() as u64;
        let now = self.wall_now_ms();
        let state = self.advanced();
        let record = state.history.iter().rev().find(|r| r.task_id == task_id && r.attempt == attempt).cloned();
        drop(state);
        let not_found = |why: &str| BackendError::NotFound {
            cluster: self.inner.name.clone(),
            message: format!("attempt {attempt} of task {task_id}: {why}"),
        };
        match record {
            None => Err(not_found("no such attempt in this cluster")),
            Some(r) if r.ended_unix_ms.is_some_and(|end| now.saturating_sub(end) > keep_ms) => {
                Err(not_found(&format!("its output is kept {} after it ends", humantime::format_duration(self.inner.keep_finished))))
            }
            Some(r) => Ok(r),
        }
    }

    /// Synthetic output, as chunks: what exists now, then (with `follow`) new lines as they
    /// appear until the attempt ends.
    fn log_stream(&self, task_id: TaskId, attempt: u32, options: LogOptions) -> Result<LogStream, BackendError> {
        let record = self.kept_record(task_id, attempt)?;
        let full = sim_log(&record, self.wall_now_ms());
        let limit = if options.limit_bytes == 0 { u64::MAX } else { options.limit_bytes };
        let first: Vec<u8> = tail_lines(&full, options.tail_lines).as_bytes().iter().take(limit as usize).copied().collect();
        let budget = limit.saturating_sub(first.len() as u64);
        let done = !options.follow || record.ended_unix_ms.is_some();
        let cluster = self.clone();
        let state = (Some(first), full.len(), budget, done);
        Ok(Box::pin(futures::stream::unfold(state, move |(first, sent, budget, done)| {
            let cluster = cluster.clone();
            async move {
                if let Some(first) = first {
                    return Some((Ok(first), (None, sent, budget, done)));
                }
                if done || budget == 0 {
                    return None;
                }
                loop {
                    tokio::time::sleep(SIM_LOG_POLL).await;
                    let record = match cluster.kept_record(task_id, attempt) {
                        Ok(r) => r,
                        Err(e) => return Some((Err(e), (None, sent, 0, true))),
                    };
                    let full = sim_log(&record, cluster.wall_now_ms());
                    let ended = record.ended_unix_ms.is_some();
                    if full.len() > sent || ended {
                        let new: Vec<u8> = full.as_bytes()[sent.min(full.len())..].iter().take(budget as usize).copied().collect();
                        let budget = budget.saturating_sub(new.len() as u64);
                        return Some((Ok(new), (None, full.len(), budget, ended)));
                    }
                }
            }
        })))
    }
}

/// The last `n` lines of `text` (all of it for 0).
fn tail_lines(text: &str, n: u32) -> &str {
    if n == 0 {
        return text;
    }
    let mut newlines = 0;
    for (i, b) in text.bytes().enumerate().rev().skip(1) {
        if b == b'\n' {
            newlines += 1;
            if newlines == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

/// The synthetic output of one attempt as of `now_unix_ms`.
fn sim_log(r: &RunRecord, now_unix_ms: u64) -> String {
    use std::fmt::Write as _;
    let stamp = |ms: u64| humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms));
    let mut out =
        format!("{} flotilla-sim: task {} attempt {} started on node {}\n", stamp(r.started_unix_ms), r.task_id, r.attempt, r.node);
    // What a pod of the gang would find in its environment.
    for (key, value) in r.gang.as_ref().map(|g| g.env()).unwrap_or_default() {
        let _ = writeln!(out, "{} flotilla-sim: env {key}={value}", stamp(r.started_unix_ms));
    }
    let until = r.ended_unix_ms.unwrap_or(now_unix_ms);
    let seconds = until.saturating_sub(r.started_unix_ms) / 1000;
    for s in 1..=seconds.min(MAX_SIM_LOG_LINES) {
        let _ = writeln!(out, "{} working: {s}s", stamp(r.started_unix_ms + s * 1000));
    }
    if let (Some(end), Some(how)) = (r.ended_unix_ms, &r.ended_by) {
        let _ = writeln!(out, "{} flotilla-sim: ended: {how}", stamp(end));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::config::parse_clusters;
    use super::*;
    use flotilla_api::v1::ResourceAmounts;

    fn cluster(faults: &str, options: SimOptions) -> SimCluster {
        let text = format!(
            "[[cluster]]\nname = \"sim\"\npending = \"1s\"\ndefault_duration = \"10s\"\n{faults}\n\
             [[cluster.pool]]\nname = \"cpu\"\ncount = 4\ncpu = \"64\"\nmemory = \"256Gi\"\nzones = [\"z1\"]\n"
        );
        SimCluster::from_file(&parse_clusters(&text, "test.toml").unwrap(), "sim", options).unwrap()
    }

    fn manual() -> SimOptions {
        SimOptions { seed: Some(1), manual_clock: true, ..Default::default() }
    }

    fn lease(task_id: u64, duration_ms: u64) -> LeasedTask {
        LeasedTask {
            task_id,
            attempt: 1,
            node: "sim-cpu-01".into(),
            sim_duration_ms: duration_ms,
            requests: Some(ResourceAmounts { cpu_millis: 1000, memory_bytes: 1 << 30, ..Default::default() }),
            ..Default::default()
        }
    }

    fn statuses(events: &[AttemptEvent]) -> Vec<AttemptStatus> {
        events.iter().map(|e| e.status.clone()).collect()
    }

    #[test]
    fn attempts_go_pending_running_succeeded_on_the_simulated_clock() {
        let sim = cluster("", manual());
        sim.start_attempt(&lease(7, 5_000));
        assert_eq!(statuses(&sim.take_events(10)), [AttemptStatus::Pending]);
        sim.advance(Duration::from_millis(999));
        assert!(sim.take_events(10).is_empty());
        sim.advance(Duration::from_millis(1));
        assert_eq!(statuses(&sim.take_events(10)), [AttemptStatus::Running]);
        assert_eq!(sim.current_attempts()[0].phase, AttemptPhase::Running);
        sim.advance(Duration::from_millis(5_000));
        let done = sim.take_events(10);
        assert_eq!(statuses(&done), [AttemptStatus::Succeeded]);
        assert_eq!((done[0].task_id, done[0].attempt, done[0].node.as_str()), (TaskId(7), 1, "sim-cpu-01"));
        // Finished attempts stay (like a finished Job) until stopped.
        assert_eq!(sim.current_attempts()[0].phase, AttemptPhase::Succeeded);
    }

    #[test]
    fn the_speed_factor_runs_simulated_time_faster_than_real_time() {
        // 60 s of simulated pending + run at 10,000× is 6 ms of real time.
        let sim = cluster("", SimOptions { seed: Some(1), speed: Some(10_000.0), ..Default::default() });
        sim.start_attempt(&lease(1, 59_000));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while !seen.contains(&AttemptStatus::Succeeded) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            seen.extend(statuses(&sim.take_events(10)));
        }
        assert_eq!(seen, [AttemptStatus::Pending, AttemptStatus::Running, AttemptStatus::Succeeded]);
        assert!(sim.now_ms() >= 60_000);
    }

    #[test]
    fn attempts_whose_memory_peaks_above_the_limit_are_oom_killed() {
        let sim = cluster("", manual());
        let mut t = lease(1, 10_000);
        t.sim_memory_peak_bytes = 2 << 30;
        sim.start_attempt(&t);
        let mut under_limit = lease(2, 10_000);
        under_limit.limits = Some(ResourceAmounts { memory_bytes: 4 << 30, ..Default::default() });
        under_limit.sim_memory_peak_bytes = 2 << 30;
        sim.start_attempt(&under_limit);
        sim.advance(Duration::from_secs(6));
        let events = sim.take_events(10);
        let oom: Vec<_> = events.iter().filter(|e| e.task_id == TaskId(1) && e.status.is_terminal()).collect();
        assert_eq!(oom.len(), 1);
        assert!(matches!(oom[0].status, AttemptStatus::Failed { kind: FailureKind::OomKilled, exit_code: Some(137), .. }));
        sim.advance(Duration::from_secs(5));
        let events = sim.take_events(10);
        assert_eq!(events.iter().map(|e| (e.task_id, e.status.clone())).collect::<Vec<_>>(), [(TaskId(2), AttemptStatus::Succeeded)]);
    }

    #[test]
    fn exit_codes_and_max_runtime_end_attempts_as_failed() {
        let sim = cluster("", manual());
        let mut bad = lease(1, 1_000);
        bad.sim_exit_code = Some(3);
        sim.start_attempt(&bad);
        let mut slow = lease(2, 60_000);
        slow.max_runtime_ms = 2_000;
        sim.start_attempt(&slow);
        sim.advance(Duration::from_secs(10));
        let ends: Vec<_> = sim.take_events(10).into_iter().filter(|e| e.status.is_terminal()).map(|e| e.status).collect();
        assert!(matches!(ends[0], AttemptStatus::Failed { kind: FailureKind::Error, exit_code: Some(3), .. }), "{ends:?}");
        assert!(matches!(ends[1], AttemptStatus::Failed { kind: FailureKind::DeadlineExceeded, .. }), "{ends:?}");
    }

    fn outcomes(seed: u64) -> Vec<(u64, Option<FailureKind>)> {
        let sim = cluster(
            "[cluster.faults]\nfailure_rate = 0.2\noom_rate = 0.1\neviction_rate = 0.1\n",
            SimOptions { seed: Some(seed), manual_clock: true, ..Default::default() },
        );
        for id in 0..1000 {
            sim.start_attempt(&lease(id, 10_000));
        }
        sim.advance(Duration::from_secs(20));
        let mut out: Vec<_> = sim
            .take_events(10_000)
            .into_iter()
            .filter(|e| e.status.is_terminal())
            .map(|e| {
                let kind = match e.status {
                    AttemptStatus::Failed { kind, .. } => Some(kind),
                    _ => None,
                };
                (e.task_id.0, kind)
            })
            .collect();
        out.sort_by_key(|o| o.0);
        out
    }

    #[test]
    fn injected_faults_follow_their_rates_and_repeat_with_a_seed() {
        let a = outcomes(42);
        assert_eq!(a.len(), 1000);
        assert_eq!(a, outcomes(42));
        assert_ne!(a, outcomes(43));
        let count = |k: Option<FailureKind>| a.iter().filter(|o| o.1 == k).count();
        // Expected 600 / 200 / 100 / 100; the bounds are ~5 standard deviations wide.
        assert!((520..=680).contains(&count(None)), "{}", count(None));
        assert!((140..=260).contains(&count(Some(FailureKind::Error))));
        assert!((55..=145).contains(&count(Some(FailureKind::OomKilled))));
        assert!((55..=145).contains(&count(Some(FailureKind::Evicted))));
    }

    #[test]
    fn ten_thousand_pods_progress_in_one_poll() {
        let sim = cluster("", manual());
        for id in 0..10_000 {
            sim.start_attempt(&lease(id, 1_000 + id % 1000));
        }
        assert_eq!(sim.take_events(20_000).len(), 10_000);
        sim.advance(Duration::from_secs(3));
        let events = sim.take_events(100_000);
        assert_eq!(events.iter().filter(|e| e.status == AttemptStatus::Running).count(), 10_000);
        assert_eq!(events.iter().filter(|e| e.status == AttemptStatus::Succeeded).count(), 10_000);
        // Events of one attempt keep their order and carry non-decreasing times.
        let first = events.iter().filter(|e| e.task_id == TaskId(999)).map(|e| (e.status.clone(), e.time_ms)).collect::<Vec<_>>();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].0, AttemptStatus::Running);
        assert!(first[0].1 <= first[1].1);
        assert!(sim.current_attempts().iter().all(|a| a.phase == AttemptPhase::Succeeded));
    }

    #[test]
    fn start_is_idempotent_and_stop_removes_without_an_event() {
        let sim = cluster("", manual());
        sim.start_attempt(&lease(1, 5_000));
        sim.start_attempt(&lease(1, 5_000));
        assert_eq!(sim.take_events(10).len(), 1);
        assert_eq!(sim.current_attempts().len(), 1);
        sim.stop_attempt(TaskId(1), 1);
        sim.stop_attempt(TaskId(1), 1);
        sim.stop_attempt(TaskId(9), 3);
        sim.advance(Duration::from_secs(60));
        assert!(sim.current_attempts().is_empty());
        assert!(sim.take_events(10).is_empty());
    }

    #[test]
    fn a_lease_on_an_unknown_node_fails_to_start() {
        let sim = cluster("", manual());
        let mut t = lease(1, 5_000);
        t.node = "elsewhere".into();
        sim.start_attempt(&t);
        let events = sim.take_events(10);
        assert!(matches!(&events[0].status, AttemptStatus::Failed { kind: FailureKind::StartFailed, .. }));
        assert!(sim.current_attempts().is_empty());
    }

    #[test]
    fn events_stay_until_acknowledged_and_a_second_ack_is_harmless() {
        let sim = cluster("", manual());
        sim.start_attempt(&lease(1, 5_000));
        sim.advance(Duration::from_secs(1));
        let first = sim.peek_events(1);
        assert_eq!(sim.peek_events(1), first);
        sim.ack(&first);
        sim.ack(&first);
        assert_eq!(statuses(&sim.peek_events(10)), [AttemptStatus::Running]);
    }

    #[test]
    fn run_history_records_each_pod_from_creation_until_it_ends_or_is_stopped() {
        let sim = cluster("", manual());
        let t0 = sim.inner.clock.unix_ms_at(0);
        sim.start_attempt(&lease(1, 5_000));
        sim.advance(Duration::from_secs(2));
        let mut second = lease(2, 60_000);
        second.node = "sim-cpu-02".into();
        sim.start_attempt(&second);
        let mut unknown = lease(3, 5_000);
        unknown.node = "elsewhere".into();
        sim.start_attempt(&unknown);
        // Pending 1 s + 5 s run: attempt 1 of task 1 succeeds at 6 s.
        sim.advance(Duration::from_secs(5));
        let history = sim.run_history();
        assert_eq!(history.len(), 2, "a lease that never made a pod has no record: {history:?}");
        assert_eq!(
            history[0],
            RunRecord {
                task_id: TaskId(1),
                attempt: 1,
                node: "sim-cpu-01".into(),
                started_unix_ms: t0,
                ended_unix_ms: Some(t0 + 6_000),
                ended_by: Some("succeeded".into()),
                gang: None,
            }
        );
        assert_eq!((history[1].started_unix_ms, history[1].ended_unix_ms), (t0 + 2_000, None));
        // Removing a finished pod does not move its end; removing a running one ends it.
        sim.stop_attempt(TaskId(1), 1);
        sim.advance(Duration::from_secs(1));
        sim.stop_attempt(TaskId(2), 1);
        // The same attempt started again is a new pod and a new record.
        sim.start_attempt(&second);
        let history = sim.run_history();
        assert_eq!(history[0].ended_unix_ms, Some(t0 + 6_000));
        assert_eq!((history[1].ended_unix_ms, history[1].ended_by.as_deref()), (Some(t0 + 8_000), Some("stopped")));
        assert_eq!((history[2].task_id, history[2].started_unix_ms, history[2].ended_unix_ms), (TaskId(2), t0 + 8_000, None));
        assert_eq!(sim.run_history_dropped(), 0);

        // Failures name their kind; the file holds one JSON record per line.
        let mut bad = lease(4, 1_000);
        bad.sim_exit_code = Some(3);
        sim.start_attempt(&bad);
        sim.advance(Duration::from_secs(3));
        assert_eq!(sim.run_history()[3].ended_by.as_deref(), Some("failed:error"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        sim.write_run_history(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let read: Vec<RunRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(read, sim.run_history());
        assert!(!dir.path().join("history.jsonl.tmp").exists());
    }

    #[test]
    fn run_history_is_bounded_and_counts_what_it_dropped() {
        let sim = cluster("", manual());
        let extra = 10;
        for id in 0..(RUN_HISTORY_LIMIT as u64 + extra) {
            sim.start_attempt(&lease(id, 1_000));
        }
        // The oldest records went; ending a pod whose record was dropped is harmless.
        sim.stop_attempt(TaskId(0), 1);
        let last = RUN_HISTORY_LIMIT as u64 + extra - 1;
        sim.stop_attempt(TaskId(last), 1);
        let history = sim.run_history();
        assert_eq!(history.len(), RUN_HISTORY_LIMIT);
        assert_eq!(sim.run_history_dropped(), extra);
        assert_eq!(history[0].task_id, TaskId(extra));
        assert_eq!(history.last().map(|r| (r.task_id, r.ended_by.as_deref())), Some((TaskId(last), Some("stopped"))));
    }

    #[test]
    fn a_simulated_gang_members_output_shows_the_gang_variables_a_pod_would_have() {
        let sim = cluster("", manual());
        let mut member = lease(5, 5_000);
        member.name = "worker".into();
        member.queue = "research".into();
        (member.gang_id, member.gang_size, member.gang_rank) = (4, 3, 2);
        member.gang_roles = vec![
            flotilla_api::v1::GangRole { name: "launcher".into(), count: 1 },
            flotilla_api::v1::GangRole { name: "worker".into(), count: 2 },
        ];
        sim.start_attempt(&member);
        sim.start_attempt(&lease(6, 5_000));
        let history = sim.run_history();
        let log = sim_log(&history[0], history[0].started_unix_ms);
        for line in [
            "env FLOTILLA_GANG_RANK=2",
            "env FLOTILLA_GANG_ROLE=worker",
            "env FLOTILLA_GANG_ROLE_RANK=1",
            "env FLOTILLA_GANG_LEADER=launcher-0.flotilla-sim-g4.flotilla-research.svc",
        ] {
            assert!(log.contains(line), "missing {line:?} in:\n{log}");
        }
        assert!(!sim_log(&history[1], history[1].started_unix_ms).contains("FLOTILLA_GANG"), "a task outside a gang has none");
    }

    #[test]
    fn clones_share_one_cluster() {
        let sim = cluster("", manual());
        let other = sim.clone();
        sim.start_attempt(&lease(1, 5_000));
        assert_eq!(other.current_attempts().len(), 1);
    }
}
