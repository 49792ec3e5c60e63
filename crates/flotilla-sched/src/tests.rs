//! One test per scheduling rule, on small hand-built federations.

use std::collections::BTreeMap;

use flotilla_model::*;

use crate::{schedule, schedule_backlog, Backlog, Config, Decisions, Input, Running};

const GIB: u64 = 1 << 30;

pub(crate) fn node(cluster: &str, name: &str, gpus: u64, model: &str) -> Node {
    Node {
        cluster: cluster.into(),
        name: name.into(),
        allocatable: Resources::new(64_000, 512 * GIB, gpus),
        reserved: Resources::default(),
        topology: Topology { region: "r".into(), zone: "z1".into(), rack: "rack1".into() },
        gpu_model: (!model.is_empty()).then(|| model.to_string()),
        instance_type: String::new(),
        spot: false,
        price_per_hour_usd: 10.0,
        labels: BTreeMap::new(),
        taints: vec![],
        unschedulable: false,
    }
}

pub(crate) fn task(id: u64, queue: &str, gpus: u64) -> SchedTask {
    SchedTask {
        id: TaskId(id),
        queue: queue.into(),
        priority: 100,
        preemptible: true,
        priority_class: "default".into(),
        submit_seq: id,
        resources: Resources::new(gpus.max(1).saturating_mul(1_000), gpus.max(1).saturating_mul(GIB), gpus),
        gang: None,
        placement: Placement::default(),
        avoid_nodes: vec![],
        avoid_clusters: vec![],
    }
}

fn running(t: SchedTask, n: &Node) -> Running {
    Running { task: t, node: n.node_ref() }
}

fn input(queues: Vec<Queue>, nodes: Vec<Node>, queued: Vec<SchedTask>, running: Vec<Running>) -> Input {
    Input { queues, nodes, queued, running, config: Config::default(), held_queues: Default::default() }
}

fn node_of(d: &Decisions, id: u64) -> Option<String> {
    d.leases.iter().find(|l| l.task == TaskId(id)).map(|l| l.node.to_string())
}

fn reason_of(d: &Decisions, id: u64) -> String {
    d.unscheduled.iter().find(|u| u.task == TaskId(id)).map(|u| u.reason.clone()).unwrap_or_default()
}

fn gang(mut t: SchedTask, id: u64, size: u32, rank: u32, level: TopologyLevel) -> SchedTask {
    t.gang = Some(GangRef { id: TaskId(id), size, rank, topology: level, same_value_of: None, roles: Vec::new() });
    t
}

#[test]
fn a_task_goes_to_the_node_it_packs_tightest() {
    let (a, b) = (node("c", "a", 8, "H100"), node("c", "b", 8, "H100"));
    let busy: Vec<Running> = (0..6).map(|i| running(task(100 + i, "q", 1), &b)).collect();
    let d = schedule(&input(vec![Queue::new("q", 1.0)], vec![a, b], vec![task(1, "q", 2)], busy));
    assert_eq!(node_of(&d, 1).as_deref(), Some("c/b"));
}

#[test]
fn the_cheaper_node_wins_when_packing_is_equal() {
    let mut a = node("c", "a", 8, "H100");
    a.price_per_hour_usd = 30.0;
    let mut b = node("c", "b", 8, "H100");
    b.price_per_hour_usd = 12.0;
    let d = schedule(&input(vec![Queue::new("q", 1.0)], vec![a, b], vec![task(1, "q", 1)], vec![]));
    assert_eq!(node_of(&d, 1).as_deref(), Some("c/b"));
}

#[test]
fn the_preferred_cluster_wins_ties_and_node_order_breaks_the_rest() {
    let nodes = vec![node("a", "n", 8, "H100"), node("b", "n", 8, "H100")];
    let mut t = task(1, "q", 1);
    t.placement.preferred_cluster = Some("b".into());
    let d = schedule(&input(vec![Queue::new("q", 1.0)], nodes.clone(), vec![t, task(2, "q", 1)], vec![]));
    assert_eq!(node_of(&d, 1).as_deref(), Some("b/n"));
    // Task 2 then packs onto b (tighter) rather than the empty node of cluster a.
    assert_eq!(node_of(&d, 2).as_deref(), Some("b/n"));
    let d = schedule(&input(vec![Queue::new("q", 1.0)], nodes, vec![task(3, "q", 1)], vec![]));
    assert_eq!(node_of(&d, 3).as_deref(), Some("a/n"));
}

