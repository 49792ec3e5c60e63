//! Weighted dominant-resource fairness: fair shares by water-filling, and the order in
//! which queues take turns.
//!
//! A queue's *dominant share* is the largest fraction it holds of any one federation
//! resource (GPUs, CPU, memory). Its *fair share* comes from water-filling on dominant
//! shares: raise a common level `L`; every queue with weight `w` gets `min(demand, w * L)`
//! until the federation (1.0) is handed out. Queues that want less than `w * L` keep
//! only what they want and the rest flows to the others (demand-capped). Queues of
//! weight zero share only what is left after every weighted queue's demand is met.
//!
//! Summing dominant shares to 1.0 is the usual DRF approximation: two queues dominant
//! in different resources could both be served beyond it, which only makes the fair
//! shares conservative for reclaim.

use std::cmp::Ordering;

/// Fractions within this of each other are equal (float noise in share arithmetic).
pub(crate) const SHARE_EPSILON: f64 = 1e-9;

/// A usable weight: positive and finite, else 0 ("leftovers only").
pub(crate) fn sanitize_weight(w: f64) -> f64 {
    if w.is_finite() && w > 0.0 {
        w
    } else {
        0.0
    }
}

/// Fair shares for queues with dominant-share `demands` (each clamped to 0..=1) and
/// sanitized `weights`. Deterministic: ties are broken by position.
pub(crate) fn water_fill(demands: &[f64], weights: &[f64]) -> Vec<f64> {
    debug_assert_eq!(demands.len(), weights.len());
    let demand = |i: usize| if demands[i].is_finite() { demands[i].clamp(0.0, 1.0) } else { 0.0 };
    let mut shares = vec![0.0; demands.len()];
    let weighted: Vec<usize> = (0..demands.len()).filter(|i| weights[*i] > 0.0).collect();
    let left = fill(&weighted, &demand, &|i| weights[i], 1.0, &mut shares);
    let unweighted: Vec<usize> = (0..demands.len()).filter(|i| weights[*i] <= 0.0).collect();
    fill(&unweighted, &demand, &|_| 1.0, left, &mut shares);
    shares
}

/// Water-fills `remaining` over `members`; returns what is left.
fn fill(members: &[usize], demand: &dyn Fn(usize) -> f64, weight: &dyn Fn(usize) -> f64, mut remaining: f64, shares: &mut [f64]) -> f64 {
    let mut order = members.to_vec();
    // Smallest demand per unit of weight first: they are the ones capped by demand.
    order.sort_by(|a, b| (demand(*a) / weight(*a)).total_cmp(&(demand(*b) / weight(*b))).then(a.cmp(b)));
    let mut weight_left: f64 = order.iter().map(|i| weight(*i)).sum();
    for (pos, &i) in order.iter().enumerate() {
        if remaining <= 0.0 || weight_left <= 0.0 {
            break;
        }
        let level = remaining / weight_left;
        if demand(i) <= weight(i) * level {
            shares[i] = demand(i);
            remaining -= demand(i);
            weight_left -= weight(i);
        } else {
            // Everyone from here on wants more than the level: they split what is left.
            for &j in &order[pos..] {
                shares[j] = weight(j) * level;
            }
            return 0.0;
        }
    }
    remaining.max(0.0)
}

/// A queue's turn: the queue with the lowest dominant share per unit of weight goes
/// next. Zero-weight queues are a second tier that only runs when no weighted queue
/// can place anything more. `version` invalidates stale entries (a queue whose share
/// dropped through preemption is pushed again with a fresh key).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Turn {
    pub tier: u8,
    pub key: f64,
    pub queue: usize,
    pub version: u32,
}

impl Turn {
    pub fn new(dominant_share: f64, weight: f64, queue: usize, version: u32) -> Turn {
        if weight > 0.0 {
            Turn { tier: 0, key: dominant_share / weight, queue, version }
        } else {
            Turn { tier: 1, key: dominant_share, queue, version }
        }
    }
}

impl PartialEq for Turn {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Turn {}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        self.tier
            .cmp(&other.tier)
            .then(self.key.total_cmp(&other.key))
            .then(self.queue.cmp(&other.queue))
            .then(self.version.cmp(&other.version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturating_queues_split_by_weight() {
        let s = water_fill(&[1.0, 1.0], &[1.0, 3.0]);
        assert!((s[0] - 0.25).abs() < 1e-12 && (s[1] - 0.75).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn unused_share_flows_to_queues_that_want_more() {
        let s = water_fill(&[0.1, 1.0, 1.0], &[1.0, 1.0, 1.0]);
        assert!((s[0] - 0.1).abs() < 1e-12);
        assert!((s[1] - 0.45).abs() < 1e-12 && (s[2] - 0.45).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn zero_weight_queues_get_only_leftovers() {
        let s = water_fill(&[0.5, 1.0], &[1.0, 0.0]);
        assert_eq!(s, vec![0.5, 0.5]);
        let s = water_fill(&[1.0, 1.0], &[1.0, 0.0]);
        assert_eq!(s, vec![1.0, 0.0]);
    }

    #[test]
    fn bad_weights_and_demands_never_produce_nan() {
        let w: Vec<f64> = [f64::NAN, -1.0, f64::INFINITY, 0.0].into_iter().map(sanitize_weight).collect();
        let s = water_fill(&[f64::NAN, 2.0, 0.3, 0.2], &w);
        assert!(s.iter().all(|x| x.is_finite() && *x >= 0.0 && *x <= 1.0), "{s:?}");
        assert!(water_fill(&[], &[]).is_empty());
    }

    #[test]
    fn turns_order_by_tier_then_share_per_weight() {
        let a = Turn::new(0.3, 3.0, 0, 0);
        let b = Turn::new(0.2, 1.0, 1, 0);
        let z = Turn::new(0.0, 0.0, 2, 0);
        assert!(a < b && b < z);
    }
}
