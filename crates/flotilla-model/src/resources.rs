//! Resources and Kubernetes quantity strings.
//!
//! CPU is held in millicores, memory in bytes, GPUs and extended resources
//! (`example.com/fpga`) as whole counts. Quantities are parsed the way
//! Kubernetes writes them: `500m`, `1.5`, `2Gi`, `512Mi`, `1G`, `4`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The resource name Kubernetes uses for NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// How many pods a node runs at most (the kubelet's `maxPods`, 110 by default), as nodes
/// report it among their extended resources: `allocatable.extended["pods"]` is the node's
/// capacity and `reserved.extended["pods"]` the pods on it that are not Flotilla's. Every
/// task is one pod. A node that reports no `pods` has no pod limit Flotilla knows of.
/// Tasks cannot request it.
pub const PODS_RESOURCE: &str = "pods";

/// Most CPU one node may report: 65,536 cores. The largest machines today have a few
/// thousand; more is a broken or forged report, and would skew fair shares and packing.
pub const MAX_NODE_CPU_MILLIS: u64 = 65_536 * 1000;
/// Most memory one node may report: 1 PiB (the largest machines have tens of TiB).
pub const MAX_NODE_MEMORY_BYTES: u64 = 1 << 50;
/// Most GPUs one node may report (8 to 72 on today's largest nodes and racks).
pub const MAX_NODE_GPUS: u64 = 4_096;
/// Most of any other resource one node may report (`example.com/fpga`, EFA interfaces, or
/// byte-counted ones such as ephemeral storage and huge pages): 1 PiB as a count.
pub const MAX_NODE_EXTENDED_AMOUNT: u64 = 1 << 50;
/// Most distinct extended resources one node may report.
pub const MAX_NODE_EXTENDED_RESOURCES: usize = 128;

/// An amount of compute: what a task requests, what a node offers, what a queue may use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpu: u64,
    /// Other countable resources by their Kubernetes name (`example.com/fpga`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extended: BTreeMap<String, u64>,
}

impl Resources {
    pub fn new(cpu_millis: u64, memory_bytes: u64, gpu: u64) -> Self {
        Resources { cpu_millis, memory_bytes, gpu, extended: BTreeMap::new() }
    }

    pub fn is_zero(&self) -> bool {
        self.cpu_millis == 0 && self.memory_bytes == 0 && self.gpu == 0 && self.extended.values().all(|v| *v == 0)
    }

    /// True when every amount in `self` is at most the one in `other`.
    pub fn fits_in(&self, other: &Resources) -> bool {
        self.cpu_millis <= other.cpu_millis
            && self.memory_bytes <= other.memory_bytes
            && self.gpu <= other.gpu
            && self.extended.iter().all(|(k, v)| *v == 0 || other.extended.get(k).is_some_and(|o| v <= o))
    }

    pub fn add(&mut self, other: &Resources) {
        self.cpu_millis = self.cpu_millis.saturating_add(other.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
        self.gpu = self.gpu.saturating_add(other.gpu);
        for (k, v) in &other.extended {
            let e = self.extended.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    /// Subtracts `other`, stopping at zero for each resource.
    pub fn saturating_sub(&mut self, other: &Resources) {
        self.cpu_millis = self.cpu_millis.saturating_sub(other.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_sub(other.memory_bytes);
        self.gpu = self.gpu.saturating_sub(other.gpu);
        for (k, v) in &other.extended {
            if let Some(e) = self.extended.get_mut(k) {
                *e = e.saturating_sub(*v);
            }
        }
        self.extended.retain(|_, v| *v > 0);
    }

    pub fn plus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        r.add(other);
        r
    }

    pub fn minus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        r.saturating_sub(other);
        r
    }

    /// Multiplies every amount by `n` (an array task's total, a gang's total).
    pub fn times(&self, n: u64) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_mul(n),
            memory_bytes: self.memory_bytes.saturating_mul(n),
            gpu: self.gpu.saturating_mul(n),
            extended: self.extended.iter().map(|(k, v)| (k.clone(), v.saturating_mul(n))).collect(),
        }
    }

