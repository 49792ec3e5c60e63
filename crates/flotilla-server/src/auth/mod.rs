//! Who is calling, and what they may do.
//!
//! Every request to the client port passes [`AuthLayer`], which turns its `authorization:
//! Bearer …` header into a [`Caller`] (a user from the auth file or an OIDC provider, or a
//! cluster's executor) and puts it in the request's extensions, or answers UNAUTHENTICATED
//! without saying whether the identity exists. Services then ask [`Authorizer`] whether the
//! caller may act: cluster roles (admin, viewer) from the auth file, and per-queue
//! [`Permit`]s stored on the queue (replicated) or granted in the auth file. Requests on the
//! peer port come from replicas, whose identity the peer port's mutual TLS establishes.
//!
//! With no auth file every caller is [`Caller::Open`] and may do anything: `flotilla dev`,
//! or a server on loopback. A server refuses to listen elsewhere without auth unless told
//! `--insecure`.

mod file;
mod oidc;

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use flotilla_model::{quote, Permit, Queue, Subject, Verb};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::Status;

pub use file::{generate_token, hash_token, random_hex, AuthFile, JwksSource, OidcSettings, MAX_AUTH_FILE_BYTES};
pub use oidc::{Oidc, OidcIdentity};

use file::TokenHolder;

/// Longest `authorization` header read, in bytes (an ID token with many groups fits).
const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;
/// How often the auth file is checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// The authenticated identity of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Authentication is off: anyone may do anything.
    Open,
    /// A person or a service acting as a user.
    User { name: String, groups: Vec<String> },
    /// The executor of one cluster: may Sync and report events for that cluster only.
    Executor { cluster: String },
    /// Another replica, on the peer port.
    Replica,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Open => f.write_str("anonymous"),
            Caller::User { name, .. } => write!(f, "user:{name}"),
            Caller::Executor { cluster } => write!(f, "executor:{cluster}"),
            Caller::Replica => f.write_str("replica"),
        }
    }
}

impl Caller {
    /// The caller a request carries; a request that somehow bypassed [`AuthLayer`] has no
    /// rights (never `Open`).
    pub fn of<T>(req: &tonic::Request<T>) -> Caller {
        req.extensions().get::<Caller>().cloned().unwrap_or(Caller::User { name: String::new(), groups: Vec::new() })
    }

    fn matches(&self, subject: &Subject) -> bool {
        match (self, subject) {
            (Caller::User { name, .. }, Subject::User(s)) => name == s,
            (Caller::User { groups, .. }, Subject::Group(g)) => groups.iter().any(|x| x == g),
            _ => false,
        }
    }
}

/// What authentication knows: the auth file (reloaded when it changes) and the OIDC keys.
pub struct Authenticator {
    /// `None`: authentication is off.
    file: Option<RwLock<Arc<AuthFile>>>,
    path: Option<PathBuf>,
    oidc: RwLock<Option<Arc<Oidc>>>,
}

impl Authenticator {
    /// Everyone may do everything.
    pub fn open() -> Authenticator {
        Authenticator { file: None, path: None, oidc: RwLock::new(None) }
    }