#[test]
fn hard_constraints_pick_the_only_matching_node() {
    let mut spot = node("c", "spot", 8, "H100");
    spot.spot = true;
    let mut tainted = node("c", "tainted", 8, "H100");
    tainted.taints = vec![Taint { key: "dedicated".into(), value: "x".into(), effect: "NoSchedule".into() }];
    let mut labelled = node("c", "labelled", 8, "H100");
    labelled.labels.insert("pool".into(), "fast".into());
    let mut cordoned = node("c", "cordoned", 8, "A100");
    cordoned.unschedulable = true;
    let other = node("d", "other", 8, "L4");
    let nodes = vec![spot, tainted, labelled, cordoned, other];

    let mut wants_spot = task(1, "q", 1);
    wants_spot.placement.spot = SpotPolicy::Required;
    let mut tolerates = task(2, "q", 1);
    tolerates.placement.tolerations =
        vec![Toleration { key: "dedicated".into(), operator: "Equal".into(), value: "x".into(), effect: String::new() }];
    tolerates.placement.node_selector.insert("pool".into(), "none".into());
    let mut selects = task(3, "q", 1);
    selects.placement.node_selector.insert("pool".into(), "fast".into());
    let mut l4 = task(4, "q", 1);
    l4.placement.gpu_model = Some("NVIDIA-L4".into());
    let mut cluster_d = task(5, "q", 1);
    cluster_d.placement.allowed_clusters = vec!["d".into()];
    let mut a100 = task(6, "q", 1);
    a100.placement.gpu_model = Some("A100".into());
    let mut no_spot = task(7, "q", 1);
    no_spot.placement.spot = SpotPolicy::Never;
    no_spot.placement.allowed_clusters = vec!["c".into()];

    let d = schedule(&input(vec![Queue::new("q", 1.0)], nodes, vec![wants_spot, tolerates, selects, l4, cluster_d, a100, no_spot], vec![]));
    assert_eq!(node_of(&d, 1).as_deref(), Some("c/spot"));
    assert_eq!(node_of(&d, 2), None, "selector pool=none matches nothing");
    assert_eq!(node_of(&d, 3).as_deref(), Some("c/labelled"));
    assert_eq!(node_of(&d, 4).as_deref(), Some("d/other"));
    assert_eq!(node_of(&d, 5).as_deref(), Some("d/other"));
    assert_eq!(node_of(&d, 6), None, "the only A100 node is cordoned");
    assert_eq!(node_of(&d, 7).as_deref(), Some("c/labelled"), "not spot, not tainted, in cluster c");
    assert!(reason_of(&d, 2).starts_with("no schedulable node matches"), "{}", reason_of(&d, 2));
}

#[test]
fn avoided_nodes_are_used_only_when_nothing_else_fits() {
    let nodes = vec![node("c", "a", 8, "H100"), node("c", "b", 8, "H100")];
    let mut t = task(1, "q", 1);
    t.avoid_nodes = vec![NodeRef { cluster: "c".into(), node: "a".into() }];
    let d = schedule(&input(vec![Queue::new("q", 1.0)], nodes.clone(), vec![t.clone()], vec![]));
    assert_eq!(node_of(&d, 1).as_deref(), Some("c/b"));
    t.avoid_clusters = vec!["c".into()];
    let d = schedule(&input(vec![Queue::new("q", 1.0)], nodes, vec![t], vec![]));
    assert!(node_of(&d, 1).is_some(), "avoidance is soft");
}

#[test]
fn reasons_say_what_is_missing() {
    let nodes = vec![node("c", "a", 8, "H100")];
    let mut huge = task(1, "q", 0);
    huge.resources = Resources::new(640_000, 1 << 40, 0);
    let mut h100 = task(2, "q", 8);
    h100.placement.gpu_model = Some("H100".into());
    let busy = running(task(9, "q", 1), &nodes[0]);
    let d = schedule(&input(vec![Queue::new("q", 1.0)], nodes, vec![huge, h100, task(3, "nope", 1)], vec![busy]));
    assert_eq!(reason_of(&d, 1), "needs cpu=640 memory=1Ti: larger than any node");
    assert_eq!(reason_of(&d, 2), "no node with 8 free H100 GPUs");
    assert_eq!(reason_of(&d, 3), "unknown queue nope");
}

