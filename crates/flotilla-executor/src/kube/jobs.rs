//! Leases as `batch/v1` Jobs: names, labels and the Job spec.

use std::collections::BTreeMap;

use flotilla_api::v1::LeasedTask;
use flotilla_model::{is_gpu_sharing_resource, PodSecurity, Resources, Taint, TaskId, GPU_RESOURCE};
use k8s_openapi::api::batch::v1::{Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EnvVar, LocalObjectReference, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, PreferredSchedulingTerm, ResourceRequirements,
    SeccompProfile, SecurityContext, Service, ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::config::KubeBackendConfig;

pub const LABEL_TASK_ID: &str = "flotilla.io/task-id";
pub const LABEL_ATTEMPT: &str = "flotilla.io/attempt";
pub const LABEL_QUEUE: &str = "flotilla.io/queue";
pub const LABEL_TASK_SET: &str = "flotilla.io/task-set";
pub const LABEL_GANG_ID: &str = "flotilla.io/gang-id";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The installation (Raft group) whose executor created the object (invariant 9).
pub const LABEL_INSTALLATION: &str = "flotilla.io/installation";
pub const MANAGED_BY: &str = "flotilla";
pub const CONTAINER_NAME: &str = "task";
const CHECKPOINT_VOLUME: &str = "flotilla-checkpoint";
/// The Job condition (and pod condition) type Kubernetes sets on a pod it is about to
/// disrupt: an eviction, a preemption, the taint manager, a node shutdown.
pub const DISRUPTION_TARGET: &str = "DisruptionTarget";

/// The task's `pendingTimeout`, on its Job so that a restarted executor still knows it.
pub const ANNOTATION_PENDING_TIMEOUT_MS: &str = "flotilla.io/pending-timeout-ms";

/// A lease's pending timeout: 10 minutes when the scheduler sent none (an older server).
pub fn pending_timeout_ms(task: &LeasedTask) -> u64 {
    if task.pending_timeout_ms == 0 {
        flotilla_model::DEFAULT_PENDING_TIMEOUT_MS
    } else {
        task.pending_timeout_ms
    }
}

/// The pending timeout a Job was created with (its annotation), else the default.
pub fn pending_timeout_of(job: &Job) -> u64 {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_PENDING_TIMEOUT_MS)?.parse().ok())
        .unwrap_or(flotilla_model::DEFAULT_PENDING_TIMEOUT_MS)
}

/// Selects the Jobs and pods of one installation: what its executor owns.
pub fn managed_selector(installation: &str) -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INSTALLATION}={installation}")
}

/// Selects every pod that is not this installation's (their requests are a node's
/// `reserved`): other workloads, and another installation's tasks on a shared cluster.
pub fn others_selector(installation: &str) -> String {
    format!("{LABEL_INSTALLATION}!={installation}")
}

/// `flotilla-<first 8 digits of the installation id>-<task id>-<attempt>`: unique across
/// installations sharing a cluster, and across groups whose task ids restart at 1.
pub fn job_name(installation: &str, task_id: TaskId, attempt: u32) -> String {
    let short = installation.get(..8).unwrap_or(installation);
    format!("flotilla-{short}-{task_id}-{attempt}")
}

/// The attempt a Job or pod belongs to, read from its labels.
pub fn attempt_of(meta: &ObjectMeta) -> Option<(TaskId, u32)> {
    let labels = meta.labels.as_ref()?;
    let task_id = labels.get(LABEL_TASK_ID)?.parse().ok()?;
    let attempt = labels.get(LABEL_ATTEMPT)?.parse().ok()?;
    Some((TaskId(task_id), attempt))
}

/// A string as a valid label value: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub fn label_value(s: &str) -> String {
    let mapped: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' }).take(63).collect();
    mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// The Job that runs `task`, pinned to the node whose `kubernetes.io/hostname` label is
