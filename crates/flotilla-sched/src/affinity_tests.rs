//! Node affinity and `sameValueOf` gangs, on small hand-built federations. Each test runs
//! both entry points (`schedule` and `schedule_backlog`), which must agree.

use std::collections::BTreeMap;

use flotilla_model::*;

use crate::test_support::both;
use crate::Decisions;

const GIB: u64 = 1 << 30;

fn node(cluster: &str, name: &str, gpus: u64, labels: &[(&str, &str)]) -> Node {
    Node {
        cluster: cluster.into(),
        name: name.into(),
        allocatable: Resources::new(64_000, 512 * GIB, gpus),
        reserved: Resources::default(),
        topology: Topology { region: "r".into(), zone: "z1".into(), rack: "rack1".into() },
        gpu_model: Some("H100".into()),
        instance_type: String::new(),
        spot: false,
        price_per_hour_usd: 10.0,
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        taints: vec![],
        unschedulable: false,
    }
}

fn task(id: u64, gpus: u64) -> SchedTask {
    SchedTask {
        id: TaskId(id),
        queue: "q".into(),
        priority: 100,
        preemptible: true,
        priority_class: "default".into(),
        submit_seq: id,
        resources: Resources::new(1_000, GIB, gpus),
        gang: None,
        placement: Placement::default(),
        avoid_nodes: vec![],
        avoid_clusters: vec![],
    }
}

fn req(key: &str, operator: AffinityOperator, values: &[&str]) -> NodeRequirement {
    NodeRequirement { key: key.into(), operator, values: values.iter().map(|v| v.to_string()).collect() }
}

fn requiring(id: u64, r: NodeRequirement) -> SchedTask {
    let mut t = task(id, 1);
    t.placement.affinity.required.push(r);
    t
}

fn label_gang(first: u64, size: u32, gpus: u64, key: &str) -> Vec<SchedTask> {
    (0..size)
        .map(|rank| {
            let mut t = task(first + u64::from(rank), gpus);
            t.gang = Some(GangRef {
                id: TaskId(first),
                size,
                rank,
                topology: TopologyLevel::Cluster,
                same_value_of: Some(key.into()),
                roles: Vec::new(),
            });
            t
        })
        .collect()
}

fn node_of(d: &Decisions, id: u64) -> Option<String> {
    d.leases.iter().find(|l| l.task == TaskId(id)).map(|l| l.node.to_string())
}

fn reason_of(d: &Decisions, id: u64) -> String {
    d.unscheduled.iter().find(|u| u.task == TaskId(id)).map(|u| u.reason.clone()).unwrap_or_default()
}

#[test]
fn required_in_places_only_on_a_node_with_one_of_the_values() {
    let nodes = vec![node("c", "a", 8, &[("pool", "cpu")]), node("c", "b", 8, &[("pool", "h100")]), node("c", "c", 8, &[])];
    let d = both(nodes, vec![requiring(1, req("pool", AffinityOperator::In, &["a100", "h100"]))]);
    assert_eq!(node_of(&d, 1).as_deref(), Some("c/b"));
}

#[test]
fn required_not_in_avoids_the_listed_values_and_takes_a_node_without_the_label() {
    // The tightest node is `a` (busy-looking labels aside, all equal): NotIn must skip it.
    let nodes = vec![node("c", "a", 8, &[("pool", "bad")]), node("c", "b", 8, &[])];
    let d = both(nodes, vec![requiring(1, req("pool", AffinityOperator::NotIn, &["bad"]))]);
    assert_eq!(node_of(&d, 1).as_deref(), Some("c/b"), "a node without the label satisfies NotIn");
}

#[test]
fn required_exists_and_does_not_exist_honour_the_label_s_presence_only() {
    let nodes = vec![node("c", "a", 8, &[]), node("c", "b", 8, &[("nvlink", "")])];
    let d = both(nodes.clone(), vec![requiring(1, req("nvlink", AffinityOperator::Exists, &[]))]);
    assert_eq!(node_of(&d, 1).as_deref(), Some("c/b"));
    let nodes = vec![node("c", "a", 8, &[("broken", "yes")]), node("c", "b", 8, &[])];
    let d = both(nodes, vec![requiring(2, req("broken", AffinityOperator::DoesNotExist, &[]))]);
    assert_eq!(node_of(&d, 2).as_deref(), Some("c/b"));
}

#[test]
fn a_task_whose_required_affinity_matches_no_node_stays_queued_and_the_reason_says_affinity() {
    let nodes = vec![node("c", "a", 8, &[("pool", "cpu")]), node("c", "b", 8, &[])];
    let d = both(nodes, vec![requiring(1, req("pool", AffinityOperator::In, &["h100"]))]);
    assert_eq!(node_of(&d, 1), None);
    let reason = reason_of(&d, 1);
    assert!(reason.contains("node affinity pool In (h100)"), "{reason}");
}

