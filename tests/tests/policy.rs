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

/// A task file of `count` 1-CPU tasks for `queue`, and with `wanting` more that fit no node
/// (they make the queue's demand exceed its fair share without ever running).
fn cpu_tasks(queue: &str, count: u32, wanting: u32) -> String {
    let mut text = format!(
        "queue: {queue}\ntaskSet: s\ntasks:\n  - {{name: run, count: {count}, image: busybox, resources: {{cpu: 1}}, terminationGrace: 1s, sim: {{duration: 1h}}}}\n"
    );
    if wanting > 0 {
        text.push_str(&format!(
            "  - {{name: want, count: {wanting}, image: busybox, resources: {{cpu: 1}}, placement: {{nodeSelector: {{pool: none}}}}}}\n"
        ));
    }
    text
}

fn queue_tasks(dev: &DevProcess, queue: &str) -> Vec<Value> {
    dev.cli_json(&["get", "--queue", queue, "--task-set", "s"]).as_array().cloned().unwrap_or_default()
}

fn running_in(dev: &DevProcess, queue: &str) -> usize {
    queue_tasks(dev, queue).iter().filter(|t| t["state"] == "running").count()
}

fn wait_running(dev: &DevProcess, queue: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while running_in(dev, queue) != n {
        assert!(Instant::now() < deadline, "queue {queue}: not {n} running within 60 s: {:?}", queue_tasks(dev, queue));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn fair_share_reclaim_takes_from_a_queue_only_down_to_its_protected_share_in_a_simulated_cluster() {
    let dev = DevProcess::start("tests/fixtures/clusters-protected.toml", "5");
    // 16 CPUs; a, b, d and c each want more than 4 (their fair share). b keeps half of its
    // fair share (2 CPUs), d all of it (the default).
    for args in [vec!["a"], vec!["b", "--protected-fraction", "0.5"], vec!["d"], vec!["c"]] {
        let mut full = vec!["queue", "create"];
        full.extend(args);
        let (code, _, err) = dev.cli(&full);
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = dev.cli(&["queue", "create", "bad", "--protected-fraction", "1.5"]);
    assert_eq!(code, 2, "a fraction above 1 is bad input: {err}");
    assert!(err.contains("\"1.5\" is not a fraction between 0 and 1"), "{err}");
    let q = dev.cli_json(&["queue", "get", "b"]);
    assert_eq!(q[0]["protectedFraction"].as_f64(), Some(0.5), "{q}");

    // a takes 9, then b 3 and d 3 (newer, so first in victim order), each below its fair share.
    let mut files = Vec::new();
    for (queue, count, wanting) in [("a", 9, 0), ("b", 3, 4), ("d", 3, 4)] {
        let (dir, path) = task_file(&cpu_tasks(queue, count, wanting));
        let (code, _, err) = dev.cli(&["submit", &path]);
        assert_eq!(code, 0, "{err}");
        wait_running(&dev, queue, count as usize);
        files.push(dir);
    }
    // c takes the last CPU and reclaims 3 more: one from b (3 -> 2, its protected share),
    // none from d (below its fair share, fully protected), the rest from a.
    let (_dir, path) = task_file(&cpu_tasks("c", 8, 0));
    let (code, _, err) = dev.cli(&["submit", &path]);
    assert_eq!(code, 0, "{err}");
    wait_running(&dev, "c", 4);
    let b = queue_tasks(&dev, "b");
    let d = queue_tasks(&dev, "d");
    let gave_way = |tasks: &[Value]| {
        tasks.iter().filter(|t| t["attempt"].as_u64() > Some(1) || t["reason"].as_str().is_some_and(|r| r.contains("preempted"))).count()
    };
    assert_eq!(gave_way(&d), 0, "d, below its fair share and fully protected, lost nothing: {d:?}");
    assert_eq!(gave_way(&b), 1, "b gave exactly one task, down to its protected share: {b:?}");
}

#[test]
fn a_task_with_a_runtime_class_runs_only_on_nodes_that_offer_it_in_a_simulated_cluster() {
    let dev = DevProcess::start("tests/fixtures/clusters-sandbox.toml", "5");
    let (code, _, err) = dev.cli(&["queue", "create", "policy"]);
    assert_eq!(code, 0, "{err}");
    let (_dir, path) = task_file(
        "queue: policy\ntaskSet: sandbox\ntasks:\n  \
         - {name: agent, count: 3, runtimeClass: gvisor, image: busybox, resources: {cpu: 1}, sim: {duration: 1h}}\n  \
         - {name: plain, count: 3, image: busybox, resources: {cpu: 1}, sim: {duration: 1h}}\n  \
         - {name: kata, runtimeClass: kata, image: busybox, resources: {cpu: 1}, sim: {duration: 1h}}\n",
    );
    let (code, _, err) = dev.cli(&["submit", &path]);
    assert_eq!(code, 0, "{err}");
    wait_for(&dev, "sandbox", "six running", |s| count(s, "running") == 6);
    let all = tasks(&dev, "sandbox");
    let nodes_of = |name: &str| -> Vec<String> {
        all.iter().filter(|t| t["name"] == name).map(|t| t["node"].as_str().unwrap_or_default().to_string()).collect()
    };
    // The plain pool is cheaper, so only the runtime class takes tasks to the gVisor node.
    assert!(nodes_of("agent").iter().all(|n| n.contains("gvisor")), "gVisor tasks on gVisor nodes: {all:?}");
    assert!(nodes_of("plain").iter().all(|n| !n.contains("gvisor")), "plain tasks on the cheaper pool: {all:?}");
    let kata = all.iter().find(|t| t["name"] == "kata").unwrap();
    assert_eq!(kata["state"], "queued", "no node offers kata: {kata}");
    assert!(kata["reason"].as_str().unwrap_or_default().contains("runtimeclass.flotilla.io/kata"), "{kata}");
}

/// The pool of a simulated node (`aff-blue-01` -> `blue`).
fn pool_of(node: &str) -> &str {
    node.strip_prefix("aff-").and_then(|rest| rest.rsplit_once('-')).map_or("", |(pool, _)| pool)
}

#[test]
fn node_affinity_and_a_same_value_of_gang_decide_where_tasks_run_in_a_simulated_cluster() {
    let dev = DevProcess::start("tests/fixtures/clusters-affinity.toml", "5");
    let (code, _, err) = dev.cli(&["queue", "create", "policy"]);
    assert_eq!(code, 0, "{err}");
    let (_dir, path) = task_file(
        "queue: policy\ntaskSet: aff\ntasks:\n  \
         - name: pinned\n    count: 2\n    image: busybox\n    resources: {cpu: 1}\n    sim: {duration: 1h}\n    affinity:\n      required:\n        \
             - {key: example.com/nodepool, operator: In, values: [blue, red]}\n        \
             - {key: example.com/broken, operator: DoesNotExist}\n  \
         - name: liked\n    image: busybox\n    resources: {cpu: 1}\n    sim: {duration: 1h}\n    affinity:\n      preferred:\n        \
             - {weight: 50, key: example.com/tier, operator: In, values: [gold]}\n  \
         - name: train\n    gang: {size: 3, sameValueOf: example.com/nodepool}\n    image: busybox\n    resources: {cpu: 2}\n    sim: {duration: 1h}\n  \
         - name: nowhere\n    gang: {size: 2, sameValueOf: example.com/absent}\n    image: busybox\n    resources: {cpu: 1}\n    sim: {duration: 1h}\n",
    );
    let (code, _, err) = dev.cli(&["submit", &path]);
    assert_eq!(code, 0, "{err}");
    wait_for(&dev, "aff", "six running", |s| count(s, "running") == 6);
    let all = tasks(&dev, "aff");
    let pools_of = |name: &str| -> Vec<String> {
        all.iter().filter(|t| t["name"] == name).map(|t| pool_of(t["node"].as_str().unwrap_or_default()).to_string()).collect()
    };
    // `red` is the tightest node and In matches it, but DoesNotExist excludes it.
    assert_eq!(pools_of("pinned"), ["blue", "blue"], "required affinity: {all:?}");
    // Tighter and cheaper nodes exist; the preferred gold tier wins among those that fit.
    assert_eq!(pools_of("liked"), ["green"], "preferred affinity: {all:?}");
    // The gang shares one node-pool value and never uses the unlabelled (cheapest) pool.
    let train = pools_of("train");
    assert_eq!(train.len(), 3, "{all:?}");
    assert!(train.iter().all(|p| *p == train[0] && p != "bare"), "gang on one label value: {train:?}");
    // No node carries the label: the gang stays queued and the reason names the label.
    let nowhere: Vec<&Value> = all.iter().filter(|t| t["name"] == "nowhere").collect();
    assert!(nowhere.iter().all(|t| t["state"] == "queued"), "{nowhere:?}");
    assert!(nowhere.iter().all(|t| t["reason"].as_str().unwrap_or_default().contains("example.com/absent")), "{nowhere:?}");

    // A bad expression is refused with its field path.
    let (_bad_dir, bad) = task_file(
        "queue: policy\ntaskSet: bad\ntasks:\n  - name: t\n    image: busybox\n    resources: {cpu: 1}\n    affinity: {required: [{key: zone, operator: In}]}\n",
    );
    let (code, _, err) = dev.cli(&["submit", &bad]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tasks[0].affinity.required[0].values: In needs at least one value"), "{err}");
}

/// The rack of a node of tests/fixtures/clusters-gangsets.toml (`gs-node-03` -> 2).
fn rack_of(node: &str) -> u32 {
    let n: u32 = node.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    n.saturating_sub(1) / 2 + 1
}

/// `flotilla logs TASK` of a simulated attempt: its synthetic output, which shows the
/// `FLOTILLA_GANG_*` variables a pod would have.
fn gang_env(dev: &DevProcess, task: &Value) -> std::collections::BTreeMap<String, String> {
    let (code, out, err) = dev.cli(&["logs", &task["id"].to_string()]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .filter_map(|l| l.split_once(" flotilla-sim: env ")?.1.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_gang_of_a_launcher_and_workers_starts_together_in_one_rack_knows_its_roles_and_restarts_whole_in_a_simulated_cluster() {
    let dev = DevProcess::start("tests/fixtures/clusters-gangsets.toml", "5");
    let (code, _, err) = dev.cli(&["queue", "create", "policy"]);
    assert_eq!(code, 0, "{err}");
    // 1 + 4 x 3 = 13 CPUs: one rack (16) holds the gang, one node (8) does not.
    let (_dir, path) = task_file(
        "queue: policy\ntaskSet: gs\ntasks:\n  \
         - {name: worker, count: 4, gang: {group: train, topology: rack}, image: busybox, resources: {cpu: 3}, sim: {duration: 1h}}\n  \
         - {name: launcher, gang: {group: train, leader: true}, image: busybox, resources: {cpu: 1}, sim: {duration: 1h}}\n  \
         - {name: crash, gang: {group: flaky}, image: busybox, resources: {cpu: 1}, retry: {maxAttempts: 2, backoff: 1s}, sim: {duration: 10s, exitCode: 3}}\n  \
         - {name: steady, count: 2, gang: {group: flaky}, image: busybox, resources: {cpu: 1}, sim: {duration: 1h}}\n",
    );
    let (code, _, err) = dev.cli(&["submit", &path]);
    assert_eq!(code, 0, "{err}");
    let train = |dev: &DevProcess| -> Vec<Value> {
        tasks(dev, "gs").into_iter().filter(|t| t["name"] == "launcher" || t["name"] == "worker").collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while train(&dev).iter().any(|t| t["state"] != "running") {
        assert!(Instant::now() < deadline, "the gang did not start: {:?}", train(&dev));
        std::thread::sleep(Duration::from_millis(200));
    }
    let members = train(&dev);
    // The leader's template is first in rank order: the launcher has the gang's first id.
    assert_eq!(members[0]["name"], "launcher", "{members:?}");
    let gang_id = members[0]["id"].clone();
    assert!(members.iter().all(|t| t["gangId"] == gang_id), "one gang: {members:?}");
    let racks: std::collections::BTreeSet<u32> = members.iter().map(|t| rack_of(t["node"].as_str().unwrap_or_default())).collect();
    assert_eq!(racks.len(), 1, "one rack: {members:?}");

    let launcher = gang_env(&dev, &members[0]);
    assert_eq!(launcher["FLOTILLA_GANG_ROLE"], "launcher");
    assert_eq!((launcher["FLOTILLA_GANG_RANK"].as_str(), launcher["FLOTILLA_GANG_SIZE"].as_str()), ("0", "5"));
    assert_eq!(launcher["FLOTILLA_GANG_ROLES"], "launcher:1,worker:4");
    assert_eq!(launcher["FLOTILLA_GANG_ADDRESS"], launcher["FLOTILLA_GANG_LEADER"]);
    for (k, worker) in members[1..].iter().enumerate() {
        let env = gang_env(&dev, worker);
        assert_eq!(env["FLOTILLA_GANG_ROLE"], "worker", "{env:?}");
        assert_eq!(env["FLOTILLA_GANG_ROLE_RANK"], k.to_string(), "{env:?}");
        assert_eq!(env["FLOTILLA_GANG_RANK"], (k + 1).to_string(), "{env:?}");
        assert_eq!(env["FLOTILLA_GANG_LEADER"], launcher["FLOTILLA_GANG_LEADER"], "{env:?}");
        assert!(env["FLOTILLA_GANG_LEADER"].starts_with("launcher-0.flotilla-sim-g"), "{env:?}");
        assert!(env["FLOTILLA_GANG_ADDRESS"].starts_with(&format!("worker-{k}.")), "{env:?}");
        assert_eq!(env["FLOTILLA_GANG_PEERS"].split(',').count(), 5, "{env:?}");
    }

    // The crashing member fails twice: the first failure restarts its whole gang (the steady
    // members run a second attempt), the second ends it.
    let flaky = |dev: &DevProcess| -> Vec<Value> {
        tasks(dev, "gs").into_iter().filter(|t| t["name"] == "crash" || t["name"] == "steady").collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while flaky(&dev).iter().any(|t| !matches!(t["state"].as_str(), Some("failed" | "cancelled"))) {
        assert!(Instant::now() < deadline, "the flaky gang did not end: {:?}", flaky(&dev));
        std::thread::sleep(Duration::from_millis(200));
    }
    let ended = flaky(&dev);
    let crash = ended.iter().find(|t| t["name"] == "crash").unwrap();
    assert_eq!((crash["state"].as_str(), crash["attempt"].as_u64()), (Some("failed"), Some(2)), "{crash}");
    for steady in ended.iter().filter(|t| t["name"] == "steady") {
        assert_eq!(steady["state"], "cancelled", "{steady}");
        assert_eq!(steady["attempt"], 2, "restarted with the gang: {steady}");
        // "gang member crash (7) failed", or passed on from a member it cancelled.
        assert!(steady["reason"].as_str().unwrap_or_default().starts_with("gang member "), "{steady}");
    }
    // The other gang never noticed.
    assert!(train(&dev).iter().all(|t| t["state"] == "running" && t["attempt"] == 1), "{:?}", train(&dev));

    // Members of one gang cannot wait for each other.
    let (_bad_dir, bad) = task_file(
        "queue: policy\ntaskSet: bad\ntasks:\n  \
         - {name: a, gang: {group: g}, image: busybox, resources: {cpu: 1}}\n  \
         - {name: b, gang: {group: g}, after: [a], image: busybox, resources: {cpu: 1}}\n",
    );
    let (code, _, err) = dev.cli(&["submit", &bad]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("tasks[1].after[0]: \"a\" is in the same gang group \"g\""), "{err}");

    // Every member of a gang has one priority class (issue 17 item 6): a mixed gang is refused
    // naming both fields, and nothing of it is stored.
    let (_mixed_dir, mixed) = task_file(
        "queue: policy\ntaskSet: mixedclass\ntasks:\n  \
         - {name: a, gang: {group: g}, image: busybox, resources: {cpu: 1}}\n  \
         - {name: b, gang: {group: g}, priorityClass: critical, image: busybox, resources: {cpu: 1}}\n",
    );
    let (code, _, err) = dev.cli(&["submit", &mixed]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("tasks[1].priorityClass: \"critical\" differs from tasks[0].priorityClass \"default\" of gang group \"g\""),
        "{err}"
    );
    assert!(tasks(&dev, "mixedclass").is_empty(), "a refused gang stores nothing");
}

#[test]
fn a_queue_s_class_limit_holds_its_class_at_a_fraction_of_the_pool_in_a_simulated_cluster() {
    let dev = DevProcess::start("tests/fixtures/clusters-classlimits.toml", "5");
    let (code, _, err) = dev.cli(&["priority-class", "create", "urgent", "--priority", "500", "--preemptible"]);
    assert_eq!(code, 0, "{err}");
    // Bad limits are refused, naming the problem, and create nothing.
    let (code, _, err) = dev.cli(&["queue", "create", "other", "--class-limit", "nope:gpu=10%"]);
    assert_eq!(code, 2, "an unknown class is bad input: {err}");
    assert!(err.contains("priorityClassLimits[0].priorityClass: unknown priority class \"nope\""), "{err}");
    let (code, _, err) = dev.cli(&["queue", "create", "other", "--class-limit", "urgent:gpu=150%"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at most 100% of the pool"), "{err}");
    assert!(dev.cli_json(&["queue", "list"]).as_array().unwrap().is_empty(), "nothing created");

    // 8 GPUs in the pool: urgent tasks of `policy` may hold 25%, 2 GPUs.
    let (code, _, err) = dev.cli(&["queue", "create", "policy", "--class-limit", "urgent:gpu=25%", "--class-limit", "urgent:cpu=40"]);
    assert_eq!(code, 0, "{err}");
    let q = dev.cli_json(&["queue", "get", "policy"]);
    assert_eq!(q[0]["priorityClassLimits"], serde_json::json!(["urgent:gpu=25%", "urgent:cpu=40"]), "{q}");
    let (code, table, err) = dev.cli(&["queue", "get", "policy"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("urgent:gpu=25%,urgent:cpu=40"), "{table}");

    let (_dir, path) = task_file(
        "queue: policy\ntaskSet: limited\ntasks:\n  \
         - {name: hot, count: 4, priorityClass: urgent, image: busybox, resources: {cpu: 1, nvidia.com/gpu: 1}, sim: {duration: 1h}}\n  \
         - {name: bulk, count: 3, image: busybox, resources: {cpu: 1, nvidia.com/gpu: 1}, sim: {duration: 1h}}\n",
    );
    let (code, _, err) = dev.cli(&["submit", &path]);
    assert_eq!(code, 0, "{err}");
    wait_for(&dev, "limited", "five running", |s| count(s, "running") == 5);
    // A few more cycles (one a second) change nothing: the class stays at its limit while
    // 3 GPUs stay free, and its waiting tasks say which limit holds them.
    std::thread::sleep(Duration::from_secs(3));
    let all = tasks(&dev, "limited");
    let running = |name: &str| all.iter().filter(|t| t["name"] == name && t["state"] == "running").count();
    assert_eq!((running("hot"), running("bulk")), (2, 3), "{all:?}");
    // The backlog path visits a waiting group's head each cycle; the tasks behind it keep
    // the reason they had (none yet here), as for every other reason.
    let reasons: Vec<&str> =
        all.iter().filter(|t| t["name"] == "hot" && t["state"] == "queued").map(|t| t["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), 2, "{all:?}");
    assert!(reasons.contains(&"queue limit gpu=25% of pool (2) for class urgent reached"), "{reasons:?}");
    assert!(reasons.iter().all(|r| r.is_empty() || r.starts_with("queue limit gpu=25%")), "{reasons:?}");

    // A class a queue limit names is not deleted, even once no task uses it.
    let (code, _, err) = dev.cli(&["cancel", "--queue", "policy", "--task-set", "limited"]);
    assert_eq!(code, 0, "{err}");
    wait_for(&dev, "limited", "cancelled", |s| count(s, "cancelled") == 7);
    let (code, _, err) = dev.cli(&["priority-class", "delete", "urgent"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is named in a limit of queue \"policy\""), "{err}");
    let (code, _, err) = dev.cli(&["queue", "update", "policy"]);
    assert_eq!(code, 0, "an update without --class-limit removes the limits: {err}");
    let (code, _, err) = dev.cli(&["priority-class", "delete", "urgent"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn mig_slices_and_time_sliced_gpus_fill_the_nodes_that_offer_them_in_a_simulated_cluster() {
    let dev = DevProcess::start("tests/fixtures/clusters-gpusharing.toml", "5");
    let (code, _, err) = dev.cli(&["queue", "create", "policy"]);
    assert_eq!(code, 0, "{err}");
    let (_dir, path) = task_file(
        "queue: policy\ntaskSet: shared\ntasks:\n  \
         - {name: slice, count: 8, image: busybox, resources: {cpu: 1, nvidia.com/mig-1g.10gb: 1}, sim: {duration: 1h}}\n  \
         - {name: whole, count: 2, image: busybox, resources: {cpu: 1, nvidia.com/gpu: 1}, sim: {duration: 1h}}\n  \
         - {name: replica, count: 4, image: busybox, resources: {cpu: 1, nvidia.com/gpu.shared: 1}, sim: {duration: 1h}}\n",
    );
    let (code, _, err) = dev.cli(&["submit", &path]);
    assert_eq!(code, 0, "{err}");
    wait_for(&dev, "shared", "thirteen running", |s| count(s, "running") == 13);
    let all = tasks(&dev, "shared");
    let nodes_of = |name: &str| -> Vec<String> {
        all.iter()
            .filter(|t| t["name"] == name && t["state"] == "running")
            .map(|t| t["node"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    // Seven slices, seven MIG tasks, all on the MIG node.
    assert_eq!(nodes_of("slice").len(), 7, "{all:?}");
    assert!(nodes_of("slice").iter().all(|n| n.contains("-mig-")), "MIG tasks on the MIG node: {all:?}");
    // The MIG node is the cheapest, yet whole-GPU tasks never land on its slices.
    assert_eq!(nodes_of("whole").len(), 2, "{all:?}");
    assert!(nodes_of("whole").iter().all(|n| n.contains("-whole-")), "whole GPUs on the H100 node: {all:?}");
    assert!(nodes_of("replica").iter().all(|n| n.contains("-sliced-")), "replicas on the time-sliced node: {all:?}");
    let waiting: Vec<&Value> = all.iter().filter(|t| t["name"] == "slice" && t["state"] == "queued").collect();
    assert_eq!(waiting.len(), 1, "{all:?}");
    assert!(waiting[0]["reason"].as_str().unwrap_or_default().contains("nvidia.com/mig-1g.10gb"), "{:?}", waiting[0]);

    // Whole GPUs and a slice in one task are refused naming the field; nothing is submitted.
    let (_dir, bad) = task_file(
        "queue: policy\ntaskSet: mixed\ntasks:\n  \
         - {name: both, image: busybox, resources: {cpu: 1, nvidia.com/gpu: 1, nvidia.com/mig-1g.10gb: 1}}\n",
    );
    let (code, _, err) = dev.cli(&["submit", &bad]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("tasks[0].resources.nvidia.com/mig-1g.10gb: cannot be combined with nvidia.com/gpu"), "{err}");
    assert!(tasks(&dev, "mixed").is_empty());
}
