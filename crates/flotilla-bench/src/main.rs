//! Flotilla's benchmarks. Each subcommand measures one layer and prints one JSON line,
//! so runs can be compared and recorded in BENCHMARKS.md.
//!
//! - `sched`: the scheduling algorithm alone (`flotilla_sched::schedule`) on a synthetic
//!   federation; only the call itself is timed.
//! - `submit`: acknowledged submissions per second through real replica processes.
//! - `e2e`: tasks leased per second through one replica and simulated executors; with
//!   `--duration-s`, the steady state through replica processes at real pod density.
//! - `leader`: the leader's whole scheduling cycle (input, schedule, commit through the
//!   replicas, apply) at a large backlog, and listing/metrics reads at that size.
//! - `chaos`: the deterministic fault simulator over many seeds; exits non-zero on a
//!   violated invariant.
//! - `executor`: one Kubernetes backend over a large cluster (`flotilla-kubetest`'s API
//!   server in a child process): time to list, memory, and the latency of a Sync.
//! - `memory`: one replica's state per queued task, in RAM and in a snapshot, for array
//!   tasks and for distinct templates.

use clap::{Parser, Subcommand};

mod chaos;
mod e2e;
mod executor;
mod leader;
mod memory;
mod sched;
mod steady;
mod submit;

#[derive(Parser)]
#[command(name = "flotilla-bench", about = "Benchmarks for Flotilla")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time one scheduling cycle over a synthetic federation and workload.
    Sched(sched::Args),
    /// Acknowledged submissions per second through a real replica group.
    Submit(submit::Args),
    /// Tasks leased per second end to end: a replica and simulated executors in one process.
    E2e(e2e::Args),
    /// The leader's whole scheduling cycle at a large backlog, through real replicas.
    Leader(leader::Args),
    /// Run the deterministic fault simulator over many seeds and check every invariant.
    Chaos(chaos::Args),
    /// One Kubernetes executor over thousands of nodes and tens of thousands of pods.
    Executor(executor::Args),
    /// Bytes of state per queued task, in RAM and in a snapshot.
    Memory(memory::Args),
    /// The API server process `executor` starts (not for use on its own).
    #[command(hide = true)]
    ExecutorServer(executor::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Sched(args) => sched::run(&args),
        Command::Submit(args) => submit::run(&args),
        Command::E2e(args) => e2e::run(&args),
        Command::Leader(args) => leader::run(&args),
        Command::Chaos(args) => chaos::run(&args),
        Command::Executor(args) => executor::run(&args),
        Command::Memory(args) => memory::run(&args),
        Command::ExecutorServer(args) => executor::serve(&args),
    }
}

/// Peak resident memory of this process (`VmHWM`), in bytes; 0 where /proc is missing.
pub fn peak_memory_bytes() -> u64 {
    memory_bytes("VmHWM:")
}

/// A memory figure of this process from /proc/self/status (`VmHWM:`, `VmRSS:`), in bytes;
/// 0 where /proc is missing.
pub fn memory_bytes(field: &str) -> u64 {
    process_memory_bytes("self", field)
}

/// A memory figure of process `pid` ("self" for this one), like [`memory_bytes`].
pub fn process_memory_bytes(pid: &str, field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