#[test]
fn queue_limits_are_never_exceeded() {
    let nodes = vec![node("c", "a", 8, "H100"), node("c", "b", 8, "H100"), node("c", "c", 8, "H100")];
    let mut q = Queue::new("q", 1.0);
    q.limit.gpu = Some(16);
    let have = running(task(100, "q", 4), &nodes[0]);
    let queued: Vec<SchedTask> = (1..=5).map(|i| task(i, "q", 4)).collect();
    let d = schedule(&input(vec![q], nodes, queued, vec![have]));
    assert_eq!(d.leases.len(), 3, "4 running + 3 x 4 = 16");
    assert_eq!(d.queue_shares[0].allocated.gpu, 16);
    assert_eq!(reason_of(&d, 4), "queue limit gpu=16 reached");
}

#[test]
fn within_a_queue_higher_priority_then_earlier_submit_goes_first() {
    let nodes = vec![node("c", "a", 2, "H100")];
    let mut urgent = task(3, "q", 1);
    urgent.priority = 1000;
    urgent.submit_seq = 30;
    let (mut early, mut late) = (task(1, "q", 1), task(2, "q", 1));
    early.submit_seq = 5;
    late.submit_seq = 10;
    let d = schedule(&input(vec![Queue::new("q", 1.0)], nodes, vec![late, urgent, early], vec![]));
    let ids: Vec<u64> = d.leases.iter().map(|l| l.task.0).collect();
    assert_eq!(ids, vec![3, 1]);
}

#[test]
fn gangs_land_whole_in_one_rack_or_not_at_all() {
    let mut nodes = Vec::new();
    for (i, rack) in ["r1", "r1", "r2", "r2", "r2"].iter().enumerate() {
        let mut n = node("c", &format!("n{i}"), 8, "H100");
        n.topology.rack = rack.to_string();
        nodes.push(n);
    }
    let members: Vec<SchedTask> = (0..3).map(|r| gang(task(10 + r, "q", 8), 10, 3, r as u32, TopologyLevel::Rack)).collect();
    let d = schedule(&input(vec![Queue::new("q", 1.0)], nodes.clone(), members, vec![]));
    assert_eq!(d.leases.len(), 3);
    assert!(d.leases.iter().all(|l| ["c/n2", "c/n3", "c/n4"].contains(&l.node.to_string().as_str())), "{:?}", d.leases);

    let big: Vec<SchedTask> = (0..4).map(|r| gang(task(20 + r, "q", 8), 20, 4, r as u32, TopologyLevel::Rack)).collect();
    let mut h = big.clone();
    for t in &mut h {
        t.placement.gpu_model = Some("H100".into());
    }
    let d = schedule(&input(vec![Queue::new("q", 1.0)], nodes, h, vec![]));
    assert!(d.leases.is_empty());
    assert_eq!(reason_of(&d, 20), "no rack with room for gang of 4 x 8 H100 GPUs");
}

#[test]
fn incomplete_gangs_wait_with_a_reason() {
    let nodes = vec![node("c", "a", 8, "H100")];
    let members: Vec<SchedTask> = (0..2).map(|r| gang(task(10 + r, "q", 1), 10, 4, r as u32, TopologyLevel::Node)).collect();
    let d = schedule(&input(vec![Queue::new("q", 1.0)], nodes, members, vec![]));
    assert!(d.leases.is_empty());
    assert_eq!(reason_of(&d, 11), "gang 10: 2 of 4 members queued; waiting for the rest");
}

#[test]
fn node_level_gangs_share_one_node() {
    let nodes = vec![node("c", "a", 4, "H100"), node("c", "b", 8, "H100")];
    let members: Vec<SchedTask> = (0..4).map(|r| gang(task(10 + r, "q", 2), 10, 4, r as u32, TopologyLevel::Node)).collect();
    let d = schedule(&input(vec![Queue::new("q", 1.0)], nodes, members, vec![]));
    assert_eq!(d.leases.len(), 4);
    assert!(d.leases.iter().all(|l| l.node.node == "b"));
}

