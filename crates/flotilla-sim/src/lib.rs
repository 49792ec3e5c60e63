//! A deterministic simulator of a whole Flotilla installation, for finding the runs in which
//! a task runs twice or a submission is lost.
//!
//! One seed decides everything: three (or five) replicas with their real Raft, stores on
//! disk and gRPC services, one executor per simulated cluster with the `sim` backend, and a
//! client, all in one process on a Tokio current-thread runtime with paused (virtual) time,
//! talking over a simulated network ([`net`]). A seeded schedule cuts the leader off (with
//! and without an executor that can reach only it), drops one direction of a link, flaps
//! partitions, crashes and restarts replicas from their data directories, crashes
//! executors, slows links and resets connections, and makes replicas' wall clocks jump.
//! Then everything heals, and [`check`] judges the recorded history:
//!
//! * every acknowledged submission's tasks exist, once each, in the task set it named;
//! * no two attempts of one task ever ran at the same moment, from the simulated clusters'
//!   own records of their pods (not the scheduler's view);
//! * every task is terminal once the faults healed;
//! * no node ever held more than its allocatable CPU and memory;
//! * every replica applied the same entries into equal states that pass
//!   `State::check_invariants` (gang wholeness among them).
//!
//! Why not turmoil or madsim: openraft, tonic and redb need nothing from the simulator but a
//! byte stream and a clock. Tokio's paused clock is the clock, an in-memory stream is the
//! network ([`flotilla_api::dial`] and [`flotilla_server::start_with`] let every component
//! use it), and one current-thread runtime keeps every run on one thread. With
//! `--cfg tokio_unstable` (set in `.cargo/config.toml`) the runtime's own random choices
//! (`select!` fairness) are seeded too, so a seed reproduces the same history.
//!
//! This crate is not a benchmark and not a substitute for the real-process tests: it finds
//! interleavings, they check the real network and processes.

pub mod check;
pub mod net;
mod world;

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;

pub use check::Violation;

/// A safety layer switched off on purpose, to show the checker catches its absence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Leader decisions are forwarded like any proposal and applied whatever term committed
    /// them (invariant 7 off, as in the first build).
    SkipTermCheck,
    /// A leader answers Sync without a quorum-confirmed lease.
    SkipFence,
    /// Executors ignore their lease: they never stop attempts when it expires.
    SkipExecutorLease,
    /// A preempted task (or a restarting gang's member) is leased again before its executor
    /// stopped the old attempt.
    SkipStopConfirmation,
}

impl std::str::FromStr for PlantedBug {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip-term-check" => Ok(PlantedBug::SkipTermCheck),
            "skip-fence" => Ok(PlantedBug::SkipFence),
            "skip-executor-lease" => Ok(PlantedBug::SkipExecutorLease),
            "skip-stop-confirmation" => Ok(PlantedBug::SkipStopConfirmation),
            other => Err(format!("{other:?} is not one of skip-term-check, skip-fence, skip-executor-lease, skip-stop-confirmation")),
        }
    }
}

/// The shape of one run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub replicas: usize,
    pub clusters: usize,
    /// Task sets the client submits over the fault window.
    pub submissions: usize,
    /// How long faults are injected.
    pub fault_window: Duration,
    /// After the faults heal, how long every task has to finish.
    pub settle_within: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            replicas: 3,
            clusters: 2,
            submissions: 12,
            fault_window: Duration::from_secs(45),
            settle_within: Duration::from_secs(240),
        }
    }
}

/// The result of one seed.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    pub violations: Vec<Violation>,
    /// A digest of the recorded history: equal for two runs of one seed.
    pub digest: u64,
    pub tasks: usize,
    /// Attempts ended by preemption.
    pub preemptions: usize,
    /// Pod runs the clusters recorded.
    pub runs: usize,
    pub virtual_ms: u64,
    /// What the fault schedule did, in order.
    pub log: Vec<String>,
}

/// Switches a planted bug on or off for this process.
pub fn plant(bug: Option<PlantedBug>) {
    use std::sync::atomic::Ordering::SeqCst;
    flotilla_store::planted::SKIP_TERM_CHECK.store(bug == Some(PlantedBug::SkipTermCheck), SeqCst);
    flotilla_server::planted::SKIP_FENCE.store(bug == Some(PlantedBug::SkipFence), SeqCst);
    flotilla_store::planted::SKIP_STOP_CONFIRMATION.store(bug == Some(PlantedBug::SkipStopConfirmation), SeqCst);
    flotilla_executor::planted::SKIP_EXECUTOR_LEASE.store(bug == Some(PlantedBug::SkipExecutorLease), SeqCst);
}

/// Runs one seed to the end and checks it.
pub fn run_seed(seed: u64, config: &SimConfig) -> Outcome {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().start_paused(true);
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    let runtime = builder.build().expect("a Tokio runtime");
    runtime.block_on(run(seed, config.clone()))
}

async fn run(seed: u64, config: SimConfig) -> Outcome {
    let started = tokio::time::Instant::now();
    let mut world = world::World::build(seed, &config).await;
    let servers: Vec<String> = world.replicas.iter().map(|r| format!("http://{}", r.addr)).collect();
    let client = tokio::spawn(world::client(
        world.net.clone(),
        servers,
        seed,
        config.submissions,
        config.fault_window,
        config.fault_window + config.settle_within / 2,
    ));
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6661_756c_7473);
    world.faults(&mut rng, config.fault_window).await;
    let acked = client.await.expect("the client task");
    let expected: usize = acked.values().map(|(_, ids)| ids.len()).sum();

    // Settle: every acknowledged task terminal on the leader.
    let deadline = tokio::time::Instant::now() + config.settle_within;
    loop {
        let done = world.leader_state().is_some_and(|s| s.task_count() >= expected && s.tasks().all(|t| t.state.is_terminal()));
        if done || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let states = world.converged_states(Duration::from_secs(20)).await;
    let histories: Vec<check::ClusterHistory> = world
        .clusters
        .iter()
        .map(|c| check::ClusterHistory { cluster: c.name.clone(), nodes: c.sim.sim_nodes().to_vec(), runs: c.sim.run_history() })
        .collect();
    let now_unix_ms = world::ORIGIN_UNIX_MS + started.elapsed().as_millis() as u64;
    let report = check::check(&acked, &states, &histories, now_unix_ms);
    let log = world.log.clone();
    let virtual_ms = started.elapsed().as_millis() as u64;
    world.shutdown().await;
    Outcome {
        seed,
        violations: report.violations,
        digest: report.digest,
        tasks: report.tasks,
        preemptions: report.preemptions,
        runs: histories.iter().map(|h| h.runs.len()).sum(),
        virtual_ms,
        log,
    }
}