#[test]
fn the_reason_says_how_many_nodes_affinity_excluded_when_the_matching_ones_are_full() {
    let nodes = vec![node("c", "a", 1, &[("pool", "h100")]), node("c", "b", 8, &[])];
    let d = both(
        nodes,
        vec![requiring(1, req("pool", AffinityOperator::In, &["h100"])), requiring(2, req("pool", AffinityOperator::In, &["h100"]))],
    );
    assert_eq!(node_of(&d, 1).as_deref(), Some("c/a"));
    assert_eq!(node_of(&d, 2), None);
    let reason = reason_of(&d, 2);
    assert!(reason.contains("node affinity excluded 1 of 2 schedulable nodes"), "{reason}");
}

#[test]
fn preferred_weights_choose_the_better_matching_node_over_a_tighter_one() {
    // `tight` has 2 GPUs (packs a 1-GPU task tightest); `zone-a` matches weight 10,
    // `both` matches 10 + 50. The highest summed weight wins.
    let nodes =
        vec![node("c", "tight", 2, &[]), node("c", "zone-a", 8, &[("zone", "a")]), node("c", "both", 8, &[("zone", "a"), ("fast", "yes")])];
    let mut t = task(1, 1);
    t.placement.affinity.preferred = vec![
        PreferredRequirement { weight: 10, requirement: req("zone", AffinityOperator::In, &["a"]) },
        PreferredRequirement { weight: 50, requirement: req("fast", AffinityOperator::Exists, &[]) },
    ];
    let d = both(nodes, vec![t]);
    assert_eq!(node_of(&d, 1).as_deref(), Some("c/both"));
}

#[test]
fn a_preferred_term_never_makes_a_task_unplaceable() {
    let nodes = vec![node("c", "preferred", 1, &[("zone", "a")]), node("c", "other", 8, &[])];
    let mut t = task(1, 4);
    t.placement.affinity.preferred = vec![PreferredRequirement { weight: 100, requirement: req("zone", AffinityOperator::In, &["a"]) }];
    let d = both(nodes, vec![t]);
    assert_eq!(node_of(&d, 1).as_deref(), Some("c/other"), "the preferred node is too small, another fits");
}

#[test]
fn a_same_value_of_gang_lands_all_members_on_one_label_value() {
    // pool x has 2 nodes of 4 GPUs (8 in all), pool y one node of 8; node `bare` has
    // no label. A gang of 4 x 2 GPUs fits in x (best fit: fewest free GPUs) or y.
    let nodes = vec![
        node("c", "bare", 8, &[]),
        node("c", "x1", 4, &[("pool", "x")]),
        node("c", "x2", 4, &[("pool", "x")]),
        node("c", "y1", 8, &[("pool", "y")]),
    ];
    let d = both(nodes.clone(), label_gang(10, 4, 2, "pool"));
    let placed: Vec<String> = (10..14).filter_map(|id| node_of(&d, id)).collect();
    assert_eq!(placed.len(), 4, "{d:?}");
    let pools: std::collections::BTreeSet<&str> = placed
        .iter()
        .map(|p| nodes.iter().find(|n| format!("{}/{}", n.cluster, n.name) == *p).unwrap().labels.get("pool").map_or("", |v| v.as_str()))
        .collect();
    assert_eq!(pools.len(), 1, "all members on one value: {placed:?}");
    assert!(!pools.contains(""), "never on a node without the label: {placed:?}");
}

#[test]
fn a_same_value_of_gang_refuses_nodes_without_the_label() {
    // Plenty of room on unlabelled nodes, none on labelled ones.
    let nodes = vec![node("c", "bare1", 8, &[]), node("c", "bare2", 8, &[]), node("c", "x1", 1, &[("pool", "x")])];
    let d = both(nodes, label_gang(10, 2, 2, "pool"));
    assert!(d.leases.is_empty(), "{:?}", d.leases);
    let reason = reason_of(&d, 10);
    assert!(reason.contains("pool"), "{reason}");
}

#[test]
fn a_same_value_of_gang_that_fits_only_across_two_values_stays_queued() {
    let nodes = vec![node("c", "x1", 4, &[("pool", "x")]), node("c", "y1", 4, &[("pool", "y")])];
    let d = both(nodes, label_gang(10, 2, 4, "pool"));
    assert!(d.leases.is_empty(), "{:?}", d.leases);
    let reason = reason_of(&d, 11);
    assert!(reason.contains("one value of label pool"), "{reason}");
}

#[test]
fn a_same_value_of_gang_never_spans_clusters_with_the_same_value() {
    let nodes = vec![node("a", "x1", 4, &[("pool", "x")]), node("b", "x1", 4, &[("pool", "x")])];
    let d = both(nodes, label_gang(10, 2, 4, "pool"));
    assert!(d.leases.is_empty(), "the value is the same but the clusters differ: {:?}", d.leases);
}
