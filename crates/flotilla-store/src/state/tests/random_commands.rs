//! Property-style test: long random command sequences (well-formed, stale and malformed
//! decisions mixed) keep every invariant of [`State::check_invariants`].

use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng};

use flotilla_model::PriorityClass;

use super::*;

/// A seeded generator, so a failing seed replays exactly.
struct Rng(SmallRng);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0.random_range(0..n.max(1))
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len() as u64) as usize])
    }
}

const CLUSTERS: [&str; 3] = ["a", "b", "c"];

/// What the generator produced, to check that the sequences reached the interesting paths.
#[derive(Default)]
struct Reached {
    leased: u64,
    succeeded: u64,
    gangs_leased: u64,
    /// Tasks of the operator-defined class `urgent` accepted.
    urgent_submitted: u64,
}

fn random_submit(rng: &mut Rng) -> Command {
    let n = 1 + rng.below(3) as usize;
    let mut templates = Vec::new();
    for i in 0..n {
        let mut t = if rng.chance(25) { gang(2 + rng.below(2) as u32) } else { template("x") };
        t.name = format!("t{i}");
        if t.gang.is_none() && rng.chance(40) {
            t.count = Some(1 + rng.below(3) as u32);
        }
        t.retry = Some(flotilla_model::RetryTemplate { max_attempts: Some(1 + rng.below(3) as u32), ..Default::default() });
        // A class that comes and goes (created and deleted below): refused while missing.
        if rng.chance(30) {
            t.priority_class = Some("urgent".into());
        }
        // Dependencies on earlier templates only, so no cycles; reversing the file below
        // turns them into dependencies on later ones.
        if i > 0 && rng.chance(40) {
            t.after = vec![format!("t{}", rng.below(i as u64))];
        }
        templates.push(t);
    }
    // Reversed, every dependency names a task defined later in the file.
    if rng.chance(50) {
        templates.reverse();
    }
    let task_set = format!("s{}", rng.below(3));
    let specs = expand("q", &task_set, &templates, &SubmitLimits::default()).expect("generated templates are valid");
    Command::Submit { client_request_id: format!("req-{}", rng.below(40)), queue: "q".into(), task_set, specs, body_digest: 0 }
}

/// Mostly what a scheduler would decide, sometimes stale attempts, split gangs, gangs
/// across clusters, and preemptions of single gang members.
fn random_schedule(rng: &mut Rng, s: &State, now: u64, reached: &mut Reached) -> Command {
    let queued: Vec<&TaskRecord> = s.queued().filter(|t| s.is_schedulable(t, now)).collect();
    let mut d = ScheduleDecisions::default();
    let mut taken = BTreeSet::new();
    for _ in 0..1 + rng.below(4) {
        let Some(t) = rng.pick(&queued) else { break };
        let cluster = *rng.pick(&CLUSTERS).unwrap();
        let members: Vec<TaskId> = match &t.spec.gang {
            Some(g) if !rng.chance(10) => (0..g.size as u64).map(|i| TaskId(g.id.0 + i)).collect(),
            _ => vec![t.id],
        };
        for m in members {
            let Some(mt) = s.task(m) else { continue };
            if !taken.insert(m) {
                continue;
            }
            let attempt = if rng.chance(5) { mt.attempt } else { mt.attempt + 1 };
            let cluster = if rng.chance(5) { *rng.pick(&CLUSTERS).unwrap() } else { cluster };
            d.leases.push(LeaseDecision { task: m, attempt, node: node(cluster, &format!("n{}", rng.below(4))), cost: Default::default() });
        }
    }
    let active: Vec<&TaskRecord> = s.active().collect();
    if rng.chance(20) {
        if let Some(t) = rng.pick(&active) {
            let attempt = if rng.chance(10) { t.attempt.saturating_sub(1) } else { t.attempt };
            d.preemptions.push(PreemptDecision { task: t.id, attempt, reason: "reclaimed".into() });
        }
    }
    reached.leased += d.leases.len() as u64;
    reached.gangs_leased += d.leases.iter().filter(|l| s.task(l.task).is_some_and(|t| t.spec.gang.is_some())).count() as u64;
    Command::Schedule(d)
}

