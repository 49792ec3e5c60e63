//! The HTTP port: `/metrics`, `/healthz`, `/readyz`, a read-only web view at `/` and its
//! JSON at `/api/queues`, `/api/clusters` and `/api/tasks`; over TLS with `--tls-cert`.
//!
//! With authentication on, the web view and `/api/*` (and `/metrics` with
//! `--protect-metrics`) need a token: `Authorization: Bearer <token>`, or HTTP Basic with the
//! token as the password, which a browser asks for. They show only the queues and tasks the
//! caller may watch. Health probes stay open.
//!
//! `axum::serve` takes only a plain TCP listener, so connections come from
//! [`listen::incoming`](crate::listen::incoming) (TLS handshakes included) and each is
//! served by hyper's HTTP/1.1-or-HTTP/2 connection builder.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Extension, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flotilla_model::TaskState;
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::auth::Caller;
use crate::services::QueueCheck;
use crate::Context;

/// Serves the connections of `incoming` until `shutdown`; open connections are then dropped.
pub async fn serve(ctx: Arc<Context>, mut incoming: crate::Incoming, mut shutdown: oneshot::Receiver<()>) {
    use futures::StreamExt as _;
    let app = router(ctx);
    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let io = tokio::select! {
            _ = &mut shutdown => break,
            io = incoming.next() => io,
        };
        match io {
            Some(Ok(io)) => {
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let builder = builder.clone();
                connections.spawn(async move {
                    if let Err(e) = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service).await {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                    }
                });
            }
            Some(Err(e)) => tracing::debug!(error = %e, "HTTP accept error"),
            None => break,
        }
        // Forget finished connections so the set stays as large as the open ones.
        while connections.try_join_next().is_some() {}
    }
}

pub fn router(ctx: Arc<Context>) -> Router {
    let guarded = Router::new()
        .route("/", get(index))
        .route("/api/queues", get(api_queues))
        .route("/api/clusters", get(api_clusters))
        .route("/api/tasks", get(api_tasks));
    let open = Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(readyz));
    let (guarded, open) = if ctx.config.protect_metrics {
        (guarded.route("/metrics", get(metrics)), open)
    } else {
        (guarded, open.route("/metrics", get(metrics)))
    };
    let guarded = guarded.layer(axum::middleware::from_fn_with_state(ctx.clone(), authenticate));
    guarded.merge(open).with_state(ctx)
}

/// Puts the caller in the request, or answers 401 (with a Basic challenge, so that a browser
/// asks for the token) or 403 for an executor credential.
async fn authenticate(State(ctx): State<Arc<Context>>, mut req: Request, next: Next) -> Response {
    let headers = bearer_from_basic(req.headers());
    match ctx.auth.authenticate(headers.as_ref().unwrap_or(req.headers())).await {
        Ok(Caller::Executor { .. }) => (StatusCode::FORBIDDEN, "an executor credential may only Sync and ReportEvents\n").into_response(),
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(status) => {
            let mut r = (StatusCode::UNAUTHORIZED, format!("{}\n", status.message())).into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"flotilla\", charset=\"UTF-8\""));
            r
        }
    }
}

/// HTTP Basic credentials (any user name, the token as password) as a bearer header.
fn bearer_from_basic(headers: &HeaderMap) -> Option<HeaderMap> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    if encoded.len() > 16 * 1024 {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (_, token) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    let mut out = HeaderMap::new();
    out.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).ok()?);
    Some(out)
}

async fn metrics(State(ctx): State<Arc<Context>>) -> Response {
    crate::leader::refresh_raft_metrics(&ctx);
    crate::leader::refresh_state_metrics(&ctx);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], ctx.metrics.render()).into_response()
}

/// Ready once a leader is known: before that, writes cannot commit.
async fn readyz(State(ctx): State<Arc<Context>>) -> Response {
    match ctx.replica.leader_id() {
        Some(id) => (StatusCode::OK, format!("ready: leader is replica {id}\n")).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader known\n").into_response(),
    }
}

#[derive(serde::Serialize)]
struct QueueView {
    name: String,
    weight: f64,
    fair_share: f64,
    actual_share: f64,
    tasks: std::collections::BTreeMap<String, u64>,
}

fn queue_views(ctx: &Context, caller: &Caller) -> Vec<QueueView> {
    let shares = ctx.shares.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut may_see = QueueCheck::new(ctx, caller, flotilla_model::Verb::Watch);
    ctx.read(|s| {
        s.queues()
            .filter(|q| may_see.allows(s, &q.name))
            .map(|q| {
                let share = shares.iter().find(|x| x.queue == q.name);
                QueueView {
                    name: q.name.clone(),
                    weight: q.weight,
                    fair_share: share.map_or(0.0, |x| x.fair_share),
                    actual_share: share.map_or(0.0, |x| x.actual_share),
                    tasks: TaskState::ALL.iter().zip(s.counts(&q.name)).map(|(st, n)| (st.as_str().to_string(), n)).collect(),
                }
            })
            .collect()
    })
}

async fn api_queues(State(ctx): State<Arc<Context>>, Extension(caller): Extension<Caller>) -> Json<Vec<QueueView>> {
    Json(queue_views(&ctx, &caller))
}

#[derive(serde::Serialize)]
struct ClusterView {
    name: String,
    state: String,
    nodes: u32,
    gpu_allocatable: u64,
    gpu_used: u64,
    cpu_allocatable_millis: u64,
    cpu_used_millis: u64,
    active_tasks: u32,
    last_sync_age_ms: u64,
    /// schedulable | cordoned | draining | drained
    drain_state: String,
    tasks_left: u32,
}

