//! Cordon and drain commands.

use super::*;

#[test]
fn cordon_uncordon_and_drain_of_an_unknown_cluster_are_not_found_and_change_nothing() {
    let mut s = setup();
    let before = s.clone();
    for c in [
        Command::CordonCluster { cluster: "nope".into(), cordoned: true },
        Command::CordonCluster { cluster: "nope".into(), cordoned: false },
        Command::DrainCluster { cluster: "nope".into() },
    ] {
        assert!(matches!(apply(&mut s, 5, c), CommandResult::Rejected { kind: RejectKind::NotFound, .. }));
    }
    assert_eq!(s.clusters, before.clusters);
    assert!(s.cluster_drain("nope").is_none());
}

#[test]
fn cordon_and_drain_are_idempotent_and_uncordon_ends_a_drain() {
    let mut s = setup();
    for _ in 0..2 {
        assert_eq!(apply(&mut s, 5, Command::CordonCluster { cluster: "a".into(), cordoned: true }), CommandResult::Ok);
        assert_eq!(s.cluster_drain("a").unwrap().state, DrainState::Cordoned);
    }
    let changed = s.cluster("a").unwrap().changed_ms;
    for now in [6, 7] {
        assert_eq!(apply(&mut s, now, Command::DrainCluster { cluster: "a".into() }), CommandResult::Ok);
        assert_eq!(s.cluster_drain("a").unwrap().state, DrainState::Drained, "nothing runs in a");
    }
    assert_eq!(s.cluster("a").unwrap().changed_ms, 6, "the repeated drain changed nothing (was {changed})");
    assert_eq!(s.draining_clusters().collect::<Vec<_>>(), vec!["a"]);
    for _ in 0..2 {
        assert_eq!(apply(&mut s, 8, Command::CordonCluster { cluster: "a".into(), cordoned: false }), CommandResult::Ok);
        assert_eq!(s.cluster_drain("a").unwrap().state, DrainState::Schedulable);
        assert!(!s.is_cordoned("a"));
    }
    assert_eq!(s.draining_clusters().count(), 0);
    assert_eq!(s.cluster_drain("b").unwrap().state, DrainState::Schedulable, "other clusters are untouched");
}

#[test]
fn a_cordoned_cluster_gets_no_lease_and_its_running_tasks_stay() {
    let mut s = setup();
    let ids = submit(&mut s, "r", &[TaskTemplate { count: Some(2), ..template("t") }]);
    assert_eq!(lease(&mut s, 2, ids[0], 1, node("a", "n1")), CommandResult::Count(1));
    apply(&mut s, 3, Command::CordonCluster { cluster: "a".into(), cordoned: true });
    assert_eq!(lease(&mut s, 4, ids[1], 1, node("a", "n1")), CommandResult::Count(0), "a lease to a cordoned cluster is dropped");
    assert_eq!(s.task(ids[1]).unwrap().state, TaskState::Queued);
    assert_eq!(s.task(ids[0]).unwrap().state, TaskState::Leased, "cordon stops nothing");
    assert_eq!(lease(&mut s, 4, ids[1], 1, node("b", "n1")), CommandResult::Count(1), "other clusters still take leases");
    s.check_invariants().unwrap();
}

#[test]
fn a_draining_cluster_counts_its_tasks_left_and_names_the_non_preemptible_ones() {
    let mut s = setup();
    let critical = TaskTemplate { priority_class: Some("critical".into()), ..template("crit") };
    let ids = submit(&mut s, "r", &[template("p"), critical]);
    lease(&mut s, 2, ids[0], 1, node("a", "n1"));
    lease(&mut s, 2, ids[1], 1, node("a", "n1"));
    apply(&mut s, 3, Command::DrainCluster { cluster: "a".into() });
    let d = s.cluster_drain("a").unwrap();
    assert_eq!((d.state, d.tasks_left, d.waiting_for.clone()), (DrainState::Draining, 2, vec![ids[1]]));
    // The leader's drain preemption: back to the queue as a new attempt, not a failure.
    let preempt = PreemptDecision { task: ids[0], attempt: 1, reason: "cluster a is draining".into() };
    apply(&mut s, 4, Command::Schedule(ScheduleDecisions { preemptions: vec![preempt], ..Default::default() }));
    let t = s.task(ids[0]).unwrap();
    assert_eq!((t.state, t.failures), (TaskState::Queued, 0));
    assert_eq!(s.cluster_drain("a").unwrap().tasks_left, 2, "the stopped attempt counts until its executor shows it gone");
    apply(&mut s, 5, Command::AttemptsGone { cluster: "a".into(), attempts: vec![(ids[0], 1)] });
    report(&mut s, 6, "a", ids[1], 1, AttemptStatus::Succeeded);
    assert_eq!(s.cluster_drain("a").unwrap().state, DrainState::Drained);
    assert_eq!(lease(&mut s, 7, ids[0], 2, node("b", "n1")), CommandResult::Count(1), "the moved task runs elsewhere as attempt 2");
    s.check_invariants().unwrap();
}
