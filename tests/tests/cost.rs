//! Cost through the real binary (issue 16, item 4): `flotilla dev` on the calm simulated
//! clusters (priced nodes), tasks in two queues and several task sets, then `flotilla queue
//! list` shows each queue's cost and `flotilla_cost_usd_total` equals the sum over the
//! queue's task sets; and a queue over its daily budget gets no new leases.

use std::time::{Duration, Instant};

use flotilla_api::v1::{self, tasks_client::TasksClient};
use flotilla_tests::{flotilla_cli, repo_root, start_dev, DevProcess};

/// A task file of `count` tasks taking `cpu` cores each for `duration` (simulated).
fn task_file(dir: &std::path::Path, name: &str, count: u32, cpu: &str, duration: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        "tasks:\n  - name: work\n    count: {count}\n    image: busybox\n    resources: {{cpu: \"{cpu}\", memory: 1Gi}}\n    sim: {{duration: {duration}}}\n"
    );
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn cli(dev: &DevProcess, args: &[&str]) -> String {
    let (ok, out, err) = flotilla_cli(&dev.grpc, args);
    assert!(ok, "flotilla {args:?} failed:\n{out}\n{err}");
    out
}

async fn tasks_of(dev: &DevProcess, queue: &str, set: &str) -> v1::ListTasksResponse {
    let mut c = TasksClient::connect(dev.grpc.clone()).await.unwrap();
    let req = v1::ListTasksRequest { queue: queue.into(), task_set: set.into(), limit: 1000, ..Default::default() };
    c.list_tasks(req).await.unwrap().into_inner()
}

/// Waits until every task of the sets is in one of `states`.
async fn wait_all(dev: &DevProcess, sets: &[(&str, &str)], states: &[&str], within: Duration) {
    let started = Instant::now();
    loop {
        let mut done = true;
        for (q, s) in sets {
            let page = tasks_of(dev, q, s).await;
            done &= !page.tasks.is_empty() && page.tasks.iter().all(|t| states.contains(&t.state.as_str()));
        }
        if done {
            return;
        }
        assert!(started.elapsed() < within, "tasks of {sets:?} not all {states:?} within {within:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `flotilla_cost_usd_total{queue="…"}` from `/metrics`.
async fn cost_metric(dev: &DevProcess, queue: &str) -> f64 {
    let (status, _, body) = flotilla_tests::http_get(dev.http, "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("# TYPE flotilla_cost_usd_total counter"), "the metric is a counter");
    let prefix = format!("flotilla_cost_usd_total{{queue=\"{queue}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {prefix} in /metrics")).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_list_shows_each_queues_cost_and_the_metric_equals_the_sum_over_its_task_sets() {
    let dir = tempfile::tempdir().unwrap();
    let clusters = repo_root().join("tests/fixtures/clusters-calm.toml");
    let dev = start_dev(dir.path(), &["--clusters", clusters.to_str().unwrap(), "--speed", "5"]);
    let sets = [("alpha", "one"), ("alpha", "two"), ("beta", "three")];
    for q in ["alpha", "beta"] {
        cli(&dev, &["queue", "create", q]);
    }
    for (i, (q, s)) in sets.iter().enumerate() {
        // Whole nodes (31 of 31 cores) make the share 1: each run costs $1.36/h × its time.
        let file = task_file(dir.path(), s, 2 + i as u32, "31", "5s");
        cli(&dev, &["submit", &file, "--queue", q, "--task-set", s]);
    }
    wait_all(&dev, &sets, &["succeeded"], Duration::from_secs(90)).await;

    let list = cli(&dev, &["queue", "list"]);
    let header: Vec<&str> = list.lines().next().unwrap().split("  ").filter(|c| !c.is_empty()).map(str::trim).collect();
    let cost_col = header.iter().position(|h| *h == "COST").unwrap_or_else(|| panic!("a COST column:\n{list}"));
    for q in ["alpha", "beta"] {
        let mut ended = 0.0;
        let mut with_tasks = 0.0;
        for (_, s) in sets.iter().filter(|(x, _)| *x == q) {
            let page = tasks_of(&dev, q, s).await;
            assert!(page.task_set_ended_cost_usd > 0.0, "{q}/{s} cost something");
            ended += page.task_set_ended_cost_usd;
            with_tasks += page.tasks.iter().map(|t| t.cost_usd).sum::<f64>();
            // Each run took about 1 s of real time (5 s simulated at 5×) on a $1.36/h node.
            for t in &page.tasks {
                assert!(t.cost_usd > 0.0 && t.cost_usd < 1.36 * 30.0 / 3600.0, "task {} cost ${}", t.id, t.cost_usd);
            }
        }
        let metric = cost_metric(&dev, q).await;
        assert!((metric - ended).abs() < 1e-9, "{q}: metric {metric} vs the sum over its task sets {ended}");
        assert!((metric - with_tasks).abs() < 1e-9, "{q}: metric {metric} vs the sum over its tasks {with_tasks}");
        let row = list.lines().find(|l| l.starts_with(q)).unwrap_or_else(|| panic!("{q} in:\n{list}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        let shown = cells.iter().find(|c| c.starts_with('$')).unwrap_or_else(|| panic!("a cost in {row:?}"));
        assert_eq!(*shown, format!("${metric:.4}"), "queue list shows the metric's value (column {cost_col}):\n{list}");
    }
    let get = cli(&dev, &["get", "--queue", "alpha", "--task-set", "one"]);
    assert!(get.contains("task set alpha/one cost $"), "get shows the task set's total:\n{get}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_over_its_daily_budget_gets_no_new_leases_and_its_tasks_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let clusters = repo_root().join("tests/fixtures/clusters-calm.toml");
    let dev = start_dev(dir.path(), &["--clusters", clusters.to_str().unwrap(), "--speed", "5"]);
    // One whole-node run of about a second costs about $0.0004: the budget is spent after it.
    cli(&dev, &["queue", "create", "capped", "--budget-usd-per-day", "0.0001"]);
    cli(&dev, &["queue", "create", "free"]);
    let first = task_file(dir.path(), "first", 1, "31", "5s");
    cli(&dev, &["submit", &first, "--queue", "capped", "--task-set", "first"]);
    wait_all(&dev, &[("capped", "first")], &["succeeded"], Duration::from_secs(60)).await;

    let more = task_file(dir.path(), "more", 3, "1", "5s");
    cli(&dev, &["submit", &more, "--queue", "capped", "--task-set", "more"]);
    cli(&dev, &["submit", &more, "--queue", "free", "--task-set", "more"]);
    wait_all(&dev, &[("free", "more")], &["succeeded"], Duration::from_secs(60)).await;
    let held = tasks_of(&dev, "capped", "more").await;
    for t in &held.tasks {
        assert_eq!((t.state.as_str(), t.attempt), ("queued", 0), "task {} of the capped queue was never leased", t.id);
        assert_eq!(t.reason, "daily budget $0.0001 spent; resumes at 00:00 UTC");
    }
    let shown = cli(&dev, &["queue", "list"]);
    assert!(shown.lines().any(|l| l.starts_with("capped") && l.contains("/$0.0001")), "today's spend over the budget:\n{shown}");

    // Raising the budget lets them run: it was the budget that held them.
    cli(&dev, &["queue", "update", "capped", "--budget-usd-per-day", "100"]);
    wait_all(&dev, &[("capped", "more")], &["succeeded"], Duration::from_secs(60)).await;
}