fn cluster_views(ctx: &Context) -> Vec<ClusterView> {
    crate::services::clusters_list(ctx)
        .into_iter()
        .map(|c| {
            let a = c.allocatable.unwrap_or_default();
            let u = c.used.unwrap_or_default();
            ClusterView {
                name: c.name,
                state: c.state,
                nodes: c.nodes,
                gpu_allocatable: a.gpu,
                gpu_used: u.gpu,
                cpu_allocatable_millis: a.cpu_millis,
                cpu_used_millis: u.cpu_millis,
                active_tasks: c.active_tasks,
                last_sync_age_ms: c.last_sync_age_ms,
                drain_state: c.drain_state,
                tasks_left: c.tasks_left,
            }
        })
        .collect()
}

async fn api_clusters(State(ctx): State<Arc<Context>>) -> Json<Vec<ClusterView>> {
    Json(cluster_views(&ctx))
}

#[derive(Deserialize)]
struct TaskQuery {
    queue: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

#[derive(serde::Serialize)]
struct TaskView {
    id: u64,
    name: String,
    index: u32,
    queue: String,
    task_set: String,
    state: String,
    attempt: u32,
    cluster: String,
    node: String,
    reason: String,
}

/// Most task records one task view looks at: a filter matching few of a million tasks
/// shows what it found among the newest ones rather than scanning the whole table under
/// the state's read lock (the CLI's paginated listing reaches the rest).
const MAX_SCANNED_PER_VIEW: usize = 100_000;

fn task_views(ctx: &Context, caller: &Caller, q: &TaskQuery) -> Vec<TaskView> {
    let limit = q.limit.unwrap_or(100).min(1000);
    let state = q.state.as_deref().and_then(TaskState::parse);
    let mut may_see = QueueCheck::new(ctx, caller, flotilla_model::Verb::Watch);
    ctx.read(|s| {
        // Newest first: what people look at in a web view.
        s.tasks()
            .rev()
            .take(MAX_SCANNED_PER_VIEW)
            .filter(|t| {
                q.queue.as_ref().is_none_or(|x| *x == t.spec.queue)
                    && state.is_none_or(|st| st == t.state)
                    && may_see.allows(s, &t.spec.queue)
            })
            .take(limit)
            .map(|t| {
                let (cluster, node) = t.placement();
                TaskView {
                    id: t.id.0,
                    name: t.spec.name.clone(),
                    index: t.spec.index,
                    queue: t.spec.queue.clone(),
                    task_set: t.spec.task_set.clone(),
                    state: t.state.as_str().into(),
                    attempt: t.attempt,
                    cluster,
                    node,
                    reason: t.reason.clone(),
                }
            })
            .collect()
    })
}

async fn api_tasks(
    State(ctx): State<Arc<Context>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<TaskQuery>,
) -> Json<Vec<TaskView>> {
    Json(task_views(&ctx, &caller, &q))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

async fn index(State(ctx): State<Arc<Context>>, Extension(caller): Extension<Caller>) -> Html<String> {
    let mut h = String::new();
    let leader = ctx.replica.leader_id().map_or("none".to_string(), |l| l.to_string());
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=2><title>Flotilla</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin-bottom:2em}}\
         td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}}th{{background:#f4f4f4}}.r{{text-align:right}}</style>\
         </head><body><h1>Flotilla</h1><p>replica {} &middot; leader {} &middot; term {}</p>",
        ctx.config.id,
        leader,
        ctx.replica.current_term()
    );
    h.push_str("<h2>Queues</h2><table><tr><th>queue</th><th>weight</th><th>fair share</th><th>actual share</th>");
    for st in TaskState::ALL {
        let _ = write!(h, "<th>{st}</th>");
    }
    h.push_str("</tr>");
    for q in queue_views(&ctx, &caller) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=r>{}</td><td class=r>{:.1}%</td><td class=r>{:.1}%</td>",
            esc(&q.name),
            q.weight,
            q.fair_share * 100.0,
            q.actual_share * 100.0
        );
        for st in TaskState::ALL {
            let _ = write!(h, "<td class=r>{}</td>", q.tasks.get(st.as_str()).copied().unwrap_or(0));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table><h2>Clusters</h2><table><tr><th>cluster</th><th>state</th><th>nodes</th><th>GPUs used</th><th>CPUs used</th><th>active tasks</th><th>last sync</th></tr>");
    for c in cluster_views(&ctx) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=r>{}</td><td class=r>{} / {}</td><td class=r>{:.1} / {:.1}</td><td class=r>{}</td><td class=r>{:.1}s ago</td></tr>",
            esc(&c.name),
            c.state,
            c.nodes,
            c.gpu_used,
            c.gpu_allocatable,
            c.cpu_used_millis as f64 / 1000.0,
            c.cpu_allocatable_millis as f64 / 1000.0,
            c.active_tasks,
            c.last_sync_age_ms as f64 / 1000.0
        );
    }
    h.push_str("</table><h2>Latest tasks</h2><table><tr><th>id</th><th>queue</th><th>task set</th><th>name</th><th>state</th><th>attempt</th><th>cluster/node</th><th>reason</th></tr>");
    for t in task_views(&ctx, &caller, &TaskQuery { queue: None, state: None, limit: Some(50) }) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}[{}]</td><td>{}</td><td class=r>{}</td><td>{}/{}</td><td>{}</td></tr>",
            t.id,
            esc(&t.queue),
            esc(&t.task_set),
            esc(&t.name),
            t.index,
            t.state,
            t.attempt,
            esc(&t.cluster),
            esc(&t.node),
            esc(&t.reason)
        );
    }
    h.push_str("</table><p><a href=/metrics>metrics</a> &middot; <a href=/api/queues>queues JSON</a> &middot; <a href=/api/clusters>clusters JSON</a> &middot; <a href=/api/tasks>tasks JSON</a></p></body></html>");
    Html(h)
}
