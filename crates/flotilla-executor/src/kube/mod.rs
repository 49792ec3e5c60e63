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
//! RBAC the executor needs: `get/list/watch` on nodes and pods (cluster-wide),
//! `get/list/watch/create/delete` on `batch/jobs`, `list/watch` on events, and `create` on
//! namespaces when `create_namespaces = true`.

pub mod jobs;
pub mod nodes;
pub mod pods;

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
use k8s_openapi::api::core::v1::{Event, Namespace, Node as K8sNode, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::backend::{unix_now_ms, Attempt, AttemptEvent, AttemptPhase, BackendError, ClusterBackend};
use crate::config::KubeBackendConfig;
use jobs::{attempt_of, job_for_lease, job_name, namespace_for, LABEL_MANAGED_BY, MANAGED_BY, MANAGED_SELECTOR, UNMANAGED_SELECTOR};

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
    client: Client,
    config: KubeBackendConfig,
    nodes: Store<K8sNode>,
    jobs: Store<Job>,
    pods: Store<Pod>,
    other_pods: Option<Store<Pod>>,
    /// Jobs' `FailedCreate` events: why the Job controller could not create a pod.
    pod_refusals: Store<Event>,
    state: Mutex<State>,
    watches: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    /// The last status reported per attempt, as (phase, failure kind).
    reported: HashMap<(TaskId, u32), (AttemptPhase, Option<FailureKind>)>,
    /// Attempts this process deleted: their disappearance is expected.
    stopping: HashSet<(TaskId, u32)>,
    /// Leases the API server refused for good, as `StartFailed` events.
    start_failures: VecDeque<AttemptEvent>,
    namespaces_created: HashSet<String>,
}

/// An attempt as the caches show it now.
struct Observed {
    key: (TaskId, u32),
    node: String,
    status: AttemptStatus,
    deleting: bool,
}

impl KubeBackend {
    /// Starts the watches. Must be called inside a Tokio runtime.
    pub fn new(client: Client, cluster: impl Into<String>, config: KubeBackendConfig) -> KubeBackend {
        let cluster = cluster.into();
        let mut watches = Vec::new();
        let (nodes, w) = spawn_reflector(Api::<K8sNode>::all(client.clone()), watcher::Config::default(), |_| {}, &cluster, "nodes");
        watches.push(w);
        let managed = watcher::Config::default().labels(MANAGED_SELECTOR);
        let (jobs, w) = spawn_reflector(
            Api::<Job>::all(client.clone()),
            managed.clone(),
            |j: &mut Job| j.metadata.managed_fields = None,
            &cluster,
            "jobs",
        );
        watches.push(w);
        let (pods, w) =
            spawn_reflector(Api::<Pod>::all(client.clone()), managed, |p: &mut Pod| p.metadata.managed_fields = None, &cluster, "pods");
        watches.push(w);
        let other_pods = config.count_reserved.then(|| {
            let cfg = watcher::Config::default().labels(UNMANAGED_SELECTOR).fields("status.phase!=Succeeded,status.phase!=Failed");
            let (store, w) = spawn_reflector(Api::<Pod>::all(client.clone()), cfg, nodes::strip_pod, &cluster, "other pods");
            watches.push(w);
            store
        });
        // Not waited for by `check_ready`: without it (say, RBAC not yet updated for events)
        // the backend works as before, and a refused pod's attempt stays pending.
        let cfg = watcher::Config::default().fields(POD_REFUSAL_SELECTOR);
        let (pod_refusals, w) = spawn_reflector(Api::<Event>::all(client.clone()), cfg, strip_event, &cluster, "job events");
        watches.push(w);
        KubeBackend { cluster, client, config, nodes, jobs, pods, other_pods, pod_refusals, state: Mutex::new(State::default()), watches }
    }

    /// Connects to `source` and starts the watches.
    pub async fn connect(source: &KubeSource, cluster: impl Into<String>, config: KubeBackendConfig) -> anyhow::Result<KubeBackend> {
        config.validate().map_err(|e| anyhow::anyhow!("kube backend settings: {e}"))?;
        Ok(KubeBackend::new(client_for(source).await?, cluster, config))
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
                reserved.entry(node).or_default().add(&nodes::pod_requests(&pod));
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

    /// Every Flotilla Job with the status of its attempt, ordered by (task, attempt).
    fn observe(&self) -> Vec<Observed> {
        let now_ms = unix_now_ms();
        let pull_ms = self.config.image_pull_failure_after.as_millis() as u64;
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
                let node = pod.and_then(|p| p.spec.as_ref()?.node_name.clone()).or_else(|| job_node(job)).unwrap_or_default();
                let mut status = pods::attempt_status(job, pod, now_ms, pull_ms);
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
        let name = job_name(key.0, key.1);
        if self.jobs.get(&ObjectRef::new(&name).within(&namespace)).is_some() {
            return Ok(());
        }
        let node = self.nodes.get(&ObjectRef::new(&task.node));
        let hostname = node
            .as_ref()
            .and_then(|n| n.metadata.labels.as_ref()?.get(nodes::LABEL_HOSTNAME).cloned())
            .unwrap_or_else(|| task.node.clone());
        let taints = node.as_ref().and_then(|n| nodes::node_from_k8s(&self.cluster, n, &self.config)).map(|n| n.taints).unwrap_or_default();
        let job = job_for_lease(&task, &hostname, &taints, &self.config);
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
                let event = AttemptEvent { task_id: key.0, attempt: key.1, node: task.node.clone(), status, time_ms: unix_now_ms() };
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
        Ok(())
    }

    fn peek_events(&self, max: usize) -> Result<Vec<AttemptEvent>, BackendError> {
        self.check_ready()?;
        let observed = self.observe();
        let now_ms = unix_now_ms();
        let mut state = self.lock();
        let state = &mut *state;
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
        Box::pin(async move { self.attempt_list() })
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
}

#[cfg(test)]
mod tests;
