//! Watches and followed logs: long responses that stream until a timeout, the end of the
//! subject, or a cut connection.
//!
//! A watch replays the history after its `resourceVersion` (or starts with the current
//! objects as ADDED for "" and "0"), then streams changes as they happen. Selectors apply
//! to both sides of a change, as the watch cache does: an object that stops matching is
//! sent as DELETED, one that starts matching as ADDED. A resourceVersion older than the
//! history gets an ERROR event with a 410 `Expired` Status, and the stream ends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{json, Value};

use crate::http::{error, log_container, log_query, log_refusal, param, Params, Route};
use crate::kinds::Kind;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::Shared;
use crate::status::ApiError;
use crate::store::{Change, ChangeType};
use crate::util::{is_terminal, namespace_of, prefix};

/// Changes read from the history per wake-up.
const BATCH: usize = 500;
/// The server's own watch timeout when the client gives none (it picks 30 to 60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Filter {
    kind: Kind,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, o: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|ns| namespace_of(o) == ns) && self.labels.matches(o) && self.fields.matches(self.kind, o)
    }

    /// The event a watcher with this filter sees for `c`, if any.
    fn event(&self, c: &Change) -> Option<Value> {
        if c.kind != self.kind {
            return None;
        }
        let now = self.matches(&c.object);
        let before = c.prev.as_deref().is_some_and(|p| self.matches(p));
        let (type_, object) = match (c.change, before, now) {
            (ChangeType::Deleted, true, _) => ("DELETED", (*c.object).clone()),
            (ChangeType::Deleted, false, _) => return None,
            (_, false, true) => ("ADDED", (*c.object).clone()),
            (ChangeType::Modified, true, true) => ("MODIFIED", (*c.object).clone()),
            (_, true, false) => {
                // Left the selection: its last matching state, at this change's version.
                let mut o = (**c.prev.as_ref().expect("matched before")).clone();
                o["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                ("DELETED", o)
            }
            _ => return None,
        };
        Some(json!({"type": type_, "object": object}))
    }
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": meta}})
}

fn expired(rv: u64, oldest: u64) -> Value {
    json!({"type": "ERROR", "object": ApiError::expired(format!("too old resource version: {rv} ({oldest})")).to_status()})
}

pub async fn watch(shared: Arc<Shared>, route: Route, q: Params) -> Response {
    let kind = route.kind;
    let labels = match LabelSelector::parse(param(&q, "labelSelector").unwrap_or_default()) {
        Ok(l) => l,
        Err(e) => return error(&ApiError::bad_request(e)),
    };
    let fields = match FieldSelector::parse(kind, param(&q, "fieldSelector").unwrap_or_default()) {
        Ok(f) => f,
        Err(e) => return error(&ApiError::bad_request(e)),
    };
    let filter = Filter { kind, namespace: route.namespace.clone(), labels, fields };
    let bookmarks = matches!(param(&q, "allowWatchBookmarks"), Some("true" | "1"));
    let send_initial = matches!(param(&q, "sendInitialEvents"), Some("true" | "1"));
    let timeout = param(&q, "timeoutSeconds").and_then(|t| t.parse().ok()).map(Duration::from_secs).unwrap_or(DEFAULT_TIMEOUT);
    let rv_param = param(&q, "resourceVersion").unwrap_or_default().to_string();
    let from_rv: Option<u64> = match rv_param.as_str() {
        "" | "0" => None,
        r => match r.parse() {
            Ok(n) => Some(n),
            Err(_) => return error(&ApiError::bad_request(format!("resourceVersion: Invalid value: {:?}", prefix(r)))),
        },
    };
    // A watch gap: the test holds new watches back.
    let mut paused = shared.watches_paused.subscribe();
    let _ = paused.wait_for(|p| !*p).await;

    let mut pending: VecDeque<Bytes> = VecDeque::new();
    let (cursor, interval) = {
        let state = shared.lock();
        let current = state.store.resource_version();
        let cursor = match from_rv {
            Some(n) => n,
            None => {
                for o in state.store.objects(kind).values().filter(|o| filter.matches(o)) {
                    pending.push_back(line(&json!({"type": "ADDED", "object": **o})));
                }
                if send_initial && bookmarks {
                    pending.push_back(line(&bookmark(kind, current, true)));
                }
                current
            }
        };
        (cursor, state.options.bookmark_interval)
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = WatchStream { shared, filter, cursor, pending, done: false, bookmarks, interval, deadline };
    let body = futures::stream::unfold(stream, |mut s| async move { s.next().await.map(|b| (Ok::<_, std::io::Error>(b), s)) });
    Response::builder().status(200).header("content-type", "application/json").body(Body::from_stream(body)).expect("valid response")
}

struct WatchStream {
    shared: Arc<Shared>,
    filter: Filter,
    cursor: u64,
    pending: VecDeque<Bytes>,
    done: bool,
    bookmarks: bool,
    interval: Duration,
    deadline: tokio::time::Instant,
}

impl WatchStream {
    async fn next(&mut self) -> Option<Bytes> {
        let mut changed = self.shared.changed.subscribe();
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some(b);
            }
            if self.done || tokio::time::Instant::now() >= self.deadline {
                return None;
            }
            changed.mark_unchanged();
            self.read_history();
            if !self.pending.is_empty() || self.done {
                continue;
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(self.interval) => {
                    if self.bookmarks {
                        self.pending.push_back(line(&bookmark(self.filter.kind, self.cursor, false)));
                    }
                }
                _ = tokio::time::sleep_until(self.deadline) => return None,
            }
        }
    }

    fn read_history(&mut self) {
        let state = self.shared.lock();
        match state.store.changes_after(self.cursor, BATCH) {
            Err(oldest) => {
                self.pending.push_back(line(&expired(self.cursor, oldest)));
                self.done = true;
            }
            Ok(changes) => {
                let all_read = changes.len() < BATCH;
                for c in &changes {
                    self.cursor = c.rv;
                    if let Some(e) = self.filter.event(c) {
                        self.pending.push_back(line(&e));
                    }
                }
                if all_read {
                    self.cursor = self.cursor.max(state.store.resource_version());
                }
            }
        }
    }
}

