//! A gRPC client over a list of replicas: when one does not answer, try the next.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flotilla_api::auth::{AuthChannel, BearerToken};
use flotilla_api::dial::Dial;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

/// Largest message the CLI accepts (a full task listing page).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub struct Client {
    servers: Vec<String>,
    /// The replica that answered last: tried first next time.
    current: AtomicUsize,
    /// TCP, with TLS for https:// servers (`--ca-cert`).
    dial: Dial,
    token: BearerToken,
}

impl Client {
    pub fn new(servers: &str, dial: Dial, token: BearerToken) -> Result<Client, String> {
        let servers: Vec<String> = servers.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        if servers.is_empty() {
            return Err("--server: at least one URL is required".into());
        }
        for s in &servers {
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                return Err(format!("--server: {s:?} must start with http:// or https://"));
            }
        }
        Ok(Client { servers, current: AtomicUsize::new(0), dial, token })
    }

    fn endpoint(url: &str) -> Result<Endpoint, Status> {
        Endpoint::from_shared(url.to_string())
            .map(|e| e.connect_timeout(Duration::from_secs(3)).tcp_nodelay(true))
            .map_err(|e| Status::invalid_argument(format!("--server: {url:?}: {e}")))
    }

    /// Calls `f` on each replica in turn until one answers with something other than
    /// "unavailable". Writes are safe to repeat: submissions carry a request id.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(AuthChannel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let n = self.servers.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = Status::unavailable("no server tried");
        // Two rounds: a leader election may be under way during the first.
        for round in 0..2 {
            for i in 0..n {
                let idx = (start + i) % n;
                let url = &self.servers[idx];
                let channel = match self.dial.connect(Self::endpoint(url)?).await {
                    Ok(c) => c,
                    Err(e) => {
                        last = Status::unavailable(format!("{url}: {}", error_chain(&e)));
                        continue;
                    }
                };
                match f(self.token.channel(channel)).await {
                    Err(s) if s.code() == Code::Unavailable || s.code() == Code::Unknown && s.message().contains("transport") => {
                        last = Status::new(s.code(), format!("{url}: {}", s.message()));
                    }
                    other => {
                        self.current.store(idx, Ordering::Relaxed);
                        return other;
                    }
                }
            }
            if round == 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Err(last)
    }
}

/// An error and its causes, `: `-separated: tonic's transport error says only "transport
/// error"; the cause says what failed (refused, or the TLS handshake and why).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        source = cause.source();
    }
    text
}
