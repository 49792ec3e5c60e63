//! The leader loop: scheduling cycles, cluster-loss detection and compaction.
//!
//! Only the Raft leader runs a cycle. It runs every `schedule_interval`, or sooner when
//! work or capacity changed (a submit, an event, a new cluster), but never more often
//! than every [`MIN_CYCLE_GAP`]: bursts of events are batched into one cycle and one
//! Raft entry. A new leader first waits one sync interval so that every executor has
//! reported to it: capacity is soft state and deciding on an empty picture would be wrong.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use flotilla_model::{Resources, TaskId};
use flotilla_sched::Input;
use flotilla_store::{ClusterState, Command, CommandResult, LeaseDecision, PreemptDecision, ScheduleDecisions};
use tracing::Instrument;

use crate::backlog::LeaderBacklog;
use crate::Context;

/// Shortest time between two cycles, so that a burst of triggers becomes one cycle.
pub const MIN_CYCLE_GAP: Duration = Duration::from_millis(50);
/// How often finished tasks are considered for compaction.
const COMPACT_EVERY: Duration = Duration::from_secs(60);
/// Shortest time between two refreshes of the state's gauges by this loop. Each refresh walks
/// every active task under the state's read lock, which holds off the state machine's apply;
/// run after every cycle, it took 29% of the replicas' CPU samples at 5,000 starts per second
/// and 150,000 running tasks (BENCHMARKS.md, "End to end at real density"). A
/// scrape of `/metrics` refreshes them itself, so a scrape never reads stale gauges.
const STATE_METRICS_EVERY: Duration = Duration::from_secs(1);

/// Most reasons for unscheduled tasks committed in one entry; the rest follow next cycle.
const MAX_REASONS_PER_ENTRY: usize = 10_000;
/// Longest reason kept for a queued task (they are shown in listings, not parsed).
const MAX_REASON_BYTES: usize = 512;

pub async fn run(ctx: Arc<Context>) {
    // The term this replica last led in: leadership in a new term starts afresh, even when
    // this replica never saw itself as a follower in between.
    let mut led_term: Option<u64> = None;
    let mut last_compact = Instant::now();
    // Kept between cycles (and leaderships): see `crate::backlog`.
    let mut backlog = Some(LeaderBacklog::default());
    let mut metrics_at: Option<Instant> = None;
    let mut refresh_metrics = move |ctx: &Context| {
        if metrics_at.is_none_or(|t| t.elapsed() >= STATE_METRICS_EVERY) {
            refresh_state_metrics(ctx);
            metrics_at = Some(Instant::now());
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.schedule_interval) => {}
            _ = ctx.schedule_now.notified() => {}
        }
        tokio::time::sleep(MIN_CYCLE_GAP).await;
        refresh_raft_metrics(&ctx);
        let term = if ctx.is_leader() { ctx.fenced_term().await.ok() } else { None };
        if ctx.is_leader() && term.is_none() {
            // A leader a majority has not confirmed recently decides nothing (invariant 2).
            refresh_metrics(&ctx);
            continue;
        }
        if term != led_term {
            let mut cap = ctx.capacity.lock().unwrap_or_else(|e| e.into_inner());
            cap.reset(term.map(|_| Instant::now()));
            drop(cap);
            tracing::info!(leader = term.is_some(), term = ctx.replica.current_term(), "leadership changed");
            led_term = term;
        }
        let Some(term) = term else {
            refresh_metrics(&ctx);
            continue;
        };
        ensure_installation(&ctx).await;
        let leader_for = ctx.capacity.lock().unwrap_or_else(|e| e.into_inner()).leader_since.map_or(Duration::ZERO, |t| t.elapsed());
        if leader_for < ctx.config.sync_interval + ctx.config.sync_interval / 2 {
            // Give every executor one sync to report to the new leader first.
            continue;
        }
        let span = tracing::info_span!("cycle", term);
        async {
            detect_lost_clusters(&ctx, term).await;
            if let Err(e) = cycle(&ctx, term, &mut backlog).await {
                tracing::warn!(error = %e, "scheduling cycle not committed");
            }
            if last_compact.elapsed() >= COMPACT_EVERY {
                last_compact = Instant::now();
                compact(&ctx, term).await;
            }
        }
        .instrument(span)
        .await;
        refresh_metrics(&ctx);
    }
}

