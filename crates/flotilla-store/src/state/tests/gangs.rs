//! Gangs of several templates (`gang.group`): one gang id and consecutive ranks across the
//! templates, and restarts of the whole gang when one member fails, is evicted or is lost.

use std::collections::BTreeSet;

use flotilla_model::RetryTemplate;

use super::*;

/// `prepare`, then 3 workers and a leading launcher of gang group `train` (the launcher's
/// template comes last in the file but leads), then `other`.
fn launcher_and_workers(worker_max_attempts: Option<u32>) -> Vec<TaskTemplate> {
    let mut worker = template("worker");
    worker.count = Some(3);
    worker.gang = Some(GangTemplate { group: Some("train".into()), topology: Some("rack".into()), ..Default::default() });
    worker.resources.insert("nvidia.com/gpu".into(), "2".into());
    worker.retry = Some(RetryTemplate { max_attempts: worker_max_attempts, ..Default::default() });
    let mut launcher = template("launcher");
    launcher.gang = Some(GangTemplate { group: Some("train".into()), leader: true, ..Default::default() });
    vec![template("prepare"), worker, launcher, template("other")]
}

fn states(s: &State, ids: &[TaskId]) -> Vec<TaskState> {
    ids.iter().map(|id| s.task(*id).unwrap().state).collect()
}

#[test]
fn a_gang_group_gets_one_gang_id_and_consecutive_ranks_across_its_templates_leader_first() {
    let mut s = setup();
    let ids = submit(&mut s, "r", &launcher_and_workers(None));
    assert_eq!(ids.len(), 6);
    let names: Vec<String> = ids.iter().map(|id| s.task(*id).unwrap().spec.name.clone()).collect();
    assert_eq!(names, ["prepare", "launcher", "worker", "worker", "worker", "other"]);
    for (rank, id) in ids[1..5].iter().enumerate() {
        let g = s.task(*id).unwrap().spec.gang.clone().unwrap();
        assert_eq!((g.id, g.size, g.rank, g.topology), (ids[1], 4, rank as u32, TopologyLevel::Rack));
        assert_eq!(g.roles.iter().map(|r| (r.name.as_str(), r.count)).collect::<Vec<_>>(), [("launcher", 1), ("worker", 3)]);
    }
    assert!(s.task(ids[0]).unwrap().spec.gang.is_none() && s.task(ids[5]).unwrap().spec.gang.is_none());
    // A leased subset is refused: the gang spans both templates.
    assert_eq!(lease_whole(&mut s, &ids[2..5]), CommandResult::Count(0));
    assert_eq!(lease_whole(&mut s, &ids[1..5]), CommandResult::Count(4));
    s.check_invariants().unwrap();
}

#[test]
fn a_failing_worker_of_a_mixed_gang_requeues_every_member_and_only_its_own_failure_counts() {
    let mut s = setup();
    let ids = submit(&mut s, "r", &launcher_and_workers(None));
    let gang = &ids[1..5];
    assert_eq!(lease_whole(&mut s, gang), CommandResult::Count(4));
    report(&mut s, 3, "a", ids[3], 1, failed(FailureKind::Error));
    assert_eq!(states(&s, gang), [TaskState::Queued; 4]);
    assert_eq!(s.active_in("a").count(), 0);
    let failures: Vec<u32> = gang.iter().map(|id| s.task(*id).unwrap().failures).collect();
    assert_eq!(failures, [0, 0, 1, 0], "only the failed worker's attempt counts");
    // Every member waits out the same backoff, and the others until their attempts are gone.
    let not_before: BTreeSet<u64> = gang.iter().map(|id| s.task(*id).unwrap().not_before_ms).collect();
    assert_eq!(not_before.len(), 1);
    for id in [ids[1], ids[2], ids[4]] {
        assert!(s.task(id).unwrap().stopping.is_some(), "member {id} must be shown gone before it is leased again");
    }
    s.check_invariants().unwrap();
}

#[test]
fn an_evicted_or_lost_member_of_a_mixed_gang_restarts_the_gang_without_using_an_attempt() {
    for kind in [FailureKind::Evicted, FailureKind::Lost] {
        let mut s = setup();
        let ids = submit(&mut s, "r", &launcher_and_workers(None));
        let gang = &ids[1..5];
        lease_whole(&mut s, gang);
        report(&mut s, 3, "a", ids[1], 1, failed(kind));
        assert_eq!(states(&s, gang), [TaskState::Queued; 4], "{kind:?}");
        assert!(gang.iter().all(|id| s.task(*id).unwrap().failures == 0), "{kind:?} is not the task's fault");
    }
    // A lost cluster requeues the whole gang too (it runs in one cluster).
    let mut s = setup();
    let ids = submit(&mut s, "r", &launcher_and_workers(None));
    lease_whole(&mut s, &ids[1..5]);
    apply(&mut s, 4, Command::ClusterLost { cluster: "a".into(), term: None });
    assert_eq!(states(&s, &ids[1..5]), [TaskState::Queued; 4]);
    s.check_invariants().unwrap();
}

#[test]
fn a_worker_out_of_attempts_fails_and_cancels_the_rest_of_its_mixed_gang() {
    let mut s = setup();
    let ids = submit(&mut s, "r", &launcher_and_workers(Some(1)));
    lease_whole(&mut s, &ids[1..5]);
    report(&mut s, 3, "a", ids[4], 1, failed(FailureKind::Error));
    assert_eq!(states(&s, &ids[1..5]), [TaskState::Cancelled, TaskState::Cancelled, TaskState::Cancelled, TaskState::Failed]);
    assert!(s.task(ids[1]).unwrap().reason.contains("gang member worker"), "{}", s.task(ids[1]).unwrap().reason);
    s.check_invariants().unwrap();
}
