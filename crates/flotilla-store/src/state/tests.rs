use flotilla_model::{
    expand, AttemptStatus, FailureKind, GangTemplate, NodeRef, SubmitLimits, TaskSpec, TaskState, TaskTemplate, TopologyLevel,
};

use super::records::state_index;
use super::*;

fn template(name: &str) -> TaskTemplate {
    TaskTemplate {
        name: name.into(),
        image: "busybox".into(),
        resources: [("cpu".to_string(), "1".to_string()), ("memory".to_string(), "1Gi".to_string())].into(),
        ..Default::default()
    }
}

fn specs(templates: &[TaskTemplate]) -> Vec<TaskSpec> {
    expand("q", "s", templates, &SubmitLimits::default()).unwrap()
}

fn apply(state: &mut State, now_ms: u64, c: Command) -> CommandResult {
    state.apply(&Request { now_ms, commands: vec![c] }).results.remove(0)
}

fn setup() -> State {
    let mut s = State::with_limits(Limits::default());
    assert_eq!(apply(&mut s, 0, Command::PutQueue { queue: Queue::new("q", 1.0), create: true }), CommandResult::Ok);
    for c in ["a", "b"] {
        apply(&mut s, 0, Command::ClusterSeen { cluster: c.into(), term: None });
    }
    s
}

fn submit(s: &mut State, id: &str, templates: &[TaskTemplate]) -> Vec<TaskId> {
    match apply(
        s,
        1,
        Command::Submit { client_request_id: id.into(), queue: "q".into(), task_set: "s".into(), specs: specs(templates), body_digest: 0 },
    ) {
        CommandResult::Submitted { task_ids } => task_ids,
        other => panic!("submit failed: {other:?}"),
    }
}

fn node(cluster: &str, n: &str) -> NodeRef {
    NodeRef { cluster: cluster.into(), node: n.into() }
}

fn lease(s: &mut State, now: u64, id: TaskId, attempt: u32, at: NodeRef) -> CommandResult {
    apply(
        s,
        now,
        Command::Schedule(ScheduleDecisions {
            leases: vec![LeaseDecision { task: id, attempt, node: at, cost: Default::default() }],
            ..Default::default()
        }),
    )
}

fn report(s: &mut State, now: u64, cluster: &str, id: TaskId, attempt: u32, status: AttemptStatus) -> CommandResult {
    apply(
        s,
        now,
        Command::ReportEvents {
            cluster: cluster.into(),
            events: vec![AttemptEvent { task: id, attempt, status, node: "n".into(), time_ms: now }],
        },
    )
}

fn failed(kind: FailureKind) -> AttemptStatus {
    AttemptStatus::Failed { kind, exit_code: Some(1), message: String::new() }
}

#[test]
fn retried_submission_returns_the_same_ids_and_creates_nothing() {
    let mut s = setup();
    let first = submit(&mut s, "req-1", &[template("a")]);
    let again = submit(&mut s, "req-1", &[template("a")]);
    assert_eq!(first, again);
    assert_eq!(s.task_count(), 1);
}

#[test]
fn submit_to_a_missing_queue_changes_nothing() {
    let mut s = setup();
    let r = apply(
        &mut s,
        1,
        Command::Submit {
            client_request_id: "x".into(),
            queue: "nope".into(),
            task_set: "s".into(),
            specs: specs(&[template("a")]),
            body_digest: 0,
        },
    );
    assert!(matches!(r, CommandResult::Rejected { .. }));
    assert_eq!(s.task_count(), 0);
}

#[test]
fn lease_starts_the_next_attempt_and_stale_decisions_are_dropped() {
    let mut s = setup();
    let id = submit(&mut s, "r", &[template("a")])[0];
    assert_eq!(lease(&mut s, 2, id, 2, node("a", "n1")), CommandResult::Count(0), "wrong attempt");
    assert_eq!(lease(&mut s, 2, id, 1, node("a", "n1")), CommandResult::Count(1));
    assert_eq!(lease(&mut s, 2, id, 1, node("b", "n1")), CommandResult::Count(0), "already leased");
    let t = s.task(id).unwrap();
    assert_eq!((t.state, t.attempt), (TaskState::Leased, 1));
    assert_eq!(s.active_in("a").count(), 1);
    assert_eq!(s.active_in("b").count(), 0);
}

#[test]
fn events_of_stale_attempts_or_other_clusters_are_ignored() {
    let mut s = setup();
    let id = submit(&mut s, "r", &[template("a")])[0];
    lease(&mut s, 2, id, 1, node("a", "n1"));
    assert_eq!(report(&mut s, 3, "b", id, 1, AttemptStatus::Running), CommandResult::Count(0));
    assert_eq!(report(&mut s, 3, "a", id, 0, AttemptStatus::Succeeded), CommandResult::Count(0));
    assert_eq!(report(&mut s, 3, "a", id, 1, AttemptStatus::Running), CommandResult::Count(1));
    assert_eq!(s.task(id).unwrap().state, TaskState::Running);
}

