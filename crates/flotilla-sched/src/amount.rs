//! A compact, `Copy` view of the three resources fairness and packing reason about.
//!
//! [`Resources`] carries a map of extended resources, which makes it costly to copy in the
//! hot loop. The scheduler keeps GPU, CPU and memory in an [`Amount`] and checks extended
//! resources separately (they are rare and never drive fairness).

use std::collections::BTreeMap;

use flotilla_model::{format_bytes, format_cpu_millis, Resources};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Amount {
    pub gpu: u64,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Amount {
    pub fn of(r: &Resources) -> Amount {
        Amount { gpu: r.gpu, cpu_millis: r.cpu_millis, memory_bytes: r.memory_bytes }
    }

    pub fn fits_in(self, other: Amount) -> bool {
        self.gpu <= other.gpu && self.cpu_millis <= other.cpu_millis && self.memory_bytes <= other.memory_bytes
    }

    pub fn plus(self, o: Amount) -> Amount {
        Amount {
            gpu: self.gpu.saturating_add(o.gpu),
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
        }
    }

    pub fn minus(self, o: Amount) -> Amount {
        Amount {
            gpu: self.gpu.saturating_sub(o.gpu),
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(o.memory_bytes),
        }
    }

    pub fn to_resources(self) -> Resources {
        Resources::new(self.cpu_millis, self.memory_bytes, self.gpu)
    }

    /// The largest fraction of `total` this amount takes in any one resource. Resources
    /// the federation does not have at all are left out, so an empty federation gives 0
    /// and nothing divides by zero.
    pub fn dominant_share(self, total: Amount) -> f64 {
        let mut share: f64 = 0.0;
        for (used, all) in [(self.gpu, total.gpu), (self.cpu_millis, total.cpu_millis), (self.memory_bytes, total.memory_bytes)] {
            if all > 0 {
                share = share.max(used as f64 / all as f64);
            }
        }
        share
    }

    /// "gpu=8 cpu=64 memory=1Ti", for reasons a person reads.
    pub fn describe(self, extended: &BTreeMap<String, u64>) -> String {
        let mut parts = Vec::new();
        if self.gpu > 0 {
            parts.push(format!("gpu={}", self.gpu));
        }
        if self.cpu_millis > 0 {
            parts.push(format!("cpu={}", format_cpu_millis(self.cpu_millis)));
        }
        if self.memory_bytes > 0 {
            parts.push(format!("memory={}", format_bytes(self.memory_bytes)));
        }
        for (k, v) in extended {
            if *v > 0 {
                parts.push(format!("{k}={v}"));
            }
        }
        if parts.is_empty() {
            "nothing".to_string()
        } else {
            parts.join(" ")
        }
    }
}

/// Adds extended resources of `r` into `into`.
pub(crate) fn ext_add(into: &mut BTreeMap<String, u64>, r: &BTreeMap<String, u64>) {
    for (k, v) in r {
        if *v > 0 {
            let e = into.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }
}

pub(crate) fn ext_sub(from: &mut BTreeMap<String, u64>, r: &BTreeMap<String, u64>) {
    for (k, v) in r {
        if let Some(e) = from.get_mut(k) {
            *e = e.saturating_sub(*v);
        }
    }
    from.retain(|_, v| *v > 0);
}

/// True when `need` fits in `cap - used - extra` for every extended resource.
pub(crate) fn ext_fits(
    need: &BTreeMap<String, u64>,
    cap: &BTreeMap<String, u64>,
    used: &BTreeMap<String, u64>,
    extra: Option<&BTreeMap<String, u64>>,
) -> bool {
    need.iter().all(|(k, v)| {
        if *v == 0 {
            return true;
        }
        let c = cap.get(k).copied().unwrap_or(0);
        let u = used.get(k).copied().unwrap_or(0).saturating_add(extra.and_then(|e| e.get(k).copied()).unwrap_or(0));
        c.saturating_sub(u) >= *v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dominant_share_ignores_resources_the_federation_lacks() {
        let total = Amount { gpu: 0, cpu_millis: 1000, memory_bytes: 0 };
        let used = Amount { gpu: 4, cpu_millis: 250, memory_bytes: 7 };
        assert_eq!(used.dominant_share(total), 0.25);
        assert_eq!(used.dominant_share(Amount::default()), 0.0);
    }

    #[test]
    fn extended_resources_fit_only_with_room_left() {
        let need: BTreeMap<String, u64> = [("x".to_string(), 2)].into();
        let cap: BTreeMap<String, u64> = [("x".to_string(), 3)].into();
        let used: BTreeMap<String, u64> = [("x".to_string(), 1)].into();
        assert!(ext_fits(&need, &cap, &used, None));
        assert!(!ext_fits(&need, &cap, &used, Some(&used)));
        assert!(!ext_fits(&need, &BTreeMap::new(), &BTreeMap::new(), None));
    }
}
