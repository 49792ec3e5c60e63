//! Queues and priority classes.

use serde::{Deserialize, Serialize};

use crate::{Permit, ResourceLimits, Resources};

/// Where tasks wait. Queues share the federation by weight (dominant-resource fairness).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    pub name: String,
    /// Relative share; a queue of weight 3 gets three times the share of a queue of weight 1.
    /// Zero means "only what nobody else wants".
    pub weight: f64,
    /// Never preempted below this.
    #[serde(default)]
    pub guarantee: Resources,
    /// Never scheduled above this.
    #[serde(default)]
    pub limit: ResourceLimits,
    #[serde(default)]
    pub owner: String,
    /// Most running tasks of this queue that may be preempted in one scheduling cycle.
    #[serde(default = "default_disruption_budget")]
    pub disruption_budget: u32,
    /// Who may submit to, cancel in, watch or administer this queue, besides cluster admins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permits: Vec<Permit>,
    /// Most dollars the queue may spend per UTC day; 0: no budget. Once the day's spend
    /// reaches it the queue gets no new leases until 00:00 UTC (running tasks go on).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub budget_usd_per_day: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// The largest daily budget a queue may have (a typo guard, not a policy).
pub const MAX_BUDGET_USD_PER_DAY: f64 = 1e9;

pub const DEFAULT_DISRUPTION_BUDGET: u32 = 64;

fn default_disruption_budget() -> u32 {
    DEFAULT_DISRUPTION_BUDGET
}

impl Queue {
    pub fn new(name: impl Into<String>, weight: f64) -> Self {
        Queue {
            name: name.into(),
            weight,
            guarantee: Resources::default(),
            limit: ResourceLimits::default(),
            owner: String::new(),
            disruption_budget: DEFAULT_DISRUPTION_BUDGET,
            permits: Vec::new(),
            budget_usd_per_day: 0.0,
        }
    }
}

/// A named priority. Higher `priority` goes first; `preemptible` tasks may be evicted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PriorityClass {
    pub name: String,
    pub priority: i32,
    pub preemptible: bool,
}

impl PriorityClass {
    /// The classes every federation has. `default` is preemptible so that fair-share reclaim
    /// works out of the box; work that must not be disturbed uses `critical`.
    pub fn builtin() -> Vec<PriorityClass> {
        vec![
            PriorityClass { name: "critical".into(), priority: 1000, preemptible: false },
            PriorityClass { name: "default".into(), priority: 100, preemptible: true },
            PriorityClass { name: "best-effort".into(), priority: 0, preemptible: true },
        ]
    }

    pub fn lookup(name: &str) -> Option<PriorityClass> {
        Self::builtin().into_iter().find(|p| p.name == name)
    }
}
