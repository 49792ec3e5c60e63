//! Cost as the leader and the readers see it: the price and share stamped into each lease,
//! the queues whose daily budget is spent (held out of the cycle), and the
//! `flotilla_cost_usd_total` counter. The sums themselves are replicated state
//! (`flotilla_store::cost`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use flotilla_model::{Node, NodeRef, Resources, TaskId};
use flotilla_store::cost::{usd, NANO_USD_PER_USD};
use flotilla_store::{LeaseCost, State};

/// The reason a queued task of a queue over its daily budget gets.
pub fn budget_reason(budget_usd_per_day: f64) -> String {
    format!("daily budget {} spent; resumes at 00:00 UTC", dollars(budget_usd_per_day))
}

/// "$12.34"; under a dollar "$0.0042", under a hundredth of a cent "$0.000021": small sums
/// do not all read $0.00.
pub fn dollars(usd: f64) -> String {
    match usd.abs() {
        x if x == 0.0 || x >= 1.0 => format!("${usd:.2}"),
        x if x >= 0.0001 => format!("${usd:.4}"),
        _ => format!("${usd:.6}"),
    }
}

/// Queues whose spend today (UTC, at `now_ms`) reached their daily budget, with the reason
/// their queued tasks get. Reads the running tasks only when some queue has a budget.
pub fn held_queues(s: &State, now_ms: u64) -> BTreeMap<String, String> {
    s.queues()
        .filter(|q| q.budget_usd_per_day > 0.0)
        .filter(|q| {
            let budget_nano_usd = (q.budget_usd_per_day * NANO_USD_PER_USD as f64) as u64;
            s.queue_spent_today_nano_usd(&q.name, now_ms) >= budget_nano_usd
        })
        .map(|q| (q.name.clone(), budget_reason(q.budget_usd_per_day)))
        .collect()
}

/// Reasons for the queued tasks of held queues that do not say so yet, at most `max`. The
/// scheduler does not look at these tasks (they take no turn), so the leader writes them.
pub fn held_reasons(s: &State, held: &BTreeMap<String, String>, max: usize) -> Vec<(TaskId, String)> {
    if held.is_empty() {
        return Vec::new();
    }
    s.queued().filter_map(|t| held.get(&t.spec.queue).filter(|r| t.reason != **r).map(|r| (t.id, r.clone()))).take(max).collect()
}

/// Allocatable and price of the nodes that leases name, found in one pass over `nodes`.
pub fn leased_nodes<'a>(nodes: &[Node], leased: impl Iterator<Item = &'a NodeRef>) -> HashMap<NodeRef, (Resources, f64)> {
    let mut wanted: HashMap<NodeRef, (Resources, f64)> = leased.map(|n| (n.clone(), (Resources::default(), 0.0))).collect();
    for n in nodes {
        if let Some(slot) = wanted.get_mut(&n.node_ref()) {
            *slot = (n.allocatable.clone(), n.price_per_hour_usd);
        }
    }
    wanted
}

/// The lease cost of a task on a node of `nodes` (zero for a node it does not know).
pub fn lease_cost(nodes: &HashMap<NodeRef, (Resources, f64)>, node: &NodeRef, task: &Resources) -> LeaseCost {
    nodes.get(node).map_or_else(LeaseCost::default, |(allocatable, price)| LeaseCost::of(task, allocatable, *price))
}

/// `flotilla_cost_usd_total{queue=…}` in Prometheus' text format: what each queue's ended
/// attempts cost, read from the replicated sums (exact, and a counter: it only grows).
/// Written here rather than through the `prometheus` registry, whose float counters can only
/// be incremented by deltas that would not add up exactly to the replicated total.
pub fn metric_text(s: &State) -> String {
    let mut out = String::from(
        "# HELP flotilla_cost_usd_total Dollars spent by the queue's ended attempts (node price x hours x share of the node)\n\
         # TYPE flotilla_cost_usd_total counter\n",
    );
    // Every queue, also those with nothing spent yet and those deleted since.
    let mut totals: BTreeMap<&str, u64> = s.queues().map(|q| (q.name.as_str(), 0)).collect();
    for (queue, c) in s.queue_costs() {
        totals.insert(queue.as_str(), c.total_nano_usd);
    }
    for (queue, nano_usd) in totals {
        // Queue names are DNS labels: nothing in them needs escaping in a label value.
        let _ = writeln!(out, "flotilla_cost_usd_total{{queue=\"{queue}\"}} {}", usd(nano_usd));
    }
    out
}

/// What a task set cost at `now_ms`: (its ended attempts, those plus its running attempts so
/// far), in nano-dollars; `None` when it does not exist. Reads the active tasks.
pub fn task_set_cost(s: &State, queue: &str, task_set: &str, now_ms: u64) -> Option<(u64, u64)> {
    let set = s.task_set(queue, task_set)?;
    let running = s
        .active()
        .filter(|t| t.spec.queue == queue && t.spec.task_set == task_set)
        .map(|t| t.running_cost_nano_usd(now_ms))
        .fold(0, u64::saturating_add);
    Some((set.cost_nano_usd, set.cost_nano_usd.saturating_add(running)))
}