/// One scheduling cycle: bring the backlog up to date, decide (off the async runtime),
/// commit. The backlog travels to the blocking thread and back; if the scheduler panics it
/// is lost and the next cycle rebuilds it.
pub async fn cycle(ctx: &Arc<Context>, term: u64, backlog: &mut Option<LeaderBacklog>) -> Result<(), tonic::Status> {
    let started = Instant::now();
    let now = ctx.config.clock.now_ms();
    // Only clusters whose executor holds a lease now get new work: one whose lease lapsed is
    // stopping its attempts, and leases handed to it would only wait for it to be lost.
    let fresh_within = ctx.config.executor_lease();
    let fresh_nodes = ctx.capacity.lock().unwrap_or_else(|e| e.into_inner()).fresh_nodes(Instant::now(), fresh_within);
    let mut kept = backlog.take().unwrap_or_default();
    let (input, refresh, draining) = ctx.read(|s| {
        let refresh = kept.refresh(s, now);
        // A cordoned cluster's nodes are left out: it gets no new lease (the store refuses
        // one too), and the scheduler does not pick victims there (the drain does).
        let ready = |c: &str| s.cluster(c).is_some_and(|r| r.state == ClusterState::Ready && !r.cordoned);
        let input = Input {
            queues: s.queues().cloned().collect(),
            nodes: fresh_nodes.into_iter().filter(|n| ready(&n.cluster)).collect(),
            queued: Vec::new(),
            running: kept.lend_running(),
            config: ctx.config.sched.clone(),
            held_queues: crate::cost::held_queues(s, now),
        };
        let draining: std::collections::BTreeSet<String> = s.draining_clusters().map(str::to_string).collect();
        (input, refresh, draining)
    });
    if refresh.rebuilt {
        tracing::info!(queued = refresh.read, elapsed_ms = started.elapsed().as_millis() as u64, "scheduling backlog rebuilt");
    }
    ctx.metrics.schedulable_tasks.set(kept.backlog.len() as f64);
    if kept.backlog.is_empty() && input.queues.is_empty() {
        kept.give_back_running(input.running);
        *backlog = Some(kept);
        return Ok(());
    }
    let (mut input, mut kept, decisions) = flotilla_store::run_blocking(move || {
        let mut d = flotilla_sched::schedule_backlog(&input, &kept.backlog);
        // Drains move tasks through the same preemption path, within what the cycle's own
        // preemptions left of each queue's disruption budget.
        let drained = flotilla_sched::drain_preemptions(&input, &draining, &d.preemptions);
        d.preemptions.extend(drained);
        (input, kept, d)
    })
    .await
    .map_err(|e| tonic::Status::internal(format!("scheduler panicked: {e}")))?;
    kept.give_back_running(std::mem::take(&mut input.running));
    *backlog = Some(kept);
    let leased_nodes = crate::cost::leased_nodes(&input.nodes, decisions.leases.iter().map(|l| &l.node));
    let held = std::mem::take(&mut input.held_queues);
    drop(input);
    *ctx.shares.lock().unwrap_or_else(|e| e.into_inner()) = decisions.queue_shares.clone();
    for share in &decisions.queue_shares {
        ctx.metrics.queue_fair_share.with_label_values(&[share.queue.as_str()]).set(share.fair_share);
        ctx.metrics.queue_actual_share.with_label_values(&[share.queue.as_str()]).set(share.actual_share);
    }

    // Attempts as the leader sees them now; applying the entry re-checks them, so a
    // decision made on a state that moved on is dropped, never double-applied. Reasons are
    // compared with the committed ones, so a new leader re-commits none that did not change.
    let (leases, preemptions, reasons) = ctx.read(|s| {
        let leases: Vec<LeaseDecision> = decisions
            .leases
            .iter()
            .filter_map(|l| {
                s.task(l.task).map(|t| LeaseDecision {
                    task: l.task,
                    attempt: t.attempt + 1,
                    node: l.node.clone(),
                    cost: crate::cost::lease_cost(&leased_nodes, &l.node, &t.spec.resources),
                })
            })
            .collect();
        let preemptions: Vec<PreemptDecision> = decisions
            .preemptions
            .iter()
            .filter_map(|p| s.task(p.task).map(|t| PreemptDecision { task: p.task, attempt: t.attempt, reason: p.reason.clone() }))
            .collect();
        let mut reasons: Vec<(TaskId, String)> = decisions
            .unscheduled
            .iter()
            .map(|u| (u.task, flotilla_model::truncate(&u.reason, MAX_REASON_BYTES)))
            .filter(|(id, reason)| s.task(*id).is_some_and(|t| t.reason != *reason))
            .take(MAX_REASONS_PER_ENTRY)
            .collect();
        // The scheduler did not look at the tasks of queues held by their budget.
        reasons.extend(crate::cost::held_reasons(s, &held, MAX_REASONS_PER_ENTRY - reasons.len()));
        (leases, preemptions, reasons)
    });
    if leases.is_empty() && preemptions.is_empty() && reasons.is_empty() {
        ctx.metrics.schedule_cycle_seconds.observe(started.elapsed().as_secs_f64());
        return Ok(());
    }
    let (n_leases, n_preempt) = (leases.len(), preemptions.len());
    if n_leases >= ctx.config.sched.max_leases_per_cycle || reasons.len() >= MAX_REASONS_PER_ENTRY {
        // The entry is full and more may fit: the next cycle follows at once (after the
        // minimum gap) instead of a whole schedule interval later.
        ctx.schedule_now.notify_one();
    }
    let decisions = ScheduleDecisions { term: Some(term), leases, preemptions, reasons };
    let result = ctx.propose_decision(Command::Schedule(decisions)).await?;
    ctx.metrics.schedule_cycle_seconds.observe(started.elapsed().as_secs_f64());
    ctx.metrics.placements_total.inc_by(n_leases as u64);
    ctx.metrics.preemptions_total.inc_by(n_preempt as u64);
    if n_leases + n_preempt > 0 {
        tracing::info!(
            leases = n_leases,
            preemptions = n_preempt,
            applied = ?result,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "scheduling cycle committed"
        );
    }
    Ok(())
}

