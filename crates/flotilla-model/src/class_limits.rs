//! Queue limits per priority class: "at most 10% of the pool's GPUs at class urgent".
//!
//! A queue may cap what its tasks of one priority class hold at once, per resource, as an
//! amount (`64` CPUs, `256Gi`, `8` GPUs) or as a fraction of the pool: the federation's
//! total allocatable of that resource as the scheduler sees it in a cycle (nodes that report
//! and are schedulable), rounded down. The caps sit next to the queue's own
//! [`crate::ResourceLimits`]; a task must respect both.
//!
//! The text form, used by the CLI and its output, is `CLASS:RESOURCE=VALUE`, where RESOURCE
//! is `cpu`, `memory` or `gpu` (also `nvidia.com/gpu`) and VALUE a Kubernetes quantity or a
//! percentage of the pool:
//!
//! ```
//! use flotilla_model::{ClassLimit, LimitMax, LimitResource};
//! let l = ClassLimit::parse("urgent:gpu=10%").unwrap();
//! assert_eq!((l.resource, l.max), (LimitResource::Gpu, LimitMax::PoolFraction(0.1)));
//! assert_eq!(l.max_of(64), 6, "10% of 64 GPUs, rounded down");
//! assert_eq!(l.to_string(), "urgent:gpu=10%");
//! assert_eq!(ClassLimit::parse("batch:memory=256Gi").unwrap().max, LimitMax::Amount(256 << 30));
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{check_name, format_bytes, format_cpu_millis, parse_bytes, parse_count, parse_cpu_millis, quote, FieldError, Resources};

/// Most per-class limits one queue holds (a class and a resource each).
pub const MAX_CLASS_LIMITS_PER_QUEUE: usize = 32;

/// Fractions of the pool are kept to a millionth, so that every replica and every cycle
/// turns one into the same amount.
const PPM: u64 = 1_000_000;

/// A cap on what one queue's tasks of one priority class may hold at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassLimit {
    pub priority_class: String,
    pub resource: LimitResource,
    pub max: LimitMax,
}

/// The resources a class limit may cap: those fair share and the queue limit reason about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitResource {
    Cpu,
    Memory,
    Gpu,
}

/// How much of the resource: an amount (millicores, bytes or GPUs) or a fraction of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitMax {
    Amount(u64),
    /// In (0, 1]: of the federation's total allocatable of the resource this cycle.
    PoolFraction(f64),
}

impl LimitResource {
    /// `cpu`, `memory`, `gpu` or `nvidia.com/gpu`.
    pub fn parse(s: &str) -> Result<LimitResource, String> {
        match s {
            "cpu" => Ok(LimitResource::Cpu),
            "memory" => Ok(LimitResource::Memory),
            "gpu" | crate::GPU_RESOURCE => Ok(LimitResource::Gpu),
            _ => Err(format!("{} is not a resource a class limit may cap (use cpu, memory or gpu)", quote(s))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LimitResource::Cpu => "cpu",
            LimitResource::Memory => "memory",
            LimitResource::Gpu => "gpu",
        }
    }

    /// This resource's amount in `r` (millicores, bytes or GPUs).
    pub fn of(self, r: &Resources) -> u64 {
        match self {
            LimitResource::Cpu => r.cpu_millis,
            LimitResource::Memory => r.memory_bytes,
            LimitResource::Gpu => r.gpu,
        }
    }

    /// Reads a Kubernetes quantity of this resource (`500m`, `2Gi`, `8`).
    pub fn parse_amount(self, s: &str) -> Result<u64, String> {
        let parsed = match self {
            LimitResource::Cpu => parse_cpu_millis(s),
            LimitResource::Memory => parse_bytes(s),
            LimitResource::Gpu => parse_count(s),
        };
        parsed.map_err(|e| e.to_string())
    }

    /// An amount of this resource as a Kubernetes quantity.
    pub fn format_amount(self, amount: u64) -> String {
        match self {
            LimitResource::Cpu => format_cpu_millis(amount),
            LimitResource::Memory => format_bytes(amount),
            LimitResource::Gpu => amount.to_string(),
        }
    }
}

/// True when `f` is a valid fraction of the pool: in (0, 1].
pub fn is_pool_fraction(f: f64) -> bool {
    f > 0.0 && f <= 1.0
}

impl ClassLimit {
    /// Parses `CLASS:RESOURCE=VALUE` (`urgent:gpu=10%`, `batch:cpu=64`, `batch:memory=256Gi`).
    /// The class is only checked to be a name; whether it exists is the store's question.
    pub fn parse(s: &str) -> Result<ClassLimit, String> {
        let form = "is not CLASS:RESOURCE=VALUE (for example urgent:gpu=10% or batch:cpu=64)";
        let (class, rest) = s.split_once(':').ok_or_else(|| format!("{} {form}", quote(s)))?;
        let (resource, value) = rest.split_once('=').ok_or_else(|| format!("{} {form}", quote(s)))?;
        if !crate::is_dns1123_label(class) {
            return Err(format!("{} is not a priority class name", quote(class)));
        }
        let resource = LimitResource::parse(resource)?;
        let max = match value.strip_suffix('%') {
            Some(percent) => {
                let p: f64 = percent.trim().parse().map_err(|_| format!("{} is not a percentage", quote(value)))?;
                if !(p > 0.0 && p <= 100.0) {
                    return Err(format!("{} must be more than 0% and at most 100% of the pool", quote(value)));
                }
                LimitMax::PoolFraction(p / 100.0)
            }
            None => LimitMax::Amount(resource.parse_amount(value)?),
        };
        Ok(ClassLimit { priority_class: class.to_string(), resource, max })
    }

