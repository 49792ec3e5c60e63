//! The checker is not blind: with a safety layer switched off, some seed breaks invariant 2.
//! (Its own test binary: planting a bug is process-wide.)

use flotilla_sim::{plant, run_seed, PlantedBug, SimConfig};

#[test]
fn executors_that_ignore_their_lease_run_a_task_twice_and_the_checker_sees_it() {
    plant(Some(PlantedBug::SkipExecutorLease));
    let config = SimConfig::default();
    // Seed 3 does within 4 seeds (flotilla-bench chaos --plant skip-executor-lease); allow more.
    let caught = (0..20).map(|seed| run_seed(seed, &config)).find(|o| o.violations.iter().any(|v| v.invariant == "one attempt at a time"));
    plant(None);
    let outcome = caught.expect("some seed shows two attempts of one task running at once");
    eprintln!("seed {}: {}", outcome.seed, outcome.violations[0]);
}