/// Invariant 6: a cluster silent for `cluster_lost_after` has its tasks requeued elsewhere.
/// Silence is measured by this leader alone, from when it took over at the earliest: an
/// executor lease granted by an earlier leader ended before this one was elected.
async fn detect_lost_clusters(ctx: &Arc<Context>, term: u64) {
    let now = Instant::now();
    let lost_after = ctx.config.cluster_lost_after;
    let ready: Vec<String> = ctx.read(|s| s.clusters().filter(|c| c.state == ClusterState::Ready).map(|c| c.name.clone()).collect());
    for cluster in ready {
        let silent_for = {
            let cap = ctx.capacity.lock().unwrap_or_else(|e| e.into_inner());
            // A cluster that never reported to this leader counts from when it took over.
            cap.age(&cluster, now).or_else(|| cap.leader_since.map(|t| now.saturating_duration_since(t))).unwrap_or_default()
        };
        if silent_for <= lost_after {
            continue;
        }
        tracing::warn!(cluster = %cluster, silent_for_s = silent_for.as_secs(), "cluster lost: requeueing its tasks");
        match ctx.propose_decision(Command::ClusterLost { cluster: cluster.clone(), term: Some(term) }).await {
            Ok(CommandResult::Count(n)) => {
                ctx.metrics.clusters_lost_total.inc();
                ctx.capacity.lock().unwrap_or_else(|e| e.into_inner()).reports.remove(&cluster);
                tracing::warn!(cluster = %cluster, requeued = n, "cluster marked lost");
            }
            Ok(other) => tracing::warn!(cluster = %cluster, result = ?other, "cluster loss not applied"),
            Err(e) => tracing::warn!(cluster = %cluster, error = %e, "could not commit cluster loss"),
        }
    }
}