#[test]
fn terminal_states_are_final() {
    let mut s = setup();
    let id = submit(&mut s, "r", &[template("a")])[0];
    lease(&mut s, 2, id, 1, node("a", "n1"));
    report(&mut s, 3, "a", id, 1, AttemptStatus::Succeeded);
    assert_eq!(apply(&mut s, 4, Command::Cancel { target: CancelTarget::Tasks(vec![id]), reason: String::new() }), CommandResult::Count(0));
    assert_eq!(report(&mut s, 4, "a", id, 1, failed(FailureKind::Error)), CommandResult::Count(0));
    assert_eq!(s.task(id).unwrap().state, TaskState::Succeeded);
}

#[test]
fn failed_attempt_retries_with_exponential_backoff_and_avoids_the_node() {
    let mut s = setup();
    let mut t = template("a");
    t.retry = Some(flotilla_model::RetryTemplate { max_attempts: Some(4), backoff: Some("10s".into()), ..Default::default() });
    let id = submit(&mut s, "r", &[t])[0];
    lease(&mut s, 1_000, id, 1, node("a", "n1"));
    report(&mut s, 2_000, "a", id, 1, failed(FailureKind::Error));
    let rec = s.task(id).unwrap();
    assert_eq!(rec.state, TaskState::Queued);
    assert_eq!(rec.not_before_ms, 12_000, "first retry waits the base backoff");
    assert_eq!(rec.avoid_nodes, vec![node("a", "n1")]);
    assert!(!s.is_schedulable(rec, 11_999));
    assert!(s.is_schedulable(rec, 12_000));
    lease(&mut s, 12_000, id, 2, node("a", "n2"));
    report(&mut s, 13_000, "a", id, 2, failed(FailureKind::Error));
    assert_eq!(s.task(id).unwrap().not_before_ms, 33_000, "second retry waits twice as long");
    assert_eq!(s.task(id).unwrap().avoid_clusters(2, 0), vec!["a".to_string()], "two failures in one cluster avoid it");
}

#[test]
fn an_unschedulable_attempt_uses_no_attempt_retries_at_once_and_avoids_its_cluster_for_a_while() {
    let mut s = setup();
    let mut t = template("a");
    t.retry = Some(flotilla_model::RetryTemplate { max_attempts: Some(1), backoff: Some("10s".into()), ..Default::default() });
    let id = submit(&mut s, "r", &[t])[0];
    lease(&mut s, 1_000, id, 1, node("a", "n1"));
    report(&mut s, 2_000, "a", id, 1, failed(FailureKind::Unschedulable));
    let rec = s.task(id).unwrap();
    assert_eq!((rec.state, rec.failures), (TaskState::Queued, 0), "not the task's fault: its one attempt is not used up");
    assert!(s.is_schedulable(rec, 2_000), "no backoff");
    assert!(rec.reason.contains("avoiding cluster a for 10m"), "{}", rec.reason);
    let avoid_ms = s.limits.unschedulable_avoid_ms;
    assert_eq!(rec.avoid_clusters(2, 2_000 + avoid_ms - 1), vec!["a".to_string()]);
    assert!(rec.avoid_clusters(2, 2_000 + avoid_ms).is_empty(), "only for a while");
    // Lost and evicted attempts do not count either.
    for (attempt, kind) in [(2, FailureKind::Lost), (3, FailureKind::Evicted)] {
        lease(&mut s, 3_000 * u64::from(attempt), id, attempt, node("b", "n1"));
        report(&mut s, 3_000 * u64::from(attempt) + 1, "b", id, attempt, failed(kind));
        assert_eq!(s.task(id).unwrap().failures, 0, "{kind:?}");
        assert_eq!(s.task(id).unwrap().state, TaskState::Queued);
    }
}

#[test]
fn the_installation_is_named_once() {
    let mut s = setup();
    assert_eq!(s.installation_id(), "");
    let bad = apply(&mut s, 1, Command::SetInstallation { id: "not-hex".into() });
    assert!(matches!(bad, CommandResult::Rejected { kind: RejectKind::Invalid, .. }), "{bad:?}");
    assert_eq!(apply(&mut s, 2, Command::SetInstallation { id: "0123456789abcdef".into() }), CommandResult::Ok);
    let second = apply(&mut s, 3, Command::SetInstallation { id: "fedcba9876543210".into() });
    assert!(matches!(second, CommandResult::Rejected { kind: RejectKind::Conflict, .. }), "{second:?}");
    assert_eq!(s.installation_id(), "0123456789abcdef");
    let json = serde_json::to_string(&s).unwrap();
    let back: State = serde_json::from_str(&json).unwrap();
    assert_eq!(back.installation_id(), "0123456789abcdef", "kept in snapshots");
}

#[test]
fn out_of_attempts_fails_the_task_and_cancels_its_dependents() {
    let mut s = setup();
    let mut a = template("a");
    a.retry = Some(flotilla_model::RetryTemplate { max_attempts: Some(1), ..Default::default() });
    let mut b = template("b");
    b.after = vec!["a".into()];
    let ids = submit(&mut s, "r", &[a, b]);
    assert!(!s.is_schedulable(s.task(ids[1]).unwrap(), 0), "b waits for a");
    lease(&mut s, 1, ids[0], 1, node("a", "n1"));
    report(&mut s, 2, "a", ids[0], 1, failed(FailureKind::Error));
    assert_eq!(s.task(ids[0]).unwrap().state, TaskState::Failed);
    assert!(s.task(ids[0]).unwrap().reason.starts_with("failed after 1 attempts: Error (exit code 1)"));
    let b = s.task(ids[1]).unwrap();
    assert_eq!(b.state, TaskState::Cancelled);
    assert!(b.reason.contains("dependency a"), "{}", b.reason);
}