    /// The most the class may hold of a pool of `pool` (millicores, bytes or GPUs): the
    /// amount, or the fraction of the pool to a millionth, rounded down.
    pub fn max_of(&self, pool: u64) -> u64 {
        match self.max {
            LimitMax::Amount(a) => a,
            LimitMax::PoolFraction(f) => {
                let ppm = fraction_ppm(f);
                (u128::from(pool) * u128::from(ppm) / u128::from(PPM)) as u64
            }
        }
    }

    /// What the limit allows, for reasons: `gpu=10% of pool` or `gpu=8`.
    pub fn describe(&self) -> String {
        match self.max {
            LimitMax::Amount(a) => format!("{}={}", self.resource.as_str(), self.resource.format_amount(a)),
            LimitMax::PoolFraction(f) => format!("{}={} of pool", self.resource.as_str(), percent(f)),
        }
    }

    /// The value as the text form writes it: a quantity or a percentage.
    pub fn value_text(&self) -> String {
        match self.max {
            LimitMax::Amount(a) => self.resource.format_amount(a),
            LimitMax::PoolFraction(f) => percent(f),
        }
    }
}

impl fmt::Display for ClassLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}={}", self.priority_class, self.resource.as_str(), self.value_text())
    }
}

/// A fraction in (0, 1] in parts per million (at least 1, so a tiny fraction stays a limit).
fn fraction_ppm(f: f64) -> u64 {
    ((f.clamp(0.0, 1.0) * PPM as f64).round() as u64).clamp(1, PPM)
}

/// `10%`, `12.5%`, `0.0001%`: the fraction as the percentage it was written as.
fn percent(f: f64) -> String {
    let ppm = fraction_ppm(f);
    let (whole, rest) = (ppm / 10_000, ppm % 10_000);
    if rest == 0 {
        format!("{whole}%")
    } else {
        format!("{whole}.{}%", format!("{rest:04}").trim_end_matches('0'))
    }
}

