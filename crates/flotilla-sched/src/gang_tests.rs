//! Gangs of several templates (a launcher and its workers): members with resources of their
//! own, placed whole in one domain or not at all. Each test runs both entry points
//! (`schedule` and `schedule_backlog`), which must agree.

use std::collections::BTreeSet;

use flotilla_model::*;

use crate::test_support::both;
use crate::Decisions;

const GIB: u64 = 1 << 30;

fn node(rack: &str, name: &str, cpus: u64, gpus: u64) -> Node {
    Node {
        cluster: "c".into(),
        name: name.into(),
        allocatable: Resources::new(cpus * 1000, 512 * GIB, gpus),
        reserved: Resources::default(),
        topology: Topology { region: "r".into(), zone: "z1".into(), rack: rack.into() },
        gpu_model: (gpus > 0).then(|| "H100".into()),
        instance_type: String::new(),
        spot: false,
        price_per_hour_usd: 10.0,
        labels: Default::default(),
        taints: vec![],
        unschedulable: false,
    }
}

/// A gang of `launchers` CPU-only members and `workers` members of `worker_gpus` GPUs each,
/// ids from `first`, launchers first (the leader is rank 0).
fn mixed_gang(first: u64, launchers: u32, workers: u32, worker_gpus: u64) -> Vec<SchedTask> {
    let size = launchers + workers;
    let roles = vec![GangRole { name: "launcher".into(), count: launchers }, GangRole { name: "worker".into(), count: workers }];
    (0..size)
        .map(|rank| {
            let resources = if rank < launchers { Resources::new(2_000, 4 * GIB, 0) } else { Resources::new(8_000, 64 * GIB, worker_gpus) };
            SchedTask {
                id: TaskId(first + u64::from(rank)),
                queue: "q".into(),
                priority: 100,
                preemptible: true,
                priority_class: "default".into(),
                submit_seq: first,
                resources,
                gang: Some(GangRef {
                    id: TaskId(first),
                    size,
                    rank,
                    topology: TopologyLevel::Rack,
                    same_value_of: None,
                    roles: roles.clone(),
                }),
                placement: Placement::default(),
                avoid_nodes: vec![],
                avoid_clusters: vec![],
            }
        })
        .collect()
}

fn node_of(d: &Decisions, id: u64) -> Option<String> {
    d.leases.iter().find(|l| l.task == TaskId(id)).map(|l| l.node.node.clone())
}

#[test]
fn a_launcher_and_gpu_workers_are_placed_whole_in_the_one_rack_that_holds_them() {
    // rack a: two 8-GPU nodes and a CPU node; rack b: one 8-GPU node (too few GPUs).
    let nodes = vec![node("a", "a-gpu-1", 16, 8), node("a", "a-gpu-2", 16, 8), node("a", "a-cpu", 16, 0), node("b", "b-gpu-1", 64, 8)];
    let d = both(nodes, mixed_gang(1, 1, 4, 4));
    assert_eq!(d.leases.len(), 5, "every member leased: {d:?}");
    // The launcher takes the CPU node, so the GPU nodes stay whole for GPU work.
    assert_eq!(node_of(&d, 1).as_deref(), Some("a-cpu"));
    for w in 2..=5 {
        assert!(node_of(&d, w).is_some_and(|n| n.starts_with("a-gpu")), "worker {w} on {:?}", node_of(&d, w));
    }
}

#[test]
fn a_mixed_gang_that_fits_only_across_racks_is_not_placed_at_all() {
    // Each rack holds two workers and the launcher; the gang has three workers.
    let nodes = vec![node("a", "a-gpu", 64, 8), node("b", "b-gpu", 64, 8)];
    let d = both(nodes, mixed_gang(1, 1, 3, 4));
    assert!(d.leases.is_empty(), "no member may be leased: {:?}", d.leases);
    let reasons: BTreeSet<String> = d.unscheduled.iter().map(|u| u.reason.clone()).collect();
    assert_eq!(d.unscheduled.len(), 4, "every member gets a reason: {reasons:?}");
    assert!(reasons.iter().all(|r| r.contains("no rack with room for gang of 4")), "{reasons:?}");
}

#[test]
fn the_gang_shape_distinguishes_member_mixes_so_a_failed_mix_does_not_skip_another() {
    // One rack of 16 GPUs. Gang 1 (earlier): 1 launcher + 3 workers of 8 GPUs (24): too big.
    // Gang 101: 2 launchers + 2 workers (16): the same size and the same two member shapes,
    // in another mix; it fits and must still be tried after gang 1 failed.
    let nodes = vec![node("a", "a-gpu-1", 32, 8), node("a", "a-gpu-2", 32, 8)];
    let mut queued = mixed_gang(1, 1, 3, 8);
    queued.extend(mixed_gang(101, 2, 2, 8));
    let d = both(nodes, queued);
    let leased: BTreeSet<u64> = d.leases.iter().map(|l| l.task.0).collect();
    assert_eq!(leased, BTreeSet::from([101, 102, 103, 104]));
}

#[test]
fn members_that_disagree_on_their_gangs_roles_are_not_placed_and_say_why() {
    let nodes = vec![node("a", "a-gpu-1", 64, 8), node("a", "a-gpu-2", 64, 8)];
    let mut queued = mixed_gang(1, 1, 2, 1);
    queued[2].gang.as_mut().unwrap().roles[1].name = "other".into();
    let d = both(nodes, queued);
    assert!(d.leases.is_empty());
    let reason = d.unscheduled.iter().find(|u| u.task == TaskId(1)).map(|u| u.reason.clone()).unwrap_or_default();
    assert!(reason.contains("members disagree on queue, size, roles or topology"), "{reason}");
}
