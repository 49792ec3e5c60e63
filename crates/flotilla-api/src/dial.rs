//! How a client reaches a replica: plain TCP, or a network of the caller's making, with TLS
//! for `https://` URLs.
//!
//! Every gRPC channel Flotilla opens (replica to replica, follower to leader, executor to
//! scheduler, the CLI) goes through a [`Dial`]. Production uses TCP. The fault simulator plugs
//! in an in-process network whose links it can cut, slow down and reset, so the same code
//! runs over it unchanged.
//!
//! An `https://` URL is always dialled with TLS (tonic's own TLS features are off, and its
//! plain connector would otherwise speak cleartext to it): with the [`ClientTls`] given to
//! [`Dial::with_tls`], or else trusting the system's root certificates. The server name is
//! the URL's host; ALPN is `h2`. The fault simulator dials `http://` URLs, so it stays
//! plaintext.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::codegen::http::Uri;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint};

use crate::tls::ClientTls;

/// A byte stream to a replica.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

pub type BoxIo = Box<dyn Io>;
pub type DialFuture = Pin<Box<dyn Future<Output = io::Result<BoxIo>> + Send>>;

/// Opens a connection to the authority of `uri` (`host:port`).
pub trait Dialer: Send + Sync + 'static {
    fn dial(&self, uri: &Uri) -> DialFuture;
}

/// TCP or a custom [`Dialer`], and what `https://` URLs trust.
#[derive(Clone, Default)]
pub struct Dial {
    dialer: Option<Arc<dyn Dialer>>,
    tls: Option<ClientTls>,
}

impl Dial {
    pub fn tcp() -> Dial {
        Dial::default()
    }

    pub fn custom(dialer: Arc<dyn Dialer>) -> Dial {
        Dial { dialer: Some(dialer), tls: None }
    }

    /// Uses `tls` for `https://` URLs instead of the system's root certificates.
    pub fn with_tls(mut self, tls: ClientTls) -> Dial {
        self.tls = Some(tls);
        self
    }

    fn connector(&self) -> Connector {
        Connector { dialer: self.dialer.clone(), tls: self.tls.clone() }
    }

    /// A channel that connects on first use (and again after a failure).
    pub fn connect_lazy(&self, endpoint: Endpoint) -> Channel {
        if self.dialer.is_none() && !is_https(endpoint.uri()) {
            // tonic's own TCP connector honours the endpoint's TCP settings.
            return endpoint.connect_lazy();
        }
        endpoint.connect_with_connector_lazy(self.connector())
    }

    /// A channel that is connected before this returns.
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        if self.dialer.is_none() && !is_https(endpoint.uri()) {
            return endpoint.connect().await;
        }
        endpoint.connect_with_connector(self.connector()).await
    }
}

fn is_https(uri: &Uri) -> bool {
    uri.scheme_str() == Some("https")
}

impl fmt::Debug for Dial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = if self.dialer.is_some() { "custom" } else { "tcp" };
        match &self.tls {
            Some(tls) => write!(f, "Dial({how}, https {})", tls.describe()),
            None => write!(f, "Dial({how})"),
        }
    }
}

/// Dials (TCP or the custom dialer), then for `https://` URLs makes the TLS handshake.
#[derive(Clone)]
struct Connector {
    dialer: Option<Arc<dyn Dialer>>,
    tls: Option<ClientTls>,
}

impl Service<Uri> for Connector {
    type Response = TokioIo<BoxIo>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<BoxIo>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialing: DialFuture = match &self.dialer {
            Some(d) => d.dial(&uri),
            None => Box::pin(dial_tcp(uri.clone())),
        };
        let tls = self.tls.clone();
        Box::pin(async move {
            let io = dialing.await?;
            if !is_https(&uri) {
                return Ok(TokioIo::new(io));
            }
            let tls = match tls {
                Some(tls) => tls,
                None => ClientTls::system().map_err(io::Error::other)?,
            };
            let host = host_of(&uri)?;
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {host:?} is not a TLS server name: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(tls.config())
                .connect(name, io)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with {uri} failed ({}): {e}", tls.describe())))?;
            Ok(TokioIo::new(Box::new(stream) as BoxIo))
        })
    }
}

/// The URL's host without the brackets of an IPv6 address.
fn host_of(uri: &Uri) -> io::Result<&str> {
    let host = uri.host().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: no host")))?;
    Ok(host.trim_start_matches('[').trim_end_matches(']'))
}

async fn dial_tcp(uri: Uri) -> io::Result<BoxIo> {
    let host = host_of(&uri)?;
    let port = uri.port_u16().unwrap_or(if is_https(&uri) { 443 } else { 80 });
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(Box::new(stream))
}
