//! The node lifecycle controller and taint eviction.
//!
//! A node whose heartbeats stopped turns `Unknown` after `node_monitor_grace`
//! (`NodeStatusUnknown`, "Kubelet stopped posting node status."), is tainted
//! `node.kubernetes.io/unreachable` (NoSchedule and NoExecute), and its pods are marked not
//! Ready. A NotReady node is tainted `node.kubernetes.io/not-ready`. Taint eviction then
//! deletes every pod that does not tolerate a NoExecute taint, once its
//! `tolerationSeconds` have passed (300 s by default admission): the pod gets condition
//! `DisruptionTarget` (reason `DeletionByTaintManager`) and a deletionTimestamp, and stays
//! Terminating while its node's kubelet is gone.
//!
//! When no node is Ready, the controller presumes its own connectivity lost rather than
//! every node ("master disruption mode"): as the real one does, it removes the NoExecute
//! condition taints and evicts nothing until a node is Ready again.

use serde_json::{json, Value};

use crate::controllers::{node_ready, pods_on, record_event, Note};
use crate::kinds::Kind;
use crate::state::{DeleteOptions, State};
use crate::store::key_of;
use crate::util::{is_deleting, name_of, namespace_of, parse_rfc3339, rfc3339, set_condition, str_at};

pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";

pub fn run(state: &mut State, now_ms: u64) {
    mark_silent_nodes_unknown(state, now_ms);
    let nodes: Vec<_> = state.store.objects(Kind::Node).values().cloned().collect();
    let none_ready = !nodes.is_empty() && nodes.iter().all(|n| node_ready(n) != "True");
    for node in nodes {
        sync_condition_taints(state, &node, none_ready, now_ms);
    }
    evict_untolerating_pods(state, now_ms);
}

fn mark_silent_nodes_unknown(state: &mut State, now_ms: u64) {
    let grace_ms = state.options.node_monitor_grace.as_millis() as u64;
    let due: Vec<String> = state.stopped_heartbeats.iter().filter(|(_, at)| **at + grace_ms <= now_ms).map(|(n, _)| n.clone()).collect();
    for name in due {
        let Some(node) = state.get(Kind::Node, "", &name) else { continue };
        if node_ready(&node) == "Unknown" {
            continue;
        }
        let mut n = (*node).clone();
        let now = rfc3339(now_ms);
        for type_ in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
            set_condition(&mut n, type_, "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.", &now);
        }
        state.store.put(Kind::Node, n);
        for pod in pods_on(state, &name) {
            let mut p = (*pod).clone();
            set_condition(&mut p, "Ready", "False", "", "", &now);
            if p != *pod {
                state.store.put(Kind::Pod, p);
            }
        }
        record_event(
            state,
            Kind::Node,
            &node,
            Note {
                type_: "Normal",
                reason: "NodeNotReady",
                message: &format!("Node {name} status is now: NodeNotReady"),
                component: "node-controller",
            },
            now_ms,
        );
    }
}

/// The taints a node's Ready condition calls for: unreachable for Unknown, not-ready for
/// False, none for True; NoSchedule only while `none_ready` (no NoExecute: nothing is
/// evicted). Other taints are kept; `timeAdded` of a kept one does not move.
fn sync_condition_taints(state: &mut State, node: &Value, none_ready: bool, now_ms: u64) {
    let wanted = match node_ready(node).as_str() {
        "True" => None,
        "False" => Some(TAINT_NOT_READY),
        _ => Some(TAINT_UNREACHABLE),
    };
    let taints: Vec<Value> = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
    let effects: &[&str] = if none_ready { &["NoSchedule"] } else { &["NoSchedule", "NoExecute"] };
    let kept = |t: &Value| !is_condition_taint(t) || (t["key"].as_str() == wanted && effects.iter().any(|e| t["effect"] == *e));
    let mut out: Vec<Value> = taints.iter().filter(|t| kept(t)).cloned().collect();
    if let Some(key) = wanted {
        for &effect in effects {
            if !out.iter().any(|t| t["key"] == key && t["effect"] == effect) {
                out.push(json!({"key": key, "effect": effect, "timeAdded": rfc3339(now_ms)}));
            }
        }
    }
    if out != taints {
        let mut n = node.clone();
        n["spec"]["taints"] = json!(out);
        if out.is_empty() {
            n["spec"].as_object_mut().map(|s| s.remove("taints"));
        }
        state.store.put(Kind::Node, n);
    }
}

fn is_condition_taint(t: &Value) -> bool {
    matches!(t["key"].as_str(), Some(TAINT_UNREACHABLE | TAINT_NOT_READY))
}

/// When (unix ms) a pod must go because of `taint`: now if not tolerated, after the
/// toleration's seconds from the taint's `timeAdded`, never if tolerated for ever.
fn eviction_due_ms(pod: &Value, taint: &Value, now_ms: u64) -> Option<u64> {
    let tolerations = pod["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    let matching: Vec<&Value> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
    if matching.is_empty() {
        return Some(now_ms);
    }
    let seconds = matching.iter().map(|t| t["tolerationSeconds"].as_u64()).collect::<Option<Vec<u64>>>()?;
    let added = str_at(taint, &["timeAdded"]).and_then(parse_rfc3339).unwrap_or(now_ms);
    Some(added + seconds.into_iter().max().unwrap_or(0) * 1000)
}

/// Does toleration `t` tolerate `taint` (the scheduler's and the taint manager's rule)?
pub fn tolerates(t: &Value, taint: &Value) -> bool {
    let key_ok = match t["key"].as_str() {
        None | Some("") => t["operator"] == "Exists",
        Some(k) => taint["key"] == k,
    };
    let effect_ok = t["effect"].as_str().is_none_or(|e| e.is_empty() || taint["effect"] == e);
    let value_ok = t["operator"] == "Exists" || t["value"].as_str().unwrap_or_default() == taint["value"].as_str().unwrap_or_default();
    key_ok && effect_ok && value_ok
}

fn evict_untolerating_pods(state: &mut State, now_ms: u64) {
    let nodes: Vec<_> = state.store.objects(Kind::Node).values().cloned().collect();
    for node in nodes {
        let no_execute: Vec<Value> =
            node["spec"]["taints"].as_array().into_iter().flatten().filter(|t| t["effect"] == "NoExecute").cloned().collect();
        if no_execute.is_empty() {
            continue;
        }
        for pod in pods_on(state, name_of(&node)) {
            if is_deleting(&pod) {
                continue;
            }
            let due = no_execute.iter().filter_map(|t| eviction_due_ms(&pod, t, now_ms)).min();
            if due.is_some_and(|d| d <= now_ms) {
                evict(state, &pod, now_ms);
            }
        }
    }
}

fn evict(state: &mut State, pod: &Value, now_ms: u64) {
    let mut p = pod.clone();
    set_condition(
        &mut p,
        "DisruptionTarget",
        "True",
        "DeletionByTaintManager",
        "Taint manager: deleting due to NoExecute taint",
        &rfc3339(now_ms),
    );
    let p = state.store.put(Kind::Pod, p);
    let message = format!("Marking for deletion Pod {}/{}", namespace_of(&p), name_of(&p));
    record_event(
        state,
        Kind::Pod,
        &p,
        Note { type_: "Normal", reason: "TaintManagerEviction", message: &message, component: "taint-eviction-controller" },
        now_ms,
    );
    let _ = state.delete(Kind::Pod, &key_of(&p), &DeleteOptions::default(), now_ms);
}
