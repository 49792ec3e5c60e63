//! A faithful in-process Kubernetes API server for tests and benchmarks of Flotilla's
//! Kubernetes backend.
//!
//! **What it is for.** Tests and benchmarks that drive a real `kube::Client` (and
//! kube-runtime's watchers and reflectors) against an API server that behaves like
//! kube-apiserver where a client can tell: one global resourceVersion; watches that replay
//! history and expire with 410 Gone; label and field selectors on lists and watches;
//! paging with `limit`/`continue`; deletes with grace periods, finalizers and propagation;
//! `Status` bodies worded like the real server's. Controllers (Job, scheduler, node
//! lifecycle with taint eviction, garbage collector) and a per-pod kubelet the test drives
//! make a small cluster whose failures (a node that stops, an eviction, a pod that cannot
//! be scheduled) can be played out on a controllable clock. Faults are on command:
//! dropped connections, injected errors, compaction, a held-back watch gap.
//!
//! **What it is not for.** It is not a Kubernetes: it serves nodes, namespaces, pods (with
//! `log`), events and `batch/v1` Jobs over plain HTTP on 127.0.0.1, no other resource, no
//! discovery, no authentication, no server-side apply or JSON patch (merge patch, and
//! strategic merge patch applied as a merge patch, only). Its controllers do what Flotilla
//! depends on (one pod per Job), not everything the real ones do. Check behaviour that
//! matters by hand against a real control plane too.
//!
//! ```no_run
//! # async fn example() {
//! use flotilla_kubetest::{ApiServer, Options, PodState};
//! use serde_json::json;
//!
//! let server = ApiServer::start(Options { manual_clock: true, ..Options::default() }).await;
//! server.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
//!     "status": {"allocatable": {"cpu": "8", "memory": "32Gi"}, "conditions": [{"type": "Ready", "status": "True"}]}}));
//! let client = server.client();
//! // ... create a Job through `client`; the Job controller creates its pod, the scheduler
//! // binds it to n1, and the test plays the kubelet:
//! # let pod = String::new();
//! server.set_pod_state("default", &pod, PodState::Running).unwrap();
//! server.stop_node_heartbeats("n1");
//! server.advance(std::time::Duration::from_secs(360)); // Unknown, tainted, pod evicted
//! # }
//! ```

mod admission;
mod controllers;
mod http;
mod kinds;
mod logs;
mod selector;
mod server;
mod state;
mod status;
mod store;
mod util;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

pub use admission::{pod_security_violations, POD_SECURITY_ENFORCE};
pub use controllers::job::{LABEL_CONTROLLER_UID, LABEL_JOB_NAME, TRACKING_FINALIZER};
pub use controllers::kubelet::{KubeletError, PodState};
pub use controllers::nodes::{TAINT_NOT_READY, TAINT_UNREACHABLE};
pub use kinds::Kind;
pub use state::{DeleteOptions, Options, RecordedRequest};
pub use status::ApiError;

use server::Shared;
use state::{Fault, Origin, State};

