//! Shared GPUs: MIG slices and time-sliced replicas as resources, and what fraction of a GPU
//! each one is worth in fair share.
//!
//! NVIDIA's device plugin advertises a partitioned or shared GPU under its own resource name:
//!
//! - **MIG** (mixed strategy): one resource per profile, `nvidia.com/mig-<G>g.<M>gb` (and
//!   `nvidia.com/mig-<G>g.<M>gb+me` for profiles with the media extensions), counting the
//!   slices of that profile on the node. A slice of `G` compute slices is `G/7` of a GPU on
//!   A100, H100 and H200 (7 compute slices per GPU), except the A30's profiles, whose memory is
//!   6 GB per compute slice (`1g.6gb`, `2g.12gb`, `4g.24gb`): `G/4` of a GPU.
//! - **Time slicing** (and MPS) with `renameByDefault`: `nvidia.com/gpu.shared`, counting
//!   replicas; GPU Feature Discovery labels the node with `nvidia.com/gpu.replicas` (`R`),
//!   and each replica is `1/R` of a GPU.
//!
//! Fractions are in milli-GPUs, rounded to the nearest (a 1g slice of seven is 143). A task's
//! MIG fraction depends only on the names it requests ([`mig_milli_gpu`]); a time-sliced
//! replica's depends on the nodes that offer it, so the scheduler prices replicas once per
//! cycle (see `flotilla-sched`'s `amount` module and docs/task-file.md, "Shared GPUs").

use std::collections::BTreeMap;

use crate::Node;

/// The prefix of every MIG profile resource (`nvidia.com/mig-1g.10gb`).
pub const MIG_RESOURCE_PREFIX: &str = "nvidia.com/mig-";
/// The resource of a time-sliced (or MPS) GPU replica, as the device plugin names it with
/// `renameByDefault: true`.
pub const SHARED_GPU_RESOURCE: &str = "nvidia.com/gpu.shared";
/// GPU Feature Discovery's label: how many replicas each GPU of the node is shared as.
pub const LABEL_GPU_REPLICAS: &str = "nvidia.com/gpu.replicas";
/// GPU Feature Discovery's label: `single`, `mixed` or `none`.
pub const LABEL_MIG_STRATEGY: &str = "nvidia.com/mig.strategy";
/// GPU Feature Discovery's label: `time-slicing`, `mps` or `none`.
pub const LABEL_GPU_SHARING_STRATEGY: &str = "nvidia.com/gpu.sharing-strategy";
/// Compute slices of one A100, H100 or H200 GPU.
pub const MIG_SLICES_PER_GPU: u64 = 7;
/// Compute slices of one A30 GPU (its profiles have 6 GB of memory per compute slice).
pub const A30_MIG_SLICES_PER_GPU: u64 = 4;
/// The largest number of replicas a GPU is counted as (a larger label is read as this).
pub const MAX_GPU_REPLICAS: u64 = 1024;

/// A MIG profile: `<compute_slices>g.<memory_gb>gb`, `+me` with media extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigProfile {
    pub compute_slices: u64,
    pub memory_gb: u64,
    pub media_extensions: bool,
}

impl MigProfile {
    /// Reads a profile (`1g.10gb`, `3g.40gb+me`): 1 to 7 compute slices, 1 to 1,024 GB.
    pub fn parse(profile: &str) -> Option<MigProfile> {
        let (base, media_extensions) = match profile.strip_suffix("+me") {
            Some(b) => (b, true),
            None => (profile, false),
        };
        let (g, m) = base.split_once('.')?;
        let compute_slices = small_number(g.strip_suffix('g')?)?;
        let memory_gb = small_number(m.strip_suffix("gb")?)?;
        if !(1..=MIG_SLICES_PER_GPU).contains(&compute_slices) || !(1..=1024).contains(&memory_gb) {
            return None;
        }
        Some(MigProfile { compute_slices, memory_gb, media_extensions })
    }

    /// The fraction of a GPU one slice of this profile is, in milli-GPUs.
    pub fn milli_gpu(self) -> u64 {
        let slices_per_gpu = if self.memory_gb == 6 * self.compute_slices { A30_MIG_SLICES_PER_GPU } else { MIG_SLICES_PER_GPU };
        (self.compute_slices * 1000 + slices_per_gpu / 2) / slices_per_gpu
    }
}

/// Digits only (no sign, no leading zero), at most four of them.
fn small_number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// What kind of shared GPU a resource name is, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuSharing {
    Mig(MigProfile),
    TimeSliced,
}

/// `Some(Ok(..))` for a shared-GPU resource name, `Some(Err(why))` for a name in NVIDIA's
/// MIG namespace that is not a profile (`nvidia.com/mig-abc`), `None` for anything else.
pub fn gpu_sharing(resource: &str) -> Option<Result<GpuSharing, &'static str>> {
    if resource == SHARED_GPU_RESOURCE {
        return Some(Ok(GpuSharing::TimeSliced));
    }
    let profile = resource.strip_prefix(MIG_RESOURCE_PREFIX)?;
    Some(
        MigProfile::parse(profile)
            .map(GpuSharing::Mig)
            .ok_or("is not a MIG profile: expected nvidia.com/mig-<G>g.<M>gb (G 1 to 7 compute slices, M GB of memory, optionally +me)"),
    )
}

