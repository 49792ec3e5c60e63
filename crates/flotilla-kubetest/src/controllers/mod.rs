//! The controllers a test cluster needs, run after every write and on a timer: the Job
//! controller, a scheduler, the node lifecycle controller with taint eviction, the garbage
//! collector, and each Ready node's kubelet ending deleted pods.
//!
//! They scan every object on each pass, which suits test-sized clusters; a benchmark that
//! seeds tens of thousands of objects switches them off ([`crate::Options::bare`]).

pub mod gc;
pub mod job;
pub mod kubelet;
pub mod nodes;
pub mod scheduler;

use std::sync::Arc;

use serde_json::{json, Value};

use crate::kinds::Kind;
use crate::state::{Origin, State};
use crate::util::{mix, name_of, namespace_of, rfc3339, str_at, uid_of};

/// Passes at most per reconcile: each controller's writes can wake another.
const MAX_PASSES: usize = 8;

/// Runs every enabled controller until nothing changes (at most [`MAX_PASSES`]).
pub fn reconcile(state: &mut State, now_ms: u64) {
    for _ in 0..MAX_PASSES {
        let before = state.store.resource_version();
        if state.options.node_lifecycle {
            nodes::run(state, now_ms);
        }
        if state.options.garbage_collector {
            gc::run(state, now_ms);
        }
        if state.options.kubelet {
            kubelet::end_deleted_pods(state, now_ms);
        }
        if state.options.job_controller {
            job::run(state, now_ms);
        }
        if state.options.scheduler {
            scheduler::run(state, now_ms);
        }
        expire_events(state, now_ms);
        if state.store.resource_version() == before {
            return;
        }
    }
}

/// What an Event says: its type (`Normal`/`Warning`), reason, message, and who reports it.
pub struct Note<'a> {
    pub type_: &'a str,
    pub reason: &'a str,
    pub message: &'a str,
    pub component: &'a str,
}

/// Records an Event about `object`, or counts one more of the same (same reason and
/// message), as the event recorder aggregates them.
pub fn record_event(state: &mut State, kind: Kind, object: &Value, note: Note<'_>, now_ms: u64) {
    let Note { type_, reason, message, component } = note;
    let namespace = if kind.namespaced() { namespace_of(object).to_string() } else { "default".to_string() };
    let uid = uid_of(object).to_string();
    let same = state.store.objects(Kind::Event).values().find(|e| {
        e["involvedObject"]["uid"] == uid.as_str() && e["reason"] == reason && e["message"] == message && namespace_of(e) == namespace
    });
    let now = rfc3339(now_ms);
    if let Some(e) = same.cloned() {
        let mut e = (*e).clone();
        e["count"] = json!(e["count"].as_u64().unwrap_or(1) + 1);
        e["lastTimestamp"] = json!(now);
        state.store.put(Kind::Event, e);
        return;
    }
    let n = state.next_serial();
    let event = json!({
        "metadata": {"name": format!("{}.{:016x}", name_of(object), mix(n)), "namespace": namespace},
        "involvedObject": {"apiVersion": kind.api_version(), "kind": kind.kind(), "namespace": if kind.namespaced() { namespace_of(object) } else { "" },
            "name": name_of(object), "uid": uid, "resourceVersion": str_at(object, &["metadata", "resourceVersion"]).unwrap_or_default()},
        "reason": reason, "message": message, "type": type_, "count": 1,
        "firstTimestamp": now, "lastTimestamp": now, "source": {"component": component},
        "reportingComponent": component, "reportingInstance": "",
    });
    let _ = state.create(Kind::Event, event, Origin::Controller, now_ms);
}

fn expire_events(state: &mut State, now_ms: u64) {
    let ttl_ms = state.options.event_ttl.as_millis() as u64;
    let old: Vec<_> = state
        .store
        .objects(Kind::Event)
        .iter()
        .filter(|(_, e)| {
            let last = str_at(e, &["lastTimestamp"]).or(str_at(e, &["metadata", "creationTimestamp"]));
            last.and_then(crate::util::parse_rfc3339).is_some_and(|t| t + ttl_ms < now_ms)
        })
        .map(|(k, _)| k.clone())
        .collect();
    for k in old {
        state.store.remove(Kind::Event, &k);
    }
}

/// Every pod bound to `node`.
pub fn pods_on(state: &State, node: &str) -> Vec<Arc<Value>> {
    state.store.objects(Kind::Pod).values().filter(|p| p["spec"]["nodeName"] == node).cloned().collect()
}

/// The status of `node`'s `Ready` condition ("Unknown" when missing).
pub fn node_ready(node: &Value) -> String {
    crate::util::condition(node, "Ready").and_then(|c| c["status"].as_str()).unwrap_or("Unknown").to_string()
}

/// True when `node` exists, is Ready and its kubelet posts status: it can act on its pods.
pub fn kubelet_alive(state: &State, node: &str) -> bool {
    !state.stopped_heartbeats.contains_key(node) && state.get(Kind::Node, "", node).is_some_and(|n| node_ready(&n) == "True")
}
