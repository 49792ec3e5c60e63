//! `memory`: what one replica's state holds per queued task, in RAM and in a snapshot
//! (issue 14, goals 3 and 4).
//!
//! Builds one `flotilla_store::State` by applying `Submit` commands, as a replica's state
//! machine does after Raft has committed them (no Raft, no gRPC: their buffers would blur
//! the figure), then serializes it as a snapshot and reads it back. Memory is the process's
//! `VmRSS` growth across the submissions divided by the tasks, so everything the state keeps
//! per task counts: records, specs, indexes, events, the scheduler's change feed.
//!
//! Two workloads, one per run (an allocator does not give memory back, so two in one process
//! would measure each other):
//! - `array`: array tasks of `--per-request` (default 10,000) alike tasks, one template each;
//! - `distinct`: `--per-request` (default 500) distinct templates of one task each, differing
//!   in name, arguments and an environment variable, as agent fleets submit.

use std::time::Instant;

use clap::{Parser, ValueEnum};
use flotilla_model::{Queue, SubmitLimits, TaskTemplate};
use flotilla_store::{Command, CommandResult, Limits, Request, State};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    Array,
    Distinct,
}

#[derive(Parser, Clone, Debug)]
pub struct Args {
    /// Queued tasks in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: u32,
    #[arg(long, value_enum, default_value_t = Shape::Array)]
    pub shape: Shape,
    /// Tasks per `Submit` (array) or templates per `Submit` (distinct); 0: the shape's default.
    #[arg(long, default_value_t = 0)]
    pub per_request: u32,
    /// Queues the tasks are spread over (round robin by request).
    #[arg(long, default_value_t = 10)]
    pub queues: u32,
    /// Also serialize the state as a snapshot and read it back (time and bytes per task).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub snapshot: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.tasks > 0 && args.queues > 0, "--tasks and --queues must be at least 1");
    let per_request = match (args.per_request, args.shape) {
        (0, Shape::Array) => 10_000,
        (0, Shape::Distinct) => 500,
        (n, _) => n,
    };
    let mut state = State::with_limits(Limits::default());
    let mut now_ms = 1_000;
    for q in 0..args.queues {
        let queue = Queue::new(queue_name(q), 1.0);
        expect_ok(state.apply(&Request { now_ms, commands: vec![Command::PutQueue { queue, create: true }] }))?;
    }
    let rss_before = crate::memory_bytes("VmRSS:");
    let started = Instant::now();
    let mut submitted: u64 = 0;
    let mut request: u32 = 0;
    while submitted < u64::from(args.tasks) {
        let left = u64::from(args.tasks) - submitted;
        let n = u32::try_from(left.min(u64::from(per_request))).expect("at most per_request");
        let queue = queue_name(request % args.queues);
        let task_set = format!("set-{request:06}");
        let templates = match args.shape {
            Shape::Array => vec![array_template(n)],
            Shape::Distinct => (0..n).map(|i| distinct_template(request, i)).collect(),
        };
        let specs = flotilla_model::expand(&queue, &task_set, &templates, &SubmitLimits::default())
            .map_err(|e| anyhow::anyhow!("the bench's templates are invalid: {e:?}"))?;
        now_ms += 1;
        let submit = Command::Submit { client_request_id: format!("req-{request}"), queue, task_set, specs, body_digest: 0 };
        expect_ok(state.apply(&Request { now_ms, commands: vec![submit] }))?;
        submitted += u64::from(n);
        request += 1;
    }
    let submit_seconds = started.elapsed().as_secs_f64();
    let rss_after = crate::memory_bytes("VmRSS:");
    let rss_bytes_per_task = rss_after.saturating_sub(rss_before) as f64 / submitted as f64;

    let mut out = json!({
        "bench": "memory",
        "shape": format!("{:?}", args.shape).to_lowercase(),
        "tasks": submitted,
        "per_request": per_request,
        "requests": request,
        "queues": args.queues,
        "apply_seconds": round3(submit_seconds),
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "rss_bytes_per_task": rss_bytes_per_task.round(),
        // The fixed part of what each task holds, before its strings, vectors and maps.
        "task_record_struct_bytes": std::mem::size_of::<flotilla_store::TaskRecord>(),
        "task_spec_struct_bytes": std::mem::size_of::<flotilla_model::TaskSpec>(),
        "task_event_struct_bytes": std::mem::size_of::<flotilla_store::TaskEvent>(),
    });
    if args.snapshot {
        let started = Instant::now();
        let bytes = serde_json::to_vec(&state)?;
        let write_seconds = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let back: State = serde_json::from_slice(&bytes)?;
        let read_seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(back.task_count() == state.task_count(), "the snapshot read back holds another number of tasks");
        out["snapshot_bytes_per_task"] = json!((bytes.len() as f64 / submitted as f64).round());
        out["snapshot_write_seconds"] = json!(round3(write_seconds));
        out["snapshot_read_seconds"] = json!(round3(read_seconds));
        drop(back);
    }
    out["peak_rss_bytes"] = json!(crate::peak_memory_bytes());
    println!("{out}");
    Ok(())
}

fn queue_name(q: u32) -> String {
    format!("q{q:03}")
}

/// `--per-request` alike agents: one template, `count` tasks.
fn array_template(count: u32) -> TaskTemplate {
    TaskTemplate {
        name: "agent".into(),
        count: Some(count),
        image: "registry.example.com/agents/coder:1.4.2".into(),
        command: vec!["python".into(), "-m".into(), "agent".into()],
        resources: [("cpu".to_string(), "1".to_string()), ("memory".to_string(), "2Gi".to_string())].into(),
        ..Default::default()
    }
}

/// One agent of its own: its name, its prompt argument and its session variable differ.
fn distinct_template(request: u32, i: u32) -> TaskTemplate {
    TaskTemplate {
        name: format!("agent-{i:04}"),
        count: Some(1),
        args: vec!["--prompt-id".into(), format!("{request}-{i}")],
        env: [("SESSION".to_string(), format!("s-{request:06}-{i:04}"))].into(),
        ..array_template(1)
    }
}

fn expect_ok(response: flotilla_store::Response) -> anyhow::Result<()> {
    match response.results.first() {
        Some(CommandResult::Ok | CommandResult::Submitted { .. }) => Ok(()),
        other => anyhow::bail!("the state refused a bench command: {other:?}"),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
