//! `chaos`: the deterministic fault simulator over many seeds (crates/flotilla-sim).
//!
//! Prints one JSON line: seeds run, violations found, the first failing seed and its
//! violations, and how long it took. Exits non-zero when any seed broke an invariant.

use std::time::Instant;

use flotilla_sim::{PlantedBug, SimConfig};

#[derive(clap::Args)]
pub struct Args {
    /// How many seeds to run (0, 1, 2, ...), from `--first-seed`.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Run only this seed, and print its fault log.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Switch a safety layer off to see the checker catch it: skip-term-check, skip-fence,
    /// skip-executor-lease, skip-stop-confirmation.
    #[arg(long)]
    plant: Option<PlantedBug>,
    /// Keep going after the first failing seed.
    #[arg(long)]
    keep_going: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    flotilla_sim::plant(args.plant);
    let config = SimConfig { replicas: args.replicas, ..SimConfig::default() };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    let started = Instant::now();
    let (mut run, mut violations, mut failing) = (0u64, 0usize, Vec::new());
    let mut first: Option<(u64, Vec<String>)> = None;
    for seed in seeds {
        let outcome = flotilla_sim::run_seed(seed, &config);
        run += 1;
        if args.seed.is_some() {
            for line in &outcome.log {
                eprintln!("{line}");
            }
        }
        if !outcome.violations.is_empty() {
            violations += outcome.violations.len();
            failing.push(seed);
            if first.is_none() {
                first = Some((seed, outcome.violations.iter().map(ToString::to_string).collect()));
            }
            if !args.keep_going {
                break;
            }
        }
    }
    let line = serde_json::json!({
        "bench": "chaos",
        "seeds": run,
        "replicas": args.replicas,
        "plant": args.plant.map(|p| format!("{p:?}")),
        "violations": violations,
        "failing_seeds": failing,
        "first_failing_seed": first.as_ref().map(|f| f.0),
        "first_violations": first.as_ref().map(|f| &f.1),
        "elapsed_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    println!("{line}");
    if violations > 0 {
        std::process::exit(1);
    }
    Ok(())
}