/// Every problem of a queue's class limits, with paths under `path`: too many, a bad class
/// name, a fraction outside (0, 1], a zero amount, or two limits on one class and resource.
pub fn check_class_limits(path: &str, limits: &[ClassLimit], errors: &mut Vec<FieldError>) {
    if limits.len() > MAX_CLASS_LIMITS_PER_QUEUE {
        errors.push(FieldError::new(path, format!("{} limits exceed the most a queue holds, {MAX_CLASS_LIMITS_PER_QUEUE}", limits.len())));
        return;
    }
    for (i, l) in limits.iter().enumerate() {
        check_name(&format!("{path}[{i}].priorityClass"), &l.priority_class, errors);
        match l.max {
            LimitMax::PoolFraction(f) if !is_pool_fraction(f) => {
                errors.push(FieldError::new(format!("{path}[{i}].poolFraction"), format!("{f} must be more than 0 and at most 1")));
            }
            LimitMax::Amount(0) => errors.push(FieldError::new(format!("{path}[{i}].amount"), "must be greater than zero")),
            _ => {}
        }
        if limits[..i].iter().any(|o| o.priority_class == l.priority_class && o.resource == l.resource) {
            errors.push(FieldError::new(
                format!("{path}[{i}]"),
                format!("a second limit on {} of class {}; give one per class and resource", l.resource.as_str(), quote(&l.priority_class)),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_reads_amounts_and_percentages_and_writes_them_back_alike() {
        for text in ["urgent:gpu=10%", "urgent:gpu=12.5%", "batch:cpu=500m", "batch:memory=256Gi", "x:gpu=8", "y:cpu=100%"] {
            let l = ClassLimit::parse(text).unwrap();
            assert_eq!(l.to_string(), text);
        }
        assert_eq!(ClassLimit::parse("a:nvidia.com/gpu=2").unwrap().resource, LimitResource::Gpu);
        assert_eq!(ClassLimit::parse("a:cpu=2").unwrap().max, LimitMax::Amount(2000));
    }

    #[test]
    fn a_bad_text_form_says_what_is_wrong_and_quotes_only_a_prefix() {
        let cases = [
            ("urgent", "CLASS:RESOURCE=VALUE"),
            ("urgent:gpu", "CLASS:RESOURCE=VALUE"),
            ("Urgent:gpu=1", "not a priority class name"),
            ("u:disk=1", "not a resource"),
            ("u:gpu=0%", "more than 0%"),
            ("u:gpu=101%", "at most 100%"),
            ("u:gpu=ten%", "not a percentage"),
            ("u:gpu=1.5", "whole number"),
            ("u:gpu=0", "greater than zero"),
        ];
        for (text, expected) in cases {
            let e = ClassLimit::parse(text).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
        let long = format!("u:gpu={}", "9".repeat(10_000));
        assert!(ClassLimit::parse(&long).unwrap_err().len() < 200, "a bad value is quoted by a short prefix");
    }

    #[test]
    fn a_pool_fraction_rounds_down_to_whole_units_and_an_amount_ignores_the_pool() {
        let tenth = ClassLimit { priority_class: "u".into(), resource: LimitResource::Gpu, max: LimitMax::PoolFraction(0.1) };
        assert_eq!(tenth.max_of(16), 1);
        assert_eq!(tenth.max_of(9), 0);
        assert_eq!(tenth.max_of(0), 0);
        let third = ClassLimit { max: LimitMax::PoolFraction(0.29), ..tenth.clone() };
        assert_eq!(third.max_of(100), 29, "no float error below the exact value");
        let whole = ClassLimit { max: LimitMax::PoolFraction(1.0), ..tenth.clone() };
        assert_eq!(whole.max_of(u64::MAX), u64::MAX);
        assert_eq!(ClassLimit { max: LimitMax::Amount(8), ..tenth }.max_of(1), 8);
    }

    #[test]
    fn class_limits_name_every_bad_entry_and_bound_their_number() {
        let l = |class: &str, resource, max| ClassLimit { priority_class: class.into(), resource, max };
        let limits = vec![
            l("urgent", LimitResource::Gpu, LimitMax::PoolFraction(0.1)),
            l("urgent", LimitResource::Gpu, LimitMax::Amount(2)),
            l("Bad!", LimitResource::Cpu, LimitMax::Amount(1)),
            l("b", LimitResource::Cpu, LimitMax::PoolFraction(1.5)),
            l("c", LimitResource::Memory, LimitMax::PoolFraction(f64::NAN)),
            l("d", LimitResource::Memory, LimitMax::Amount(0)),
            l("urgent", LimitResource::Cpu, LimitMax::Amount(1)),
        ];
        let mut errors = Vec::new();
        check_class_limits("classLimits", &limits, &mut errors);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "classLimits[1]",
                "classLimits[2].priorityClass",
                "classLimits[3].poolFraction",
                "classLimits[4].poolFraction",
                "classLimits[5].amount"
            ]
        );
        let many: Vec<ClassLimit> =
            (0..=MAX_CLASS_LIMITS_PER_QUEUE).map(|i| l(&format!("c{i}"), LimitResource::Gpu, LimitMax::Amount(1))).collect();
        let mut errors = Vec::new();
        check_class_limits("classLimits", &many, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("most a queue holds"));
    }

    #[test]
    fn class_limits_keep_their_json_form() {
        let l = ClassLimit::parse("urgent:gpu=10%").unwrap();
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(json, r#"{"priority_class":"urgent","resource":"gpu","max":{"pool_fraction":0.1}}"#);
        assert_eq!(serde_json::from_str::<ClassLimit>(&json).unwrap(), l);
    }
}
