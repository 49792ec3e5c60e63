//! The shared state behind the HTTP server and the test's handle, the connection loop
//! (ours, so that connections can be cut), and the timer that runs the controllers.

use std::sync::{Mutex, MutexGuard, Weak};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::controllers::reconcile;
use crate::state::{Clock, State};

pub struct Shared {
    state: Mutex<State>,
    pub clock: Clock,
    /// Bumped after every change (objects or logs): watches and log followers wake up.
    pub changed: watch::Sender<u64>,
    /// While true, new watch requests wait (a watch gap the test controls).
    pub watches_paused: watch::Sender<bool>,
    connections: Mutex<Vec<AbortHandle>>,
}

impl Shared {
    pub fn new(state: State, clock: Clock) -> Shared {
        Shared {
            state: Mutex::new(state),
            clock,
            changed: watch::channel(0).0,
            watches_paused: watch::channel(false).0,
            connections: Mutex::new(Vec::new()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, then the controllers, then wakes watches.
    pub fn write<T>(&self, f: impl FnOnce(&mut State, u64) -> T) -> T {
        let now_ms = self.clock.now_ms();
        let out = {
            let mut state = self.lock();
            let out = f(&mut state, now_ms);
            reconcile(&mut state, now_ms);
            out
        };
        self.notify();
        out
    }

    pub fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Cuts every open connection: watches and in-flight responses end abruptly.
    pub fn drop_connections(&self) {
        let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        for c in conns.drain(..) {
            c.abort();
        }
    }

    fn track(&self, handle: AbortHandle) {
        let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|c| !c.is_finished());
        conns.push(handle);
    }
}

/// Accepts connections until the listener fails or the server is dropped; each one is
/// served by hyper (HTTP/1.1) in its own task, which `drop_connections` aborts.
pub async fn accept_loop(listener: TcpListener, shared: Weak<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let Some(s) = shared.upgrade() else { return };
        let router = axum::Router::new().fallback(crate::http::handle).with_state(s.clone());
        let service = hyper_util::service::TowerToHyperService::new(router);
        let task = tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
        s.track(task.abort_handle());
    }
}

/// Runs the controllers every `tick_interval` (for what time alone changes: grace periods,
/// node heartbeats, deadlines, backoffs).
pub async fn tick_loop(shared: Weak<Shared>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let interval = s.lock().options.tick_interval;
        let now_ms = s.clock.now_ms();
        let changed = {
            let mut state = s.lock();
            let before = state.store.resource_version();
            reconcile(&mut state, now_ms);
            state.store.resource_version() != before
        };
        if changed {
            s.notify();
        }
        drop(s);
        tokio::time::sleep(interval).await;
    }
}
