//! Tasks: their full spec, their states and events, and the view the scheduler needs.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{NodeAffinity, NodeRef, Resources, Toleration};

/// A task's id, assigned by the replicated state machine in submit order. Unique forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a task is in its life. `Succeeded`, `Failed` and `Cancelled` are final (invariant 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting to be scheduled (or for its dependencies, backoff, or a paused task set).
    Queued,
    /// The scheduler chose a node; the executor has not reported the pod yet.
    Leased,
    /// The pod exists but is not running (pulling the image, waiting for the kubelet).
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Queued,
        TaskState::Leased,
        TaskState::Pending,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled)
    }

    /// Holds resources on a node (leased, pending or running).
    pub fn is_active(self) -> bool {
        matches!(self, TaskState::Leased | TaskState::Pending | TaskState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Leased => "leased",
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The topology domain a gang must fit in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopologyLevel {
    Node,
    Rack,
    Zone,
    Cluster,
}

impl TopologyLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            TopologyLevel::Node => "node",
            TopologyLevel::Rack => "rack",
            TopologyLevel::Zone => "zone",
            TopologyLevel::Cluster => "cluster",
        }
    }

    pub fn parse(s: &str) -> Option<TopologyLevel> {
        match s {
            "node" => Some(TopologyLevel::Node),
            "rack" | "block" => Some(TopologyLevel::Rack),
            "zone" => Some(TopologyLevel::Zone),
            "cluster" => Some(TopologyLevel::Cluster),
            _ => None,
        }
    }
}

/// Membership of a gang: all `size` members start together inside one `topology` domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GangRef {
    /// Shared by every member; the id of the gang's first task.
    pub id: TaskId,
    pub size: u32,
    pub rank: u32,
    pub topology: TopologyLevel,
    /// When set, the domain is instead "one value of this node label, within one cluster"
    /// (`topology` is then `Cluster`); nodes without the label are not candidates. Not
    /// written when unset, so entries and snapshots from before it read and write the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_value_of: Option<String>,
    /// A gang of several templates (`gang.group`): its roles in rank order, the leader's
    /// first. Empty for a gang of one template written with `gang.size`, whose one role is
    /// the task's name. Not written when empty (entries and snapshots from before it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<GangRole>,
}

/// One template of a gang: its role name and how many members it has. Members are ranked
/// role by role, so a role's members have consecutive ranks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GangRole {
    pub name: String,
    pub count: u32,
}

/// Most roles (templates) one gang may have.
pub const MAX_GANG_ROLES: usize = 16;

/// Longest role name: a member's pod hostname is `<role>-<rank in role>`, a DNS label of at
/// most 63 characters, and ranks stay below the gang size limit of 512 (3 digits).
pub const MAX_GANG_ROLE_BYTES: usize = 58;

impl GangRef {
    /// The gang's roles in rank order; a gang of one template (`roles` empty) has one,
    /// named `task_name`, of `size` members.
    pub fn layout(&self, task_name: &str) -> Vec<GangRole> {
        if self.roles.is_empty() {
            vec![GangRole { name: task_name.to_string(), count: self.size }]
        } else {
            self.roles.clone()
        }
    }
}

/// The role of gang rank `rank` in `layout` and its rank within that role, or `None` when
/// the layout has no such rank.
pub fn gang_role_of(layout: &[GangRole], rank: u32) -> Option<(&GangRole, u32)> {
    let mut first = 0u32;
    for role in layout {
        let end = first.checked_add(role.count)?;
        if rank < end {
            return Some((role, rank - first));
        }
        first = end;
    }
    None
}

/// Whether a task may, must or must not run on spot (preemptible cloud) capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpotPolicy {
    #[default]
    Allowed,
    Required,
    Never,
}

impl SpotPolicy {
    pub fn parse(s: &str) -> Option<SpotPolicy> {
        match s {
            "allowed" => Some(SpotPolicy::Allowed),
            "required" => Some(SpotPolicy::Required),
            "never" => Some(SpotPolicy::Never),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SpotPolicy::Allowed => "allowed",
            SpotPolicy::Required => "required",
            SpotPolicy::Never => "never",
        }
    }
}

/// Where a task may run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Placement {
    #[serde(default)]
    pub gpu_model: Option<String>,
    /// Empty means every cluster.
    #[serde(default)]
    pub allowed_clusters: Vec<String>,
    /// Preferred cluster: wins placement ties with other equally good nodes.
    #[serde(default)]
    pub preferred_cluster: Option<String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub spot: SpotPolicy,
    /// Node affinity: required expressions filter nodes, preferred ones score them. Not
    /// written when empty, so entries and snapshots from before it read and write the same.
    #[serde(default, skip_serializing_if = "NodeAffinity::is_empty")]
    pub affinity: NodeAffinity,
}