/// `hostname`.
///
/// `node_taints` are the taints of that node. The scheduler already checked the task's
/// tolerations against them, but a lease does not carry tolerations, so the Job tolerates
/// the node's own hard taints (not the `node.kubernetes.io/*` condition taints, which mean
/// the node is unwell). GPU tasks also tolerate `nvidia.com/gpu`.
pub fn job_for_lease(task: &LeasedTask, hostname: &str, node_taints: &[Taint], installation: &str, config: &KubeBackendConfig) -> Job {
    let task_id = TaskId(task.task_id);
    let labels = BTreeMap::from_iter(
        [
            (LABEL_INSTALLATION, installation.to_string()),
            (LABEL_TASK_ID, task.task_id.to_string()),
            (LABEL_ATTEMPT, task.attempt.to_string()),
            (LABEL_QUEUE, label_value(&task.queue)),
            (LABEL_TASK_SET, label_value(&task.task_set)),
            (LABEL_MANAGED_BY, MANAGED_BY.to_string()),
        ]
        .into_iter()
        .chain((task.gang_size > 0).then(|| (LABEL_GANG_ID, task.gang_id.to_string())))
        .map(|(k, v)| (k.to_string(), v)),
    );
    let annotations = BTreeMap::from([
        ("flotilla.io/task-name".to_string(), task.name.clone()),
        ("flotilla.io/task-set".to_string(), task.task_set.clone()),
        ("flotilla.io/priority-class".to_string(), task.priority_class.clone()),
        (ANNOTATION_PENDING_TIMEOUT_MS.to_string(), pending_timeout_ms(task).to_string()),
    ]);

    let requests = task.requests.as_ref().map(Resources::from).unwrap_or_default();
    let mut limits = task.limits.as_ref().map(Resources::from).unwrap_or_default();
    // GPUs and other extended resources cannot be overcommitted: Kubernetes wants their
    // limit equal to the request.
    limits.gpu = requests.gpu;
    limits.extended = requests.extended.clone();
    let quantities = |r: &Resources| {
        let q: BTreeMap<String, Quantity> = r.to_quantities().into_iter().map(|(k, v)| (k, Quantity(v))).collect();
        (!q.is_empty()).then_some(q)
    };

    let mut env = vec![
        env_var("FLOTILLA_TASK_ID", task.task_id.to_string()),
        env_var("FLOTILLA_TASK_NAME", task.name.clone()),
        env_var("FLOTILLA_TASK_INDEX", task.index.to_string()),
        env_var("FLOTILLA_ATTEMPT", task.attempt.to_string()),
        env_var("FLOTILLA_QUEUE", task.queue.clone()),
        env_var("FLOTILLA_TASK_SET", task.task_set.clone()),
    ];
    let namespace = namespace_for(&task.queue, config);
    let gang = crate::gang::member(task, &crate::gang::service_name(installation, task.gang_id), &namespace);
    if let Some(g) = &gang {
        env.extend(g.env.iter().map(|(k, v)| env_var(k, v.clone())));
    }
    let (volumes, volume_mounts) = if task.checkpoint {
        env.push(env_var("FLOTILLA_CHECKPOINT_DIR", config.checkpoint_mount_path.clone()));
        checkpoint_volume(task, config)
    } else {
        (None, None)
    };
    // The progress endpoint and this attempt's token, put there by the executor loop
    // (`crate::progress`); a user's own FLOTILLA_* variables are dropped below.
    for key in [crate::progress::ENV_PROGRESS_URL, crate::progress::ENV_PROGRESS_TOKEN] {
        if let Some(v) = task.env.get(key).filter(|_| task.progress_deadline_ms > 0) {
            env.push(env_var(key, v.clone()));
        }
    }
    let mut user_env: Vec<_> = task.env.iter().filter(|(k, _)| !k.starts_with("FLOTILLA_")).collect();
    user_env.sort();
    env.extend(user_env.into_iter().map(|(k, v)| env_var(k, v.clone())));

    let mut tolerations: Vec<Toleration> = Vec::new();
    // A MIG slice or time-sliced replica is on a GPU node, tainted like one.
    if requests.gpu > 0 || requests.extended.keys().any(|k| is_gpu_sharing_resource(k)) {
        tolerations.push(Toleration {
            key: Some(GPU_RESOURCE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        });
    }
    for t in node_taints.iter().filter(|t| t.effect != "PreferNoSchedule" && !t.key.starts_with("node.kubernetes.io/")) {
        let toleration =
            Toleration { key: Some(t.key.clone()), operator: Some("Exists".into()), effect: Some(t.effect.clone()), ..Default::default() };
        if !tolerations.contains(&toleration) {
            tolerations.push(toleration);
        }
    }

    let (pod_security_context, security_context) = security_contexts(task);
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(task.image.clone()),
        command: (!task.command.is_empty()).then(|| task.command.clone()),
        args: (!task.args.is_empty()).then(|| task.args.clone()),
        env: Some(env),
        resources: Some(ResourceRequirements { requests: quantities(&requests), limits: quantities(&limits), ..Default::default() }),
        volume_mounts,
        security_context,
        ..Default::default()
    };
    let pod_spec = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".into()),
        node_selector: Some(BTreeMap::from([(super::nodes::LABEL_HOSTNAME.to_string(), hostname.to_string())])),
        termination_grace_period_seconds: Some(ceil_seconds(task.termination_grace_ms)),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        security_context: pod_security_context,
        // The scheduler placed the task on a node that offers this class (its label).
        runtime_class_name: (!task.runtime_class.is_empty()).then(|| task.runtime_class.clone()),
        affinity: node_affinity(task),
        volumes,
        service_account_name: config.service_account.clone(),
        image_pull_secrets: (!config.image_pull_secrets.is_empty())
            .then(|| config.image_pull_secrets.iter().map(|s| LocalObjectReference { name: s.clone() }).collect()),
        // A gang member answers at <hostname>.<subdomain>.<namespace>.svc (its gang's
        // headless Service, `gang_service`).
        hostname: gang.as_ref().map(|g| g.hostname.clone()),
        subdomain: gang.as_ref().map(|g| g.service.clone()),
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(installation, task_id, task.attempt)),
            namespace: Some(namespace),
            labels: Some(labels.clone()),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // Retries belong to the scheduler, never to Kubernetes.
            backoff_limit: Some(0),
            completions: Some(1),
            parallelism: Some(1),
            active_deadline_seconds: (task.max_runtime_ms > 0).then(|| ceil_seconds(task.max_runtime_ms)),
            // A disrupted pod fails the Job with reason `PodFailurePolicy` (not
            // `BackoffLimitExceeded`), so an eviction is told from the task's own failure even
            // once the pod is gone.
            pod_failure_policy: Some(disruption_fails_the_job()),
            // Kept for `keep_finished` so that `kubectl logs` and `flotilla logs` find the
            // output; the executor deletes it then, or the TTL controller does if it cannot.
            ttl_seconds_after_finished: Some(i32::try_from(config.keep_finished.as_secs()).unwrap_or(i32::MAX)),
            template: PodTemplateSpec { metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }), spec: Some(pod_spec) },
            ..Default::default()
        }),
        status: None,
    }
}