/// True for a MIG profile or time-sliced replica resource name.
pub fn is_gpu_sharing_resource(resource: &str) -> bool {
    matches!(gpu_sharing(resource), Some(Ok(_)))
}

/// The GPU fraction, in milli-GPUs, of the MIG slices among `extended` (a task's requests or
/// a node's allocatable). Names that are not MIG profiles count nothing.
pub fn mig_milli_gpu(extended: &BTreeMap<String, u64>) -> u64 {
    let mut milli: u64 = 0;
    for (name, count) in extended {
        if let Some(p) = name.strip_prefix(MIG_RESOURCE_PREFIX).and_then(MigProfile::parse) {
            milli = milli.saturating_add(count.saturating_mul(p.milli_gpu()));
        }
    }
    milli
}

/// Time-sliced replicas among `extended`.
pub fn shared_gpu_replicas(extended: &BTreeMap<String, u64>) -> u64 {
    extended.get(SHARED_GPU_RESOURCE).copied().unwrap_or(0)
}

/// How many replicas each GPU of `node` is shared as: its `nvidia.com/gpu.replicas` label,
/// 1 when absent or unreadable (a replica then counts as a whole GPU, never more).
pub fn gpu_replicas_of(node: &Node) -> u64 {
    node.labels.get(LABEL_GPU_REPLICAS).and_then(|v| v.parse::<u64>().ok()).filter(|r| *r > 0).map_or(1, |r| r.min(MAX_GPU_REPLICAS))
}

/// The GPUs behind `replicas` time-sliced replicas of a node sharing each GPU `per_gpu`
/// ways, in milli-GPUs, rounded to the nearest.
pub fn replicas_milli_gpu(replicas: u64, per_gpu: u64) -> u64 {
    let per_gpu = per_gpu.max(1);
    (replicas.saturating_mul(1000).saturating_add(per_gpu / 2)) / per_gpu
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(s: &str) -> MigProfile {
        MigProfile::parse(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn a_mig_slice_is_its_compute_slices_over_seven_except_a30_profiles_over_four() {
        assert_eq!(profile("1g.10gb").milli_gpu(), 143, "1/7 rounded");
        assert_eq!(profile("1g.5gb").milli_gpu(), 143);
        assert_eq!(profile("2g.20gb").milli_gpu(), 286);
        assert_eq!(profile("3g.40gb").milli_gpu(), 429);
        assert_eq!(profile("4g.40gb").milli_gpu(), 571);
        assert_eq!(profile("7g.80gb").milli_gpu(), 1000);
        assert_eq!(profile("1g.10gb+me").milli_gpu(), 143);
        assert_eq!(profile("1g.6gb").milli_gpu(), 250, "A30");
        assert_eq!(profile("2g.12gb").milli_gpu(), 500, "A30");
        assert_eq!(profile("4g.24gb").milli_gpu(), 1000, "A30");
    }

    #[test]
    fn only_well_formed_profiles_are_mig_resources() {
        assert_eq!(gpu_sharing("nvidia.com/mig-1g.10gb"), Some(Ok(GpuSharing::Mig(profile("1g.10gb")))));
        assert!(profile("1g.10gb+me").media_extensions);
        assert_eq!(gpu_sharing(SHARED_GPU_RESOURCE), Some(Ok(GpuSharing::TimeSliced)));
        for bad in [
            "nvidia.com/mig-0g.10gb",
            "nvidia.com/mig-abc",
            "nvidia.com/mig-8g.80gb",
            "nvidia.com/mig-1g.0gb",
            "nvidia.com/mig-1g.10",
            "nvidia.com/mig-01g.10gb",
            "nvidia.com/mig-1g.10gb+mx",
            "nvidia.com/mig-",
        ] {
            assert!(matches!(gpu_sharing(bad), Some(Err(_))), "{bad} should be refused");
        }
        for other in ["nvidia.com/gpu", "example.com/fpga", "nvidia.com/migx", "cpu"] {
            assert_eq!(gpu_sharing(other), None, "{other} is not a shared GPU");
        }
    }

    #[test]
    fn the_mig_fraction_of_a_request_sums_its_profiles_and_ignores_other_names() {
        let r: BTreeMap<String, u64> = [
            ("nvidia.com/mig-1g.10gb".to_string(), 7),
            ("nvidia.com/mig-3g.40gb".to_string(), 1),
            ("example.com/fpga".to_string(), 3),
            ("nvidia.com/mig-junk".to_string(), 2),
            (SHARED_GPU_RESOURCE.to_string(), 4),
        ]
        .into();
        assert_eq!(mig_milli_gpu(&r), 7 * 143 + 429);
        assert_eq!(shared_gpu_replicas(&r), 4);
        assert_eq!(mig_milli_gpu(&BTreeMap::new()), 0);
    }

    #[test]
    fn replicas_count_as_their_share_of_the_gpus_behind_them() {
        assert_eq!(replicas_milli_gpu(4, 4), 1000);
        assert_eq!(replicas_milli_gpu(1, 4), 250);
        assert_eq!(replicas_milli_gpu(1, 3), 333);
        assert_eq!(replicas_milli_gpu(5, 0), 5000, "no replica count: each is a whole GPU");
    }
}