#[test]
fn dependents_start_after_every_dependency_succeeded() {
    let mut s = setup();
    let mut a = template("a");
    a.count = Some(2);
    let mut b = template("b");
    b.after = vec!["a".into()];
    let ids = submit(&mut s, "r", &[a, b]);
    for (i, id) in ids[..2].iter().enumerate() {
        lease(&mut s, 1, *id, 1, node("a", &format!("n{i}")));
        report(&mut s, 2, "a", *id, 1, AttemptStatus::Succeeded);
        assert_eq!(s.is_schedulable(s.task(ids[2]).unwrap(), 3), i == 1);
    }
}

#[test]
fn evictions_and_lost_clusters_do_not_use_up_attempts() {
    let mut s = setup();
    let mut t = template("a");
    t.retry = Some(flotilla_model::RetryTemplate { max_attempts: Some(1), ..Default::default() });
    let id = submit(&mut s, "r", &[t])[0];
    lease(&mut s, 1, id, 1, node("a", "n1"));
    report(&mut s, 2, "a", id, 1, failed(FailureKind::Evicted));
    assert_eq!(s.task(id).unwrap().state, TaskState::Queued);
    assert_eq!(s.task(id).unwrap().not_before_ms, 2, "no backoff for evictions");
    lease(&mut s, 3, id, 2, node("a", "n2"));
    apply(&mut s, 4, Command::ClusterLost { cluster: "a".into(), term: None });
    let rec = s.task(id).unwrap();
    assert_eq!((rec.state, rec.failures), (TaskState::Queued, 0));
    assert_eq!(lease(&mut s, 5, id, 3, node("a", "n3")), CommandResult::Count(0), "no leases on a lost cluster");
    assert_eq!(lease(&mut s, 5, id, 3, node("b", "n3")), CommandResult::Count(1));
}

#[test]
fn oom_killed_task_retries_with_more_memory_up_to_the_cap() {
    let mut s = setup();
    let mut t = template("a");
    t.limits = [("memory".to_string(), "1Gi".to_string())].into();
    t.retry = Some(flotilla_model::RetryTemplate {
        max_attempts: Some(10),
        backoff: Some("1s".into()),
        oom_memory_growth: Some(3.0),
        ..Default::default()
    });
    let id = submit(&mut s, "r", &[t])[0];
    let mut now = 0;
    for attempt in 1..=3 {
        now = s.task(id).unwrap().not_before_ms.max(now);
        lease(&mut s, now, id, attempt, node("b", &format!("n{attempt}")));
        report(&mut s, now, "b", id, attempt, failed(FailureKind::OomKilled));
    }
    let spec = &s.task(id).unwrap().spec;
    assert_eq!(spec.limits.memory_bytes, 4 << 30, "3x then capped at 4x the first limit");
    assert_eq!(spec.resources.memory_bytes, 4 << 30, "the scheduler reserves what the task may use");
}

#[test]
fn failure_spike_pauses_the_task_set_until_resumed() {
    let mut s = setup();
    s.limits.breaker_failures = 3;
    let mut t = template("a");
    t.count = Some(5);
    let ids = submit(&mut s, "r", &[t]);
    for (i, id) in ids.iter().take(3).enumerate() {
        lease(&mut s, 10, *id, 1, node("a", &format!("n{i}")));
        report(&mut s, 11, "a", *id, 1, failed(FailureKind::ImagePull));
    }
    let set = s.task_set("q", "s").unwrap();
    assert!(set.paused);
    assert!(set.events.iter().any(|e| e.kind == EventKind::Paused));
    assert!(!s.is_schedulable(s.task(ids[4]).unwrap(), 1_000_000));
    assert_eq!(apply(&mut s, 12, Command::Resume { queue: "q".into(), task_set: "s".into() }), CommandResult::Ok);
    assert!(s.is_schedulable(s.task(ids[4]).unwrap(), 1_000_000));
}

/// Leases every task of `ids` (a whole gang) at attempt 1, in one decision.
fn lease_whole(s: &mut State, ids: &[TaskId]) -> CommandResult {
    let leases = ids.iter().map(|id| LeaseDecision { task: *id, attempt: 1, node: node("a", "n1"), cost: Default::default() }).collect();
    apply(s, 2, Command::Schedule(ScheduleDecisions { leases, ..Default::default() }))
}

fn gang(size: u32) -> TaskTemplate {
    let mut t = template("g");
    t.gang = Some(GangTemplate { size, topology: Some("rack".into()), ..Default::default() });
    t
}

