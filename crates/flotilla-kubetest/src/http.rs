//! The HTTP API: routing, get, list, create, replace, patch, delete and pod logs, with
//! `Status` bodies on every error. Watches are in [`crate::watch`].

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State as AxumState};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use serde::ser::{SerializeMap, SerializeSeq};
use serde_json::{json, Value};

use crate::kinds::Kind;
use crate::logs::LogQuery;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::Shared;
use crate::state::{DeleteOptions, Origin, RecordedRequest, State};
use crate::status::ApiError;
use crate::store::Key;
use crate::util::{is_terminal, prefix, str_at};

/// Where a request goes.
#[derive(Clone, Debug)]
pub struct Route {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

pub type Params = Vec<(String, String)>;

pub fn param<'a>(q: &'a Params, key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn flag(q: &Params, key: &str) -> bool {
    matches!(param(q, key), Some("true" | "1"))
}

pub async fn handle(AxumState(shared): AxumState<Arc<Shared>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let query: Params = Query::<Params>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(code) = record_and_take_fault(&shared, &method, &uri, &query, &body) {
        return error(&ApiError::injected(code));
    }
    let route = match parse_path(uri.path()) {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let result = match (method, route.name.is_some()) {
        (Method::GET, true) if route.sub.as_deref() == Some("log") => return crate::watch::logs(shared, route, query).await,
        (Method::GET, true) => get(&shared, &route),
        (Method::GET, false) if flag(&query, "watch") => return crate::watch::watch(shared, route, query).await,
        (Method::GET, false) => list(&shared.lock(), &route, &query).map(|v| (200, v)),
        (Method::POST, false) => create(&shared, &route, body),
        (Method::PUT, true) => replace(&shared, &route, body),
        (Method::PATCH, true) => patch(&shared, &route, &content_type, &body),
        (Method::DELETE, true) => delete(&shared, &route, &query, &body),
        _ => Err(ApiError::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")),
    };
    match result {
        Ok((code, v)) => json_response(code, &v),
        Err(e) => error(&e),
    }
}

fn record_and_take_fault(shared: &Shared, method: &Method, uri: &Uri, query: &Params, body: &Value) -> Option<u16> {
    let mut state = shared.lock();
    let max = state.options.max_logged_requests;
    if state.requests.len() >= max {
        state.requests.pop_front();
    }
    state.requests.push_back(RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: query.clone(),
        body: body.clone(),
    });
    let fault = state.faults.iter_mut().find(|f| f.remaining > 0 && f.method.as_deref().is_none_or(|m| m == method.as_str()))?;
    fault.remaining -= 1;
    let code = fault.code;
    state.faults.retain(|f| f.remaining > 0);
    Some(code)
}

/// Parses `/api/v1/...` and `/apis/batch/v1/...` paths.
pub fn parse_path(path: &str) -> Result<Route, ApiError> {
    let (group, rest) = if let Some(r) = path.strip_prefix("/api/v1/") {
        ("", r)
    } else if let Some(r) = path.strip_prefix("/apis/batch/v1/") {
        ("batch", r)
    } else {
        return Err(ApiError::path_not_found());
    };
    let seg: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let kind_of = |plural: &str| Kind::from_plural(group, plural).ok_or_else(ApiError::path_not_found);
    let s = |i: usize| seg.get(i).map(|s| s.to_string());
    let namespaced_route = seg.len() >= 3 && seg[0] == "namespaces" && Kind::from_plural(group, seg[2]).is_some_and(Kind::namespaced);
    let route = if namespaced_route {
        Route { kind: kind_of(seg[2])?, namespace: s(1), name: s(3), sub: s(4) }
    } else {
        let kind = kind_of(seg[0])?;
        if kind.namespaced() && seg.len() > 1 {
            return Err(ApiError::path_not_found());
        }
        Route { kind, namespace: None, name: s(1), sub: s(2) }
    };
    let sub_ok = match route.sub.as_deref() {
        None | Some("status") => true,
        Some("log") => route.kind == Kind::Pod,
        Some(_) => false,
    };
    if !sub_ok || seg.len() > 5 || route.name.as_deref() == Some("") {
        return Err(ApiError::path_not_found());
    }
    Ok(route)
}

fn key(route: &Route) -> Key {
    (route.namespace.clone().unwrap_or_default(), route.name.clone().unwrap_or_default())
}

fn get(shared: &Shared, route: &Route) -> Result<(u16, Value), ApiError> {
    let state = shared.lock();
    let o = state
        .store
        .get(route.kind, &key(route))
        .ok_or_else(|| ApiError::not_found(route.kind, route.name.as_deref().unwrap_or_default()))?;
    Ok((200, (**o).clone()))
}

fn create(shared: &Shared, route: &Route, mut body: Value) -> Result<(u16, Value), ApiError> {
    if route.sub.is_some() {
        return Err(ApiError::new(405, "MethodNotAllowed", "the server does not allow this method on the requested resource"));
    }
    if let Some(ns) = &route.namespace {
        match str_at(&body, &["metadata", "namespace"]) {
            Some(b) if b != ns => {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"))
            }
            _ => body["metadata"]["namespace"] = json!(ns),
        }
    } else if route.kind.namespaced() {
        return Err(ApiError::path_not_found());
    }
    if Kind::of(&body).is_some_and(|k| k != route.kind) {
        return Err(ApiError::bad_request(format!("the kind of the provided object is not {}", route.kind.kind())));
    }
    shared.write(|state, now_ms| state.create(route.kind, body, Origin::Client, now_ms)).map(|o| (201, (*o).clone()))
}

fn replace(shared: &Shared, route: &Route, body: Value) -> Result<(u16, Value), ApiError> {
    let status_only = route.sub.as_deref() == Some("status");
    shared.write(|state, _| state.replace(route.kind, &key(route), body, status_only)).map(|o| (200, (*o).clone()))
}

fn patch(shared: &Shared, route: &Route, content_type: &str, body: &Value) -> Result<(u16, Value), ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if !matches!(media, "application/merge-patch+json" | "application/strategic-merge-patch+json") {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {:?})", prefix(media)),
        ));
    }
    let status_only = route.sub.as_deref() == Some("status");
    shared.write(|state, _| state.merge_patch(route.kind, &key(route), body, status_only)).map(|o| (200, (*o).clone()))
}

