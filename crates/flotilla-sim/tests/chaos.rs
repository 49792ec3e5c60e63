//! Seeds of the fault simulator: every invariant holds under partitions, crashes, lossy
//! links and clock jumps, and a seed reproduces its run exactly.

use flotilla_sim::{run_seed, SimConfig};

/// Seeds run here; `FLOTILLA_CHAOS_SEEDS` raises it for a soak (see docs/architecture.md).
fn seeds() -> u64 {
    std::env::var("FLOTILLA_CHAOS_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40)
}

#[test]
fn no_seed_breaks_an_invariant() {
    let config = SimConfig::default();
    let mut failed = Vec::new();
    for seed in 0..seeds() {
        let outcome = run_seed(seed, &config);
        eprintln!(
            "seed {seed}: {} tasks, {} pod runs, {} preemptions, {} virtual ms, digest {:x}",
            outcome.tasks, outcome.runs, outcome.preemptions, outcome.virtual_ms, outcome.digest
        );
        if !outcome.violations.is_empty() {
            eprintln!("seed {seed}: {} violations", outcome.violations.len());
            for v in &outcome.violations {
                eprintln!("  {v}");
            }
            for line in &outcome.log {
                eprintln!("    {line}");
            }
            failed.push(seed);
        }
    }
    assert!(failed.is_empty(), "seeds with violations: {failed:?}");
}

#[test]
fn a_seed_reproduces_its_run_exactly() {
    let config = SimConfig::default();
    let first = run_seed(7, &config);
    let second = run_seed(7, &config);
    assert!(first.runs > 0, "the run started pods");
    assert_eq!(first.log, second.log, "the fault schedule is the same");
    assert_eq!((first.digest, first.tasks, first.runs), (second.digest, second.tasks, second.runs), "the same history");
}
