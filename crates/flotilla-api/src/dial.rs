//! How a client reaches a replica: plain TCP, or a network of the caller's making.
//!
//! Every gRPC channel Flotilla opens (replica to replica, follower to leader, executor to
//! scheduler) goes through a [`Dial`]. Production uses TCP. The fault simulator plugs in an
//! in-process network whose links it can cut, slow down and reset, so the same code runs
//! over it unchanged.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::codegen::http::Uri;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint};

/// A byte stream to a replica.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

pub type BoxIo = Box<dyn Io>;
pub type DialFuture = Pin<Box<dyn Future<Output = io::Result<BoxIo>> + Send>>;

/// Opens a connection to the authority of `uri` (`host:port`).
pub trait Dialer: Send + Sync + 'static {
    fn dial(&self, uri: &Uri) -> DialFuture;
}

/// TCP, or a custom [`Dialer`].
#[derive(Clone, Default)]
pub struct Dial(Option<Arc<dyn Dialer>>);

impl Dial {
    pub fn tcp() -> Dial {
        Dial(None)
    }

    pub fn custom(dialer: Arc<dyn Dialer>) -> Dial {
        Dial(Some(dialer))
    }

    /// A channel that connects on first use (and again after a failure).
    pub fn connect_lazy(&self, endpoint: Endpoint) -> Channel {
        match &self.0 {
            None => endpoint.connect_lazy(),
            Some(d) => endpoint.connect_with_connector_lazy(Connector(d.clone())),
        }
    }

    /// A channel that is connected before this returns.
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        match &self.0 {
            None => endpoint.connect().await,
            Some(d) => endpoint.connect_with_connector(Connector(d.clone())).await,
        }
    }
}

impl fmt::Debug for Dial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Dial(custom)" } else { "Dial(tcp)" })
    }
}

#[derive(Clone)]
struct Connector(Arc<dyn Dialer>);

impl Service<Uri> for Connector {
    type Response = TokioIo<BoxIo>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<BoxIo>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialing = self.0.dial(&uri);
        Box::pin(async move { dialing.await.map(TokioIo::new) })
    }
}
