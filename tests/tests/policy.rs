//! Scheduling policy (issue 17) through the real binary: `flotilla dev` on simulated
//! clusters (tests/fixtures/clusters-policy.toml) and the `flotilla` CLI.

use std::time::{Duration, Instant};

use flotilla_tests::DevProcess;
use serde_json::Value;

const CLUSTERS: &str = "tests/fixtures/clusters-policy.toml";

/// Writes a task file into a fresh temporary directory; keep the directory while it is used.
fn task_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.yaml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_string_lossy().into_owned();
    (dir, path)
}

/// The tasks of one task set, as `flotilla get -o json` shows them.
fn tasks(dev: &DevProcess, task_set: &str) -> Vec<Value> {
    dev.cli_json(&["get", "--queue", "policy", "--task-set", task_set]).as_array().cloned().unwrap_or_default()
}

fn states(dev: &DevProcess, task_set: &str) -> Vec<String> {
    tasks(dev, task_set).iter().map(|t| t["state"].as_str().unwrap_or_default().to_string()).collect()
}

/// Polls until `done` holds for the task set's states, or panics with the last ones seen.
fn wait_for(dev: &DevProcess, task_set: &str, what: &str, done: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = states(dev, task_set);
        if done(&now) {
            return;
        }
        assert!(Instant::now() < deadline, "{task_set}: not {what} within 60 s: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn count(states: &[String], state: &str) -> usize {
    states.iter().filter(|s| *s == state).count()
}

#[test]
fn operator_defined_priority_classes_order_and_preempt_in_a_simulated_cluster_and_one_in_use_is_not_deleted() {
    let dev = DevProcess::start(CLUSTERS, "5");
    let (code, _, err) = dev.cli(&["queue", "create", "policy"]);
    assert_eq!(code, 0, "{err}");

    let names = |v: Value| -> Vec<String> { v.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect() };
    assert_eq!(names(dev.cli_json(&["priority-class", "list"])), ["best-effort", "critical", "default"], "the built-in classes");

    // Two more preemptible levels than the built-ins offer between best-effort and critical.
    for (name, priority) in [("low", "10"), ("urgent", "500")] {
        let (code, _, err) = dev.cli(&["priority-class", "create", name, "--priority", priority, "--preemptible"]);
        assert_eq!(code, 0, "create {name}: {err}");
    }
    let (code, _, err) = dev.cli(&["priority-class", "create", "Bad_Name", "--priority", "1"]);
    assert_eq!(code, 2, "an invalid class is bad input");
    assert!(err.contains("name: \"Bad_Name\" is not a valid name"), "{err}");

    // Fill the one 4-CPU node with `low` tasks.
    let (_d1, low) = task_file(
        "queue: policy\ntaskSet: low\ntasks:\n  - {name: filler, count: 4, priorityClass: low, image: busybox, resources: {cpu: 1}, terminationGrace: 1s, sim: {duration: 1h}}\n",
    );
    let (code, _, err) = dev.cli(&["submit", &low]);
    assert_eq!(code, 0, "{err}");
    wait_for(&dev, "low", "all running", |s| count(s, "running") == 4);

    // An `urgent` task evicts one `low` task (urgency preemption between operator classes).
    let (_d2, urgent) = task_file(
        "queue: policy\ntaskSet: urgent\ntasks:\n  - {name: hot, priorityClass: urgent, image: busybox, resources: {cpu: 1}, sim: {duration: 1h}}\n",
    );
    let (code, _, err) = dev.cli(&["submit", &urgent]);
    assert_eq!(code, 0, "{err}");
    wait_for(&dev, "urgent", "running", |s| count(s, "running") == 1);
    let low_now = tasks(&dev, "low");
    assert_eq!(low_now.iter().filter(|t| t["state"] == "running").count(), 3, "one low task gave way: {low_now:?}");
    assert!(low_now.iter().any(|t| t["attempt"].as_u64() >= Some(2) || t["state"] == "queued"), "{low_now:?}");

    // A class in use is not deleted; an update is visible; once unused it is deleted.
    let (code, _, err) = dev.cli(&["priority-class", "delete", "low"]);
    assert_eq!(code, 1, "deleting a class in use fails: {err}");
    assert!(err.contains("is used by unfinished tasks"), "{err}");
    let (code, _, err) = dev.cli(&["priority-class", "update", "urgent", "--priority", "600", "--preemptible", "--description", "pager"]);
    assert_eq!(code, 0, "{err}");
    let listed = dev.cli_json(&["priority-class", "list"]);
    let urgent_class = listed.as_array().unwrap().iter().find(|c| c["name"] == "urgent").cloned().unwrap();
    assert_eq!((urgent_class["priority"].as_i64(), urgent_class["description"].as_str()), (Some(600), Some("pager")));
    let (code, _, err) = dev.cli(&["cancel", "--queue", "policy", "--task-set", "low"]);
    assert_eq!(code, 0, "{err}");
    wait_for(&dev, "low", "cancelled", |s| count(s, "cancelled") == 4);
    let (code, _, err) = dev.cli(&["priority-class", "delete", "low"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(names(dev.cli_json(&["priority-class", "list"])), ["best-effort", "critical", "default", "urgent"]);

    // A task file naming the deleted class is refused, naming the field.
    let (code, _, err) = dev.cli(&["submit", &low]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tasks[0].priorityClass: unknown priority class \"low\""), "{err}");
}