#[test]
fn a_gang_is_leased_whole_or_not_at_all() {
    let mut s = setup();
    let ids = submit(&mut s, "r", &[gang(3)]);
    let g = s.task(ids[1]).unwrap().spec.gang.clone().unwrap();
    assert_eq!((g.id, g.rank, g.topology), (ids[0], 1, TopologyLevel::Rack));
    let partial = ScheduleDecisions {
        leases: ids[..2]
            .iter()
            .map(|id| LeaseDecision { task: *id, attempt: 1, node: node("a", "n1"), cost: Default::default() })
            .collect(),
        ..Default::default()
    };
    assert_eq!(apply(&mut s, 2, Command::Schedule(partial)), CommandResult::Count(0));
    assert!(ids.iter().all(|id| s.task(*id).unwrap().state == TaskState::Queued));
    assert_eq!(lease_whole(&mut s, &ids), CommandResult::Count(3));
}

#[test]
fn a_failed_gang_member_restarts_the_whole_gang() {
    let mut s = setup();
    let ids = submit(&mut s, "r", &[gang(2)]);
    lease_whole(&mut s, &ids);
    report(&mut s, 3, "a", ids[0], 1, failed(FailureKind::Error));
    for id in &ids {
        assert_eq!(s.task(*id).unwrap().state, TaskState::Queued);
    }
    assert_eq!(s.active_in("a").count(), 0);
}

#[test]
fn preemption_requeues_the_current_attempt_only() {
    let mut s = setup();
    let id = submit(&mut s, "r", &[template("a")])[0];
    lease(&mut s, 1, id, 1, node("a", "n1"));
    let stale = PreemptDecision { task: id, attempt: 0, reason: "x".into() };
    apply(&mut s, 2, Command::Schedule(ScheduleDecisions { preemptions: vec![stale], ..Default::default() }));
    assert_eq!(s.task(id).unwrap().state, TaskState::Leased);
    let p = PreemptDecision { task: id, attempt: 1, reason: "reclaimed by fair share".into() };
    apply(&mut s, 2, Command::Schedule(ScheduleDecisions { preemptions: vec![p], ..Default::default() }));
    let t = s.task(id).unwrap();
    assert_eq!((t.state, t.attempt, t.failures), (TaskState::Queued, 1, 0));
}

#[test]
fn event_log_is_bounded_and_sequence_numbers_stay_dense() {
    let mut s = setup();
    s.limits.max_events_per_task_set = 5;
    let mut t = template("a");
    t.count = Some(8);
    submit(&mut s, "r", &[t]);
    let set = s.task_set("q", "s").unwrap();
    assert_eq!(set.events.len(), 5);
    assert_eq!(set.first_seq(), 4);
    assert_eq!(set.events_from(6, 10).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![6, 7, 8]);
    assert_eq!(s.events_trimmed, 3);
}

#[test]
fn counts_and_indexes_follow_every_transition() {
    let mut s = setup();
    let mut t = template("a");
    t.count = Some(3);
    let ids = submit(&mut s, "r", &[t]);
    lease(&mut s, 1, ids[0], 1, node("a", "n1"));
    apply(&mut s, 1, Command::Cancel { target: CancelTarget::Tasks(vec![ids[1]]), reason: String::new() });
    let c = s.counts("q");
    assert_eq!((c[0], c[1], c[6]), (1, 1, 1));
    assert_eq!(s.queued().map(|t| t.id).collect::<Vec<_>>(), vec![ids[2]]);
    assert_eq!(s.active().count(), 1);
}

#[test]
fn deleting_a_queue_with_unfinished_tasks_is_refused() {
    let mut s = setup();
    submit(&mut s, "r", &[template("a")]);
    assert!(matches!(apply(&mut s, 1, Command::DeleteQueue { name: "q".into() }), CommandResult::Rejected { .. }));
    apply(&mut s, 1, Command::Cancel { target: CancelTarget::TaskSet { queue: "q".into(), task_set: "s".into() }, reason: String::new() });
    assert_eq!(apply(&mut s, 1, Command::DeleteQueue { name: "q".into() }), CommandResult::Ok);
}

#[test]
fn compaction_forgets_old_finished_tasks_only() {
    let mut s = setup();
    let mut t = template("a");
    t.count = Some(2);
    let ids = submit(&mut s, "r", &[t]);
    apply(&mut s, 5, Command::Cancel { target: CancelTarget::Tasks(vec![ids[0]]), reason: String::new() });
    assert_eq!(apply(&mut s, 10, Command::Compact { finished_before_ms: 6, max_tasks: 1000, term: None }), CommandResult::Count(1));
    assert!(s.task(ids[0]).is_none());
    assert!(s.task(ids[1]).is_some());
}

#[test]
fn state_survives_a_snapshot_round_trip() {
    let mut s = setup();
    let ids = submit(&mut s, "r", &[gang(2), template("x")]);
    lease(&mut s, 1, ids[2], 1, node("a", "n1"));
    let bytes = serde_json::to_vec(&s).unwrap();
    let back: State = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back, s);
}

#[test]
fn same_log_gives_the_same_state() {
    let build = || {
        let mut s = setup();
        let ids = submit(&mut s, "r", &[template("a"), gang(2)]);
        lease(&mut s, 1, ids[0], 1, node("a", "n1"));
        report(&mut s, 2, "a", ids[0], 1, failed(FailureKind::OomKilled));
        s
    };
    assert_eq!(build(), build());
}

