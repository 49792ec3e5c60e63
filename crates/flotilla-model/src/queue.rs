//! Queues and priority classes.

use serde::{Deserialize, Serialize};

use crate::{check_name, ClassLimit, FieldError, Permit, ResourceLimits, Resources};

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
    /// The fraction of its fair share (0..=1) below which fair-share reclaim never takes
    /// from this queue; `None`: the scheduler's default (`flotilla_sched::Config`, 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_fraction: Option<f64>,
    /// Caps on what the queue's tasks of one priority class hold at once (see
    /// [`crate::ClassLimit`]), besides `limit`. Not written when empty, so entries and
    /// snapshots of queues without them read and write as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priority_class_limits: Vec<ClassLimit>,
}

/// The protected fraction of queues that set none, unless the server sets another: a queue
/// keeps all of its fair share.
pub const DEFAULT_PROTECTED_FRACTION: f64 = 1.0;

/// True when `f` is a valid protected fraction of fair share.
pub fn is_protected_fraction(f: f64) -> bool {
    (0.0..=1.0).contains(&f)
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
            protected_fraction: None,
            priority_class_limits: Vec::new(),
        }
    }
}

/// A named priority. Higher `priority` goes first; `preemptible` tasks may be evicted.
///
/// Operators define them (`flotilla priority-class create`); a federation starts with the
/// three of [`PriorityClass::builtin`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PriorityClass {
    pub name: String,
    pub priority: i32,
    pub preemptible: bool,
    /// Free text for people; not written when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// Most priority classes a federation holds.
pub const MAX_PRIORITY_CLASSES: usize = 64;
/// Longest description of a priority class.
pub const MAX_PRIORITY_CLASS_DESCRIPTION_BYTES: usize = 256;
/// Priorities lie in `-MAX_PRIORITY..=MAX_PRIORITY` (Kubernetes reserves larger values for
/// its own system classes).
pub const MAX_PRIORITY: i32 = 1_000_000_000;
/// The class of a task that names none.
pub const DEFAULT_PRIORITY_CLASS: &str = "default";

impl PriorityClass {
    /// The classes a federation starts with. `default` is preemptible so that fair-share
    /// reclaim works out of the box; work that must not be disturbed uses `critical`.
    pub fn builtin() -> Vec<PriorityClass> {
        let class = |name: &str, priority, preemptible, description: &str| PriorityClass {
            name: name.into(),
            priority,
            preemptible,
            description: description.into(),
        };
        vec![
            class("critical", 1000, false, "never preempted"),
            class(DEFAULT_PRIORITY_CLASS, 100, true, "tasks that name no class"),
            class("best-effort", 0, true, "runs on what nobody else wants"),
        ]
    }

    /// Every bad field of a class an operator wrote: a DNS-1123 name, a priority in range,
    /// a bounded description.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check_name("name", &self.name, &mut errors);
        if !(-MAX_PRIORITY..=MAX_PRIORITY).contains(&self.priority) {
            errors.push(FieldError::new("priority", format!("{} must be between -{MAX_PRIORITY} and {MAX_PRIORITY}", self.priority)));
        }
        if self.description.len() > MAX_PRIORITY_CLASS_DESCRIPTION_BYTES {
            errors.push(FieldError::new(
                "description",
                format!("{} bytes exceed the limit of {MAX_PRIORITY_CLASS_DESCRIPTION_BYTES}", self.description.len()),
            ));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_classes_are_valid_and_default_is_among_them() {
        let classes = PriorityClass::builtin();
        assert!(classes.iter().all(|c| c.validate().is_empty()), "{classes:?}");
        assert!(classes.iter().any(|c| c.name == DEFAULT_PRIORITY_CLASS && c.preemptible));
    }

    #[test]
    fn a_bad_class_names_every_bad_field() {
        let bad = PriorityClass { name: "Urgent!".into(), priority: i32::MAX, preemptible: true, description: "x".repeat(300) };
        let paths: Vec<String> = bad.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["name", "priority", "description"]);
    }
}
