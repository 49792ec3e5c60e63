//! A small scheduler: binds a pending pod to a node its `nodeSelector` and required node
//! affinity admit, that is schedulable, whose taints it tolerates and that has room for
//! its requests (cpu, memory, GPUs and the pod count); otherwise the pod stays Pending
//! with `PodScheduled=False`, reason `Unschedulable`, and the scheduler's message
//! ("0/N nodes are available: ...").

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::controllers::nodes::tolerates;
use crate::controllers::{record_event, Note};
use crate::kinds::Kind;
use crate::state::State;
use crate::util::{condition, is_deleting, is_terminal, name_of, namespace_of, quantity_millis, rfc3339, set_condition, str_at};

/// Resources the fit check compares (milli-units).
type Amounts = BTreeMap<String, u128>;

pub fn run(state: &mut State, now_ms: u64) {
    let pending: Vec<Arc<Value>> = state
        .store
        .objects(Kind::Pod)
        .values()
        .filter(|p| p["spec"]["nodeName"].as_str().is_none_or(str::is_empty) && !is_deleting(p) && !is_terminal(p))
        .cloned()
        .collect();
    if pending.is_empty() {
        return;
    }
    let mut used: HashMap<String, Amounts> = HashMap::new();
    for p in state.store.objects(Kind::Pod).values().filter(|p| !is_terminal(p)) {
        if let Some(node) = p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            add(used.entry(node.to_string()).or_default(), &requests(p));
        }
    }
    let nodes: Vec<Arc<Value>> = state.store.objects(Kind::Node).values().cloned().collect();
    for pod in pending {
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let want = requests(&pod);
        let fit = nodes.iter().find(|n| match misfit(&pod, n, &want, used.get(name_of(n))) {
            None => true,
            Some(r) => {
                *reasons.entry(r).or_default() += 1;
                false
            }
        });
        match fit {
            Some(node) => {
                add(used.entry(name_of(node).to_string()).or_default(), &want);
                bind(state, &pod, name_of(node), now_ms);
            }
            None => unschedulable(state, &pod, nodes.len(), &reasons, now_ms),
        }
    }
}

fn bind(state: &mut State, pod: &Value, node: &str, now_ms: u64) {
    let mut p = pod.clone();
    p["spec"]["nodeName"] = json!(node);
    set_condition(&mut p, "PodScheduled", "True", "", "", &rfc3339(now_ms));
    let p = state.store.put(Kind::Pod, p);
    let message = format!("Successfully assigned {}/{} to {node}", namespace_of(&p), name_of(&p));
    record_event(
        state,
        Kind::Pod,
        &p,
        Note { type_: "Normal", reason: "Scheduled", message: &message, component: "default-scheduler" },
        now_ms,
    );
}

fn unschedulable(state: &mut State, pod: &Value, node_count: usize, reasons: &BTreeMap<String, usize>, now_ms: u64) {
    let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    let message = format!(
        "0/{node_count} nodes are available: {}. preemption: 0/{node_count} nodes are available: {node_count} Preemption is not helpful for scheduling.",
        parts.join(", ")
    );
    if condition(pod, "PodScheduled").is_some_and(|c| c["status"] == "False" && c["message"] == message.as_str()) {
        return;
    }
    let mut p = pod.clone();
    set_condition(&mut p, "PodScheduled", "False", "Unschedulable", &message, &rfc3339(now_ms));
    let p = state.store.put(Kind::Pod, p);
    record_event(
        state,
        Kind::Pod,
        &p,
        Note { type_: "Warning", reason: "FailedScheduling", message: &message, component: "default-scheduler" },
        now_ms,
    );
}

/// Why `node` cannot take `pod` (the scheduler's wording), or `None` when it can.
fn misfit(pod: &Value, node: &Value, want: &Amounts, used: Option<&Amounts>) -> Option<String> {
    if !selector_admits(pod, node) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    if node["spec"]["unschedulable"] == true {
        return Some("node(s) were unschedulable".into());
    }
    let tolerations = pod["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    for taint in node["spec"]["taints"].as_array().into_iter().flatten() {
        let hard = matches!(taint["effect"].as_str(), Some("NoSchedule" | "NoExecute"));
        if hard && !tolerations.iter().any(|t| tolerates(t, taint)) {
            let (k, v) = (taint["key"].as_str().unwrap_or_default(), taint["value"].as_str().unwrap_or_default());
            return Some(format!("node(s) had untolerated taint {{{k}: {v}}}"));
        }
    }
    let allocatable: Amounts = node["status"]["allocatable"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), quantity_millis(v.as_str()?)?)))
        .collect();
    let empty = Amounts::new();
    let used = used.unwrap_or(&empty);
    for (resource, amount) in want {
        // A node without a `pods` entry takes the kubelet's default of 110.
        let have = allocatable.get(resource).copied().unwrap_or(if resource == "pods" { 110_000 } else { 0 });
        if used.get(resource).copied().unwrap_or(0) + amount > have {
            return Some(format!("Insufficient {resource}"));
        }
    }
    None
}

/// `nodeSelector` labels, and required node affinity terms (`In`/`NotIn`/`Exists` on labels,
/// `In` on `metadata.name`); any term may match.
fn selector_admits(pod: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    let selector_ok = pod["spec"]["nodeSelector"].as_object().into_iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    let Some(terms) = terms.as_array() else { return selector_ok };
    let expr_ok = |e: &Value, value: Option<&str>| {
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        match e["operator"].as_str() {
            Some("In") => value.is_some_and(|v| values.contains(&v)),
            Some("NotIn") => value.is_none_or(|v| !values.contains(&v)),
            Some("Exists") => value.is_some(),
            Some("DoesNotExist") => value.is_none(),
            _ => false,
        }
    };
    let term_ok = |t: &Value| {
        let exprs = t["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| expr_ok(e, labels[e["key"].as_str().unwrap_or_default()].as_str()));
        let fields = t["matchFields"].as_array().into_iter().flatten().all(|e| expr_ok(e, str_at(node, &["metadata", "name"])));
        exprs && fields
    };
    selector_ok && terms.iter().any(term_ok)
}

/// A pod's requests: containers summed, at least the largest init container, one pod.
fn requests(pod: &Value) -> Amounts {
    let of = |c: &Value| -> Amounts {
        c["resources"]["requests"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), quantity_millis(v.as_str()?)?)))
            .collect()
    };
    let mut total = Amounts::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        add(&mut total, &of(c));
    }
    for c in pod["spec"]["initContainers"].as_array().into_iter().flatten() {
        for (k, v) in of(c) {
            let e = total.entry(k).or_default();
            *e = (*e).max(v);
        }
    }
    total.insert("pods".into(), 1000);
    total
}

fn add(into: &mut Amounts, amounts: &Amounts) {
    for (k, v) in amounts {
        *into.entry(k.clone()).or_default() += v;
    }
}
