//! Why tasks stay queued: short texts a person reads, interned so that thousands of
//! tasks of one shape share one string, and bounded by `Config::max_reasons`.

use std::collections::HashMap;

use crate::Unscheduled;

#[derive(Default)]
pub(crate) struct ReasonTable {
    texts: Vec<String>,
    ids: HashMap<String, u32>,
}

impl ReasonTable {
    pub fn intern(&mut self, text: String) -> u32 {
        if let Some(id) = self.ids.get(&text) {
            return *id;
        }
        let id = self.texts.len() as u32;
        self.ids.insert(text.clone(), id);
        self.texts.push(text);
        id
    }

    pub fn text(&self, id: u32) -> &str {
        &self.texts[id as usize]
    }
}

/// Builds the unscheduled list: at most `max_reasons` distinct texts, in the order the
/// tasks are listed; tasks beyond it get one generic text so none is silently dropped.
pub(crate) fn unscheduled(
    table: &ReasonTable,
    tasks: impl Iterator<Item = (flotilla_model::TaskId, u32)>,
    max_reasons: usize,
) -> Vec<Unscheduled> {
    let mut kept = vec![false; table.texts.len()];
    let mut distinct = 0usize;
    let overflow = format!("not scheduled (more than {max_reasons} distinct reasons this cycle)");
    tasks
        .map(|(task, id)| {
            let slot = &mut kept[id as usize];
            if !*slot && distinct < max_reasons {
                *slot = true;
                distinct += 1;
            }
            let reason = if *slot { table.text(id).to_string() } else { overflow.clone() };
            Unscheduled { task, reason }
        })
        .collect()
}

// Texts used in more than one place.

pub(crate) fn unknown_queue(queue: &str) -> String {
    format!("unknown queue {queue}")
}

/// "queue limit gpu=10% of pool (6) for class urgent reached": the limit as written and,
/// for a fraction, what it allows this cycle.
pub(crate) fn class_limit(limit: &flotilla_model::ClassLimit, max: u64) -> String {
    let now = match limit.max {
        flotilla_model::LimitMax::PoolFraction(_) => format!(" ({})", limit.resource.format_amount(max)),
        flotilla_model::LimitMax::Amount(_) => String::new(),
    };
    format!("queue limit {}{now} for class {} reached", limit.describe(), limit.priority_class)
}

pub(crate) fn queue_limit(limit: &str) -> String {
    format!("queue limit {limit} reached")
}

pub(crate) fn lease_limit(max: usize) -> String {
    format!("lease limit of {max} per cycle reached")
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_model::TaskId;

    #[test]
    fn reasons_beyond_the_bound_share_a_generic_text() {
        let mut t = ReasonTable::default();
        let a = t.intern("a".into());
        let b = t.intern("b".into());
        assert_eq!(t.intern("a".into()), a);
        let out = unscheduled(&t, [(TaskId(1), a), (TaskId(2), b), (TaskId(3), a)].into_iter(), 1);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].reason, "a");
        assert!(out[1].reason.starts_with("not scheduled (more than 1"));
        assert_eq!(out[2].reason, "a");
    }
}
