//! The server's state and the writes every path shares (HTTP, controllers, the Rust API):
//! create, replace, merge patch and delete, with the server's defaulting, validation and
//! admission.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::admission::{add_default_tolerations, pod_security_refusal, pod_spec_invalid, POD_SECURITY_ENFORCE};
use crate::kinds::Kind;
use crate::logs::Logs;
use crate::status::ApiError;
use crate::store::{Key, Store};
use crate::util::{is_deleting, is_terminal, name_suffix, parse_rfc3339, rfc3339, str_at, uid};

/// What the server does besides storing objects, and its limits. `Default` is a small
/// cluster's control plane with every controller on; [`Options::bare`] is the API alone.
#[derive(Clone, Debug)]
pub struct Options {
    /// Changes kept for watches and continue tokens; older is 410 Expired.
    pub history_window: usize,
    /// Creates a Job's pod, tracks it, and sets the Job's conditions.
    pub job_controller: bool,
    /// Binds pending pods to a node that fits, or marks them Unschedulable.
    pub scheduler: bool,
    /// Deletes dependents of deleted owners (ownerReferences), honours foreground and
    /// orphan deletion, empties deleted namespaces, removes pods bound to missing nodes.
    pub garbage_collector: bool,
    /// Marks nodes whose heartbeats stopped Unknown, taints them, evicts their pods.
    pub node_lifecycle: bool,
    /// The kubelet of each Ready node ends deleted pods when their grace period is over.
    pub kubelet: bool,
    /// Pod Security admission against the namespace's `enforce` label.
    pub pod_security: bool,
    /// How long after the last heartbeat a node turns Unknown (`node-monitor-grace-period`).
    pub node_monitor_grace: Duration,
    /// The `tolerationSeconds` DefaultTolerationSeconds admission gives every pod.
    pub default_toleration_seconds: u64,
    /// How often an idle watch with `allowWatchBookmarks` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// How often time-driven controllers run on their own (real time).
    pub tick_interval: Duration,
    /// Time moves only with [`crate::ApiServer::advance`] (starting at the real time).
    pub manual_clock: bool,
    /// Log bytes kept per container; older lines go first.
    pub max_log_bytes: usize,
    /// Requests kept in the request log.
    pub max_logged_requests: usize,
    /// How long Events live (the API server's `--event-ttl`).
    pub event_ttl: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            history_window: 10_000,
            job_controller: true,
            scheduler: true,
            garbage_collector: true,
            node_lifecycle: true,
            kubelet: true,
            pod_security: true,
            node_monitor_grace: Duration::from_secs(50),
            default_toleration_seconds: 300,
            bookmark_interval: Duration::from_secs(1),
            tick_interval: Duration::from_millis(50),
            manual_clock: false,
            max_log_bytes: 1 << 20,
            max_logged_requests: 10_000,
            event_ttl: Duration::from_secs(3600),
        }
    }
}

impl Options {
    /// The API alone: no controller, no kubelet, no admission; objects change only when a
    /// client or the test changes them.
    pub fn bare() -> Options {
        Options {
            job_controller: false,
            scheduler: false,
            garbage_collector: false,
            node_lifecycle: false,
            kubelet: false,
            pod_security: false,
            ..Options::default()
        }
    }
}

/// The server's clock: the real time plus what the test advanced, or frozen.
pub struct Clock {
    frozen_ms: Option<u64>,
    offset_ms: AtomicU64,
}

impl Clock {
    pub fn new(manual: bool) -> Clock {
        Clock { frozen_ms: manual.then(real_now_ms), offset_ms: AtomicU64::new(0) }
    }

    pub fn now_ms(&self) -> u64 {
        self.frozen_ms.unwrap_or_else(real_now_ms) + self.offset_ms.load(Ordering::SeqCst)
    }

