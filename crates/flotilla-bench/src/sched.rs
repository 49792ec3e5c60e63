//! `sched`: one scheduling cycle over a synthetic federation.
//!
//! The federation: 8-GPU nodes in racks of 16, three zones per cluster, about 1,000 nodes
//! per cluster; racks are all H100, A100 or L4 (half, three tenths, one fifth), one rack
//! in five is spot at 40% of the on-demand price, and each cluster's prices differ a
//! little. The workload: one-GPU tasks (some naming a GPU model, some refusing or
//! requiring spot, one in ten critical), plus gangs of 8 tasks x 8 GPUs in one rack for
//! `--gang-fraction`. `--running-fraction` fills that share of the GPUs with running,
//! preemptible tasks (and some whole-node gangs) of the first tenth of the queues, so
//! those queues sit far above their fair share and preemption (urgency and reclaim) is
//! needed.
//!
//! Two paths are timed in one run, on the same input: the full cycle (`schedule`, which
//! reads every queued task) and the backlog cycle (`schedule_backlog` over a `Backlog`
//! kept between cycles, as the leader does). Filing the tasks into the backlog is timed
//! apart: a leader pays it once when it takes over, then only per changed task.

use std::hint::black_box;
use std::time::Instant;

use anyhow::ensure;
use flotilla_model::{GangRef, Node, NodeRef, Placement, Queue, Resources, SchedTask, SpotPolicy, TaskId, Topology, TopologyLevel};
use flotilla_sched::{schedule, schedule_backlog, Backlog, Config, Decisions, Input, Running};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Nodes in the federation (8 GPUs each).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Queued tasks.
    #[arg(long, default_value_t = 32_000)]
    tasks: usize,
    /// Queues the tasks are spread over.
    #[arg(long, default_value_t = 10)]
    queues: usize,
    /// Share of queued tasks that are members of gangs of 8 x 8 GPUs.
    #[arg(long, default_value_t = 0.0)]
    gang_fraction: f64,
    /// Share of GPU capacity already held by running, preemptible tasks.
    #[arg(long, default_value_t = 0.0)]
    running_fraction: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Which cycle to time: `full`, `backlog` or `both`.
    #[arg(long, default_value = "both", value_parser = ["full", "backlog", "both"])]
    path: String,
    /// Cycles timed per path (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

const GIB: u64 = 1 << 30;
const NODES_PER_RACK: usize = 16;
const NODES_PER_CLUSTER: usize = 1000;
const GANG_SIZE: usize = 8;

struct Model {
    name: &'static str,
    cpu_millis: u64,
    memory_bytes: u64,
    price_per_hour_usd: f64,
}

const MODELS: [Model; 3] = [
    Model { name: "H100", cpu_millis: 192_000, memory_bytes: 2048 * GIB, price_per_hour_usd: 98.3 },
    Model { name: "A100", cpu_millis: 96_000, memory_bytes: 1152 * GIB, price_per_hour_usd: 32.8 },
    Model { name: "L4", cpu_millis: 192_000, memory_bytes: 768 * GIB, price_per_hour_usd: 16.3 },
];