/// Retry policy of a task. Retries belong to the scheduler, never to Kubernetes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. 1 means never retry.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles each attempt up to `max_backoff_ms`.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// When set, an OOM-killed attempt retries with its memory limit times this factor.
    #[serde(default)]
    pub oom_memory_growth: Option<f64>,
}

pub const MAX_ATTEMPTS_CAP: u32 = 100;
pub const DEFAULT_BACKOFF_MS: u64 = 10_000;
pub const MAX_BACKOFF_MS: u64 = 30 * 60 * 1000;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 3, backoff_ms: DEFAULT_BACKOFF_MS, max_backoff_ms: MAX_BACKOFF_MS, oom_memory_growth: None }
    }
}

impl RetryPolicy {
    /// Delay before attempt `next_attempt` (2 is the first retry): exponential, capped.
    pub fn backoff_before(&self, next_attempt: u32) -> u64 {
        let doublings = next_attempt.saturating_sub(2).min(32);
        self.backoff_ms.saturating_mul(1u64 << doublings).min(self.max_backoff_ms)
    }
}

/// The Kubernetes Pod Security Standard a task's pod is built to meet.
///
/// `Restricted` is the default: the pod runs as non-root with the `RuntimeDefault` seccomp
/// profile, and its container drops every capability and cannot escalate privileges.
/// `Baseline` keeps the seccomp profile and no privilege escalation but lets the image run
/// as root with the runtime's default capabilities; `Privileged` sets no restriction and
/// runs the container privileged (device plugins, kernel tuning, some GPU tooling). A
/// queue's namespace must admit the level (`pod-security.kubernetes.io/enforce`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurity {
    #[default]
    Restricted,
    Baseline,
    Privileged,
}

impl PodSecurity {
    pub const ALL: [PodSecurity; 3] = [PodSecurity::Restricted, PodSecurity::Baseline, PodSecurity::Privileged];

    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurity::Restricted => "restricted",
            PodSecurity::Baseline => "baseline",
            PodSecurity::Privileged => "privileged",
        }
    }

    pub fn parse(s: &str) -> Option<PodSecurity> {
        PodSecurity::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub fn is_default(&self) -> bool {
        *self == PodSecurity::default()
    }

    /// True when a namespace enforcing `self` admits a pod built for `pod` (levels are
    /// ordered: restricted < baseline < privileged).
    pub fn admits(self, pod: PodSecurity) -> bool {
        pod <= self
    }
}

impl fmt::Display for PodSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest `runAsUser` Kubernetes accepts (it validates the UID as a non-negative int32).
pub const MAX_RUN_AS_USER: i64 = i32::MAX as i64;

/// How the simulated backend runs a task (dev mode, tests, benchmarks).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SimSpec {
    pub duration_ms: u64,
    /// Exit with this code instead of succeeding (a bad image, a bug).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Grow in memory and be OOM-killed unless the memory limit is at least this.
    #[serde(default)]
    pub memory_peak_bytes: Option<u64>,
    /// Signal progress this often (simulated time); `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_every_ms: Option<u64>,
    /// Stop signalling this long after running began (simulated time); `None`: never stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_after_ms: Option<u64>,
}

/// Everything needed to run a task: what a user wrote, expanded for one task.
/// (`Default` is an empty spec, for containers that fill it in afterwards.)
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task's name in its file (`agent`); with `index` for array tasks.
    pub name: String,
    pub queue: String,
    pub task_set: String,
    /// Position in an array task (`FLOTILLA_TASK_INDEX`), 0 otherwise.
    #[serde(default)]
    pub index: u32,
    pub priority_class: String,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Requests: what the scheduler reserves.
    pub resources: Resources,
    /// Limits: what the container may use (memory limit drives OOM kills).
    #[serde(default)]
    pub limits: Resources,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub checkpoint: bool,
    #[serde(default)]
    pub max_runtime_ms: Option<u64>,
    /// How long the attempt's pod may stay pending before the attempt ends as
    /// `Unschedulable`; `None`: [`DEFAULT_PENDING_TIMEOUT_MS`]. Left out of the JSON when
    /// unset, so entries written before it existed read and write back the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_timeout_ms: Option<u64>,
    /// SIGTERM-to-SIGKILL grace for checkpointing on preemption or cancel.
    #[serde(default = "default_grace_ms")]
    pub termination_grace_ms: u64,
    #[serde(default)]
    pub gang: Option<GangRef>,
    #[serde(default)]
    pub placement: Placement,
    /// Names of tasks in the same task set that must all succeed before this one starts.
    #[serde(default)]
    pub after: Vec<String>,
    #[serde(default)]
    pub sim: Option<SimSpec>,
    /// The Pod Security level the task's pod is built for. Left out of the JSON when it is
    /// the default, so stored entries and snapshots written before it existed read the same
    /// and are written back byte for byte the same.
    #[serde(default, skip_serializing_if = "PodSecurity::is_default")]
    pub pod_security: PodSecurity,
    /// The UID the container runs as (`securityContext.runAsUser`); `None`: the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    /// A running attempt without a progress signal for this long is stopped as `NoProgress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_ms: Option<u64>,
    /// The Kubernetes RuntimeClass of the task's pod (`gvisor`, `kata`); only nodes labelled
    /// [`runtime_class_label`]`(name)=true` take it. Not written when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class: Option<String>,
}