    /// Parses a map of Kubernetes resource names to quantity strings
    /// (`{cpu: 500m, memory: 2Gi, nvidia.com/gpu: 8}`). Errors name the key.
    pub fn from_quantities<'a, I>(entries: I) -> Result<Resources, Vec<(String, QuantityError)>>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut r = Resources::default();
        let mut errors = Vec::new();
        for (name, value) in entries {
            let parsed = match name {
                "cpu" => parse_cpu_millis(value).map(|v| r.cpu_millis = v),
                "memory" => parse_bytes(value).map(|v| r.memory_bytes = v),
                GPU_RESOURCE | "gpu" => parse_count(value).map(|v| r.gpu = v),
                other => parse_count(value).map(|v| {
                    r.extended.insert(other.to_string(), v);
                }),
            };
            if let Err(e) = parsed {
                errors.push((name.to_string(), e));
            }
        }
        if errors.is_empty() {
            Ok(r)
        } else {
            Err(errors)
        }
    }

    /// The resources as Kubernetes quantity strings, for Job specs and output.
    pub fn to_quantities(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if self.cpu_millis > 0 {
            m.insert("cpu".to_string(), format_cpu_millis(self.cpu_millis));
        }
        if self.memory_bytes > 0 {
            m.insert("memory".to_string(), format_bytes(self.memory_bytes));
        }
        if self.gpu > 0 {
            m.insert(GPU_RESOURCE.to_string(), self.gpu.to_string());
        }
        for (k, v) in &self.extended {
            if *v > 0 {
                m.insert(k.clone(), v.to_string());
            }
        }
        m
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = self.to_quantities();
        if q.is_empty() {
            return f.write_str("nothing");
        }
        let parts: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

/// Per-resource upper bounds; `None` means no bound on that resource.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub gpu: Option<u64>,
}

impl ResourceLimits {
    pub fn is_unlimited(&self) -> bool {
        self.cpu_millis.is_none() && self.memory_bytes.is_none() && self.gpu.is_none()
    }

    /// The first resource `usage` would exceed, as a short reason ("gpu=16").
    pub fn exceeded_by(&self, usage: &Resources) -> Option<String> {
        if let Some(l) = self.gpu.filter(|l| usage.gpu > *l) {
            return Some(format!("gpu={l}"));
        }
        if let Some(l) = self.cpu_millis.filter(|l| usage.cpu_millis > *l) {
            return Some(format!("cpu={}", format_cpu_millis(l)));
        }
        if let Some(l) = self.memory_bytes.filter(|l| usage.memory_bytes > *l) {
            return Some(format!("memory={}", format_bytes(l)));
        }
        None
    }
}

/// Why a quantity string could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{} is not a quantity", crate::quote(.0))]
    Malformed(String),
    #[error("{} must be greater than zero", crate::quote(.0))]
    NotPositive(String),
    #[error("{} is too large", crate::quote(.0))]
    Overflow(String),
    #[error("{} must be a whole number", crate::quote(.0))]
    Fractional(String),
}

/// Splits "1.5Gi" into ("1.5", "Gi") and checks the number part.
fn split_quantity(s: &str) -> Result<(u128, u32, &str), QuantityError> {
    let malformed = || QuantityError::Malformed(s.to_string());
    let t = s.trim();
    if t.is_empty() {
        return Err(malformed());
    }
    if t.starts_with('-') {
        return Err(QuantityError::NotPositive(s.to_string()));
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, suffix) = t.split_at(end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(malformed());
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    if frac_part.len() > 9 {
        return Err(malformed());
    }
    let digits = format!("{int_part}{frac_part}");
    let mantissa: u128 = digits.parse().map_err(|_| QuantityError::Overflow(s.to_string()))?;
    Ok((mantissa, frac_part.len() as u32, suffix))
}

fn suffix_multiplier(suffix: &str) -> Option<(u128, u128)> {
    // (numerator, denominator) of the suffix's value.
    Some(match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        _ => return None,
    })
}

/// Parses a quantity into units of `1/scale` (scale 1000 gives millis), rounding up.
fn parse_scaled(s: &str, scale: u128) -> Result<u64, QuantityError> {
    let (mantissa, frac_digits, suffix) = split_quantity(s)?;
    let (num, den) = suffix_multiplier(suffix).ok_or_else(|| QuantityError::Malformed(s.to_string()))?;
    let den = den * 10u128.pow(frac_digits);
    let total = mantissa.checked_mul(num).and_then(|v| v.checked_mul(scale)).ok_or_else(|| QuantityError::Overflow(s.to_string()))?;
    let value = total.div_ceil(den);
    if value == 0 {
        return Err(QuantityError::NotPositive(s.to_string()));
    }
    u64::try_from(value).map_err(|_| QuantityError::Overflow(s.to_string()))
}

/// CPU: "500m" → 500, "1.5" → 1500, "2" → 2000.
pub fn parse_cpu_millis(s: &str) -> Result<u64, QuantityError> {
    parse_scaled(s, 1000)
}