#[test]
fn two_saturating_queues_share_gpus_by_weight() {
    let nodes: Vec<Node> = (0..10).map(|i| node("c", &format!("n{i}"), 8, "H100")).collect();
    let mut queued = Vec::new();
    for i in 0..200 {
        queued.push(task(i * 2, "light", 1));
        queued.push(task(i * 2 + 1, "heavy", 1));
    }
    let d = schedule(&input(vec![Queue::new("light", 1.0), Queue::new("heavy", 3.0)], nodes, queued, vec![]));
    assert_eq!(d.leases.len(), 80);
    assert_eq!(d.queue_shares[0].allocated.gpu, 20);
    assert_eq!(d.queue_shares[1].allocated.gpu, 60);
    assert!((d.queue_shares[0].fair_share - 0.25).abs() < 1e-9);
    assert!((d.queue_shares[1].actual_share - 0.75).abs() < 1e-9);
}

#[test]
fn zero_weight_queues_get_only_leftovers() {
    let nodes = vec![node("c", "a", 8, "H100")];
    let queued: Vec<SchedTask> = (0..6).map(|i| task(i, "main", 1)).chain((10..20).map(|i| task(i, "scavenger", 1))).collect();
    let d = schedule(&input(vec![Queue::new("scavenger", 0.0), Queue::new("main", 1.0)], nodes, queued, vec![]));
    assert_eq!(d.queue_shares[1].allocated.gpu, 6);
    assert_eq!(d.queue_shares[0].allocated.gpu, 2);
    assert!((d.queue_shares[0].fair_share - 0.25).abs() < 1e-9, "{:?}", d.queue_shares);
}

#[test]
fn urgent_tasks_evict_the_lowest_priority_newest_first_and_start_at_once() {
    let n = node("c", "a", 2, "H100");
    let mut old_low = task(1, "batch", 1);
    old_low.priority = 0;
    let mut new_low = task(2, "batch", 1);
    new_low.priority = 0;
    let mut mid = task(3, "batch", 1);
    mid.priority = 50;
    let n2 = node("c", "b", 1, "H100");
    let mut urgent = task(10, "prod", 1);
    urgent.priority = 1000;
    let d = schedule(&input(
        vec![Queue::new("batch", 1.0), Queue::new("prod", 1.0)],
        vec![n.clone(), n2.clone()],
        vec![urgent],
        vec![running(old_low, &n), running(new_low, &n), running(mid, &n2)],
    ));
    assert_eq!(d.preemptions.len(), 1);
    assert_eq!(d.preemptions[0].task, TaskId(2));
    assert_eq!(node_of(&d, 10).as_deref(), Some("c/a"));
    assert!(d.preemptions[0].reason.contains("priority 1000 over 0"), "{}", d.preemptions[0].reason);
}

#[test]
fn non_preemptible_and_equal_priority_tasks_are_not_evicted_for_urgency() {
    let n = node("c", "a", 1, "H100");
    let mut fixed = task(1, "a", 1);
    fixed.priority = 0;
    fixed.preemptible = false;
    let mut urgent = task(10, "a", 1);
    urgent.priority = 1000;
    let d = schedule(&input(vec![Queue::new("a", 1.0)], vec![n.clone()], vec![urgent], vec![running(fixed, &n)]));
    assert!(d.preemptions.is_empty() && d.leases.is_empty());
}

#[test]
fn a_queue_below_its_fair_share_reclaims_but_not_below_the_victims_share() {
    let nodes: Vec<Node> = (0..2).map(|i| node("c", &format!("n{i}"), 4, "H100")).collect();
    let hog: Vec<Running> = (0..8).map(|i| running(task(100 + i, "hog", 1), &nodes[i as usize / 4])).collect();
    let queued: Vec<SchedTask> = (0..8).map(|i| task(i, "fair", 1)).chain((20..30).map(|i| task(i, "hog", 1))).collect();
    let d = schedule(&input(vec![Queue::new("hog", 1.0), Queue::new("fair", 1.0)], nodes, queued, hog));
    assert_eq!(d.preemptions.len(), 4, "{:?}", d.preemptions);
    assert_eq!(d.queue_shares[0].allocated.gpu, 4);
    assert_eq!(d.queue_shares[1].allocated.gpu, 4);
    // Newest victims first.
    let mut victims: Vec<u64> = d.preemptions.iter().map(|p| p.task.0).collect();
    victims.sort_unstable();
    assert_eq!(victims, vec![104, 105, 106, 107]);
}