    pub fn advance(&self, d: Duration) {
        self.offset_ms.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
}

fn real_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// One request as received, for assertions.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The decoded query, `key=value` pairs in order.
    pub query: Vec<(String, String)>,
    /// The JSON body; `Null` when empty or not JSON.
    pub body: Value,
}

impl RecordedRequest {
    pub fn query_value(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn is_watch(&self) -> bool {
        self.query_value("watch").is_some_and(|w| w == "true" || w == "1")
    }
}

/// An injected failure: the next `remaining` requests (of `method`, if set) get `code`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub remaining: usize,
    pub code: u16,
    pub method: Option<String>,
}

/// Where a create comes from: a client (status reset, admission) or the test's seeding
/// (kept as given; a missing namespace is created).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Client,
    Controller,
    Seed,
}

/// `DeleteOptions`, from the body or the query.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<u64>,
    /// `Background`, `Foreground` or `Orphan`; `None` is the kind's default.
    pub propagation_policy: Option<String>,
}

pub struct State {
    pub store: Store,
    pub options: Options,
    pub logs: Logs,
    /// Nodes whose kubelet stopped posting status, with when.
    pub stopped_heartbeats: BTreeMap<String, u64>,
    /// The Job controller's record of pods it has counted, by Job uid.
    pub counted_pods: HashMap<String, HashSet<String>>,
    /// When the Job controller may next create a pod for a Job (its backoff), by Job uid.
    pub next_pod_create_ms: HashMap<String, u64>,
    pub requests: VecDeque<RecordedRequest>,
    pub faults: VecDeque<Fault>,
    serial: u64,
}

impl State {
    pub fn new(options: Options) -> State {
        State {
            store: Store::new(options.history_window),
            logs: Logs::new(options.max_log_bytes),
            options,
            stopped_heartbeats: BTreeMap::new(),
            counted_pods: HashMap::new(),
            next_pod_create_ms: HashMap::new(),
            requests: VecDeque::new(),
            faults: VecDeque::new(),
            serial: 0,
        }
    }

