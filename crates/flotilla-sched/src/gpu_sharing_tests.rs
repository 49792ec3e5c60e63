//! Shared GPUs: MIG slices and time-sliced replicas are placed only where a node offers them
//! with room, and count in fair share by the fraction of a GPU they are.

use flotilla_model::*;

use crate::test_support::both_on;
use crate::tests::{node, task};
use crate::Running;

const MIG_1G: &str = "nvidia.com/mig-1g.10gb";

fn mig_node(name: &str, slices: u64) -> Node {
    let mut n = node("c", name, 0, "");
    n.allocatable.extended.insert(MIG_1G.into(), slices);
    n.labels.insert(LABEL_MIG_STRATEGY.into(), "mixed".into());
    n
}

fn shared_node(name: &str, gpus: u64, replicas_per_gpu: u64) -> Node {
    let mut n = node("c", name, 0, "");
    n.allocatable.extended.insert(SHARED_GPU_RESOURCE.into(), gpus * replicas_per_gpu);
    n.labels.insert(LABEL_GPU_REPLICAS.into(), replicas_per_gpu.to_string());
    n
}

fn wanting(id: u64, queue: &str, resource: &str, count: u64) -> SchedTask {
    let mut t = task(id, queue, 0);
    t.resources.extended.insert(resource.into(), count);
    t
}

fn running_on(t: SchedTask, n: &Node) -> Running {
    Running { task: t, node: n.node_ref() }
}

fn share_of(d: &crate::Decisions, queue: &str) -> f64 {
    d.queue_shares.iter().find(|s| s.queue == queue).map(|s| s.actual_share).unwrap_or(-1.0)
}

#[test]
fn mig_tasks_fill_the_slices_a_node_reports_and_whole_gpu_tasks_never_land_there() {
    let nodes = vec![mig_node("mig", 7), node("c", "gpu", 2, "H100")];
    let mut queued: Vec<SchedTask> = (1..=8).map(|i| wanting(i, "q", MIG_1G, 1)).collect();
    queued.extend([task(20, "q", 1), task(21, "q", 1)]);
    let d = both_on(vec![Queue::new("q", 1.0)], nodes, queued, vec![]);
    let on = |node: &str| d.leases.iter().filter(|l| l.node.node == node).map(|l| l.task.0).collect::<Vec<_>>();
    assert_eq!(on("mig").len(), 7, "seven slices, seven MIG tasks: {:?}", d.leases);
    assert!(on("mig").iter().all(|t| *t <= 8), "only MIG tasks on the MIG node: {:?}", on("mig"));
    assert_eq!(on("gpu"), vec![20, 21], "whole-GPU tasks on the GPU node only");
    let waiting: Vec<_> = d.unscheduled.iter().filter(|u| u.task.0 <= 8).collect();
    assert_eq!(waiting.len(), 1, "the eighth MIG task waits: {:?}", d.unscheduled);
    assert!(waiting[0].reason.contains(MIG_1G), "the reason names the resource: {}", waiting[0].reason);
}

#[test]
fn a_mig_task_waits_when_no_node_reports_its_profile() {
    let d = both_on(vec![Queue::new("q", 1.0)], vec![mig_node("mig", 7)], vec![wanting(1, "q", "nvidia.com/mig-3g.40gb", 1)], vec![]);
    assert!(d.leases.is_empty(), "{:?}", d.leases);
    assert!(d.unscheduled[0].reason.contains("nvidia.com/mig-3g.40gb"), "{}", d.unscheduled[0].reason);
}

#[test]
fn seven_one_g_slices_count_as_one_gpu_and_order_queues_by_their_fraction() {
    // Queue a runs 14 slices (two GPUs' worth), b one whole GPU. Counted by fraction, b is
    // below a and takes the one free GPU; counted without, a would look GPU-free and go first.
    let (mig, gpu) = (mig_node("mig", 14), node("c", "gpu", 2, "H100"));
    let mut running: Vec<Running> = (100..114).map(|i| running_on(wanting(i, "a", MIG_1G, 1), &mig)).collect();
    running.push(running_on(task(200, "b", 1), &gpu));
    let d = both_on(vec![Queue::new("a", 1.0), Queue::new("b", 1.0)], vec![mig, gpu], vec![task(1, "a", 1), task(2, "b", 1)], running);
    assert_eq!(d.leases.iter().map(|l| l.task.0).collect::<Vec<_>>(), vec![2], "the queue below in GPU fraction goes first");
    let total_milli = 14.0 * 143.0 + 2000.0;
    assert!((share_of(&d, "a") - 14.0 * 143.0 / total_milli).abs() < 1e-9, "{:?}", d.queue_shares);
    assert!((share_of(&d, "b") - 2000.0 / total_milli).abs() < 1e-9, "{:?}", d.queue_shares);
}

#[test]
fn a_queue_holding_every_slice_and_replica_has_a_share_of_one() {
    let (mig, shared) = (mig_node("mig", 7), shared_node("ts", 2, 4));
    let mut running: Vec<Running> = (100..107).map(|i| running_on(wanting(i, "a", MIG_1G, 1), &mig)).collect();
    running.extend((200..208).map(|i| running_on(wanting(i, "a", SHARED_GPU_RESOURCE, 1), &shared)));
    let mut quiet = task(1, "a", 0);
    quiet.resources = Resources::new(1, 1, 0);
    let d = both_on(vec![Queue::new("a", 1.0)], vec![mig, shared], vec![quiet], running);
    assert!((share_of(&d, "a") - 1.0).abs() < 1e-9, "{:?}", d.queue_shares);
}

#[test]
fn a_time_sliced_replica_counts_as_one_over_the_replicas_per_gpu() {
    // Two GPUs shared four ways (8 replicas) beside two whole GPUs: four replicas are one GPU,
    // a quarter of the federation's four.
    let (shared, gpu) = (shared_node("ts", 2, 4), node("c", "gpu", 2, "H100"));
    let running: Vec<Running> = (100..104).map(|i| running_on(wanting(i, "a", SHARED_GPU_RESOURCE, 1), &shared)).collect();
    let mut queued: Vec<SchedTask> = (1..=5).map(|i| wanting(i, "a", SHARED_GPU_RESOURCE, 1)).collect();
    queued.push(task(10, "b", 1));
    let d = both_on(vec![Queue::new("a", 1.0), Queue::new("b", 1.0)], vec![shared, gpu], queued, running);
    let on_ts = d.leases.iter().filter(|l| l.node.node == "ts").count();
    assert_eq!(on_ts, 4, "four replicas were left: {:?}", d.leases);
    assert!((share_of(&d, "a") - 0.5).abs() < 1e-9, "eight replicas are two of four GPUs: {:?}", d.queue_shares);
    assert!((share_of(&d, "b") - 0.25).abs() < 1e-9, "{:?}", d.queue_shares);
}