fn delete(shared: &Shared, route: &Route, query: &Params, body: &Value) -> Result<(u16, Value), ApiError> {
    let grace = |v: Option<u64>| v;
    let opts = DeleteOptions {
        grace_period_seconds: grace(body["gracePeriodSeconds"].as_u64().or_else(|| param(query, "gracePeriodSeconds")?.parse().ok())),
        propagation_policy: body["propagationPolicy"].as_str().or_else(|| param(query, "propagationPolicy")).map(str::to_string),
    };
    let kind = route.kind;
    let (object, gone) = shared.write(|state, now_ms| state.delete(kind, &key(route), &opts, now_ms))?;
    // Pods and namespaces answer with the object; other kinds with a Status once gone.
    if gone && !matches!(kind, Kind::Pod | Kind::Namespace) {
        let mut details = json!({"name": route.name, "kind": kind.plural(), "uid": object["metadata"]["uid"]});
        if !kind.group().is_empty() {
            details["group"] = json!(kind.group());
        }
        return Ok((200, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})));
    }
    Ok((if gone { 200 } else { 202 }, (*object).clone()))
}

/// A list, as of the resourceVersion the query asks for, one page at a time.
pub fn list(state: &State, route: &Route, q: &Params) -> Result<Value, ApiError> {
    let kind = route.kind;
    let labels = LabelSelector::parse(param(q, "labelSelector").unwrap_or_default()).map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(kind, param(q, "fieldSelector").unwrap_or_default()).map_err(ApiError::bad_request)?;
    let limit = match param(q, "limit") {
        None | Some("") | Some("0") => usize::MAX,
        Some(l) => l.parse().map_err(|_| ApiError::bad_request(format!("limit: invalid value {:?}", prefix(l))))?,
    };
    let token = param(q, "continue").filter(|c| !c.is_empty()).map(decode_continue).transpose()?;
    let current = state.store.resource_version();
    let rv = param(q, "resourceVersion").filter(|r| !r.is_empty());
    let (at, after) = match (token, rv, param(q, "resourceVersionMatch").filter(|m| !m.is_empty())) {
        (Some(_), Some(_), _) => return Err(ApiError::bad_request("specifying resource version is not allowed when using continue")),
        (Some((at, _)), _, _) if at < state.store.compacted_rv() => return Err(ApiError::expired(CONTINUE_EXPIRED)),
        (Some((at, after)), _, _) => (at, Some(after)),
        (None, None, Some(_)) => {
            return Err(ApiError::bad_request(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            ))
        }
        (None, Some("0"), Some("Exact")) => {
            return Err(ApiError::bad_request(
                "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ))
        }
        (None, Some(r), m) => {
            let n: u64 = r
                .parse()
                .map_err(|_| ApiError::bad_request(format!("resourceVersion: Invalid value: {:?}: strconv.ParseUint", prefix(r))))?;
            if n > current {
                return Err(too_large(n, current));
            }
            match m {
                Some("Exact") if n < state.store.compacted_rv() => {
                    return Err(ApiError::expired(format!("too old resource version: {n} ({})", state.store.compacted_rv() + 1)))
                }
                Some("Exact") => (n, None),
                None | Some("NotOlderThan") => (current, None),
                Some(other) => return Err(ApiError::bad_request(format!("resourceVersionMatch: Unsupported value: {:?}", prefix(other)))),
            }
        }
        (None, None, None) => (current, None),
    };
    let namespace = route.namespace.as_deref();
    let (items, more) = state.store.list_at(kind, at, namespace, after.as_ref(), limit, |o| labels.matches(o) && fields.matches(kind, o));
    let mut metadata = json!({"resourceVersion": at.to_string()});
    if more {
        let last = items.last().map(|o| crate::store::key_of(o)).unwrap_or_default();
        metadata["continue"] = json!(encode_continue(at, &last));
    }
    Ok(json!({"kind": format!("{}List", kind.kind()), "apiVersion": kind.api_version(), "metadata": metadata, "items": ListItems(items)}))
}

const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

fn too_large(asked: u64, current: u64) -> ApiError {
    let mut e = ApiError::new(504, "Timeout", format!("Too large resource version: {asked}, current: {current}"));
    e.details =
        Some(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}));
    e
}

