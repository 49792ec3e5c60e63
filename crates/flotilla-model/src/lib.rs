//! Flotilla's domain types: the words of DESIGN.md as Rust types.
//!
//! This crate is for the data every other crate shares: [`Resources`] and Kubernetes
//! quantity parsing, [`Node`]s and their topology, [`Queue`]s and [`PriorityClass`]es,
//! tasks ([`TaskSpec`], [`SchedTask`], [`TaskState`]) and the task-file format with its
//! validation ([`TaskFile`], [`expand`]).
//!
//! It is not for behaviour: no scheduling (`flotilla-sched`), no storage
//! (`flotilla-store`), no I/O, no gRPC or Kubernetes types.
//!
//! ```
//! use flotilla_model::{parse_bytes, parse_cpu_millis};
//! assert_eq!(parse_cpu_millis("500m").unwrap(), 500);
//! assert_eq!(parse_bytes("2Gi").unwrap(), 2 * 1024 * 1024 * 1024);
//! ```

mod access;
mod affinity;
mod class_limits;
mod gpu_sharing;
mod node;
mod queue;
mod resources;
mod task;
mod taskfile;
mod text;

pub use access::{check_permits, Permit, Subject, Verb, MAX_PERMITS_PER_QUEUE, MAX_SUBJECT_NAME_BYTES};
pub use affinity::{
    is_label_key, is_label_value, AffinityOperator, NodeAffinity, NodeRequirement, PreferredRequirement, MAX_AFFINITY_TERMS,
    MAX_AFFINITY_VALUES, MAX_AFFINITY_WEIGHT,
};
pub use class_limits::{check_class_limits, is_pool_fraction, ClassLimit, LimitMax, LimitResource, MAX_CLASS_LIMITS_PER_QUEUE};
pub use gpu_sharing::{
    gpu_replicas_of, gpu_sharing, is_gpu_sharing_resource, mig_milli_gpu, replicas_milli_gpu, shared_gpu_replicas, GpuSharing, MigProfile,
    A30_MIG_SLICES_PER_GPU, LABEL_GPU_REPLICAS, LABEL_GPU_SHARING_STRATEGY, LABEL_MIG_STRATEGY, MAX_GPU_REPLICAS, MIG_RESOURCE_PREFIX,
    MIG_SLICES_PER_GPU, SHARED_GPU_RESOURCE,
};
pub use node::{
    check_nodes, normalize_gpu_model, Node, NodeRef, Taint, Toleration, Topology, MAX_LABELS_PER_NODE, MAX_LABEL_KEY_BYTES,
    MAX_LABEL_NAME_BYTES, MAX_LABEL_VALUE_BYTES, MAX_NODE_NAME_BYTES, MAX_TAINTS_PER_NODE,
};
pub use queue::{
    is_protected_fraction, PriorityClass, Queue, DEFAULT_DISRUPTION_BUDGET, DEFAULT_PRIORITY_CLASS, DEFAULT_PROTECTED_FRACTION,
    MAX_BUDGET_USD_PER_DAY, MAX_PRIORITY, MAX_PRIORITY_CLASSES, MAX_PRIORITY_CLASS_DESCRIPTION_BYTES,
};
pub use resources::{
    format_bytes, format_cpu_millis, parse_bytes, parse_count, parse_cpu_millis, QuantityError, ResourceLimits, Resources, GPU_RESOURCE,
    MAX_NODE_CPU_MILLIS, MAX_NODE_EXTENDED_AMOUNT, MAX_NODE_EXTENDED_RESOURCES, MAX_NODE_GPUS, MAX_NODE_MEMORY_BYTES, PODS_RESOURCE,
};
pub use task::{
    gang_role_of, runtime_class_label, AttemptStatus, FailureKind, GangRef, GangRole, Placement, PodSecurity, RetryPolicy, SchedTask,
    SimSpec, SpotPolicy, TaskId, TaskSpec, TaskState, TopologyLevel, DEFAULT_BACKOFF_MS, DEFAULT_PENDING_TIMEOUT_MS,
    DEFAULT_TERMINATION_GRACE_MS, MAX_ATTEMPTS_CAP, MAX_BACKOFF_MS, MAX_GANG_ROLES, MAX_GANG_ROLE_BYTES, MAX_RUN_AS_USER,
    RUNTIME_CLASS_LABEL_PREFIX,
};
pub use taskfile::{
    check_name, expand, is_dns1123_label, parse_duration_ms, AffinityTemplate, FieldError, GangTemplate, PlacementTemplate,
    PreferredTemplate, RequirementTemplate, RetryTemplate, SimTemplate, SubmitLimits, TaskFile, TaskTemplate, ValidationErrors,
};
pub use text::{quote, truncate, MAX_QUOTED_CHARS, MAX_REASON_BYTES};

/// An installation id: 16 lowercase hex digits (64 random bits), so that it fits in label
/// values and, shortened, in Job names.
pub fn is_installation_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
