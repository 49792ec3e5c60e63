//! The Kubernetes backend: one `batch/v1` Job per attempt, found again by its labels.
//!
//! Reflectors (`kube::runtime::watcher` + `reflector`) keep four caches up to date: Nodes,
//! Flotilla's Jobs, Flotilla's pods, and (unless `count_reserved = false`) the other pods,
//! stripped to their requests, whose sum per node is the node's `reserved`. Every call reads
//! the caches; only `start` and `stop` write to the API server.
//!
//! Nothing is remembered across restarts but the cluster itself: attempts are the Jobs
//! labelled `app.kubernetes.io/managed-by=flotilla`, and their status is derived from the
//! Job and its pod each time events are read (see [`pods`]). What the scheduler acknowledged
//! is kept in memory only to report each change once; after a restart every attempt's
//! current status is reported again, which the scheduler accepts (events are idempotent).
//! Between two reads an attempt may pass through a state unseen (pending straight to
//! succeeded): events are the latest status, not a complete history.
//!
//! **Pod Security.** Task pods meet the "restricted" standard unless the task asks for
//! `baseline` or `privileged` (see [`jobs::security_contexts`]). Namespaces the executor
//! creates carry `pod-security.kubernetes.io/enforce=<namespace_pod_security>` and warn and
//! audit at `restricted`. Admission enforces a level on pods, not on Jobs: a Job whose pod
//! the namespace forbids is created, and the Job controller's pod creation is refused with
//! a `FailedCreate` event on the Job ("violates PodSecurity ..."), retried by the controller
//! for ever. A fifth watch follows those events; a Job without a pod that has one is a
//! failed attempt (`StartFailed`) with the API server's message, reported once, so the
//! scheduler's retry policy decides and the Job is stopped like any ended attempt.
//!
//! **Gangs.** Each gang has a headless Service in its namespace and each member's pod a
//! `hostname` and `subdomain`, so members find each other by stable names ([`crate::gang`],
//! `services`); the Service goes with the gang's last Job.
//!
//! RBAC the executor needs: `get/list/watch` on nodes and pods (cluster-wide),
//! `get/list/watch/create/delete` on `batch/jobs` and on `services`, `list/watch` on events,
//! and `create` on namespaces when `create_namespaces = true`.

pub mod config;
pub mod jobs;
pub mod nodes;
pub mod pods;
mod services;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::v1::LeasedTask;
use flotilla_model::{AttemptStatus, FailureKind, Node, Resources, TaskId};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Namespace, Node as K8sNode, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::backend::{unix_now_ms, Attempt, AttemptEvent, AttemptPhase, BackendError, ClusterBackend, LogOptions, LogStream};
pub use config::KubeBackendConfig;
use jobs::{attempt_of, job_for_lease, job_name, managed_selector, namespace_for, others_selector, LABEL_MANAGED_BY, MANAGED_BY};
use pods::{Facts, NodeHealth};

/// The node label read as the rack (or block) unless configured otherwise.
pub const DEFAULT_RACK_LABEL: &str = "topology.flotilla.io/rack";

/// How to reach the Kubernetes API.
#[derive(Clone, Debug)]
pub enum KubeSource {
    /// A kubeconfig file, with an optional context (default: its current context).
    Kubeconfig { path: PathBuf, context: Option<String> },
    /// The service account of the pod the executor runs in.
    InCluster,
}