/// A group without an installation id gets one from its first confirmed leader. Executors
/// wait for it (`Register`) before they touch their cluster. Racing leaders are harmless:
/// the first id applied wins.
async fn ensure_installation(ctx: &Arc<Context>) {
    if !ctx.read(|s| s.installation_id().is_empty()) {
        return;
    }
    let id = match crate::auth::random_hex(8) {
        Ok(id) => id,
        Err(e) => return tracing::error!(error = %e, "cannot name the installation"),
    };
    match ctx.propose(Command::SetInstallation { id }).await {
        Ok(_) => tracing::info!(installation = %ctx.read(|s| s.installation_id().to_string()), "installation named"),
        Err(e) => tracing::warn!(error = %e, "could not commit the installation id"),
    }
}

async fn compact(ctx: &Arc<Context>, term: u64) {
    let retention_ms = ctx.config.finished_retention.as_millis() as u64;
    let cutoff = ctx.config.clock.now_ms().saturating_sub(retention_ms);
    let max_tasks = ctx.config.max_tasks;
    let needed = ctx.read(|s| s.task_count() > max_tasks || s.tasks().any(|t| t.state.is_terminal() && t.updated_ms < cutoff));
    if needed {
        match ctx.propose_decision(Command::Compact { finished_before_ms: cutoff, max_tasks, term: Some(term) }).await {
            Ok(r) => tracing::info!(result = ?r, "compacted finished tasks"),
            Err(e) => tracing::warn!(error = %e, "compaction not committed"),
        }
    }
}

pub fn refresh_raft_metrics(ctx: &Context) {
    let m = ctx.replica.metrics();
    let (committed, applied) = (m.commit_index.unwrap_or(0), m.last_applied_index.unwrap_or(0));
    ctx.metrics.raft_term.set(m.term as i64);
    ctx.metrics.raft_leader.set(m.leader.unwrap_or(0) as i64);
    ctx.metrics.raft_is_leader.set(i64::from(ctx.is_leader()));
    ctx.metrics.raft_commit_index.set(committed as i64);
    ctx.metrics.raft_applied_index.set(applied as i64);
    ctx.metrics.raft_apply_lag.set(committed.saturating_sub(applied) as i64);
}

/// Task counts, cluster capacity and usage, sync ages.
pub fn refresh_state_metrics(ctx: &Context) {
    // Copied out first: the capacity and state locks are never held together.
    let capacity = ctx.capacity.lock().unwrap_or_else(|e| e.into_inner()).summaries(Instant::now());
    ctx.read(|s| {
        for q in s.queues() {
            let counts = s.counts(&q.name);
            for (state, n) in flotilla_model::TaskState::ALL.iter().zip(counts) {
                ctx.metrics.tasks.with_label_values(&[q.name.as_str(), state.as_str()]).set(n as i64);
            }
        }
        ctx.metrics.events_trimmed_total.set(s.events_trimmed as i64);
        ctx.metrics.clusters.refresh(s);
        for c in s.clusters() {
            ctx.metrics.cluster_ready.with_label_values(&[c.name.as_str()]).set(i64::from(c.state == ClusterState::Ready));
            let summary = capacity.get(&c.name);
            let allocatable = summary.map(|r| r.allocatable.clone()).unwrap_or_default();
            let mut used = Resources::default();
            for t in s.active_in(&c.name) {
                used.add(&t.spec.resources);
            }
            for (resource, a, u) in [
                ("cpu", allocatable.cpu_millis as f64 / 1000.0, used.cpu_millis as f64 / 1000.0),
                ("memory_bytes", allocatable.memory_bytes as f64, used.memory_bytes as f64),
                ("gpu", allocatable.gpu as f64, used.gpu as f64),
            ] {
                ctx.metrics.cluster_capacity.with_label_values(&[c.name.as_str(), resource]).set(a);
                ctx.metrics.cluster_usage.with_label_values(&[c.name.as_str(), resource]).set(u);
            }
            if let Some(r) = summary {
                ctx.metrics.executor_sync_age_seconds.with_label_values(&[c.name.as_str()]).set(r.age.as_secs_f64());
            }
        }
    });
}