/// Queue a holds 8 of 12 GPUs, b 3 (its fair share is 4) with its newest tasks, c 1; c
/// reclaims. `b_protected`: b's protected fraction.
fn reclaim_with_b_protected(b_protected: Option<f64>, default_protected: f64) -> Decisions {
    let nodes: Vec<Node> = (0..3).map(|i| node("c", &format!("n{i}"), 4, "H100")).collect();
    let mut held: Vec<Running> = (0..8).map(|i| running(task(100 + i, "a", 1), &nodes[i as usize / 4])).collect();
    held.extend((0..3).map(|i| running(task(200 + i, "b", 1), &nodes[2])));
    held.push(running(task(300, "c", 1), &nodes[2]));
    // b wants more than its fair share, on nodes that do not exist (so it cannot reclaim).
    let mut b_wants: Vec<SchedTask> = (0..4).map(|i| task(50 + i, "b", 1)).collect();
    for t in &mut b_wants {
        t.placement.node_selector.insert("pool".into(), "none".into());
    }
    let queued: Vec<SchedTask> = (0..8).map(|i| task(i, "c", 1)).chain(b_wants).collect();
    let mut b = Queue::new("b", 1.0);
    b.protected_fraction = b_protected;
    let mut input = input(vec![Queue::new("a", 1.0), b, Queue::new("c", 1.0)], nodes, queued, held);
    input.config.protected_fraction = default_protected;
    schedule(&input)
}

fn victims_of(d: &Decisions, queue_ids: std::ops::Range<u64>) -> usize {
    d.preemptions.iter().filter(|p| queue_ids.contains(&p.task.0)).count()
}

#[test]
fn reclaim_never_takes_a_queue_below_its_protected_share_and_the_default_protects_all_of_it() {
    let d = reclaim_with_b_protected(None, 1.0);
    assert_eq!((victims_of(&d, 100..108), victims_of(&d, 200..203)), (3, 0), "b below its fair share keeps it all: {:?}", d.preemptions);
    assert_eq!(d.queue_shares[2].allocated.gpu, 4, "c reaches its fair share");

    // Protected at half of its fair share (2 GPUs), b gives its newest task once: it keeps 2.
    for d in [reclaim_with_b_protected(Some(0.5), 1.0), reclaim_with_b_protected(None, 0.5)] {
        assert_eq!(victims_of(&d, 200..203), 1, "{:?}", d.preemptions);
        assert!(d.preemptions.iter().any(|p| p.task == TaskId(202)), "newest first: {:?}", d.preemptions);
        assert_eq!(d.queue_shares[1].allocated.gpu, 2, "b is not taken below 0.5 x 4 GPUs");
        assert_eq!(d.queue_shares[2].allocated.gpu, 4);
    }
}

#[test]
fn guarantees_are_never_preempted_below() {
    let n = node("c", "a", 4, "H100");
    let mut hog = Queue::new("hog", 1.0);
    hog.guarantee = Resources::new(0, 0, 3);
    let held: Vec<Running> = (0..4).map(|i| running(task(100 + i, "hog", 1), &n)).collect();
    let queued: Vec<SchedTask> = (0..4).map(|i| task(i, "fair", 1)).collect();
    let d = schedule(&input(vec![hog, Queue::new("fair", 1.0)], vec![n], queued, held));
    assert_eq!(d.preemptions.len(), 1, "only the GPU above the guarantee of 3");
}