fn random_report(rng: &mut Rng, s: &State, reached: &mut Reached) -> Option<Command> {
    let active: Vec<&TaskRecord> = s.active().collect();
    let t = rng.pick(&active)?;
    let own = t.lease.as_ref().map_or("a", |l| l.cluster.as_str());
    let cluster = if rng.chance(5) { *rng.pick(&CLUSTERS).unwrap() } else { own };
    let attempt = if rng.chance(5) { t.attempt.saturating_sub(1) } else { t.attempt };
    let kinds = [FailureKind::Error, FailureKind::OomKilled, FailureKind::Evicted, FailureKind::Lost, FailureKind::ImagePull];
    let status = match rng.below(10) {
        0..=1 => AttemptStatus::Pending,
        2..=3 => AttemptStatus::Running,
        4..=7 => AttemptStatus::Succeeded,
        _ => failed(*rng.pick(&kinds).unwrap()),
    };
    if status == AttemptStatus::Succeeded {
        reached.succeeded += 1;
    }
    let event = AttemptEvent { task: t.id, attempt, status, node: "n".into(), time_ms: 0 };
    Some(Command::ReportEvents { cluster: cluster.into(), events: vec![event] })
}

fn random_command(rng: &mut Rng, s: &State, now: u64, reached: &mut Reached) -> Option<Command> {
    let cluster = rng.pick(&CLUSTERS).unwrap().to_string();
    let task_set = format!("s{}", rng.below(3));
    Some(match rng.below(100) {
        0..=14 => random_submit(rng),
        15..=44 => random_schedule(rng, s, now, reached),
        45..=79 => return random_report(rng, s, reached),
        80..=83 => {
            let ids: Vec<TaskId> = s.tasks().map(|t| t.id).collect();
            Command::Cancel { target: CancelTarget::Tasks(rng.pick(&ids).into_iter().copied().collect()), reason: String::new() }
        }
        84..=85 => Command::Cancel { target: CancelTarget::TaskSet { queue: "q".into(), task_set }, reason: String::new() },
        86..=87 => Command::ClusterLost { cluster, term: None },
        88 => {
            // An executor shows ended attempts gone: mostly the right ones, sometimes not.
            let attempts: Vec<(TaskId, u32)> =
                s.stopping_in(&cluster).map(|t| (t.id, t.attempt.saturating_sub(u32::from(rng.chance(10))))).collect();
            Command::AttemptsGone { cluster, attempts }
        }
        89..=93 => Command::ClusterSeen { cluster, term: None },
        94..=96 => Command::Compact {
            finished_before_ms: now.saturating_sub(rng.below(5_000)),
            max_tasks: 20 + rng.below(200) as usize,
            term: None,
        },
        97 => Command::Resume { queue: "q".into(), task_set },
        98 => {
            let urgent = PriorityClass { name: "urgent".into(), priority: 500, preemptible: true, description: String::new() };
            Command::PutPriorityClass { class: urgent, create: rng.chance(50) }
        }
        _ => Command::DeletePriorityClass { name: "urgent".into() },
    })
}

#[test]
fn random_command_sequences_keep_every_state_invariant() {
    let mut reached = Reached::default();
    for seed in 0..150u64 {
        let mut rng = Rng(SmallRng::seed_from_u64(seed));
        let mut s = setup();
        s.limits.max_request_ids = 16;
        s.limits.max_events_per_task_set = 50;
        s.limits.breaker_failures = 6;
        let mut now_ms: u64 = 10;
        for step in 0..300 {
            // Concurrently proposed entries may commit with an earlier clock reading.
            now_ms = if rng.chance(10) { now_ms.saturating_sub(rng.below(3_000)) } else { now_ms + rng.below(1_500) };
            let Some(c) = random_command(&mut rng, &s, now_ms, &mut reached) else { continue };
            let commands = vec![c];
            // Debug builds already check inside `apply`; checking here covers release test runs.
            let result = s.apply(&Request { now_ms, commands: commands.clone() });
            if let (Command::Submit { specs, .. }, Some(CommandResult::Submitted { .. })) = (&commands[0], result.results.first()) {
                reached.urgent_submitted += specs.iter().filter(|t| t.priority_class == "urgent").count() as u64;
            }
            if let Err(broken) = s.check_invariants() {
                panic!("seed {seed}, step {step}: {broken}");
            }
        }
    }
    // The sequences must reach the paths the invariants are about, or the test proves little.
    assert!(
        reached.leased > 1_000 && reached.succeeded > 500 && reached.gangs_leased > 100 && reached.urgent_submitted > 100,
        "reached too little: {} leases, {} successes, {} gang leases, {} urgent tasks",
        reached.leased,
        reached.succeeded,
        reached.gangs_leased,
        reached.urgent_submitted
    );
}