    /// Loads an auth file (and the OIDC key set it names); errors name the file and entry.
    pub async fn load(path: &Path) -> Result<Authenticator, String> {
        let file = AuthFile::load(path)?;
        let oidc = match &file.oidc {
            Some(settings) => Some(Arc::new(Oidc::new(settings.clone()).await?)),
            None => None,
        };
        Ok(Authenticator { file: Some(RwLock::new(Arc::new(file))), path: Some(path.to_path_buf()), oidc: RwLock::new(oidc) })
    }

    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    fn current(&self) -> Option<Arc<AuthFile>> {
        self.file.as_ref().map(|f| f.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn oidc(&self) -> Option<Arc<Oidc>> {
        self.oidc.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Who sent `headers`: UNAUTHENTICATED when credentials are missing or not valid, with
    /// the same message whether or not the identity exists.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let Some(file) = self.current() else { return Ok(Caller::Open) };
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Status::unauthenticated(
                "credentials required: send `authorization: Bearer <token>` (flotilla --token or FLOTILLA_TOKEN)",
            ));
        };
        let invalid = || Status::unauthenticated("invalid or expired credentials");
        if value.len() > MAX_CREDENTIAL_BYTES {
            return Err(invalid());
        }
        let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))).map(str::trim);
        let Some(token) = token.filter(|t| !t.is_empty()) else { return Err(invalid()) };
        match file.tokens.get(&file::digest(token)) {
            Some(TokenHolder::User { name, groups }) => return Ok(Caller::User { name: name.clone(), groups: groups.clone() }),
            Some(TokenHolder::Executor { cluster }) => return Ok(Caller::Executor { cluster: cluster.clone() }),
            None => {}
        }
        if let Some(oidc) = self.oidc() {
            if token.bytes().filter(|b| *b == b'.').count() == 2 {
                return match oidc.verify(token).await {
                    Ok(id) => Ok(Caller::User { name: id.name, groups: id.groups }),
                    Err(e) => {
                        tracing::debug!(error = %e, "rejected an ID token");
                        Err(invalid())
                    }
                };
            }
        }
        Err(invalid())
    }

    /// Reloads the auth file when it changed on disk and refreshes the OIDC key set; runs
    /// until the process ends. A file that no longer parses is logged and the old one kept.
    pub async fn keep_fresh(self: Arc<Self>) {
        self.keep_fresh_every(RELOAD_CHECK).await
    }

    async fn keep_fresh_every(self: Arc<Self>, period: Duration) {
        let Some(path) = self.path.clone() else { return };
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut seen: Option<SystemTime> = modified(&path);
        let mut last_keys = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(period).await;
            let now = modified(&path);
            if now != seen {
                seen = now;
                match Authenticator::load(&path).await {
                    Ok(fresh) => {
                        if let (Some(slot), Some(new)) = (&self.file, fresh.current()) {
                            *slot.write().unwrap_or_else(|e| e.into_inner()) = new;
                        }
                        *self.oidc.write().unwrap_or_else(|e| e.into_inner()) = fresh.oidc();
                        tracing::info!(file = %path.display(), "reloaded the auth file");
                    }
                    Err(e) => tracing::error!(error = %e, "the changed auth file is not valid; keeping the previous one"),
                }
            }
            if let Some(oidc) = self.oidc() {
                if last_keys.elapsed() >= oidc.refresh_interval() {
                    last_keys = tokio::time::Instant::now();
                    if let Err(e) = oidc.refresh().await {
                        tracing::warn!(error = %e, "refreshing the OIDC key set failed; keeping the previous keys");
                    }
                }
            }
        }
    }

    /// The authorization view of the current auth file.
    pub fn authorizer(&self) -> Authorizer {
        Authorizer { file: self.current() }
    }
}

/// Answers "may this caller …" against one consistent auth file.
pub struct Authorizer {
    /// `None`: authentication is off and every check passes.
    file: Option<Arc<AuthFile>>,
}

impl Authorizer {
    fn role(&self, caller: &Caller, list: impl Fn(&AuthFile) -> &Vec<Subject>) -> bool {
        match caller {
            Caller::Open | Caller::Replica => true,
            Caller::User { .. } => self.file.as_ref().is_none_or(|f| list(f).iter().any(|s| caller.matches(s))),
            Caller::Executor { .. } => false,
        }
    }

    /// Cluster admin: queues, replicas, clusters, and everything on every queue.
    pub fn is_admin(&self, caller: &Caller) -> bool {
        self.role(caller, |f| &f.admins)
    }

    /// May read every queue, task and cluster.
    pub fn is_viewer(&self, caller: &Caller) -> bool {
        self.is_admin(caller) || self.role(caller, |f| &f.viewers)
    }

    /// Whether `caller` may do `verb` on `queue`: a cluster admin, a viewer for `watch`, or
    /// a permit on the queue or in the auth file naming the caller or one of its groups.
    pub fn allows(&self, caller: &Caller, queue: &str, permits: &[Permit], verb: Verb) -> bool {
        if self.is_admin(caller) || (verb == Verb::Watch && self.is_viewer(caller)) {
            return true;
        }
        let granted = self.file.as_ref().and_then(|f| f.grants.get(queue)).map(Vec::as_slice).unwrap_or_default();
        permits.iter().chain(granted).any(|p| caller.matches(&p.subject) && p.allows(verb))
    }