#[test]
fn submissions_are_written_compactly_and_read_back_exactly() {
    let mut a = template("a");
    a.count = Some(500);
    let mut b = template("b");
    b.after = vec!["a".into()];
    let specs = specs(&[a, gang(4), b]);
    let cmd =
        Command::Submit { client_request_id: "r".into(), queue: "q".into(), task_set: "s".into(), specs: specs.clone(), body_digest: 0 };
    let bytes = serde_json::to_vec(&cmd).unwrap();
    assert!(bytes.len() < 4_000, "505 tasks in {} bytes", bytes.len());
    let back: Command = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back, cmd);
}

#[test]
fn snapshots_store_each_submission_spec_once() {
    let mut s = setup();
    let mut t = template("agent");
    t.count = Some(2_000);
    t.env = [("MODEL".to_string(), "large".to_string())].into();
    let ids = submit(&mut s, "r", &[t, gang(4)]);
    for (i, id) in ids.iter().enumerate().take(1_000) {
        lease(&mut s, 2, *id, 1, node("a", &format!("n{}", i % 50)));
    }
    let bytes = serde_json::to_vec(&s).unwrap();
    let back: State = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back, s, "specs, indexes, ranks and gang ids come back exactly");
    let per_task = bytes.len() / ids.len();
    assert!(per_task < 700, "{per_task} bytes per task: specs are not repeated");
}

#[test]
fn a_gang_member_failing_after_another_finished_is_not_retried_alone() {
    let mut s = setup();
    let ids = submit(&mut s, "r", &[gang(2)]);
    lease_whole(&mut s, &ids);
    report(&mut s, 3, "a", ids[0], 1, AttemptStatus::Succeeded);
    report(&mut s, 4, "a", ids[1], 1, failed(FailureKind::Error));
    let t = s.task(ids[1]).unwrap();
    assert_eq!(t.state, TaskState::Failed, "a lone member could never be placed again");
    assert!(t.reason.contains("a gang restarts only whole"), "{}", t.reason);
    assert_eq!(s.task(ids[0]).unwrap().state, TaskState::Succeeded);
}

mod cost;
mod priority_classes;
mod random_commands;

#[test]
fn a_gang_leased_across_two_clusters_is_not_leased_at_all() {
    let mut s = setup();
    let ids = submit(&mut s, "r", &[gang(2)]);
    let split = ScheduleDecisions {
        leases: vec![
            LeaseDecision { task: ids[0], attempt: 1, node: node("a", "n1"), cost: Default::default() },
            LeaseDecision { task: ids[1], attempt: 1, node: node("b", "n1"), cost: Default::default() },
        ],
        ..Default::default()
    };
    assert_eq!(apply(&mut s, 2, Command::Schedule(split)), CommandResult::Count(0), "a lost cluster would requeue half of it");
    assert!(ids.iter().all(|id| s.task(*id).unwrap().state == TaskState::Queued));
}

#[test]
fn preempting_one_gang_member_requeues_the_whole_gang() {
    let mut s = setup();
    let ids = submit(&mut s, "r", &[gang(3)]);
    lease_whole(&mut s, &ids);
    let p = PreemptDecision { task: ids[1], attempt: 1, reason: "reclaimed by fair share".into() };
    let changed = apply(&mut s, 3, Command::Schedule(ScheduleDecisions { preemptions: vec![p], ..Default::default() }));
    assert_eq!(changed, CommandResult::Count(3));
    for id in &ids {
        let t = s.task(*id).unwrap();
        assert_eq!((t.state, t.failures), (TaskState::Queued, 0), "task {id}");
    }
    assert_eq!(s.active_in("a").count(), 0, "no member is left holding a node");
}

#[test]
fn check_invariants_holds_after_ordinary_applies_and_names_each_kind_of_corruption() {
    let mut s = setup();
    let mut t = template("a");
    t.count = Some(3);
    let ids = submit(&mut s, "r", &[t, gang(2)]);
    lease(&mut s, 2, ids[0], 1, node("a", "n1"));
    assert_eq!(s.check_invariants(), Ok(()));

    type Corrupt = fn(&mut State, &[TaskId]);
    let corruptions: [(&str, Corrupt); 7] = [
        ("queued index", |s, ids| {
            s.queued.remove(&ids[1]);
        }),
        ("active-by-cluster", |s, ids| {
            s.active_by_cluster.get_mut("a").unwrap().remove(&ids[0]);
        }),
        ("counts", |s, _| s.counts.get_mut("q").unwrap()[0] += 1),
        ("task set q/s", |s, ids| s.task_sets.get_mut("q/s").unwrap().tasks.retain(|x| *x != ids[2])),
        ("next_task_id", |s, _| s.next_task_id = 2),
        ("beyond the task's", |s, _| s.task_sets.get_mut("q/s").unwrap().events.back_mut().unwrap().attempt = 9),
        ("partly leased", |s, ids| {
            // Lease one gang member behind `transition`'s back, indexes kept consistent.
            let t = s.tasks.get_mut(&ids[3]).unwrap();
            t.state = TaskState::Leased;
            t.attempt = 1;
            t.lease = Some(node("a", "n2"));
            s.queued.remove(&ids[3]);
            s.active_by_cluster.get_mut("a").unwrap().insert(ids[3]);
            let c = s.counts.get_mut("q").unwrap();
            c[0] -= 1;
            c[1] += 1;
        }),
    ];
    for (names, corrupt) in corruptions {
        let mut broken = s.clone();
        corrupt(&mut broken, &ids);
        let err = broken.check_invariants().expect_err(names);
        assert!(err.contains(names), "{names}: {err}");
    }
}