#[test]
fn disruption_budgets_and_the_cycle_bound_limit_evictions() {
    let nodes: Vec<Node> = (0..4).map(|i| node("c", &format!("n{i}"), 4, "H100")).collect();
    let mut low = Queue::new("low", 1.0);
    low.disruption_budget = 3;
    let held: Vec<Running> = (0..16)
        .map(|i| {
            let mut t = task(100 + i, "low", 1);
            t.priority = 0;
            running(t, &nodes[i as usize / 4])
        })
        .collect();
    let queued: Vec<SchedTask> = (0..10).map(|i| task(i, "high", 1)).collect();
    let d = schedule(&input(vec![low.clone(), Queue::new("high", 1.0)], nodes.clone(), queued.clone(), held.clone()));
    assert_eq!(d.preemptions.len(), 3);
    low.disruption_budget = 100;
    let mut i = input(vec![low, Queue::new("high", 1.0)], nodes, queued, held);
    i.config.max_evictions_per_cycle = 2;
    let d = schedule(&i);
    assert_eq!(d.preemptions.len(), 2);
}

#[test]
fn a_running_gang_is_evicted_whole() {
    let nodes = vec![node("c", "a", 2, "H100"), node("c", "b", 2, "H100")];
    let mut members = Vec::new();
    for r in 0..2u32 {
        let mut t = gang(task(100 + u64::from(r), "low", 2), 100, 2, r, TopologyLevel::Cluster);
        t.priority = 0;
        members.push(running(t, &nodes[r as usize]));
    }
    let mut urgent = task(1, "high", 2);
    urgent.priority = 1000;
    let d = schedule(&input(vec![Queue::new("low", 1.0), Queue::new("high", 1.0)], nodes, vec![urgent], members));
    let mut victims: Vec<u64> = d.preemptions.iter().map(|p| p.task.0).collect();
    victims.sort_unstable();
    assert_eq!(victims, vec![100, 101]);
    assert_eq!(d.leases.len(), 1);
}

#[test]
fn nothing_is_evicted_for_a_task_that_still_would_not_fit() {
    let n = node("c", "a", 4, "H100");
    let mut low = task(100, "low", 1);
    low.priority = 0;
    let mut fixed = task(101, "low", 2);
    fixed.preemptible = false;
    let mut urgent = task(1, "high", 4);
    urgent.priority = 1000;
    let d = schedule(&input(
        vec![Queue::new("low", 1.0), Queue::new("high", 1.0)],
        vec![n.clone()],
        vec![urgent],
        vec![running(low, &n), running(fixed, &n)],
    ));
    assert!(d.preemptions.is_empty());
    assert!(d.leases.is_empty());
}

#[test]
fn identical_shapes_are_searched_once_when_they_fail() {
    let nodes = vec![node("c", "a", 1, "H100")];
    let queued: Vec<SchedTask> = (0..100).map(|i| task(i, "q", 1)).collect();
    let d = schedule(&input(vec![Queue::new("q", 1.0)], nodes, queued, vec![]));
    assert_eq!(d.leases.len(), 1);
    assert_eq!(d.stats.shapes_skipped, 98);
    assert_eq!(d.unscheduled.len(), 99);
}

#[test]
fn cycle_bounds_on_leases_and_reasons_hold() {
    let nodes = vec![node("c", "a", 8, "H100")];
    let mut queued: Vec<SchedTask> = (0..6).map(|i| task(i, "q", 1)).collect();
    queued.push(task(50, "x", 1));
    queued.push(task(51, "y", 1));
    let mut i = input(vec![Queue::new("q", 1.0)], nodes, queued, vec![]);
    i.config.max_leases_per_cycle = 4;
    i.config.max_reasons = 1;
    let d = schedule(&i);
    assert_eq!(d.leases.len(), 4);
    assert_eq!(d.unscheduled.len(), 4);
    let distinct: std::collections::BTreeSet<&str> = d.unscheduled.iter().map(|u| u.reason.as_str()).collect();
    assert_eq!(distinct.len(), 2, "one kept reason plus the generic one: {distinct:?}");
}