/// The headless Service that gives the members of `task`'s gang their DNS names (see
/// [`crate::gang`]): it selects the gang's pods of this installation, and publishes them
/// before they are ready, since members look each other up while they start. It carries
/// the installation's labels (invariant 9) and is deleted with the gang's last Job.
pub fn gang_service(task: &LeasedTask, installation: &str, config: &KubeBackendConfig) -> Option<Service> {
    if task.gang_size == 0 {
        return None;
    }
    let gang_id = task.gang_id.to_string();
    let labels = BTreeMap::from([
        (LABEL_INSTALLATION.to_string(), installation.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_QUEUE.to_string(), label_value(&task.queue)),
        (LABEL_GANG_ID.to_string(), gang_id.clone()),
    ]);
    let selector = BTreeMap::from([(LABEL_INSTALLATION.to_string(), installation.to_string()), (LABEL_GANG_ID.to_string(), gang_id)]);
    Some(Service {
        metadata: ObjectMeta {
            name: Some(crate::gang::service_name(installation, task.gang_id)),
            namespace: Some(namespace_for(&task.queue, config)),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector),
            publish_not_ready_addresses: Some(true),
            ..Default::default()
        }),
        status: None,
    })
}

/// The gang a Job or Service belongs to, read from its labels.
pub fn gang_of(meta: &ObjectMeta) -> Option<u64> {
    meta.labels.as_ref()?.get(LABEL_GANG_ID)?.parse().ok()
}

/// One rule: a pod with condition `DisruptionTarget` fails the Job at once.
fn disruption_fails_the_job() -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![PodFailurePolicyRule {
            action: "FailJob".into(),
            on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                type_: DISRUPTION_TARGET.into(),
                status: "True".into(),
            }]),
            on_exit_codes: None,
        }],
    }
}