/// `count` copies of one spec as one submission, past the API's per-submit bound: the
/// state must cope with whatever many submissions add up to.
fn submit_many(s: &mut State, task_set: &str, count: usize) -> Vec<TaskId> {
    let one = specs(&[template("many")]).remove(0);
    let specs = (0..count as u32).map(|i| TaskSpec { index: i, ..one.clone() }).collect();
    let c = Command::Submit { client_request_id: String::new(), queue: "q".into(), task_set: task_set.into(), specs, body_digest: 0 };
    match apply(s, 1, c) {
        CommandResult::Submitted { task_ids } => task_ids,
        other => panic!("submit failed: {other:?}"),
    }
}

#[test]
fn compacting_100_000_finished_tasks_of_one_task_set_removes_them_all_and_keeps_others() {
    let mut s = setup();
    submit_many(&mut s, "big", 100_000);
    let kept = submit(&mut s, "r", &[template("kept")]);
    let cancel_big = CancelTarget::TaskSet { queue: "q".into(), task_set: "big".into() };
    assert_eq!(apply(&mut s, 5, Command::Cancel { target: cancel_big, reason: String::new() }), CommandResult::Count(100_000));
    assert_eq!(
        apply(&mut s, 10, Command::Compact { finished_before_ms: 6, max_tasks: 1_000_000, term: None }),
        CommandResult::Count(100_000)
    );
    assert_eq!(s.task_count(), 1);
    assert!(s.task_set("q", "big").is_none(), "an emptied task set is forgotten");
    assert_eq!(s.task_set("q", "s").unwrap().tasks, kept);
    assert_eq!(s.counts("q")[state_index(TaskState::Cancelled)], 0);
    assert_eq!(s.check_invariants(), Ok(()));
}

#[test]
fn compacting_down_to_max_tasks_keeps_the_newest_finished_tasks_listed_in_their_set() {
    let mut s = setup();
    let ids = submit_many(&mut s, "s", 1_000);
    // Finish them one per millisecond, so "oldest" is well defined.
    for (i, id) in ids.iter().enumerate() {
        apply(&mut s, 10 + i as u64, Command::Cancel { target: CancelTarget::Tasks(vec![*id]), reason: String::new() });
    }
    assert_eq!(apply(&mut s, 5_000, Command::Compact { finished_before_ms: 0, max_tasks: 300, term: None }), CommandResult::Count(700));
    assert_eq!(s.task_set("q", "s").unwrap().tasks, ids[700..].to_vec());
    assert_eq!(s.check_invariants(), Ok(()));
}

#[test]
fn an_entry_with_an_earlier_clock_reading_never_moves_state_time_backwards() {
    let mut s = setup();
    let mut t = template("a");
    t.retry = Some(flotilla_model::RetryTemplate { max_attempts: Some(3), backoff: Some("10s".into()), ..Default::default() });
    let id = submit(&mut s, "r", &[t])[0];
    lease(&mut s, 50_000, id, 1, node("a", "n1"));
    // Committed after the lease, but proposed with an older clock reading.
    report(&mut s, 20_000, "a", id, 1, failed(FailureKind::Error));
    let rec = s.task(id).unwrap();
    assert_eq!(rec.updated_ms, 50_000);
    assert_eq!(rec.not_before_ms, 60_000, "the backoff counts from the latest time, not the stale one");
    let times: Vec<u64> = s.task_set("q", "s").unwrap().events.iter().map(|e| e.time_ms).collect();
    assert_eq!(times, vec![1, 50_000, 50_000]);
    let back: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
    assert_eq!(back.last_now_ms, 50_000, "kept in snapshots");
}

#[test]
fn a_snapshot_written_before_last_now_ms_existed_reads_as_time_zero() {
    let mut s = setup();
    submit(&mut s, "r", &[template("a")]);
    let mut json: serde_json::Value = serde_json::to_value(&s).unwrap();
    json.as_object_mut().unwrap().remove("last_now_ms").expect("the field is serialized");
    let old: State = serde_json::from_value(json).unwrap();
    assert_eq!(old.last_now_ms, 0);
    assert_eq!(old.task_count(), 1);
}

#[test]
fn remembering_a_10_000_task_submission_for_retries_costs_under_100_bytes() {
    let mut s = setup();
    let mut t = template("a");
    t.count = Some(10_000);
    let ids = submit(&mut s, "req-big", &[t.clone()]);
    let remembered = serde_json::to_vec(&s.request_ids).unwrap();
    assert!(remembered.len() < 100, "{} bytes", remembered.len());
    assert_eq!(submit(&mut s, "req-big", &[t]), ids, "a retry still gets every id");
    assert_eq!(s.task_count(), 10_000);
}

