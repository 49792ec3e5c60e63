//! Objects, the global resourceVersion and the bounded history of changes.
//!
//! Like etcd behind the API server, every write takes the next resourceVersion (one counter
//! for all kinds), and the history of changes since the last compaction is kept, up to a
//! window. Watches replay the history after their resourceVersion; a list can be served as
//! of any resourceVersion still in the history (`resourceVersionMatch=Exact` and continue
//! tokens). Older than the window is 410 Expired.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::kinds::Kind;
use crate::util::{name_of, namespace_of};

/// (namespace, name); namespace is "" for cluster-scoped objects. Sorted like etcd keys.
pub type Key = (String, String);

pub fn key_of(v: &Value) -> Key {
    (namespace_of(v).to_string(), name_of(v).to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One write: the object after it (for a delete, its last state at the delete's
/// resourceVersion) and before it.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: Kind,
    pub change: ChangeType,
    pub object: Arc<Value>,
    pub prev: Option<Arc<Value>>,
}

pub struct Store {
    objects: HashMap<Kind, BTreeMap<Key, Arc<Value>>>,
    rv: u64,
    history: VecDeque<Change>,
    window: usize,
    /// Changes at or before this resourceVersion are gone from the history.
    compacted_rv: u64,
}

impl Store {
    pub fn new(window: usize) -> Store {
        Store {
            objects: Kind::ALL.into_iter().map(|k| (k, BTreeMap::new())).collect(),
            rv: 0,
            history: VecDeque::new(),
            window: window.max(1),
            compacted_rv: 0,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn compacted_rv(&self) -> u64 {
        self.compacted_rv
    }

    pub fn set_window(&mut self, window: usize) {
        self.window = window.max(1);
        self.trim();
    }

    /// Forgets the whole history: a watch or continue token from before now gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted_rv = self.rv;
    }

    fn trim(&mut self) {
        while self.history.len() > self.window {
            let dropped = self.history.pop_front().expect("non-empty");
            self.compacted_rv = dropped.rv;
        }
    }

    pub fn get(&self, kind: Kind, key: &Key) -> Option<&Arc<Value>> {
        self.objects[&kind].get(key)
    }

    pub fn objects(&self, kind: Kind) -> &BTreeMap<Key, Arc<Value>> {
        &self.objects[&kind]
    }

    /// Stores `object` (new or replacing) at the next resourceVersion; returns it as stored.
    pub fn put(&mut self, kind: Kind, mut object: Value) -> Arc<Value> {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let object = Arc::new(object);
        let key = key_of(&object);
        let prev = self.objects.get_mut(&kind).expect("every kind").insert(key, object.clone());
        let change = if prev.is_some() { ChangeType::Modified } else { ChangeType::Added };
        self.record(Change { rv: self.rv, kind, change, object: object.clone(), prev });
        object
    }

    /// Removes an object; the DELETED change carries its last state at a new resourceVersion.
    pub fn remove(&mut self, kind: Kind, key: &Key) -> Option<Arc<Value>> {
        let prev = self.objects.get_mut(&kind).expect("every kind").remove(key)?;
        self.rv += 1;
        let mut last = (*prev).clone();
        last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let last = Arc::new(last);
        self.record(Change { rv: self.rv, kind, change: ChangeType::Deleted, object: last.clone(), prev: Some(prev) });
        Some(last)
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(change);
        self.trim();
    }

    /// The changes after `rv`, or `Err(oldest available)` when some are gone.
    pub fn changes_after(&self, rv: u64, max: usize) -> Result<Vec<Change>, u64> {
        if rv < self.compacted_rv {
            return Err(self.compacted_rv + 1);
        }
        let start = self.history.partition_point(|c| c.rv <= rv);
        Ok(self.history.range(start..).take(max).cloned().collect())
    }

    /// The objects of `kind` as they were at `rv` (which must still be in the history),
    /// in key order after `after`, restricted to `namespace` if given; `keep` filters, and
    /// at most `limit` are returned. The bool says whether more matching ones remain.
    pub fn list_at(
        &self,
        kind: Kind,
        rv: u64,
        namespace: Option<&str>,
        after: Option<&Key>,
        limit: usize,
        keep: impl Fn(&Value) -> bool,
    ) -> (Vec<Arc<Value>>, bool) {
        // The state at `rv` of every key written since: the `prev` of its first change after.
        let mut overlay: BTreeMap<Key, Option<Arc<Value>>> = BTreeMap::new();
        let start = self.history.partition_point(|c| c.rv <= rv);
        for c in self.history.range(start..).filter(|c| c.kind == kind) {
            overlay.entry(key_of(c.prev.as_deref().unwrap_or(&c.object))).or_insert_with(|| c.prev.clone());
        }
        let in_scope = |k: &Key| namespace.is_none_or(|ns| k.0 == ns);
        // Start after the continue key (or at the namespace), not at the first object.
        let from = match (after, namespace) {
            (Some(a), _) => Bound::Excluded(a.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let range = (from, Bound::Unbounded);
        let current = self.objects[&kind].range(range.clone()).filter(|(k, _)| !overlay.contains_key(*k));
        let old = overlay.range(range).filter_map(|(k, v)| Some((k, v.as_ref()?)));
        let mut merged = merge_sorted(current, old).take_while(|(k, _)| in_scope(k)).map(|(_, v)| v).filter(|v| keep(v));
        let items: Vec<Arc<Value>> = merged.by_ref().take(limit).cloned().collect();
        let more = items.len() == limit && merged.next().is_some();
        (items, more)
    }
}

/// Two key-sorted iterators as one.
fn merge_sorted<'a>(
    a: impl Iterator<Item = (&'a Key, &'a Arc<Value>)>,
    b: impl Iterator<Item = (&'a Key, &'a Arc<Value>)>,
) -> impl Iterator<Item = (&'a Key, &'a Arc<Value>)> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if x.0 <= y.0 => a.next(),
        (Some(_), Some(_)) => b.next(),
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "n"}, "status": {"phase": phase}})
    }

    #[test]
    fn a_list_at_an_old_resource_version_shows_the_objects_as_they_were() {
        let mut s = Store::new(100);
        s.put(Kind::Pod, pod("a", "Pending"));
        s.put(Kind::Pod, pod("b", "Pending"));
        let rv = s.resource_version();
        s.put(Kind::Pod, pod("a", "Running"));
        s.remove(Kind::Pod, &("n".into(), "b".into()));
        s.put(Kind::Pod, pod("c", "Pending"));
        let (then, _) = s.list_at(Kind::Pod, rv, None, None, 10, |_| true);
        let phases: Vec<_> = then.iter().map(|p| (name_of(p).to_string(), p["status"]["phase"].clone())).collect();
        assert_eq!(phases, [("a".to_string(), json!("Pending")), ("b".to_string(), json!("Pending"))]);
        let (now, _) = s.list_at(Kind::Pod, s.resource_version(), None, None, 10, |_| true);
        assert_eq!(now.iter().map(|p| name_of(p)).collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn history_beyond_the_window_is_compacted() {
        let mut s = Store::new(2);
        for i in 0..5 {
            s.put(Kind::Pod, pod(&format!("p{i}"), "Pending"));
        }
        assert_eq!(s.changes_after(1, 10).unwrap_err(), 4);
        assert_eq!(s.changes_after(3, 10).unwrap().len(), 2);
        s.compact();
        assert!(s.changes_after(4, 10).is_err());
        assert!(s.changes_after(5, 10).unwrap().is_empty());
    }
}