/// The level a lease asks for; empty (a server older than the field) or unknown (a newer
/// one) is `restricted`, the strictest: never weaker than what the scheduler meant.
/// The task's node affinity as the pod's `affinity.nodeAffinity`, so the cluster's own
/// scheduler agrees with the node the lease names: the required expressions as one
/// `nodeSelectorTerm` (all must hold), each preferred expression as a weighted term.
pub fn node_affinity(task: &LeasedTask) -> Option<Affinity> {
    let a = task.affinity.as_ref().filter(|a| !a.required.is_empty() || !a.preferred.is_empty())?;
    let expression = |t: &flotilla_api::v1::AffinityTerm| NodeSelectorRequirement {
        key: t.key.clone(),
        operator: t.operator.clone(),
        values: (!t.values.is_empty()).then(|| t.values.clone()),
    };
    let required = (!a.required.is_empty()).then(|| NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: Some(a.required.iter().map(expression).collect()),
            ..Default::default()
        }],
    });
    let preferred = (!a.preferred.is_empty()).then(|| {
        a.preferred
            .iter()
            .map(|t| PreferredSchedulingTerm {
                weight: t.weight,
                preference: NodeSelectorTerm { match_expressions: Some(vec![expression(t)]), ..Default::default() },
            })
            .collect()
    });
    Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: required,
            preferred_during_scheduling_ignored_during_execution: preferred,
        }),
        ..Default::default()
    })
}

pub fn pod_security_of(task: &LeasedTask) -> PodSecurity {
    PodSecurity::parse(&task.pod_security).unwrap_or_default()
}

/// The pod's and the task container's security contexts for the task's Pod Security level.
///
/// - `restricted` meets the Kubernetes "restricted" standard: the pod runs as non-root with
///   the `RuntimeDefault` seccomp profile; the container cannot escalate privileges and
///   drops every capability. An image whose user is root (or a name, not a UID) does not
///   start under it: give `runAsUser`, or choose `baseline`.
/// - `baseline` keeps `RuntimeDefault` seccomp and no privilege escalation, but may run as
///   root with the runtime's default capabilities.
/// - `privileged` sets no restriction and runs the container privileged.
pub fn security_contexts(task: &LeasedTask) -> (Option<PodSecurityContext>, Option<SecurityContext>) {
    let runtime_default = || Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None });
    match pod_security_of(task) {
        PodSecurity::Restricted => (
            Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: task.run_as_user,
                seccomp_profile: runtime_default(),
                ..Default::default()
            }),
            Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
                ..Default::default()
            }),
        ),
        PodSecurity::Baseline => (
            Some(PodSecurityContext { run_as_user: task.run_as_user, seccomp_profile: runtime_default(), ..Default::default() }),
            Some(SecurityContext { allow_privilege_escalation: Some(false), ..Default::default() }),
        ),
        PodSecurity::Privileged => (
            task.run_as_user.map(|uid| PodSecurityContext { run_as_user: Some(uid), ..Default::default() }),
            Some(SecurityContext { privileged: Some(true), ..Default::default() }),
        ),
    }
}

/// `<prefix><queue>`.
pub fn namespace_for(queue: &str, config: &KubeBackendConfig) -> String {
    format!("{}{queue}", config.namespace_prefix)
}

/// The checkpoint directory: a sub-directory per task of a PVC in the queue's namespace
/// when `checkpoint_claim` is set (it outlives attempts and nodes), else an emptyDir (it
/// outlives container restarts only; a retry starts empty).
fn checkpoint_volume(task: &LeasedTask, config: &KubeBackendConfig) -> (Option<Vec<Volume>>, Option<Vec<VolumeMount>>) {
    let (volume, sub_path) = match &config.checkpoint_claim {
        Some(claim) => (
            Volume {
                name: CHECKPOINT_VOLUME.into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: claim.clone(), read_only: None }),
                ..Default::default()
            },
            Some(format!("{}/{}", label_value(&task.task_set), task.task_id)),
        ),
        None => (Volume { name: CHECKPOINT_VOLUME.into(), empty_dir: Some(Default::default()), ..Default::default() }, None),
    };
    let mount =
        VolumeMount { name: CHECKPOINT_VOLUME.into(), mount_path: config.checkpoint_mount_path.clone(), sub_path, ..Default::default() };
    (Some(vec![volume]), Some(vec![mount]))
}

fn env_var(name: &str, value: String) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value), value_from: None }
}

fn ceil_seconds(ms: u64) -> i64 {
    i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)
}