#[test]
fn a_snapshot_with_request_ids_as_lists_reads_back_and_still_deduplicates() {
    let mut s = setup();
    let ids = submit(&mut s, "req-1", &[template("a"), template("b")]);
    let mut json = serde_json::to_value(&s).unwrap();
    // The shape snapshots had before ranges: the whole list of ids.
    json["request_ids"]["req-1"] = serde_json::json!(ids.iter().map(|id| id.0).collect::<Vec<_>>());
    let mut old: State = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(old, s, "read as the same range");
    assert_eq!(submit(&mut old, "req-1", &[template("a"), template("b")]), ids);
    assert_eq!(old.task_count(), 2);

    json["request_ids"]["req-1"] = serde_json::json!([ids[0].0, ids[0].0 + 5]);
    let err = serde_json::from_value::<State>(json).unwrap_err().to_string();
    assert!(err.contains("not contiguous"), "{err}");
}

fn submit_with_digest(s: &mut State, id: &str, templates: &[TaskTemplate], body_digest: u64) -> CommandResult {
    apply(
        s,
        1,
        Command::Submit { client_request_id: id.into(), queue: "q".into(), task_set: "s".into(), specs: specs(templates), body_digest },
    )
}

#[test]
fn a_request_id_reused_with_another_body_is_refused_and_changes_nothing() {
    let mut s = setup();
    let CommandResult::Submitted { task_ids: ids } = submit_with_digest(&mut s, "req-1", &[template("a")], 7) else {
        panic!("submit failed")
    };
    assert_eq!(submit_with_digest(&mut s, "req-1", &[template("a")], 7), CommandResult::Submitted { task_ids: ids.clone() });
    match submit_with_digest(&mut s, "req-1", &[template("b"), template("c")], 8) {
        CommandResult::Rejected { kind: RejectKind::AlreadyExists, message } => {
            assert!(message.contains("client_request_id \"req-1\" was used for a different submission"), "{message}");
        }
        other => panic!("a different body under a used id was not refused: {other:?}"),
    }
    assert_eq!(s.task_count(), 1, "the refused submission added no task");
    // Digests survive a snapshot.
    let mut restored: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
    assert!(matches!(submit_with_digest(&mut restored, "req-1", &[template("b")], 8), CommandResult::Rejected { .. }));
}

#[test]
fn a_request_id_remembered_without_a_digest_still_deduplicates_any_body() {
    let mut s = setup();
    let ids = submit(&mut s, "req-old", &[template("a")]);
    let json = serde_json::to_value(&s.request_ids).unwrap();
    assert_eq!(json["req-old"].get("digest"), None, "an unknown digest is not written: {json}");
    assert_eq!(submit_with_digest(&mut s, "req-old", &[template("b")], 9), CommandResult::Submitted { task_ids: ids });
    assert_eq!(s.task_count(), 1);
}

#[test]
fn a_dependency_defined_later_in_the_submission_knows_its_dependent() {
    let mut s = setup();
    let mut first = template("first");
    first.after = vec!["second".into()];
    let ids = submit(&mut s, "r", &[first, template("second")]);
    assert_eq!(s.task(ids[0]).unwrap().blocked_on, vec![ids[1]]);
    assert_eq!(s.task(ids[1]).unwrap().dependents, vec![ids[0]], "the later task must learn of the earlier one");
}

#[test]
fn a_task_file_waiting_on_a_later_task_runs_once_that_task_succeeded() {
    let file = flotilla_model::TaskFile::from_yaml(
        r#"
queue: q
taskSet: s
tasks:
  - name: report
    image: busybox
    resources: {cpu: 1, memory: 1Gi}
    after: [train]
  - name: train
    image: busybox
    resources: {cpu: 1, memory: 1Gi}
"#,
    )
    .unwrap();
    let mut s = setup();
    let specs = expand("q", "s", &file.tasks, &SubmitLimits::default()).unwrap();
    let c = Command::Submit { client_request_id: "r".into(), queue: "q".into(), task_set: "s".into(), specs, body_digest: 0 };
    let CommandResult::Submitted { task_ids: ids } = apply(&mut s, 1, c) else { panic!("submit failed") };
    let (report_task, train) = (ids[0], ids[1]);
    assert!(!s.is_schedulable(s.task(report_task).unwrap(), 2), "report waits for train");
    lease(&mut s, 2, train, 1, node("a", "n1"));
    report(&mut s, 3, "a", train, 1, AttemptStatus::Succeeded);
    let t = s.task(report_task).unwrap();
    assert!(s.is_schedulable(t, 4), "still {}: {}", t.state, t.reason);
    assert_eq!(t.reason, "", "no longer 'waiting for train to succeed'");
}

fn apply_in_term(state: &mut State, now_ms: u64, entry_term: u64, c: Command) -> CommandResult {
    state.apply_entry(&Request { now_ms, commands: vec![c] }, entry_term).results.remove(0)
}