    pub fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.store.get(kind, &(namespace.to_string(), name.to_string())).cloned()
    }

    /// Creates an object, as the server would for `origin`.
    pub fn create(&mut self, kind: Kind, mut object: Value, origin: Origin, now_ms: u64) -> Result<Arc<Value>, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request("the body of the request was not a JSON object"));
        }
        object["kind"] = json!(kind.kind());
        object["apiVersion"] = json!(kind.api_version());
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        if str_at(&object, &["metadata", "name"]).is_none_or(str::is_empty) {
            let Some(prefix) = str_at(&object, &["metadata", "generateName"]).map(str::to_string) else {
                return Err(ApiError::invalid(kind, "", &["metadata.name: Required value: name or generateName is required".into()]));
            };
            let n = self.next_serial();
            object["metadata"]["name"] = json!(format!("{prefix}{}", name_suffix(n)));
        }
        let name = str_at(&object, &["metadata", "name"]).unwrap_or_default().to_string();
        let namespace =
            if kind.namespaced() { str_at(&object, &["metadata", "namespace"]).unwrap_or("default").to_string() } else { String::new() };
        if kind.namespaced() {
            object["metadata"]["namespace"] = json!(namespace);
            self.check_namespace(kind, &namespace, &name, origin, now_ms)?;
        } else if let Some(m) = object["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        let key = (namespace.clone(), name.clone());
        if self.store.get(kind, &key).is_some() {
            return Err(ApiError::already_exists(kind, &name));
        }
        if origin != Origin::Seed {
            self.default_and_admit(kind, &mut object, &name, &namespace, origin)?;
        }
        let n = self.next_serial();
        let meta = object["metadata"].as_object_mut().expect("metadata is an object");
        if origin != Origin::Seed || !meta.contains_key("uid") {
            meta.insert("uid".into(), json!(uid(n)));
        }
        if origin != Origin::Seed || !meta.contains_key("creationTimestamp") {
            meta.insert("creationTimestamp".into(), json!(rfc3339(now_ms)));
        }
        meta.insert("generation".into(), json!(1));
        meta.remove("resourceVersion");
        meta.remove("deletionTimestamp");
        Ok(self.store.put(kind, object))
    }

    fn check_namespace(&mut self, kind: Kind, namespace: &str, name: &str, origin: Origin, now_ms: u64) -> Result<(), ApiError> {
        match self.get(Kind::Namespace, "", namespace) {
            Some(ns) if is_deleting(&ns) => Err(ApiError::forbidden(
                kind,
                name,
                &format!("unable to create new content in namespace {namespace} because it is being terminated"),
            )),
            Some(_) => Ok(()),
            None if origin == Origin::Seed => {
                let ns = json!({"metadata": {"name": namespace}});
                self.create(Kind::Namespace, ns, Origin::Seed, now_ms).map(|_| ())
            }
            None => Err(ApiError::not_found(Kind::Namespace, namespace)),
        }
    }

    /// What the server does to a client's new object: status reset, validation, admission.
    fn default_and_admit(&self, kind: Kind, object: &mut Value, name: &str, namespace: &str, origin: Origin) -> Result<(), ApiError> {
        match kind {
            Kind::Pod => {
                let causes = pod_spec_invalid(&object["spec"], "spec");
                if !causes.is_empty() {
                    return Err(ApiError::invalid(kind, name, &causes));
                }
                if origin == Origin::Client {
                    object["status"] = json!({"phase": "Pending"});
                }
                if self.options.pod_security {
                    if let Some(why) = self.pod_security_refusal(namespace, &object["spec"]) {
                        return Err(ApiError::forbidden(kind, name, &why));
                    }
                }
                add_default_tolerations(object, self.options.default_toleration_seconds);
            }
            Kind::Job => {
                let causes = pod_spec_invalid(&object["spec"]["template"]["spec"], "spec.template.spec");
                if !causes.is_empty() {
                    return Err(ApiError::invalid(kind, name, &causes));
                }
                if origin == Origin::Client {
                    object["status"] = json!({});
                }
            }
            Kind::Namespace => {
                object["status"] = json!({"phase": "Active"});
                let labels = object["metadata"]["labels"].as_object().cloned().unwrap_or_default();
                let mut labels = labels;
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
                object["metadata"]["labels"] = Value::Object(labels);
            }
            Kind::Service => {
                // As the real server validates a Service's name and a headless one's spec.
                let mut causes = Vec::new();
                if !is_dns1035_label(name) {
                    causes.push(format!("metadata.name: Invalid value: {name:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character"));
                }
                let cluster_ip = object["spec"]["clusterIP"].as_str().unwrap_or_default().to_string();
                if cluster_ip.is_empty() {
                    object["spec"]["clusterIP"] = json!("10.96.0.10");
                } else if cluster_ip != "None" {
                    causes.push(format!("spec.clusterIP: Invalid value: {cluster_ip:?}: must be \"None\" or empty here"));
                }
                if !causes.is_empty() {
                    return Err(ApiError::invalid(kind, name, &causes));
                }
                if origin == Origin::Client {
                    object["status"] = json!({"loadBalancer": {}});
                }
            }
            Kind::Node | Kind::Event => {}
        }
        Ok(())
    }

    /// Pod Security admission of `pod_spec` in `namespace`: the refusal, if any.
    pub fn pod_security_refusal(&self, namespace: &str, pod_spec: &Value) -> Option<String> {
        let ns = self.get(Kind::Namespace, "", namespace)?;
        let level = str_at(&ns, &["metadata", "labels", POD_SECURITY_ENFORCE]).unwrap_or("privileged");
        pod_security_refusal(pod_spec, level)
    }

    /// Replaces an object (`status_only`: its status subresource). A `resourceVersion` in
    /// `new` must match. Removing the last finalizer of an object being deleted deletes it.
    pub fn replace(&mut self, kind: Kind, key: &Key, mut new: Value, status_only: bool) -> Result<Arc<Value>, ApiError> {
        let Some(old) = self.store.get(kind, key).cloned() else { return Err(ApiError::not_found(kind, &key.1)) };
        if let Some(rv) = str_at(&new, &["metadata", "resourceVersion"]).filter(|rv| !rv.is_empty()) {
            if Some(rv) != str_at(&old, &["metadata", "resourceVersion"]) {
                return Err(ApiError::conflict(kind, &key.1));
            }
        }
        let merged = if status_only {
            let mut o = (*old).clone();
            o["status"] = new["status"].take();
            o
        } else {
            if str_at(&new, &["metadata", "name"]).is_some_and(|n| n != key.1) {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({})",
                    name_in(&new),
                    key.1
                )));
            }
            let mut o = new;
            o["kind"] = json!(kind.kind());
            o["apiVersion"] = json!(kind.api_version());
            // The main resource does not change status; the server keeps its own fields.
            o["status"] = old["status"].clone();
            for field in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "name", "namespace"]
            {
                match old["metadata"].get(field) {
                    Some(v) => o["metadata"][field] = v.clone(),
                    None => {
                        if let Some(m) = o["metadata"].as_object_mut() {
                            m.remove(field);
                        }
                    }
                }
            }
            if o["spec"] != old["spec"] {
                o["metadata"]["generation"] = json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
            }
            o
        };
        Ok(self.write(kind, merged))
    }

    /// Writes `object` as it is; deletes it instead when it is being deleted and has no
    /// finalizer left and no grace to wait for.
    pub fn write(&mut self, kind: Kind, object: Value) -> Arc<Value> {
        let finalizers_left = object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        let graceful = kind == Kind::Pod && object["metadata"]["deletionGracePeriodSeconds"].as_u64().unwrap_or(0) > 0;
        if is_deleting(&object) && !finalizers_left && !graceful {
            let key = crate::store::key_of(&object);
            self.store.put(kind, object);
            return self.store.remove(kind, &key).expect("just written");
        }
        self.store.put(kind, object)
    }

    /// Applies a JSON merge patch (RFC 7386). Strategic merge patches are applied the same
    /// way: lists are replaced, not merged by key.
    pub fn merge_patch(&mut self, kind: Kind, key: &Key, patch: &Value, status_only: bool) -> Result<Arc<Value>, ApiError> {
        let Some(old) = self.store.get(kind, key).cloned() else { return Err(ApiError::not_found(kind, &key.1)) };
        let mut new = (*old).clone();
        merge(&mut new, patch);
        if !status_only {
            // A patch of the main resource cannot change status.
            new["status"] = old["status"].clone();
        }
        if patch["metadata"]["resourceVersion"].is_null() {
            if let Some(m) = new["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
        }
        self.replace_checked(kind, key, new, old)
    }

    fn replace_checked(&mut self, kind: Kind, key: &Key, new: Value, old: Arc<Value>) -> Result<Arc<Value>, ApiError> {
        if let Some(rv) = str_at(&new, &["metadata", "resourceVersion"]) {
            if Some(rv) != str_at(&old, &["metadata", "resourceVersion"]) {
                return Err(ApiError::conflict(kind, &key.1));
            }
        }
        let mut new = new;
        if new["spec"] != old["spec"] {
            new["metadata"]["generation"] = json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
        }
        Ok(self.write(kind, new))
    }

    /// Deletes an object the way the API server does: pods bound to a node get a grace
    /// period (deletionTimestamp, removed later by their kubelet); foreground and orphan
    /// propagation and finalizers keep the object until the garbage collector is done;
    /// everything else goes at once. Returns the object and whether it is gone already.
    pub fn delete(&mut self, kind: Kind, key: &Key, opts: &DeleteOptions, now_ms: u64) -> Result<(Arc<Value>, bool), ApiError> {
        let Some(old) = self.store.get(kind, key).cloned() else { return Err(ApiError::not_found(kind, &key.1)) };
        let policy = opts.propagation_policy.clone().unwrap_or_else(|| default_propagation(kind).to_string());
        if !matches!(policy.as_str(), "Background" | "Foreground" | "Orphan") {
            return Err(ApiError::invalid(
                kind,
                &key.1,
                &[format!("propagationPolicy: Unsupported value: {:?}", crate::util::prefix(&policy))],
            ));
        }
        let grace_s = match kind {
            Kind::Pod if old["spec"]["nodeName"].as_str().is_none_or(str::is_empty) || is_terminal(&old) => 0,
            Kind::Pod => opts.grace_period_seconds.or_else(|| old["spec"]["terminationGracePeriodSeconds"].as_u64()).unwrap_or(30),
            _ => 0,
        };
        let mut new = (*old).clone();
        if is_deleting(&old) {
            // Already terminating: only a shorter grace (force delete) changes anything.
            let left_s = new["metadata"]["deletionGracePeriodSeconds"].as_u64().unwrap_or(0);
            if kind == Kind::Pod && grace_s < left_s {
                new["metadata"]["deletionGracePeriodSeconds"] = json!(grace_s);
                new["metadata"]["deletionTimestamp"] = json!(rfc3339(now_ms + grace_s * 1000));
                let stored = self.write(kind, new);
                let gone = self.store.get(kind, key).is_none();
                return Ok((stored, gone));
            }
            return Ok((old, false));
        }
        let mut finalizers: Vec<Value> = new["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
        let add = match policy.as_str() {
            "Foreground" => Some("foregroundDeletion"),
            "Orphan" if self.has_dependents(&old) => Some("orphan"),
            _ => None,
        };
        if let Some(f) = add.filter(|f| !finalizers.iter().any(|x| x == f)) {
            finalizers.push(json!(f));
        }
        if finalizers.is_empty() && grace_s == 0 && kind != Kind::Namespace {
            let gone = self.store.remove(kind, key).expect("present");
            return Ok((gone, true));
        }
        new["metadata"]["finalizers"] = json!(finalizers);
        if finalizers.is_empty() {
            new["metadata"].as_object_mut().expect("object").remove("finalizers");
        }
        new["metadata"]["deletionTimestamp"] = json!(rfc3339(now_ms + grace_s * 1000));
        new["metadata"]["deletionGracePeriodSeconds"] = json!(grace_s);
        if kind == Kind::Namespace {
            new["status"]["phase"] = json!("Terminating");
        }
        Ok((self.store.put(kind, new), false))
    }

    fn has_dependents(&self, owner: &Value) -> bool {
        let uid = crate::util::uid_of(owner);
        Kind::ALL.into_iter().any(|k| self.store.objects(k).values().any(|o| owner_uids(o).any(|u| u == uid)))
    }

    /// When a deleting pod's grace period ends (unix ms).
    pub fn grace_deadline_ms(object: &Value) -> u64 {
        str_at(object, &["metadata", "deletionTimestamp"]).and_then(parse_rfc3339).unwrap_or(0)
    }
}

/// The uids of an object's owners.
pub fn owner_uids(object: &Value) -> impl Iterator<Item = &str> {
    object["metadata"]["ownerReferences"].as_array().into_iter().flatten().filter_map(|r| r["uid"].as_str())
}

fn name_in(v: &Value) -> &str {
    crate::util::prefix(str_at(v, &["metadata", "name"]).unwrap_or_default())
}

/// The propagation a DELETE without one gets: `batch/v1` Jobs orphan their pods (kept for
/// compatibility by the real server); everything else is background.
fn default_propagation(kind: Kind) -> &'static str {
    match kind {
        Kind::Job => "Orphan",
        _ => "Background",
    }
}

/// RFC 7386: objects merge, `null` removes, everything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// A Service's name: a DNS-1035 label (lower-case alphanumerics and '-', a letter first, at most 63).
fn is_dns1035_label(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