/// A running API server on 127.0.0.1 (a port of its own). Dropping it stops it.
pub struct ApiServer {
    shared: Arc<Shared>,
    url: String,
    tasks: Vec<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts the server; must be called inside a Tokio runtime.
    pub async fn start(options: Options) -> ApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("a bound address"));
        let clock = state::Clock::new(options.manual_clock);
        let shared = Arc::new(Shared::new(State::new(options), clock));
        let tasks = vec![
            tokio::spawn(server::accept_loop(listener, Arc::downgrade(&shared))),
            tokio::spawn(server::tick_loop(Arc::downgrade(&shared))),
        ];
        ApiServer { shared, url, tasks }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("a valid URL"));
        kube::Client::try_from(config).expect("a client for a plain HTTP URL")
    }

    // ----- seeding and inspecting -----

    /// Creates `object` as given (status, uid and timestamps kept when present), or
    /// replaces the stored one of the same kind and name (its uid and creation time kept).
    /// A missing namespace is created. Its kind comes from `apiVersion` and `kind`.
    pub fn apply(&self, object: Value) -> Value {
        let kind = Kind::of(&object).unwrap_or_else(|| panic!("unknown kind in {}", util::prefix(&object.to_string())));
        self.shared.write(|state, now_ms| {
            let key = store::key_of(&object);
            let key = if kind.namespaced() && key.0.is_empty() { ("default".to_string(), key.1) } else { key };
            match state.store.get(kind, &key).cloned() {
                Some(old) => {
                    let mut o = object;
                    for f in ["uid", "creationTimestamp"] {
                        o["metadata"][f] = old["metadata"][f].clone();
                    }
                    o["metadata"]["namespace"] = old["metadata"]["namespace"].clone();
                    (*state.write(kind, o)).clone()
                }
                None => (*state.create(kind, object, Origin::Seed, now_ms).expect("a valid object to seed")).clone(),
            }
        })
    }

    /// Creates `object` the way a client's POST would (status reset, validation,
    /// admission).
    pub fn create(&self, object: Value) -> Result<Value, ApiError> {
        let kind = Kind::of(&object).ok_or_else(|| ApiError::bad_request("unknown kind"))?;
        self.shared.write(|state, now_ms| state.create(kind, object, Origin::Client, now_ms).map(|o| (*o).clone()))
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.shared.lock().get(kind, namespace, name).map(|o| (*o).clone())
    }

    /// Every object of `kind`, in key order.
    pub fn list(&self, kind: Kind) -> Vec<Value> {
        self.shared.lock().store.objects(kind).values().map(|o| (**o).clone()).collect()
    }

    /// A typed copy of an object (`k8s_openapi` types).
    pub fn get_as<K: serde::de::DeserializeOwned>(&self, kind: Kind, namespace: &str, name: &str) -> Option<K> {
        serde_json::from_value(self.get(kind, namespace, name)?).ok()
    }

    /// Changes an object in place (status included), as a controller's update would.
    pub fn update(&self, kind: Kind, namespace: &str, name: &str, f: impl FnOnce(&mut Value)) -> Result<Value, ApiError> {
        self.shared.write(|state, _| {
            let old = state.get(kind, namespace, name).ok_or_else(|| ApiError::not_found(kind, name))?;
            let mut o = (*old).clone();
            f(&mut o);
            Ok((*state.write(kind, o)).clone())
        })
    }

    /// Deletes like a client's DELETE.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str, options: DeleteOptions) -> Result<(), ApiError> {
        let key = (if kind.namespaced() { namespace.to_string() } else { String::new() }, name.to_string());
        self.shared.write(|state, now_ms| state.delete(kind, &key, &options, now_ms).map(|_| ()))
    }

    /// The pods a Job's controller created, oldest first.
    pub fn pods_of_job(&self, namespace: &str, job: &str) -> Vec<Value> {
        let mut pods: Vec<Value> = self
            .list(Kind::Pod)
            .into_iter()
            .filter(|p| util::namespace_of(p) == namespace && p["metadata"]["labels"][LABEL_JOB_NAME] == job)
            .collect();
        let rv = |p: &Value| p["metadata"]["resourceVersion"].as_str().and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
        pods.sort_by_key(|p| (p["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_string(), rv(p)));
        pods
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().store.resource_version()
    }

    // ----- the kubelet, node lifecycle and time -----

    /// Sets a pod's status as its node's kubelet would report `to`. The pod must be bound
    /// to a node that is Ready and posting status.
    pub fn set_pod_state(&self, namespace: &str, name: &str, to: PodState) -> Result<(), KubeletError> {
        self.shared.write(|state, now_ms| controllers::kubelet::set_pod_state(state, namespace, name, &to, now_ms))
    }

    /// Appends lines to a container's log (`container` `None`: the pod's first container).
    pub fn append_log(&self, namespace: &str, pod: &str, container: Option<&str>, text: &str) {
        self.shared.write(|state, now_ms| {
            let container = container.map(str::to_string).unwrap_or_else(|| {
                let p = state.get(Kind::Pod, namespace, pod);
                p.and_then(|p| p["spec"]["containers"][0]["name"].as_str().map(str::to_string)).unwrap_or_default()
            });
            state.logs.append((namespace.to_string(), pod.to_string(), container), now_ms, text);
        });
    }

    /// The container restarted: its log so far becomes the previous instance's
    /// (`previous=true`), and its restart count goes up.
    pub fn restart_container(&self, namespace: &str, pod: &str, container: &str) {
        self.shared.write(|state, _| {
            state.logs.restart(&(namespace.to_string(), pod.to_string(), container.to_string()));
            if let Some(p) = state.get(Kind::Pod, namespace, pod) {
                let mut p = (*p).clone();
                for c in p["status"]["containerStatuses"].as_array_mut().into_iter().flatten().filter(|c| c["name"] == container) {
                    c["restartCount"] = serde_json::json!(c["restartCount"].as_u64().unwrap_or(0) + 1);
                }
                state.store.put(Kind::Pod, p);
            }
        });
    }

    /// The node's kubelet stops posting status: after `node_monitor_grace` the node turns
    /// Unknown and is tainted unreachable; taint eviction follows after the pods'
    /// toleration (300 s by default).
    pub fn stop_node_heartbeats(&self, node: &str) {
        self.shared.write(|state, now_ms| {
            state.stopped_heartbeats.entry(node.to_string()).or_insert(now_ms);
        });
    }

    /// The kubelet is back: the node is Ready again, its condition taints go, and pods
    /// deleted meanwhile are ended.
    pub fn resume_node_heartbeats(&self, node: &str) {
        self.shared.write(|state, now_ms| {
            state.stopped_heartbeats.remove(node);
            if let Some(n) = state.get(Kind::Node, "", node) {
                let mut n = (*n).clone();
                let now = util::rfc3339(now_ms);
                util::set_condition(&mut n, "Ready", "True", "KubeletReady", "kubelet is posting ready status", &now);
                for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
                    util::set_condition(&mut n, t, "False", &format!("KubeletHasSufficient{}", t.trim_end_matches("Pressure")), "", &now);
                }
                state.store.put(Kind::Node, n);
            }
        });
    }

    /// The server's time, unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    /// Moves the server's clock on by `d` and runs the controllers: grace periods,
    /// heartbeats, tolerations, deadlines and backoffs that end within `d` take effect.
    pub fn advance(&self, d: Duration) {
        // In steps, so that what one step starts (a taint) can finish in a later one.
        let step = Duration::from_secs(1);
        let mut left = d;
        while !left.is_zero() {
            let s = left.min(step);
            self.shared.clock.advance(s);
            left -= s;
            self.shared.write(|_, _| ());
        }
    }

    // ----- faults -----

    /// Cuts every open connection: watches and in-flight responses end abruptly.
    pub fn drop_connections(&self) {
        self.shared.drop_connections();
    }

    /// Answers the next `n` requests with an error of HTTP `code` (and its reason).
    pub fn fail_next(&self, n: usize, code: u16) {
        self.shared.lock().faults.push_back(Fault { remaining: n, code, method: None });
    }

    /// Like [`ApiServer::fail_next`], for requests of one method (`"POST"`) only.
    pub fn fail_next_method(&self, method: &str, n: usize, code: u16) {
        self.shared.lock().faults.push_back(Fault { remaining: n, code, method: Some(method.to_string()) });
    }

    /// Keeps the last `n` changes for watches and continue tokens.
    pub fn set_history_window(&self, n: usize) {
        self.shared.lock().store.set_window(n);
    }

    /// Forgets all history: the next watch or continue from an older resourceVersion gets
    /// 410 Expired.
    pub fn compact(&self) {
        self.shared.lock().store.compact();
    }

    /// Holds new watch requests back until [`ApiServer::resume_watches`]: with
    /// `drop_connections` and `compact`, a watch gap that ends in 410.
    pub fn pause_watches(&self) {
        self.shared.watches_paused.send_replace(true);
    }

    pub fn resume_watches(&self) {
        self.shared.watches_paused.send_replace(false);
    }

    /// Every request so far (at most `max_logged_requests`, oldest first).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.iter().cloned().collect()
    }

    /// The requests that are not GETs: what a client changed.
    pub fn writes(&self) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.method != "GET").collect()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.drop_connections();
    }
}
