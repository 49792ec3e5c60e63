//! Accepting connections on a TCP port, with or without TLS.
//!
//! One task accepts; each TLS handshake runs in a task of its own with a time limit
//! ([`HANDSHAKE_TIMEOUT`]), so a slow or silent client never holds up the accept loop. At
//! most [`MAX_HANDSHAKES`] handshakes run at once; beyond that the loop waits for one to
//! finish (the kernel's backlog holds the rest). Handshaken connections are handed to the
//! gRPC or HTTP server as a stream, the same stream type the fault simulator serves on.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::{Incoming, ServerIo};

/// The most a client gets to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most TLS handshakes in progress on one port.
pub const MAX_HANDSHAKES: usize = 1024;
/// Accepted connections waiting for the server to take them.
const QUEUED_CONNECTIONS: usize = 64;

/// The connections accepted on `listener`, TLS-handshaken with `tls` when given. `port`
/// names the port in logs ("client", "peer", "http"). The accept task ends when the stream
/// is dropped.
pub fn incoming(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>, port: &'static str) -> Incoming {
    let (tx, rx) = mpsc::channel(QUEUED_CONNECTIONS);
    tokio::spawn(accept_loop(listener, tls.map(TlsAcceptor::from), port, tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, port: &'static str, tx: mpsc::Sender<std::io::Result<ServerIo>>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: do not spin on it.
                tracing::warn!(port, error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = tls.clone() else {
            if tx.send(Ok(ServerIo(Box::new(stream)))).await.is_err() {
                return;
            }
            continue;
        };
        let permit = tokio::select! {
            _ = tx.closed() => return,
            permit = handshakes.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(ServerIo(Box::new(stream)))).await;
                }
                // On the peer port a failed handshake is a misconfigured replica or an outsider.
                Ok(Err(e)) if port == "peer" => tracing::info!(port, %remote, error = %e, "TLS handshake failed"),
                Ok(Err(e)) => tracing::debug!(port, %remote, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(port, %remote, "TLS handshake timed out"),
            }
        });
    }
}