/// Continue tokens: hex of `{"rv": N, "start": [namespace, name]}` (the list's
/// resourceVersion and the last key returned).
fn encode_continue(rv: u64, last: &Key) -> String {
    json!({"rv": rv, "start": [last.0, last.1]}).to_string().bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Result<(u64, Key), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {:?}", prefix(token)));
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let start = (v["start"][0].as_str().ok_or_else(bad)?.to_string(), v["start"][1].as_str().ok_or_else(bad)?.to_string());
    Ok((rv, start))
}

/// List items serialised as the server sends them: without `kind` and `apiVersion`.
struct ListItems(Vec<Arc<Value>>);

impl serde::Serialize for ListItems {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in &self.0 {
            seq.serialize_element(&WithoutType(item))?;
        }
        seq.end()
    }
}

struct WithoutType<'a>(&'a Value);

impl serde::Serialize for WithoutType<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(map) = self.0.as_object() else { return self.0.serialize(s) };
        let mut m = s.serialize_map(None)?;
        for (k, v) in map.iter().filter(|(k, _)| *k != "kind" && *k != "apiVersion") {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

pub fn json_response(code: u16, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder().status(code).header("content-type", "application/json").body(Body::from(body)).expect("valid response")
}

pub fn error(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

/// The log query of a request; `now_ms` turns `sinceSeconds` into a time.
pub fn log_query(q: &Params, now_ms: u64) -> Result<LogQuery, ApiError> {
    let num = |key: &str| -> Result<Option<u64>, ApiError> {
        param(q, key)
            .map(|v| v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("{key}: invalid value {:?}", prefix(v)))))
            .transpose()
    };
    Ok(LogQuery {
        tail_lines: num("tailLines")?.map(|n| n as usize),
        limit_bytes: num("limitBytes")?.map(|n| n as usize),
        since_ms: num("sinceSeconds")?.map(|s| now_ms.saturating_sub(s * 1000)),
        timestamps: flag(q, "timestamps"),
        previous: flag(q, "previous"),
    })
}

/// Why the log of `container` in `pod` cannot be read now, the server's way.
pub fn log_refusal(pod: &Value, container: &str, previous: bool, has_previous: bool) -> Option<ApiError> {
    let name = crate::util::name_of(pod);
    if previous {
        return (!has_previous)
            .then(|| ApiError::bad_request(format!("previous terminated container {container:?} in pod {name:?} not found")));
    }
    let status = pod["status"]["containerStatuses"].as_array().and_then(|cs| cs.iter().find(|c| c["name"] == container));
    let waiting = status.map(|s| &s["state"]["waiting"]).filter(|w| w.is_object());
    let started = status.is_some_and(|s| s["state"]["running"].is_object() || s["state"]["terminated"].is_object());
    if started || is_terminal(pod) && status.is_some() {
        return None;
    }
    let reason = waiting.and_then(|w| w["reason"].as_str()).unwrap_or("ContainerCreating");
    Some(ApiError::bad_request(format!("container {container:?} in pod {name:?} is waiting to start: {reason}")))
}

/// The container a log request means: the one named, or the pod's only one.
pub fn log_container(pod: &Value, q: &Params) -> Result<String, ApiError> {
    let name = crate::util::name_of(pod);
    let names: Vec<&str> = pod["spec"]["containers"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    match param(q, "container").filter(|c| !c.is_empty()) {
        Some(c) if names.contains(&c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!("container {} is not valid for pod {name}", prefix(c)))),
        None if names.len() == 1 => Ok(names[0].to_string()),
        None => {
            Err(ApiError::bad_request(format!("a container name must be specified for pod {name}, choose one of: [{}]", names.join(" "))))
        }
    }
}
