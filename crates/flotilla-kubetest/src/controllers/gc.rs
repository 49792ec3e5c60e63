//! The garbage collector: dependents of deleted owners, foreground and orphan deletion,
//! deleted namespaces, and pods bound to nodes that no longer exist (PodGC).

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::kinds::Kind;
use crate::state::{owner_uids, DeleteOptions, State};
use crate::store::{key_of, Key};
use crate::util::{is_deleting, namespace_of, rfc3339, set_condition, uid_of};

pub fn run(state: &mut State, now_ms: u64) {
    let all: Vec<(Kind, Arc<Value>)> =
        Kind::ALL.into_iter().flat_map(|k| state.store.objects(k).values().map(move |o| (k, o.clone())).collect::<Vec<_>>()).collect();
    let uids: HashSet<&str> = all.iter().map(|(_, o)| uid_of(o)).collect();
    let mut orphans: Vec<(Kind, Key)> = Vec::new();
    for (kind, o) in &all {
        let owners: Vec<&str> = owner_uids(o).collect();
        if !owners.is_empty() && owners.iter().all(|u| !uids.contains(u)) && !is_deleting(o) {
            orphans.push((*kind, key_of(o)));
        }
    }
    for (kind, key) in orphans {
        let _ = state.delete(kind, &key, &DeleteOptions { propagation_policy: Some("Background".into()), ..Default::default() }, now_ms);
    }
    for (kind, o) in all.iter().filter(|(_, o)| is_deleting(o)) {
        finish_deletion(state, *kind, o, &all, now_ms);
    }
    remove_pods_of_missing_nodes(state, now_ms);
}

/// Works on an owner's `foregroundDeletion` / `orphan` finalizer, or a namespace's contents.
fn finish_deletion(state: &mut State, kind: Kind, owner: &Value, all: &[(Kind, Arc<Value>)], now_ms: u64) {
    let uid = uid_of(owner);
    let dependents: Vec<(Kind, &Arc<Value>)> = all.iter().filter(|(_, o)| owner_uids(o).any(|u| u == uid)).map(|(k, o)| (*k, o)).collect();
    let finalizers: Vec<String> =
        owner["metadata"]["finalizers"].as_array().into_iter().flatten().filter_map(|f| f.as_str().map(str::to_string)).collect();
    if finalizers.iter().any(|f| f == "foregroundDeletion") {
        for (k, d) in &dependents {
            if !is_deleting(d) {
                let _ = state.delete(
                    *k,
                    &key_of(d),
                    &DeleteOptions { propagation_policy: Some("Background".into()), ..Default::default() },
                    now_ms,
                );
            }
        }
        if dependents.is_empty() {
            drop_finalizer(state, kind, owner, "foregroundDeletion");
        }
    } else if finalizers.iter().any(|f| f == "orphan") {
        for (k, d) in &dependents {
            let mut d = (***d).clone();
            let refs: Vec<Value> =
                d["metadata"]["ownerReferences"].as_array().into_iter().flatten().filter(|r| r["uid"] != uid).cloned().collect();
            d["metadata"]["ownerReferences"] = json!(refs);
            state.store.put(*k, d);
        }
        drop_finalizer(state, kind, owner, "orphan");
    }
    if kind == Kind::Namespace {
        let ns = crate::util::name_of(owner).to_string();
        let contents: Vec<(Kind, Key)> =
            all.iter().filter(|(k, o)| k.namespaced() && namespace_of(o) == ns).map(|(k, o)| (*k, key_of(o))).collect();
        if contents.is_empty() {
            state.store.remove(Kind::Namespace, &key_of(owner));
        }
        for (k, key) in contents {
            let _ = state.delete(k, &key, &DeleteOptions { propagation_policy: Some("Background".into()), ..Default::default() }, now_ms);
        }
    }
}

fn drop_finalizer(state: &mut State, kind: Kind, object: &Value, finalizer: &str) {
    let Some(current) = state.store.get(kind, &key_of(object)).cloned() else { return };
    let mut o = (*current).clone();
    let left: Vec<Value> = o["metadata"]["finalizers"].as_array().into_iter().flatten().filter(|f| *f != finalizer).cloned().collect();
    o["metadata"]["finalizers"] = json!(left);
    state.write(kind, o);
}

/// PodGC: a pod bound to a node that does not exist is deleted at once.
fn remove_pods_of_missing_nodes(state: &mut State, now_ms: u64) {
    let stranded: Vec<Arc<Value>> = state
        .store
        .objects(Kind::Pod)
        .values()
        .filter(|p| p["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty() && state.get(Kind::Node, "", n).is_none()))
        .filter(|p| !(is_deleting(p) && p["metadata"]["deletionGracePeriodSeconds"] == 0))
        .cloned()
        .collect();
    for pod in stranded {
        let mut p = (*pod).clone();
        set_condition(&mut p, "DisruptionTarget", "True", "DeletionByPodGC", "PodGC: node no longer exists", &rfc3339(now_ms));
        if p["metadata"]["deletionTimestamp"].is_null() {
            p["metadata"]["deletionTimestamp"] = json!(rfc3339(now_ms));
        }
        p["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        state.write(Kind::Pod, p);
    }
}
