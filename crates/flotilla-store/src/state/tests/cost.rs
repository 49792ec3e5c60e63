//! Cost: an attempt costs price × hours × share; sums per task set and queue agree; every
//! way an attempt ends counts; snapshots keep it all.

use super::*;
use crate::cost::{LeaseCost, MS_PER_DAY};

const HALF_HOUR_MS: u64 = 1_800_000;

fn lease_priced(s: &mut State, now: u64, id: TaskId, attempt: u32, at: NodeRef, cost: LeaseCost) -> CommandResult {
    let d = ScheduleDecisions { leases: vec![LeaseDecision { task: id, attempt, node: at, cost }], ..Default::default() };
    apply(s, now, Command::Schedule(d))
}

fn submit_to(s: &mut State, set: &str, n: usize) -> Vec<TaskId> {
    let templates: Vec<TaskTemplate> = (0..n).map(|i| template(&format!("t{i}"))).collect();
    let specs = expand("q", set, &templates, &SubmitLimits::default()).unwrap();
    match apply(s, 1, Command::Submit { client_request_id: set.into(), queue: "q".into(), task_set: set.into(), specs, body_digest: 0 }) {
        CommandResult::Submitted { task_ids } => task_ids,
        other => panic!("submit failed: {other:?}"),
    }
}

#[test]
fn an_attempt_costs_node_price_times_hours_run_times_its_share_of_the_node() {
    let mut s = setup();
    let id = submit(&mut s, "r", &[template("a")])[0];
    // A quarter of a $3.60/h node, pending for 10 minutes (free), running for half an hour.
    assert_eq!(lease_priced(&mut s, 1_000, id, 1, node("a", "n1"), LeaseCost::new(3.6, 0.25)), CommandResult::Count(1));
    report(&mut s, 2_000, "a", id, 1, AttemptStatus::Pending);
    report(&mut s, 602_000, "a", id, 1, AttemptStatus::Running);
    assert_eq!(s.task(id).unwrap().running_cost_nano_usd(602_000 + HALF_HOUR_MS / 2), 225_000_000, "accrues while it runs");
    report(&mut s, 602_000 + HALF_HOUR_MS, "a", id, 1, AttemptStatus::Succeeded);

    let t = s.task(id).unwrap();
    assert_eq!(t.cost_nano_usd, 450_000_000, "$0.45");
    assert_eq!(t.running_cost_nano_usd(10 * HALF_HOUR_MS), 0, "nothing accrues once it ended");
    assert_eq!(s.task_set("q", "s").unwrap().cost_nano_usd, 450_000_000);
    assert_eq!(s.queue_cost("q").total_nano_usd, 450_000_000);
    let ended = s.task_set("q", "s").unwrap().events.iter().find(|e| e.kind == EventKind::Succeeded).unwrap();
    assert_eq!(ended.cost_nano_usd, 450_000_000, "the event that ends an attempt says what it cost");
}

#[test]
fn every_ending_of_an_attempt_counts_and_queue_sums_equal_the_sum_over_task_sets() {
    let mut s = setup();
    let a = submit_to(&mut s, "one", 3);
    let b = submit_to(&mut s, "two", 2);
    let price = LeaseCost::new(10.0, 0.5); // $5 per hour of run
    let hour = 3_600_000;
    for id in a.iter().chain(&b) {
        let cluster = if *id == b[1] { "b" } else { "a" };
        lease_priced(&mut s, 10, *id, 1, node(cluster, "n1"), price);
        report(&mut s, 100, cluster, *id, 1, AttemptStatus::Running);
    }
    // a[0] fails (retried), a[1] is preempted, a[2] is cancelled, b[0] succeeds, b[1]'s
    // cluster ("b") is lost: each after one hour of running.
    let t1 = 100 + hour;
    report(&mut s, t1, "a", a[0], 1, failed(FailureKind::Error));
    let p = PreemptDecision { task: a[1], attempt: 1, reason: "reclaimed".into() };
    apply(&mut s, t1, Command::Schedule(ScheduleDecisions { preemptions: vec![p], ..Default::default() }));
    apply(&mut s, t1, Command::Cancel { target: CancelTarget::Tasks(vec![a[2]]), reason: String::new() });
    report(&mut s, t1, "a", b[0], 1, AttemptStatus::Succeeded);
    apply(&mut s, t1, Command::ClusterLost { cluster: "b".into(), term: None });

    let five = 5 * crate::cost::NANO_USD_PER_USD;
    for id in a.iter().chain(&b) {
        assert_eq!(s.task(*id).unwrap().cost_nano_usd, five, "task {id}: {:?}", s.task(*id).unwrap().state);
        assert!(s.task(*id).unwrap().running_since_ms.is_none());
    }
    let one = s.task_set("q", "one").unwrap().cost_nano_usd;
    let two = s.task_set("q", "two").unwrap().cost_nano_usd;
    assert_eq!((one, two), (3 * five, 2 * five));
    assert_eq!(s.queue_cost("q").total_nano_usd, one + two);
    assert_eq!(s.queue_cost("q").spent_on(crate::cost::utc_day(t1)), one + two);

    // The retried task runs again: its second attempt adds to the first.
    let t2 = t1 + hour; // after its backoff
    assert_eq!(lease_priced(&mut s, t2, a[0], 2, node("a", "n2"), LeaseCost::new(1.0, 1.0)), CommandResult::Count(1));
    report(&mut s, t2, "a", a[0], 2, AttemptStatus::Running);
    report(&mut s, t2 + hour, "a", a[0], 2, AttemptStatus::Succeeded);
    assert_eq!(s.task(a[0]).unwrap().cost_nano_usd, five + crate::cost::NANO_USD_PER_USD);
    assert_eq!(s.queue_cost("q").total_nano_usd, s.task_sets().map(|t| t.cost_nano_usd).sum::<u64>());
}