/// A client for `source`.
pub async fn client_for(source: &KubeSource) -> anyhow::Result<Client> {
    use anyhow::Context as _;
    let config = match source {
        KubeSource::Kubeconfig { path, context } => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
            let options = kube::config::KubeConfigOptions { context: context.clone(), ..Default::default() };
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        KubeSource::InCluster => kube::Config::incluster().context("reading the in-cluster service account")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// The Kubernetes backend of one cluster. Dropping it stops its watches.
pub struct KubeBackend {
    cluster: String,
    /// The installation whose objects this backend owns (invariant 9).
    installation: String,
    client: Client,
    config: KubeBackendConfig,
    nodes: Store<K8sNode>,
    jobs: Store<Job>,
    pods: Store<Pod>,
    other_pods: Option<Store<Pod>>,
    /// Jobs' `FailedCreate` events: why the Job controller could not create a pod.
    pod_refusals: Store<Event>,
    /// The installation's gang Services (`services`).
    gang_services: Store<Service>,
    state: Mutex<State>,
    watches: Vec<tokio::task::JoinHandle<()>>,
    /// Wall-clock milliseconds since the epoch: the system clock, or a test API server's.
    clock: Clock,
}

/// Where the backend reads the time it compares with Kubernetes' timestamps.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Default)]
struct State {
    /// The last status reported per attempt, as (phase, failure kind).
    reported: HashMap<(TaskId, u32), (AttemptPhase, Option<FailureKind>)>,
    /// Attempts this process deleted: their disappearance is expected.
    stopping: HashSet<(TaskId, u32)>,
    /// Leases the API server refused for good, as `StartFailed` events.
    start_failures: VecDeque<AttemptEvent>,
    namespaces_created: HashSet<String>,
    /// When this process first saw each present attempt finished (ms): its Job is kept
    /// `keep_finished` from then. After a restart the clock starts again; the Job's
    /// `ttlSecondsAfterFinished` bounds it either way.
    finished_seen: HashMap<(TaskId, u32), u64>,
    /// The disruption last seen, so its start and end are logged once.
    disruption: nodes::Disruption,
}

/// An attempt as the caches show it now.
struct Observed {
    key: (TaskId, u32),
    node: String,
    status: AttemptStatus,
    deleting: bool,
}

impl KubeBackend {
    /// Starts the watches of `installation`'s objects. Must be called inside a Tokio runtime.
    pub fn new(client: Client, cluster: impl Into<String>, installation: impl Into<String>, config: KubeBackendConfig) -> KubeBackend {
        let cluster = cluster.into();
        let installation = installation.into();
        let mut watches = Vec::new();
        let (nodes, w) = spawn_reflector(Api::<K8sNode>::all(client.clone()), watcher::Config::default(), |_| {}, &cluster, "nodes");
        watches.push(w);
        let managed = watcher::Config::default().labels(&managed_selector(&installation));
        let (jobs, w) = spawn_reflector(
            Api::<Job>::all(client.clone()),
            managed.clone(),
            |j: &mut Job| j.metadata.managed_fields = None,
            &cluster,
            "jobs",
        );
        watches.push(w);
        let (pods, w) = spawn_reflector(
            Api::<Pod>::all(client.clone()),
            managed.clone(),
            |p: &mut Pod| p.metadata.managed_fields = None,
            &cluster,
            "pods",
        );
        watches.push(w);
        // Not waited for by `check_ready` either: without RBAC on services, gangs start
        // without DNS names and the rest works as before.
        let (gang_services, w) = spawn_reflector(
            Api::<Service>::all(client.clone()),
            managed,
            |s: &mut Service| s.metadata.managed_fields = None,
            &cluster,
            "services",
        );
        watches.push(w);
        let other_pods = config.count_reserved.then(|| {
            let cfg =
                watcher::Config::default().labels(&others_selector(&installation)).fields("status.phase!=Succeeded,status.phase!=Failed");
            let (store, w) = spawn_reflector(Api::<Pod>::all(client.clone()), cfg, nodes::strip_pod, &cluster, "other pods");
            watches.push(w);
            store
        });
        // Not waited for by `check_ready`: without it (say, RBAC not yet updated for events)
        // the backend works as before, and a refused pod's attempt stays pending.
        let cfg = watcher::Config::default().fields(POD_REFUSAL_SELECTOR);
        let (pod_refusals, w) = spawn_reflector(Api::<Event>::all(client.clone()), cfg, strip_event, &cluster, "job events");
        watches.push(w);
        let state = Mutex::new(State::default());
        let clock: Clock = Arc::new(unix_now_ms);
        KubeBackend {
            cluster,
            installation,
            client,
            config,
            nodes,
            jobs,
            pods,
            other_pods,
            pod_refusals,
            gang_services,
            state,
            watches,
            clock,
        }
    }

    /// Reads time from `clock` instead of the system clock (a test API server's manual clock,
    /// whose timestamps the backend compares with `node_lost_after`, `pendingTimeout`...).
    pub fn with_clock(mut self, clock: Clock) -> KubeBackend {
        self.clock = clock;
        self
    }

    fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Connects to `source` and starts the watches.
    pub async fn connect(
        source: &KubeSource,
        cluster: impl Into<String>,
        installation: impl Into<String>,
        config: KubeBackendConfig,
    ) -> anyhow::Result<KubeBackend> {
        config.validate().map_err(|e| anyhow::anyhow!("kube backend settings: {e}"))?;
        Ok(KubeBackend::new(client_for(source).await?, cluster, installation, config))
    }

    /// Waits until every watch has listed its objects once, at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), BackendError> {
        let all = async {
            let _ = self.nodes.wait_until_ready().await;
            let _ = self.jobs.wait_until_ready().await;
            let _ = self.pods.wait_until_ready().await;
            if let Some(s) = &self.other_pods {
                let _ = s.wait_until_ready().await;
            }
        };
        tokio::time::timeout(timeout, all).await.map_err(|_| self.not_ready())
    }

    fn not_ready(&self) -> BackendError {
        BackendError::NotReady { cluster: self.cluster.clone(), message: "watches of nodes, jobs and pods have not listed yet".into() }
    }

    fn check_ready(&self) -> Result<(), BackendError> {
        let nodes = self.nodes.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok());
        let jobs = self.jobs.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok());
        let pods_ready = |s: &Store<Pod>| s.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok());
        if nodes && jobs && pods_ready(&self.pods) && self.other_pods.as_ref().is_none_or(pods_ready) {
            Ok(())
        } else {
            Err(self.not_ready())
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> BackendError {
        BackendError::Unavailable { cluster: self.cluster.clone(), message: format!("{what}: {e}") }
    }

    fn node_list(&self) -> Vec<Node> {
        let mut reserved: HashMap<String, Resources> = HashMap::new();
        for pod in self.other_pods.as_ref().map(|s| s.state()).unwrap_or_default() {
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            if let Some(node) = node.filter(|_| nodes::pod_is_active(&pod)) {
                let held = reserved.entry(node).or_default();
                held.add(&nodes::pod_requests(&pod));
                *held.extended.entry(flotilla_model::PODS_RESOURCE.to_string()).or_insert(0) += 1;
            }
        }
        let mut out: Vec<Node> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| nodes::node_from_k8s(&self.cluster, n, &self.config))
            .map(|mut n| {
                n.reserved = reserved.remove(&n.name).unwrap_or_default();
                n
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The health of node `name`. `bound`: a pod runs there (a missing Node then means the
    /// node is gone); otherwise it is only the name a Job is pinned to, which may be a
    /// hostname label rather than a Node's name.
    fn node_health(&self, name: &str, bound: bool) -> NodeHealth {
        if name.is_empty() {
            return NodeHealth::Unknown;
        }
        let Some(node) = self.nodes.get(&ObjectRef::new(name)) else {
            return if bound { NodeHealth::Missing } else { NodeHealth::Unknown };
        };
        let ready = node.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
        let millis = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| t.map(|t| t.0.as_millisecond().max(0) as u64);
        match ready {
            Some(c) if c.status == "True" => NodeHealth::Ready,
            Some(c) => NodeHealth::NotReady {
                since_ms: millis(c.last_transition_time.as_ref()).unwrap_or_else(unix_now_ms),
                why: format!("{}: {}", c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default())
                    .trim_matches([':', ' '])
                    .to_string(),
            },
            None => NodeHealth::NotReady {
                since_ms: millis(node.metadata.creation_timestamp.as_ref()).unwrap_or_else(unix_now_ms),
                why: "no Ready condition".into(),
            },
        }
    }

    /// Logs when a disruption begins and ends (see [`nodes::Disruption`]), once each.
    fn note_disruption(&self, now: &nodes::Disruption) {
        let mut state = self.lock();
        if state.disruption == *now {
            return;
        }
        if now.is_normal() {
            tracing::info!(cluster = %self.cluster, "nodes Ready again: nodes not Ready for node_lost_after are presumed lost again");
        } else {
            tracing::warn!(cluster = %self.cluster, whole_cluster = now.whole_cluster, zones = ?now.zones,
                "many nodes not Ready at once: presuming a control-plane or network fault, not lost nodes; their attempts are kept");
        }
        state.disruption = now.clone();
    }

    /// Every Flotilla Job with the status of its attempt, ordered by (task, attempt).
    fn observe(&self) -> Vec<Observed> {
        let now_ms = self.now_ms();
        let all_nodes = self.nodes.state();
        let disruption = nodes::Disruption::of(all_nodes.iter().map(|n| n.as_ref()));
        self.note_disruption(&disruption);
        let zone_of = |name: &str| -> String {
            let node = self.nodes.get(&ObjectRef::new(name));
            node.and_then(|n| n.metadata.labels.as_ref()?.get(nodes::LABEL_ZONE).cloned()).unwrap_or_default()
        };
        let mut newest_pod: HashMap<(TaskId, u32), Arc<Pod>> = HashMap::new();
        for pod in self.pods.state() {
            let Some(key) = attempt_of(&pod.metadata) else { continue };
            let newer = newest_pod.get(&key).is_none_or(|p| p.metadata.creation_timestamp < pod.metadata.creation_timestamp);
            if newer {
                newest_pod.insert(key, pod);
            }
        }
        let refusals = self.pod_refusals();
        let mut out: Vec<Observed> = self
            .jobs
            .state()
            .iter()
            .filter_map(|job| {
                let key = attempt_of(&job.metadata)?;
                let pod = newest_pod.get(&key).map(|p| p.as_ref());
                let bound_to = pod.and_then(|p| p.spec.as_ref()?.node_name.clone());
                let bound = bound_to.is_some();
                let node = bound_to.or_else(|| job_node(job)).unwrap_or_default();
                let facts = Facts {
                    now_ms,
                    image_pull_failure_after_ms: self.config.image_pull_failure_after.as_millis() as u64,
                    node_lost_after_ms: self.config.node_lost_after.as_millis() as u64,
                    pending_timeout_ms: jobs::pending_timeout_of(job),
                    node: self.node_health(&node, bound),
                    node_loss_held: if disruption.is_normal() { None } else { disruption.holds(&zone_of(&node)) },
                    node_name: node.clone(),
                };
                let mut status = pods::attempt_status(job, pod, &facts);
                if pod.is_none() && status == AttemptStatus::Pending {
                    if let Some(message) = refusal_of(job, &refusals) {
                        status = AttemptStatus::Failed { kind: FailureKind::StartFailed, exit_code: None, message };
                    }
                }
                Some(Observed { key, node, status, deleting: job.metadata.deletion_timestamp.is_some() })
            })
            .collect();
        out.sort_by_key(|o| o.key);
        out
    }

    /// Pod Security refusals of Flotilla's Jobs by (namespace, Job name): the Job's uid as
    /// the event names it, and the API server's message.
    fn pod_refusals(&self) -> HashMap<(String, String), (Option<String>, String)> {
        let mut out = HashMap::new();
        for e in self.pod_refusals.state() {
            let o = &e.involved_object;
            let message = e.message.as_deref().unwrap_or_default();
            let (Some(namespace), Some(name)) = (o.namespace.clone(), o.name.clone()) else { continue };
            if name.starts_with("flotilla-") && message.contains(POD_SECURITY_REFUSAL) {
                out.insert((namespace, name), (o.uid.clone(), message.to_string()));
            }
        }
        out
    }

    async fn create_job(&self, job: &Job, namespace: &str) -> Result<(), kube::Error> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        match api.create(&PostParams::default(), job).await {
            Err(kube::Error::Api(s)) if s.code == 404 && self.config.create_namespaces => {
                self.create_namespace(namespace).await?;
                api.create(&PostParams::default(), job).await.map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    async fn create_namespace(&self, namespace: &str) -> Result<(), kube::Error> {
        if self.lock().namespaces_created.contains(namespace) {
            return Ok(());
        }
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(namespace.to_string()), labels: Some(self.namespace_labels()), ..Default::default() },
            ..Default::default()
        };
        match Api::<Namespace>::all(self.client.clone()).create(&PostParams::default(), &ns).await {
            Ok(_) => tracing::info!(cluster = %self.cluster, namespace, "created namespace"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
        self.lock().namespaces_created.insert(namespace.to_string());
        Ok(())
    }

    /// The labels of a namespace this executor creates: Flotilla's, and the Pod Security
    /// admission levels (enforce the configured one; warn and audit at `restricted`, so a
    /// namespace's owners see which tasks ask for more).
    fn namespace_labels(&self) -> std::collections::BTreeMap<String, String> {
        let enforce = self.config.namespace_pod_security.as_str();
        [
            (LABEL_MANAGED_BY, MANAGED_BY),
            ("pod-security.kubernetes.io/enforce", enforce),
            ("pod-security.kubernetes.io/enforce-version", "latest"),
            ("pod-security.kubernetes.io/warn", "restricted"),
            ("pod-security.kubernetes.io/audit", "restricted"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    async fn start_task(&self, task: LeasedTask) -> Result<(), BackendError> {
        let key = (TaskId(task.task_id), task.attempt);
        let namespace = namespace_for(&task.queue, &self.config);
        let name = job_name(&self.installation, key.0, key.1);
        if self.jobs.get(&ObjectRef::new(&name).within(&namespace)).is_some() {
            return Ok(());
        }
        let node = self.nodes.get(&ObjectRef::new(&task.node));
        let hostname = node
            .as_ref()
            .and_then(|n| n.metadata.labels.as_ref()?.get(nodes::LABEL_HOSTNAME).cloned())
            .unwrap_or_else(|| task.node.clone());
        let taints = node.as_ref().and_then(|n| nodes::node_from_k8s(&self.cluster, n, &self.config)).map(|n| n.taints).unwrap_or_default();
        let job = job_for_lease(&task, &hostname, &taints, &self.installation, &self.config);
        // The gang's names resolve from the moment its members start.
        self.ensure_gang_service(&task, &namespace).await?;
        match self.create_job(&job, &namespace).await {
            Ok(()) => {
                tracing::info!(cluster = %self.cluster, task_id = task.task_id, attempt = task.attempt, node = %task.node, job = %name, %namespace, "created job");
                Ok(())
            }
            // Created by an earlier call whose Job the cache has not seen yet.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            // Refused for good (invalid spec, forbidden, no namespace): the scheduler hears
            // of it as a failed attempt, and its retry policy and circuit breaker decide.
            Err(kube::Error::Api(s)) if (400..500).contains(&s.code) && s.code != 429 => {
                tracing::warn!(cluster = %self.cluster, task_id = task.task_id, attempt = task.attempt, code = s.code, message = %s.message, "job refused");
                let status = AttemptStatus::Failed {
                    kind: FailureKind::StartFailed,
                    exit_code: None,
                    message: format!("creating Job {namespace}/{name}: {} ({})", s.message, s.code),
                };
                let event = AttemptEvent { task_id: key.0, attempt: key.1, node: task.node.clone(), status, time_ms: self.now_ms() };
                self.lock().start_failures.push_back(event);
                Ok(())
            }
            Err(e) => Err(self.unavailable(&format!("creating Job {namespace}/{name}"), e)),
        }
    }

    /// Deletes the attempt's pods with at most `max_grace` (their own grace may be longer),
    /// then its Job: an executor whose lease expired must have them gone within a bound.
    async fn stop_task_within(&self, task_id: TaskId, attempt: u32, max_grace: std::time::Duration) -> Result<(), BackendError> {
        let key = (task_id, attempt);
        let pods: Vec<(String, String)> = self
            .pods
            .state()
            .iter()
            .filter(|p| attempt_of(&p.metadata) == Some(key))
            .filter_map(|p| Some((p.metadata.name.clone()?, p.metadata.namespace.clone()?)))
            .collect();
        let grace_seconds = max_grace.as_secs() as i64;
        for (name, namespace) in pods {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
            let params = DeleteParams { grace_period_seconds: Some(grace_seconds.max(0) as u32), ..DeleteParams::default() };
            match api.delete(&name, &params).await {
                Ok(_) => {
                    tracing::info!(cluster = %self.cluster, task_id = task_id.0, attempt, pod = %name, grace_seconds, "deleted pod: executor lease expired")
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(self.unavailable(&format!("deleting Pod {namespace}/{name}"), e)),
            }
        }
        self.stop_task(task_id, attempt).await
    }

    async fn stop_task(&self, task_id: TaskId, attempt: u32) -> Result<(), BackendError> {
        let key = (task_id, attempt);
        // A finished attempt's Job stays for `keep_finished`: its output is read from its pod.
        // The scheduler asks to stop it every Sync; it goes on the first ask after that. O(1):
        // many finished attempts are asked about every Sync.
        let finished_ms = self.lock().finished_seen.get(&key).copied();
        if finished_ms.is_some_and(|t| self.now_ms().saturating_sub(t) < self.config.keep_finished.as_millis() as u64) {
            return Ok(());
        }
        let Some(job) = self.jobs.find(|j| attempt_of(&j.metadata) == Some(key)) else { return Ok(()) };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let (Some(name), Some(namespace)) = (job.metadata.name.clone(), job.metadata.namespace.clone()) else { return Ok(()) };
        // Background: the Job goes now, its pod gets SIGTERM and its own grace period.
        let api: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => tracing::info!(cluster = %self.cluster, task_id = task_id.0, attempt, job = %name, %namespace, "deleted job"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(self.unavailable(&format!("deleting Job {namespace}/{name}"), e)),
        }
        self.lock().stopping.insert(key);
        // The gang's Service goes with its last Job.
        if let Some(gang) = jobs::gang_of(&job.metadata) {
            self.delete_unused_gang_services(Some(gang), 0).await?;
        }
        Ok(())
    }

    /// The output of the attempt's newest pod, from the API server's log endpoint.
    async fn read_logs(&self, task_id: TaskId, attempt: u32, options: LogOptions) -> Result<LogStream, BackendError> {
        self.check_ready()?;
        let key = (task_id, attempt);
        let pod = self
            .pods
            .state()
            .into_iter()
            .filter(|p| attempt_of(&p.metadata) == Some(key))
            .max_by(|a, b| a.metadata.creation_timestamp.cmp(&b.metadata.creation_timestamp));
        let not_found = |why: String| BackendError::NotFound {
            cluster: self.cluster.clone(),
            message: format!("attempt {attempt} of task {task_id}: {why}"),
        };
        let Some(pod) = pod else {
            let keep = humantime::format_duration(self.config.keep_finished);
            return Err(not_found(format!("no pod in this cluster (finished attempts are kept {keep})")));
        };
        let (Some(name), Some(namespace)) = (pod.metadata.name.clone(), pod.metadata.namespace.clone()) else {
            return Err(not_found("its pod has no name".into()));
        };
        let params = kube::api::LogParams {
            container: Some(jobs::CONTAINER_NAME.into()),
            follow: options.follow,
            tail_lines: (options.tail_lines > 0).then_some(i64::from(options.tail_lines)),
            limit_bytes: (options.limit_bytes > 0).then(|| i64::try_from(options.limit_bytes).unwrap_or(i64::MAX)),
            ..Default::default()
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let reader = match api.log_stream(&name, &params).await {
            Ok(r) => r,
            // Pending ("is waiting to start"), or gone: Kubernetes' message says which.
            Err(kube::Error::Api(s)) if matches!(s.code, 400 | 404) => {
                return Err(not_found(format!("pod {namespace}/{name}: {}", s.message)))
            }
            Err(e) => return Err(self.unavailable(&format!("reading the log of pod {namespace}/{name}"), e)),
        };
        let cluster = self.cluster.clone();
        let chunks = futures::stream::unfold(Box::pin(reader), move |mut reader| {
            let cluster = cluster.clone();
            async move {
                use futures::AsyncReadExt as _;
                let mut buf = vec![0u8; 32 << 10];
                match reader.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(buf), reader))
                    }
                    Err(e) => Some((Err(BackendError::Unavailable { cluster, message: format!("reading a pod log: {e}") }), reader)),
                }
            }
        });
        // One error ends the stream.
        let mut failed = false;
        Ok(Box::pin(chunks.take_while(move |item| {
            let go = !failed;
            failed |= item.is_err();
            futures::future::ready(go)
        })))
    }

    fn peek_events(&self, max: usize) -> Result<Vec<AttemptEvent>, BackendError> {
        self.check_ready()?;
        let observed = self.observe();
        let now_ms = self.now_ms();
        let mut state = self.lock();
        let state = &mut *state;
        for o in observed.iter().filter(|o| keeps_output(&o.status)) {
            state.finished_seen.entry(o.key).or_insert(now_ms);
        }
        let mut out: Vec<AttemptEvent> = state.start_failures.iter().take(max).cloned().collect();
        for o in &observed {
            if out.len() >= max {
                break;
            }
            if o.deleting || state.stopping.contains(&o.key) {
                continue;
            }
            let (phase, kind) = phase_and_kind(&o.status);
            match state.reported.get(&o.key) {
                // Terminal states are final (invariant 5).
                Some((AttemptPhase::Succeeded | AttemptPhase::Failed, _)) => continue,
                Some(last) if *last == (phase, kind) => continue,
                _ => {}
            }
            out.push(AttemptEvent { task_id: o.key.0, attempt: o.key.1, node: o.node.clone(), status: o.status.clone(), time_ms: now_ms });
        }
        // Jobs that disappeared: expected when we deleted them or they had finished, lost
        // otherwise.
        let present: HashSet<(TaskId, u32)> = observed.iter().map(|o| o.key).collect();
        let mut gone: Vec<_> = state.reported.keys().filter(|k| !present.contains(k)).copied().collect();
        gone.sort();
        for key in gone {
            let (phase, _) = state.reported[&key];
            let unexpected = !state.stopping.contains(&key) && matches!(phase, AttemptPhase::Pending | AttemptPhase::Running);
            if !unexpected {
                state.reported.remove(&key);
            } else if out.len() < max {
                let message = "the Job was deleted outside Flotilla".to_string();
                let status = AttemptStatus::Failed { kind: FailureKind::Lost, exit_code: None, message };
                out.push(AttemptEvent { task_id: key.0, attempt: key.1, node: String::new(), status, time_ms: now_ms });
            }
        }
        state.stopping.retain(|k| present.contains(k));
        state.finished_seen.retain(|k, _| present.contains(k));
        Ok(out)
    }

    fn ack(&self, events: &[AttemptEvent]) {
        let mut state = self.lock();
        for e in events {
            if state.start_failures.front() == Some(e) {
                state.start_failures.pop_front();
            }
            let key = (e.task_id, e.attempt);
            let terminal_already = matches!(state.reported.get(&key), Some((AttemptPhase::Succeeded | AttemptPhase::Failed, _)));
            if !terminal_already {
                state.reported.insert(key, phase_and_kind(&e.status));
            }
        }
    }

    fn attempt_list(&self) -> Result<Vec<Attempt>, BackendError> {
        self.check_ready()?;
        let observed = self.observe();
        let state = self.lock();
        Ok(observed
            .into_iter()
            .map(|o| {
                // Keep the phase consistent with what was reported: terminal is final.
                let phase = match state.reported.get(&o.key) {
                    Some((p @ (AttemptPhase::Succeeded | AttemptPhase::Failed), _)) => *p,
                    _ => AttemptPhase::of(&o.status),
                };
                Attempt { task_id: o.key.0, attempt: o.key.1, node: o.node, phase }
            })
            .collect())
    }
}

impl Drop for KubeBackend {
    fn drop(&mut self) {
        for w in &self.watches {
            w.abort();
        }
    }
}

/// The events the Job controller records when the API server refuses a Job's pod.
const POD_REFUSAL_SELECTOR: &str = "involvedObject.kind=Job,reason=FailedCreate";
/// What Pod Security admission says when it refuses a pod. Other `FailedCreate` causes
/// (a full ResourceQuota, a missing service account) can clear up, so they stay pending.
const POD_SECURITY_REFUSAL: &str = "violates PodSecurity";

/// Keeps what [`KubeBackend::pod_refusals`] reads, with the message bounded.
fn strip_event(e: &mut Event) {
    e.metadata.managed_fields = None;
    e.metadata.annotations = None;
    e.metadata.labels = None;
    e.related = None;
    e.series = None;
    if let Some(m) = e.message.as_mut() {
        *m = flotilla_model::truncate(m, flotilla_model::MAX_REASON_BYTES);
    }
}

/// The failure message for `job` if Pod Security refused its pod. An event of an earlier Job
/// of the same name (another uid) does not count.
fn refusal_of(job: &Job, refusals: &HashMap<(String, String), (Option<String>, String)>) -> Option<String> {
    let (namespace, name) = (job.metadata.namespace.clone()?, job.metadata.name.clone()?);
    let (uid, message) = refusals.get(&(namespace.clone(), name.clone()))?;
    if uid.is_some() && job.metadata.uid.is_some() && *uid != job.metadata.uid {
        return None;
    }
    Some(format!("the API server refused the pod of Job {namespace}/{name}: {message}"))
}

/// Whether an ended attempt's Job is kept for its output: only when its pod really ran and
/// stopped. A pod that never started (unschedulable, a bad image, refused) could still start
/// later, and one on a lost node cannot be read: those go at once.
fn keeps_output(status: &AttemptStatus) -> bool {
    match status {
        AttemptStatus::Succeeded => true,
        AttemptStatus::Failed { kind, .. } => {
            matches!(kind, FailureKind::Error | FailureKind::OomKilled | FailureKind::DeadlineExceeded | FailureKind::Evicted)
        }
        _ => false,
    }
}

fn phase_and_kind(status: &AttemptStatus) -> (AttemptPhase, Option<FailureKind>) {
    match status {
        AttemptStatus::Failed { kind, .. } => (AttemptPhase::Failed, Some(*kind)),
        other => (AttemptPhase::of(other), None),
    }
}

/// The node a Job was pinned to (its `kubernetes.io/hostname` selector).
fn job_node(job: &Job) -> Option<String> {
    job.spec.as_ref()?.template.spec.as_ref()?.node_selector.as_ref()?.get(nodes::LABEL_HOSTNAME).cloned()
}

fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    modify: impl FnMut(&mut K) + Send + 'static,
    cluster: &str,
    kind: &'static str,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let cluster = cluster.to_string();
    let stream = reflector::reflector(writer, watcher(api, config).modify(modify)).default_backoff();
    let handle = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                tracing::warn!(cluster = %cluster, kind, error = %e, "watch failed; retrying with backoff");
            }
        }
    });
    (store, handle)
}

impl ClusterBackend for KubeBackend {
    fn cluster(&self) -> &str {
        &self.cluster
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<Node>, BackendError>> {
        Box::pin(async move {
            self.check_ready()?;
            Ok(self.node_list())
        })
    }

    fn attempts(&self) -> BoxFuture<'_, Result<Vec<Attempt>, BackendError>> {
        Box::pin(async move {
            let attempts = self.attempt_list()?;
            self.delete_unused_gang_services(None, services::SERVICE_MIN_AGE_MS).await?;
            Ok(attempts)
        })
    }

    fn start(&self, task: LeasedTask) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.start_task(task))
    }

    fn stop(&self, task_id: TaskId, attempt: u32) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.stop_task(task_id, attempt))
    }

    fn stop_within(&self, task_id: TaskId, attempt: u32, max_grace: std::time::Duration) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.stop_task_within(task_id, attempt, max_grace))
    }

    fn pending_events(&self, max: usize) -> BoxFuture<'_, Result<Vec<AttemptEvent>, BackendError>> {
        Box::pin(async move { self.peek_events(max) })
    }

    fn ack_events(&self, events: &[AttemptEvent]) {
        self.ack(events);
    }

    fn logs(&self, task_id: TaskId, attempt: u32, options: LogOptions) -> BoxFuture<'_, Result<LogStream, BackendError>> {
        Box::pin(self.read_logs(task_id, attempt, options))
    }

    fn installation(&self) -> Option<&str> {
        Some(&self.installation)
    }
}

#[cfg(test)]
mod failure_tests;
#[cfg(test)]
mod gang_tests;
#[cfg(test)]
mod tests;
