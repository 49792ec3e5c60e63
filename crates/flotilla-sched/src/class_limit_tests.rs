//! Queue limits per priority class, on small hand-built federations. Each test runs both
//! entry points (`schedule` and `schedule_backlog`, through `test_support::both_on`), which must agree.

use flotilla_model::*;

use crate::test_support::both_on as both;
use crate::{Decisions, Running};

fn node(name: &str, gpus: u64) -> Node {
    crate::tests::node("c", name, gpus, "H100")
}

/// A task of queue `q` and class `class` (priority 500 and not preemptible for `urgent`).
fn task(id: u64, class: &str, gpus: u64) -> SchedTask {
    let mut t = crate::tests::task(id, "q", gpus);
    (t.priority, t.preemptible, t.priority_class) = if class == "urgent" { (500, false, class.into()) } else { (100, true, class.into()) };
    t
}

fn gang(first: u64, class: &str, size: u32, gpus: u64) -> Vec<SchedTask> {
    (0..size)
        .map(|rank| {
            let mut t = task(first + u64::from(rank), class, gpus);
            t.gang = Some(GangRef { id: TaskId(first), size, rank, topology: TopologyLevel::Cluster, same_value_of: None, roles: vec![] });
            t
        })
        .collect()
}

fn queue(limits: &[&str]) -> Queue {
    let mut q = Queue::new("q", 1.0);
    q.priority_class_limits = limits.iter().map(|l| ClassLimit::parse(l).unwrap()).collect();
    q
}

fn leased(d: &Decisions) -> Vec<u64> {
    let mut ids: Vec<u64> = d.leases.iter().map(|l| l.task.0).collect();
    ids.sort_unstable();
    ids
}

fn reason_of(d: &Decisions, id: u64) -> String {
    d.unscheduled.iter().find(|u| u.task == TaskId(id)).map(|u| u.reason.clone()).unwrap_or_default()
}

#[test]
fn a_class_gets_no_more_than_its_fraction_of_the_pool_while_other_classes_go_on() {
    // 16 GPUs in all: 25% is 4.
    let queued: Vec<SchedTask> = (1..=6).map(|i| task(i, "urgent", 1)).chain((7..=9).map(|i| task(i, "default", 1))).collect();
    let d = both(vec![queue(&["urgent:gpu=25%"])], vec![node("a", 8), node("b", 8)], queued, vec![]);
    assert_eq!(leased(&d), [1, 2, 3, 4, 7, 8, 9]);
    assert_eq!(reason_of(&d, 5), "queue limit gpu=25% of pool (4) for class urgent reached");
    assert_eq!(d.queue_shares[0].allocated.gpu, 7);
}

#[test]
fn running_tasks_of_the_class_count_against_its_limit_and_cpu_limits_count_cpu() {
    let n = node("a", 8);
    let busy =
        vec![Running { task: task(100, "urgent", 1), node: n.node_ref() }, Running { task: task(101, "urgent", 1), node: n.node_ref() }];
    let queued = vec![task(1, "urgent", 1), task(2, "urgent", 1), task(3, "urgent", 0)];
    // Each task holds 1 CPU: 2 running + 1 new reach cpu=3.
    let d = both(vec![queue(&["urgent:gpu=4", "urgent:cpu=3"])], vec![n], queued, busy);
    assert_eq!(leased(&d), [1]);
    assert_eq!(reason_of(&d, 2), "queue limit cpu=3 for class urgent reached");
}

#[test]
fn a_gang_is_checked_with_every_member_counted() {
    let mut queued = gang(1, "urgent", 2, 2);
    queued.extend(gang(11, "urgent", 3, 1));
    let d = both(vec![queue(&["urgent:gpu=3"])], vec![node("a", 8)], queued, vec![]);
    assert_eq!(leased(&d), [11, 12, 13], "the 4-GPU gang would pass the limit of 3; the 3-GPU gang fits it");
    assert_eq!(reason_of(&d, 1), "queue limit gpu=3 for class urgent reached");
    assert_eq!(reason_of(&d, 2), reason_of(&d, 1), "every member gets the reason");
}

#[test]
fn a_preemptor_at_its_class_limit_evicts_nothing() {
    let n = node("a", 4);
    let mut busy: Vec<Running> = (100..103).map(|i| Running { task: task(i, "best-effort", 1), node: n.node_ref() }).collect();
    busy[0].task.priority = 0;
    busy.push(Running { task: task(103, "urgent", 1), node: n.node_ref() });
    let queued = vec![task(1, "urgent", 1)];
    let limited = both(vec![queue(&["urgent:gpu=1"])], vec![n.clone()], queued.clone(), busy.clone());
    assert!(limited.leases.is_empty() && limited.preemptions.is_empty(), "{limited:?}");
    assert_eq!(reason_of(&limited, 1), "queue limit gpu=1 for class urgent reached");
    // With room under its limit, the same task does preempt.
    let room = both(vec![queue(&["urgent:gpu=2"])], vec![n], queued, busy);
    assert_eq!((leased(&room), room.preemptions.len()), (vec![1], 1));
}

#[test]
fn classes_of_one_priority_and_shape_are_limited_apart() {
    // `a` and `b` share priority and shape: a limit on `a` must not stop `b`'s tasks, on
    // the backlog path too (where a group that hits a limit is skipped whole).
    let queued = vec![task(1, "a", 1), task(2, "a", 1), task(3, "b", 1), task(4, "a", 1), task(5, "b", 1)];
    let d = both(vec![queue(&["a:gpu=1"])], vec![node("n", 8)], queued, vec![]);
    assert_eq!(leased(&d), [1, 3, 5]);
    assert_eq!(reason_of(&d, 4), "queue limit gpu=1 for class a reached");
}

#[test]
fn a_limit_of_another_queue_or_class_changes_nothing() {
    let mut other = queue(&["urgent:gpu=1"]);
    other.name = "other".into();
    let queued: Vec<SchedTask> = (1..=3).map(|i| task(i, "urgent", 1)).collect();
    let d = both(vec![queue(&["default:gpu=1"]), other], vec![node("n", 8)], queued, vec![]);
    assert_eq!(leased(&d), [1, 2, 3]);
}