/// Memory: "2Gi" → 2147483648, "512M" → 512000000. Fractions of a byte round up.
pub fn parse_bytes(s: &str) -> Result<u64, QuantityError> {
    parse_scaled(s, 1)
}

/// A whole count ("8"): GPUs and extended resources cannot be split.
pub fn parse_count(s: &str) -> Result<u64, QuantityError> {
    let (mantissa, frac_digits, suffix) = split_quantity(s)?;
    let (num, den) = suffix_multiplier(suffix).ok_or_else(|| QuantityError::Malformed(s.to_string()))?;
    let den = den * 10u128.pow(frac_digits);
    let total = mantissa.checked_mul(num).ok_or_else(|| QuantityError::Overflow(s.to_string()))?;
    if total % den != 0 {
        return Err(QuantityError::Fractional(s.to_string()));
    }
    let value = total / den;
    if value == 0 {
        return Err(QuantityError::NotPositive(s.to_string()));
    }
    u64::try_from(value).map_err(|_| QuantityError::Overflow(s.to_string()))
}

pub fn format_cpu_millis(m: u64) -> String {
    if m.is_multiple_of(1000) {
        (m / 1000).to_string()
    } else {
        format!("{m}m")
    }
}

pub fn format_bytes(b: u64) -> String {
    for (suffix, shift) in [("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        let unit = 1u64 << shift;
        if b >= unit && b.is_multiple_of(unit) {
            return format!("{}{suffix}", b / unit);
        }
    }
    b.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_parse_to_millicores() {
        assert_eq!(parse_cpu_millis("500m"), Ok(500));
        assert_eq!(parse_cpu_millis("1.5"), Ok(1500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis("0.001"), Ok(1));
        assert_eq!(parse_cpu_millis("32"), Ok(32_000));
    }

    #[test]
    fn memory_quantities_parse_to_bytes() {
        assert_eq!(parse_bytes("2Gi"), Ok(2 << 30));
        assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_bytes("100"), Ok(100));
    }

    #[test]
    fn bad_quantities_are_rejected_with_the_text() {
        assert_eq!(parse_bytes("2Gx"), Err(QuantityError::Malformed("2Gx".into())));
        assert_eq!(parse_bytes(""), Err(QuantityError::Malformed("".into())));
        assert_eq!(parse_bytes("-1Gi"), Err(QuantityError::NotPositive("-1Gi".into())));
        assert_eq!(parse_cpu_millis("0"), Err(QuantityError::NotPositive("0".into())));
        assert_eq!(parse_count("1.5"), Err(QuantityError::Fractional("1.5".into())));
        assert_eq!(parse_bytes("1..5"), Err(QuantityError::Malformed("1..5".into())));
        assert!(matches!(parse_bytes("99999999999999999999Pi"), Err(QuantityError::Overflow(_))));
        assert_eq!(parse_bytes("2Gx").unwrap_err().to_string(), "\"2Gx\" is not a quantity");
    }

    #[test]
    fn resource_maps_parse_and_name_bad_keys() {
        let r = Resources::from_quantities([("cpu", "500m"), ("memory", "2Gi"), ("nvidia.com/gpu", "8")]).unwrap();
        assert_eq!(r, Resources::new(500, 2 << 30, 8));
        let errs = Resources::from_quantities([("cpu", "1"), ("memory", "lots")]).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "memory");
    }

    #[test]
    fn fits_and_arithmetic_cover_extended_resources() {
        let mut node = Resources::new(4000, 8 << 30, 1);
        node.extended.insert("example.com/fpga".into(), 1);
        let mut task = Resources::new(1000, 1 << 30, 1);
        assert!(task.fits_in(&node));
        task.extended.insert("example.com/fpga".into(), 2);
        assert!(!task.fits_in(&node));
        let left = node.minus(&Resources::new(1000, 1 << 30, 1));
        assert_eq!(left.cpu_millis, 3000);
        assert_eq!(left.gpu, 0);
        assert_eq!(Resources::new(1500, 2 << 30, 0).to_string(), "cpu=1500m,memory=2Gi");
    }

    #[test]
    fn limits_report_the_resource_exceeded() {
        let l = ResourceLimits { gpu: Some(16), ..Default::default() };
        assert_eq!(l.exceeded_by(&Resources::new(0, 0, 17)), Some("gpu=16".into()));
        assert_eq!(l.exceeded_by(&Resources::new(0, 0, 16)), None);
    }
}