fn rack_model(rack: usize) -> usize {
    match rack % 10 {
        0..=4 => 0,
        5..=7 => 1,
        _ => 2,
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(args.queues > 0, "--queues must be at least 1");
    ensure!((0.0..=1.0).contains(&args.gang_fraction), "--gang-fraction must be within 0..=1");
    ensure!((0.0..=1.0).contains(&args.running_fraction), "--running-fraction must be within 0..=1");
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    let mut input = build_input(args);

    let mut timings = serde_json::Map::new();
    let mut results: Vec<Decisions> = Vec::new();
    if args.path != "backlog" {
        let (seconds, d) = median_of(args.rounds, || schedule(black_box(&input)));
        timings.insert("full_seconds".into(), seconds.into());
        results.push(d);
    }
    if args.path != "full" {
        let start = Instant::now();
        let mut backlog = Backlog::default();
        for t in std::mem::take(&mut input.queued) {
            backlog.insert(t);
        }
        timings.insert("backlog_build_seconds".into(), start.elapsed().as_secs_f64().into());
        let (seconds, d) = median_of(args.rounds, || schedule_backlog(black_box(&input), &backlog));
        timings.insert("backlog_seconds".into(), seconds.into());
        results.push(d);
    }
    if let [full, lazy] = &results[..] {
        ensure!(full.leases == lazy.leases && full.preemptions == lazy.preemptions, "the two paths decided differently");
        let ratio = timings["full_seconds"].as_f64().unwrap_or(0.0) / timings["backlog_seconds"].as_f64().unwrap_or(1.0).max(1e-9);
        timings.insert("full_over_backlog".into(), ratio.into());
    }
    let decisions = results.pop().unwrap_or_default();
    let wall_seconds = timings.get("backlog_seconds").or(timings.get("full_seconds")).and_then(|v| v.as_f64()).unwrap_or(0.0);

    let placements = decisions.leases.len();
    let mut line = serde_json::json!({
        "bench": "sched",
        "nodes": args.nodes,
        "tasks": args.tasks,
        "queues": args.queues,
        "gang_fraction": args.gang_fraction,
        "running_fraction": args.running_fraction,
        "running": input.running.len(),
        "placements": placements,
        "preemptions": decisions.preemptions.len(),
        "unscheduled": decisions.unscheduled.len(),
        "shapes_skipped": decisions.stats.shapes_skipped,
        "wall_seconds": wall_seconds,
        "placements_per_second": if wall_seconds > 0.0 { placements as f64 / wall_seconds } else { 0.0 },
        "peak_memory_bytes": crate::peak_memory_bytes(),
    });
    if let Some(obj) = line.as_object_mut() {
        obj.extend(timings);
    }
    println!("{line}");
    Ok(())
}

/// Runs `f` `rounds` times; the median wall time and the last result.
fn median_of(rounds: usize, mut f: impl FnMut() -> Decisions) -> (f64, Decisions) {
    let mut seconds = Vec::with_capacity(rounds);
    let mut last = Decisions::default();
    for _ in 0..rounds {
        let start = Instant::now();
        let d = black_box(f());
        seconds.push(start.elapsed().as_secs_f64());
        // The previous result is dropped outside the timed part.
        last = d;
    }
    seconds.sort_by(f64::total_cmp);
    (seconds[seconds.len() / 2], last)
}

fn build_input(args: &Args) -> Input {
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let clusters = args.nodes.div_ceil(NODES_PER_CLUSTER).max(1);
    let per_cluster = args.nodes.div_ceil(clusters).max(1);
    let cluster_price: Vec<f64> = (0..clusters).map(|_| rng.random_range(0.9..1.1)).collect();

    let mut nodes = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let c = i / per_cluster;
        let in_cluster = i % per_cluster;
        let rack = in_cluster / NODES_PER_RACK;
        let model = &MODELS[rack_model(rack)];
        let spot = rack % 5 == 4;
        let price = model.price_per_hour_usd * cluster_price[c] * if spot { 0.4 } else { 1.0 };
        nodes.push(Node {
            cluster: format!("c{c:02}"),
            name: format!("n{in_cluster:05}"),
            allocatable: Resources::new(model.cpu_millis, model.memory_bytes, 8),
            reserved: Resources::new(2_000, 8 * GIB, 0),
            topology: Topology { region: "r1".into(), zone: format!("z{}", rack % 3), rack: format!("rack{rack:03}") },
            gpu_model: Some(model.name.to_string()),
            instance_type: String::new(),
            spot,
            price_per_hour_usd: price,
            labels: Default::default(),
            taints: vec![],
            unschedulable: false,
        });
    }

    let queues: Vec<Queue> = (0..args.queues).map(|q| Queue::new(format!("q{q:03}"), f64::from(rng.random_range(1..=4u32)))).collect();
    // The first tenth of the queues hold the running work, far above their fair share.
    let heavy = args.queues.div_ceil(10);

    let mut next_id = 1u64;
    let mut running = Vec::new();
    if args.running_fraction > 0.0 {
        for n in &nodes {
            let node_ref = NodeRef { cluster: n.cluster.clone(), node: n.name.clone() };
            let queue = queues[rng.random_range(0..heavy)].name.clone();
            // One node in ten of the running share is a whole-node gang member.
            if rng.random_bool(args.running_fraction * 0.1) {
                let gang = GangRef {
                    id: TaskId(next_id),
                    size: 1,
                    rank: 0,
                    topology: TopologyLevel::Node,
                    same_value_of: None,
                    roles: Vec::new(),
                };
                let mut t = one_task(next_id, &queue, 8, 0);
                t.gang = Some(gang);
                running.push(Running { task: t, node: node_ref });
                next_id += 1;
                continue;
            }
            for _ in 0..8 {
                if rng.random_bool(args.running_fraction) {
                    let priority = if rng.random_bool(0.5) { 0 } else { 100 };
                    running.push(Running { task: one_task(next_id, &queue, 1, priority), node: node_ref.clone() });
                    next_id += 1;
                }
            }
        }
    }

    let gang_tasks = ((args.tasks as f64 * args.gang_fraction) as usize / GANG_SIZE) * GANG_SIZE;
    let mut queued = Vec::with_capacity(args.tasks);
    for _ in 0..gang_tasks / GANG_SIZE {
        let queue = &queues[rng.random_range(0..args.queues)].name;
        let gang_id = TaskId(next_id);
        for rank in 0..GANG_SIZE as u32 {
            let mut t = one_task(next_id, queue, 8, 100);
            t.placement.gpu_model = Some("H100".into());
            t.gang = Some(GangRef {
                id: gang_id,
                size: GANG_SIZE as u32,
                rank,
                topology: TopologyLevel::Rack,
                same_value_of: None,
                roles: Vec::new(),
            });
            queued.push(t);
            next_id += 1;
        }
    }
    while queued.len() < args.tasks {
        let queue = &queues[rng.random_range(0..args.queues)].name;
        let critical = rng.random_bool(0.1);
        let mut t = one_task(next_id, queue, 1, if critical { 1000 } else { 100 });
        t.preemptible = !critical;
        if rng.random_bool(0.4) {
            t.placement.gpu_model = Some(MODELS[rng.random_range(0..MODELS.len())].name.into());
        }
        t.placement.spot = match rng.random_range(0..20) {
            0..=1 => SpotPolicy::Never,
            2 => SpotPolicy::Required,
            _ => SpotPolicy::Allowed,
        };
        queued.push(t);
        next_id += 1;
    }

    Input { queues, nodes, queued, running, config: Config::default(), held_queues: Default::default() }
}

fn one_task(id: u64, queue: &str, gpus: u64, priority: i32) -> SchedTask {
    SchedTask {
        id: TaskId(id),
        queue: queue.to_string(),
        priority,
        preemptible: true,
        priority_class: "default".into(),
        submit_seq: id,
        resources: Resources::new(gpus * 8_000, gpus * 64 * GIB, gpus),
        gang: None,
        placement: Placement::default(),
        avoid_nodes: vec![],
        avoid_clusters: vec![],
    }
}