#[test]
fn odd_inputs_do_not_panic() {
    let mut bad_queue = Queue::new("nan", f64::NAN);
    bad_queue.guarantee = Resources::new(u64::MAX, u64::MAX, u64::MAX);
    let queues = vec![Queue::new("q", 0.0), bad_queue, Queue::new("q", 5.0)];
    let mut huge = task(1, "q", u64::MAX);
    huge.resources.extended.insert("example.com/fpga".into(), 3);
    let dup = task(2, "q", 1);
    let lone_gang = gang(task(3, "nan", 1), 3, 0, 0, TopologyLevel::Zone);
    let d = schedule(&input(queues.clone(), vec![], vec![huge.clone(), dup.clone(), dup.clone(), lone_gang.clone()], vec![]));
    assert_eq!(d.queue_shares.len(), 3);
    assert_eq!(d.unscheduled.len(), 3);
    let mut n = node("c", "a", 8, "H100");
    n.price_per_hour_usd = f64::NAN;
    n.reserved = Resources::new(u64::MAX, 0, 0);
    let ghost = Running { task: task(9, "ghost", 1), node: NodeRef { cluster: "x".into(), node: "y".into() } };
    let d = schedule(&input(queues, vec![n.clone(), n], vec![huge, dup, lone_gang], vec![ghost]));
    assert!(d.leases.is_empty());
}

#[test]
fn the_same_input_gives_the_same_decisions() {
    let nodes: Vec<Node> = (0..6).map(|i| node(if i % 2 == 0 { "a" } else { "b" }, &format!("n{i}"), 8, "H100")).collect();
    let queued: Vec<SchedTask> = (0..40).map(|i| task(i, if i % 3 == 0 { "x" } else { "y" }, 1 + i % 4)).collect();
    let i = input(vec![Queue::new("x", 1.0), Queue::new("y", 2.0)], nodes, queued, vec![]);
    assert_eq!(schedule(&i), schedule(&i));
}

#[test]
fn a_held_queue_takes_no_lease_its_tasks_get_the_reason_and_others_use_the_room() {
    let n = node("c", "a", 8, "H100");
    let mut i = input(vec![Queue::new("held", 1.0), Queue::new("q", 1.0)], vec![n], vec![task(1, "held", 4), task(2, "q", 4)], vec![]);
    i.held_queues.insert("held".into(), "daily budget $5.00 spent; resumes at 00:00 UTC".into());
    let mut backlog = Backlog::default();
    for t in &i.queued {
        backlog.insert(t.clone());
    }
    for d in [schedule(&i), schedule_backlog(&Input { queued: Vec::new(), ..i.clone() }, &backlog)] {
        assert_eq!(node_of(&d, 1), None, "the held queue's task is not leased");
        assert_eq!(node_of(&d, 2).as_deref(), Some("c/a"), "another queue still gets the room");
    }
    assert_eq!(reason_of(&schedule(&i), 1), "daily budget $5.00 spent; resumes at 00:00 UTC");
}

/// Both paths' decisions on `i`: the full cycle and the backlog cycle.
fn both_paths(i: &Input) -> [Decisions; 2] {
    let mut backlog = Backlog::default();
    for t in &i.queued {
        backlog.insert(t.clone());
    }
    [schedule(i), schedule_backlog(&Input { queued: Vec::new(), ..i.clone() }, &backlog)]
}

#[test]
fn a_node_runs_no_more_pods_than_it_reports_counting_others_and_running_tasks() {
    // Room for 64 CPUs of tiny tasks, but the kubelet runs at most 4 pods, one of them a
    // daemon set's, and one of ours already runs: room for 2 more. The next node takes the rest.
    let mut full = node("c", "a", 0, "");
    full.allocatable.extended.insert(PODS_RESOURCE.into(), 4);
    full.reserved.extended.insert(PODS_RESOURCE.into(), 1);
    let mut other = node("c", "b", 0, "");
    other.allocatable.extended.insert(PODS_RESOURCE.into(), 3);
    let tiny = |id| {
        let mut t = task(id, "q", 0);
        t.resources = Resources::new(10, 1 << 20, 0);
        t
    };
    let queued: Vec<SchedTask> = (1..=8).map(tiny).collect();
    let i = input(vec![Queue::new("q", 1.0)], vec![full.clone(), other], queued, vec![running(tiny(100), &full)]);
    for d in both_paths(&i) {
        let on = |n: &str| d.leases.iter().filter(|l| l.node.node == n).count();
        assert_eq!((on("a"), on("b")), (2, 3), "{:?}", d.leases);
        assert_eq!(d.leases.len(), 5);
        let reason = reason_of(&d, 6);
        assert!(reason.ends_with("(2 of the 2 nodes large enough run their most pods)"), "{reason:?}");
    }
}