/// The node label that says a node offers RuntimeClass `name`: `runtimeclass.flotilla.io/NAME`,
/// value `true`. Operators set it on the nodes whose runtime handler is installed (for
/// example with the RuntimeClass's own `scheduling.nodeSelector` labels).
pub fn runtime_class_label(name: &str) -> String {
    format!("{RUNTIME_CLASS_LABEL_PREFIX}{name}")
}

pub const RUNTIME_CLASS_LABEL_PREFIX: &str = "runtimeclass.flotilla.io/";

pub const DEFAULT_TERMINATION_GRACE_MS: u64 = 30_000;

/// A pod pending longer than this (10 minutes) ends its attempt as `Unschedulable`.
pub const DEFAULT_PENDING_TIMEOUT_MS: u64 = 600_000;

fn default_grace_ms() -> u64 {
    DEFAULT_TERMINATION_GRACE_MS
}

/// The scheduling view of a task: only what placement and fairness need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedTask {
    pub id: TaskId,
    pub queue: String,
    pub priority: i32,
    pub preemptible: bool,
    /// The priority class `priority` and `preemptible` come from: what the queue's
    /// per-class limits count. Empty counts against no class limit.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub priority_class: String,
    /// Submit order (the state machine's sequence); lower goes first within a priority.
    pub submit_seq: u64,
    pub resources: Resources,
    pub gang: Option<GangRef>,
    pub placement: Placement,
    /// Nodes where earlier attempts failed: avoided when others fit.
    #[serde(default)]
    pub avoid_nodes: Vec<NodeRef>,
    /// Clusters where earlier attempts failed repeatedly: avoided when others fit.
    #[serde(default)]
    pub avoid_clusters: Vec<String>,
}

/// Why a pod ended, as the executor saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The container exited non-zero.
    Error,
    OomKilled,
    /// The kubelet or the cloud took the node's capacity back (spot reclaim, node pressure).
    Evicted,
    /// The image could not be pulled (a bad tag floods clusters with retries if unchecked).
    ImagePull,
    /// `maxRuntime` passed.
    DeadlineExceeded,
    /// The node or its cluster disappeared under the task.
    Lost,
    /// The executor could not create the Job.
    StartFailed,
    /// The pod stayed pending longer than the task's `pendingTimeout` (no node would take
    /// it, its image never came, a volume could not attach): the cluster's fault, not the
    /// task's, so it is retried elsewhere without using up an attempt.
    Unschedulable,
    /// A running attempt signalled no progress for its `progressDeadline`: stopped (grace
    /// honoured) and counted as the task's failure.
    NoProgress,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Error => "Error",
            FailureKind::OomKilled => "OOMKilled",
            FailureKind::Evicted => "Evicted",
            FailureKind::ImagePull => "ImagePullBackOff",
            FailureKind::DeadlineExceeded => "DeadlineExceeded",
            FailureKind::Lost => "Lost",
            FailureKind::StartFailed => "StartFailed",
            FailureKind::Unschedulable => "Unschedulable",
            FailureKind::NoProgress => "NoProgress",
        }
    }

    /// Failures that are not the task's fault do not use up its attempts.
    pub fn counts_against_attempts(self) -> bool {
        !matches!(self, FailureKind::Evicted | FailureKind::Lost | FailureKind::Unschedulable)
    }
}

/// What an executor reports about one attempt of one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AttemptStatus {
    Pending,
    Running,
    Succeeded,
    Failed { kind: FailureKind, exit_code: Option<i32>, message: String },
}

impl AttemptStatus {
    pub fn is_terminal(&self) -> bool {
        matches!(self, AttemptStatus::Succeeded | AttemptStatus::Failed { .. })
    }
}