    /// [`allows`](Self::allows) for a queue record.
    pub fn allows_queue(&self, caller: &Caller, queue: &Queue, verb: Verb) -> bool {
        self.allows(caller, &queue.name, &queue.permits, verb)
    }

    /// PERMISSION_DENIED naming the permission needed, or Ok.
    pub fn require_admin(&self, caller: &Caller, action: &str) -> Result<(), Status> {
        if self.is_admin(caller) {
            return Ok(());
        }
        Err(Status::permission_denied(format!("{action} needs the cluster admin role; {caller} does not have it")))
    }

    pub fn require_viewer(&self, caller: &Caller, action: &str) -> Result<(), Status> {
        if self.is_viewer(caller) {
            return Ok(());
        }
        Err(Status::permission_denied(format!("{action} needs the viewer or admin role; {caller} has neither")))
    }

    pub fn require(&self, caller: &Caller, queue: &str, permits: &[Permit], verb: Verb) -> Result<(), Status> {
        if self.allows(caller, queue, permits, verb) {
            return Ok(());
        }
        Err(denied(caller, queue, verb))
    }

    /// An executor may act only for the cluster its credential names.
    pub fn require_cluster(&self, caller: &Caller, cluster: &str) -> Result<(), Status> {
        match caller {
            Caller::Open | Caller::Replica => Ok(()),
            Caller::Executor { cluster: own } if own == cluster => Ok(()),
            Caller::Executor { cluster: own } => Err(Status::permission_denied(format!(
                "the credential of cluster {} may not act for cluster {}",
                quote(own),
                quote(cluster)
            ))),
            Caller::User { .. } => Err(Status::permission_denied(format!(
                "only the executor credential of cluster {} may sync or report for it; {caller} is a user",
                quote(cluster)
            ))),
        }
    }
}

/// PERMISSION_DENIED for `verb` on `queue`.
pub fn denied(caller: &Caller, queue: &str, verb: Verb) -> Status {
    Status::permission_denied(format!("{caller} needs the `{verb}` permission on queue {} (or the cluster admin role)", quote(queue)))
}

/// One line on the `audit` log target for a mutating call: who, what, on which queue or
/// tasks, and how it ended.
pub fn audit<T>(caller: &Caller, action: &str, target: &str, result: &Result<T, Status>) {
    match result {
        Ok(_) => tracing::info!(target: "audit", subject = %caller, action, target, result = "ok"),
        Err(s) => tracing::info!(
            target: "audit",
            subject = %caller,
            action,
            target,
            result = ?s.code(),
            message = %flotilla_model::truncate(s.message(), 256)
        ),
    }
}

/// The executor protocol's gRPC path prefix: the only service executor credentials may call.
const EXECUTOR_SERVICE_PATH: &str = "/flotilla.v1.Executor/";
/// gRPC health answers without credentials: Kubernetes' gRPC probes send none. It says only
/// whether the replica serves (crate::health).
const HEALTH_SERVICE_PATH: &str = "/grpc.health.v1.Health/";

/// Which listener a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// Users and executors: credentials are checked.
    Client,
    /// Replicas only (mutual TLS in production): every caller is [`Caller::Replica`].
    Peer,
}

/// The tower layer that authenticates every request of one listener.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
    port: Port,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>, port: Port) -> AuthLayer {
        AuthLayer { auth, port }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { inner, auth: self.auth.clone(), port: self.port }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    port: Port,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this request; the fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (auth, port) = (self.auth.clone(), self.port);
        Box::pin(async move {
            if req.uri().path().starts_with(HEALTH_SERVICE_PATH) {
                return inner.call(req).await;
            }
            // Raft is served on the peer port only; the client port has no replica callers.
            let caller = match port {
                Port::Peer => Ok(Caller::Replica),
                Port::Client => auth.authenticate(req.headers()).await,
            };
            match caller {
                // An executor credential is for its cluster's side of the executor protocol.
                Ok(Caller::Executor { cluster }) if !req.uri().path().starts_with(EXECUTOR_SERVICE_PATH) => Ok(Status::permission_denied(
                    format!("the executor credential of cluster {} may only Sync and ReportEvents", quote(&cluster)),
                )
                .into_http()),
                Ok(caller) => {
                    req.extensions_mut().insert(caller);
                    inner.call(req).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests;
