//! The HTTP port: `/metrics`, `/healthz`, `/readyz`, the read-only web console (`pages`:
//! queues at `/`, `/tasks`, `/tasks/{id}`, `/clusters`, with its CSS and JS embedded under
//! `/static/`) and its JSON at `/api/queues`, `/api/clusters`, `/api/tasks` and
//! `/api/tasks/{id}` (`views`); over TLS with `--tls-cert`.
//!
//! With authentication on, the console and `/api/*` (and `/metrics` with
//! `--protect-metrics`) need a token: `Authorization: Bearer <token>`, or HTTP Basic with the
//! token as the password, which a browser asks for. They show only the queues and tasks the
//! caller may watch. Health probes and the two static files stay open.
//!
//! `axum::serve` takes only a plain TCP listener, so connections come from
//! [`listen::incoming`](crate::listen::incoming) (TLS handshakes included) and each is
//! served by hyper's HTTP/1.1-or-HTTP/2 connection builder.

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::oneshot;

use crate::auth::Caller;
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

mod pages;
mod views;

pub fn router(ctx: Arc<Context>) -> Router {
    let guarded = Router::new()
        .route("/", get(pages::queues))
        .route("/tasks", get(pages::tasks))
        .route("/tasks/{id}", get(pages::task))
        .route("/clusters", get(pages::clusters))
        .route("/api/queues", get(api_queues))
        .route("/api/clusters", get(api_clusters))
        .route("/api/tasks", get(api_tasks))
        .route("/api/tasks/{id}", get(api_task));
    let open = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/static/console.css", get(|| async { static_file("text/css; charset=utf-8", include_str!("assets/console.css")) }))
        .route("/static/console.js", get(|| async { static_file("text/javascript; charset=utf-8", include_str!("assets/console.js")) }));
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
    let mut text = ctx.metrics.render();
    text.push_str(&ctx.read(crate::cost::metric_text));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Ready once a leader is known: before that, writes cannot commit.
async fn readyz(State(ctx): State<Arc<Context>>) -> Response {
    match ctx.replica.leader_id() {
        Some(id) => (StatusCode::OK, format!("ready: leader is replica {id}\n")).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader known\n").into_response(),
    }
}

/// An embedded file; browsers may keep it for an hour.
fn static_file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=3600")], body).into_response()
}

async fn api_queues(State(ctx): State<Arc<Context>>, Extension(caller): Extension<Caller>) -> Json<Vec<views::QueueView>> {
    Json(views::queues(&ctx, &caller))
}

async fn api_clusters(State(ctx): State<Arc<Context>>) -> Json<Vec<views::ClusterView>> {
    Json(views::clusters(&ctx))
}

/// A page of tasks, newest first: `queue`, `task_set`, `state`, `cluster`, `limit` (1..=1000,
/// default 50) and `before` (an id: older tasks only), as the task table's form sends them.
async fn api_tasks(
    State(ctx): State<Arc<Context>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<views::TaskQuery>,
) -> Json<Vec<views::TaskView>> {
    Json(views::tasks(&ctx, &caller, &q).0)
}

async fn api_task(State(ctx): State<Arc<Context>>, Extension(caller): Extension<Caller>, Path(id): Path<u64>) -> Response {
    match views::task_detail(&ctx, &caller, id) {
        Some(d) => Json(d).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no task {id}\n")).into_response(),
    }
}