/// `GET .../pods/{name}/log`: the text so far, or (`follow`) a stream of it until the pod
/// ends or is gone.
pub async fn logs(shared: Arc<Shared>, route: Route, q: Params) -> Response {
    let (namespace, name) = (route.namespace.clone().unwrap_or_default(), route.name.clone().unwrap_or_default());
    let start = {
        let state = shared.lock();
        let Some(pod) = state.get(Kind::Pod, &namespace, &name) else { return error(&ApiError::not_found(Kind::Pod, &name)) };
        let query = match log_query(&q, shared.clock.now_ms()) {
            Ok(query) => query,
            Err(e) => return error(&e),
        };
        let container = match log_container(&pod, &q) {
            Ok(c) => c,
            Err(e) => return error(&e),
        };
        let key = (namespace.clone(), name.clone(), container.clone());
        if let Some(e) = log_refusal(&pod, &container, query.previous, state.logs.has_previous(&key)) {
            return error(&e);
        }
        let (text, next_seq) = state.logs.read(&key, &query);
        (key, query, text, next_seq)
    };
    let (key, query, text, next_seq) = start;
    let limit = query.limit_bytes.unwrap_or(usize::MAX);
    let first = Bytes::from(truncate(text, limit));
    let follow = matches!(param(&q, "follow"), Some("true" | "1")) && !query.previous;
    if !follow {
        return Response::builder().status(200).header("content-type", "text/plain").body(Body::from(first)).expect("valid response");
    }
    let follower =
        Follower { shared, key, timestamps: query.timestamps, seq: next_seq, left: limit - first.len(), first: Some(first), done: false };
    let body = futures::stream::unfold(follower, |mut f| async move { f.next().await.map(|b| (Ok::<_, std::io::Error>(b), f)) });
    Response::builder().status(200).header("content-type", "text/plain").body(Body::from_stream(body)).expect("valid response")
}

fn truncate(mut s: String, limit: usize) -> String {
    if s.len() > limit {
        let mut end = limit;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

struct Follower {
    shared: Arc<Shared>,
    key: crate::logs::LogKey,
    timestamps: bool,
    seq: u64,
    left: usize,
    first: Option<Bytes>,
    done: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(b) = self.first.take().filter(|b| !b.is_empty()) {
            return Some(b);
        }
        let mut changed = self.shared.changed.subscribe();
        loop {
            if self.done || self.left == 0 {
                return None;
            }
            changed.mark_unchanged();
            let (text, ended) = {
                let state = self.shared.lock();
                let (text, next) = state.logs.read_from(&self.key, self.seq, self.timestamps);
                self.seq = next;
                let pod = state.get(Kind::Pod, &self.key.0, &self.key.1);
                (text, pod.is_none_or(|p| is_terminal(&p)))
            };
            // The last lines of a finished container are sent before the stream ends.
            self.done = ended;
            if !text.is_empty() {
                let text = truncate(text, self.left);
                self.left -= text.len();
                return Some(Bytes::from(text));
            }
            if self.done {
                return None;
            }
            let _ = changed.changed().await;
        }
    }
}