#[test]
fn a_leader_decision_committed_in_another_term_is_dropped() {
    let mut s = setup();
    let id = submit(&mut s, "r", &[template("a")]);
    let decided_in_2 = |c: &str| Command::ClusterLost { cluster: c.into(), term: Some(2) };
    // The deposed leader of term 2 decided cluster a was lost; its entry lands in term 3.
    let r = apply_in_term(&mut s, 5, 3, decided_in_2("a"));
    assert!(matches!(r, CommandResult::Rejected { kind: RejectKind::Stale, .. }), "{r:?}");
    assert_eq!(s.cluster("a").unwrap().state, ClusterState::Ready);
    let lease_in_2 = ScheduleDecisions {
        term: Some(2),
        leases: vec![LeaseDecision { task: id[0], attempt: 1, node: node("a", "n1"), cost: Default::default() }],
        ..Default::default()
    };
    let r = apply_in_term(&mut s, 5, 3, Command::Schedule(lease_in_2.clone()));
    assert!(matches!(r, CommandResult::Rejected { kind: RejectKind::Stale, .. }), "{r:?}");
    assert_eq!(s.task(id[0]).unwrap().state, TaskState::Queued, "a stale lease leases nothing");
    // The same decisions in their own term apply.
    assert_eq!(apply_in_term(&mut s, 6, 2, Command::Schedule(lease_in_2)), CommandResult::Count(1));
    assert_eq!(apply_in_term(&mut s, 7, 2, decided_in_2("a")), CommandResult::Count(1));
}

#[test]
fn a_preempted_task_is_not_leased_again_until_its_attempt_is_gone() {
    let mut s = setup();
    let id = submit(&mut s, "r", &[template("a")])[0];
    lease(&mut s, 1, id, 1, node("a", "n1"));
    report(&mut s, 2, "a", id, 1, AttemptStatus::Running);
    let p = PreemptDecision { task: id, attempt: 1, reason: "urgent work".into() };
    apply(&mut s, 3, Command::Schedule(ScheduleDecisions { preemptions: vec![p], ..Default::default() }));
    let t = s.task(id).unwrap();
    assert_eq!((t.state, t.stopping.clone()), (TaskState::Queued, Some(node("a", "n1"))));
    assert!(!s.is_schedulable(t, 10), "its attempt may still run on a/n1");
    assert_eq!(lease(&mut s, 4, id, 2, node("b", "n1")), CommandResult::Count(0), "no second attempt while the first may run");
    assert_eq!(s.stopping_in("a").count(), 1);

    // Another cluster cannot vouch for it; an older attempt does not count.
    apply(&mut s, 5, Command::AttemptsGone { cluster: "b".into(), attempts: vec![(id, 1)] });
    apply(&mut s, 5, Command::AttemptsGone { cluster: "a".into(), attempts: vec![(id, 0)] });
    assert!(s.task(id).unwrap().stopping.is_some());
    // Its cluster shows it gone: now it may run elsewhere.
    assert_eq!(apply(&mut s, 6, Command::AttemptsGone { cluster: "a".into(), attempts: vec![(id, 1)] }), CommandResult::Count(1));
    assert!(s.is_schedulable(s.task(id).unwrap(), 10));
    assert_eq!(lease(&mut s, 7, id, 2, node("b", "n1")), CommandResult::Count(1));
    s.check_invariants().unwrap();
}

#[test]
fn a_stopping_attempt_ends_by_its_final_event_or_by_its_cluster_being_lost() {
    let mut s = setup();
    let ids = submit(&mut s, "r", &[template("a"), template("b")]);
    for id in &ids {
        lease(&mut s, 1, *id, 1, node("a", "n1"));
    }
    let preempt = |id: TaskId| PreemptDecision { task: id, attempt: 1, reason: "urgent work".into() };
    apply(&mut s, 2, Command::Schedule(ScheduleDecisions { preemptions: ids.iter().map(|i| preempt(*i)).collect(), ..Default::default() }));
    assert_eq!(s.stopping_in("a").count(), 2);
    // The first one's executor reports how it ended (killed in its grace period).
    report(&mut s, 3, "a", ids[0], 1, failed(FailureKind::Error));
    assert!(s.task(ids[0]).unwrap().stopping.is_none());
    assert_eq!(s.task(ids[0]).unwrap().failures, 0, "the end of a preempted attempt is not a failure");
    // The other's cluster goes silent and is lost: its executor stopped it when its lease ran out.
    apply(&mut s, 4, Command::ClusterLost { cluster: "a".into(), term: None });
    assert!(s.task(ids[1]).unwrap().stopping.is_none());
    assert_eq!(s.stopping_in("a").count(), 0);
    s.check_invariants().unwrap();
}

#[test]
fn a_cancelled_task_no_longer_waits_for_its_stopping_attempt() {
    let mut s = setup();
    let id = submit(&mut s, "r", &[template("a")])[0];
    lease(&mut s, 1, id, 1, node("a", "n1"));
    let p = PreemptDecision { task: id, attempt: 1, reason: "urgent work".into() };
    apply(&mut s, 2, Command::Schedule(ScheduleDecisions { preemptions: vec![p], ..Default::default() }));
    apply(&mut s, 3, Command::Cancel { target: CancelTarget::Tasks(vec![id]), reason: String::new() });
    assert_eq!(s.task(id).unwrap().state, TaskState::Cancelled);
    assert_eq!(s.stopping_in("a").count(), 0);
    s.check_invariants().unwrap();
}

mod cordon;
mod gangs;