#[test]
fn an_attempt_that_never_ran_or_had_no_price_costs_nothing() {
    let mut s = setup();
    let ids = submit(&mut s, "r", &[template("a"), template("b")]);
    lease_priced(&mut s, 1, ids[0], 1, node("a", "n1"), LeaseCost::new(50.0, 1.0));
    report(&mut s, 2, "a", ids[0], 1, AttemptStatus::Pending);
    report(&mut s, 3_600_000, "a", ids[0], 1, failed(FailureKind::Unschedulable));
    lease_priced(&mut s, 1, ids[1], 1, node("a", "n1"), LeaseCost::default());
    report(&mut s, 2, "a", ids[1], 1, AttemptStatus::Running);
    report(&mut s, 3_600_000, "a", ids[1], 1, AttemptStatus::Succeeded);
    assert_eq!(s.queue_cost("q").total_nano_usd, 0);
    assert_eq!(s.task(ids[0]).unwrap().cost_nano_usd + s.task(ids[1]).unwrap().cost_nano_usd, 0);
}

#[test]
fn costs_and_running_attempts_survive_a_snapshot_round_trip() {
    let mut s = setup();
    let ids = submit(&mut s, "r", &[template("a"), template("b")]);
    for id in &ids {
        lease_priced(&mut s, 1, *id, 1, node("a", "n1"), LeaseCost::new(2.0, 0.5));
        report(&mut s, 1_000, "a", *id, 1, AttemptStatus::Running);
    }
    report(&mut s, 1_000 + 3_600_000, "a", ids[0], 1, AttemptStatus::Succeeded);
    let bytes = serde_json::to_vec(&s).unwrap();
    let mut back: State = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.queue_cost("q").total_nano_usd, crate::cost::NANO_USD_PER_USD);
    // The running attempt goes on after the restore and is charged from its start.
    report(&mut back, 1_000 + 2 * 3_600_000, "a", ids[1], 1, AttemptStatus::Succeeded);
    assert_eq!(back.task(ids[1]).unwrap().cost_nano_usd, 2 * crate::cost::NANO_USD_PER_USD);
    assert_eq!(back.queue_cost("q").total_nano_usd, 3 * crate::cost::NANO_USD_PER_USD);
}

#[test]
fn a_queue_day_of_spend_starts_again_at_utc_midnight() {
    let mut s = setup();
    let ids = submit(&mut s, "r", &[template("a"), template("b")]);
    let day = 20_000 * MS_PER_DAY;
    for (id, end) in ids.iter().zip([day - 1, day + 3_600_000]) {
        lease_priced(&mut s, end - 3_600_000, *id, 1, node("a", "n1"), LeaseCost::new(1.0, 1.0));
        report(&mut s, end - 3_600_000, "a", *id, 1, AttemptStatus::Running);
        report(&mut s, end, "a", *id, 1, AttemptStatus::Succeeded);
    }
    let q = s.queue_cost("q");
    assert_eq!(q.total_nano_usd, 2 * crate::cost::NANO_USD_PER_USD);
    assert_eq!(q.spent_on(20_000), crate::cost::NANO_USD_PER_USD, "only the attempt that ended after midnight");
    assert_eq!(s.queue_spent_today_nano_usd("q", day + 3_600_000), crate::cost::NANO_USD_PER_USD);
}
