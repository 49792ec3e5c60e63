//! A simulated network of byte streams between named hosts.
//!
//! Each connection is a pair of in-memory pipes. What a host writes reaches the other end
//! after a latency drawn from the seeded generator (never overtaking earlier bytes: a
//! stream stays in order, as TCP does). A cut link (`from` → `to`) holds every byte sent
//! across it until the cut heals, as a black-holed TCP connection does; a connection can
//! also be reset (both ends see `ConnectionReset`), which is what packet loss turns into at
//! the RPC level once retransmissions give up. Dialing across a cut fails after the connect
//! timeout; dialing an address nobody listens on fails at once (a stopped replica).
//!
//! Everything runs on one Tokio current-thread runtime with paused time, so a latency is a
//! virtual sleep and a run is decided by its seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use flotilla_api::dial::{BoxIo, DialFuture, Dialer};
use flotilla_server::{Incoming, ServerIo};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tonic::codegen::http::Uri;

/// How long a dial across a cut waits before it fails (a connect timeout).
const DIAL_TIMEOUT: Duration = Duration::from_millis(1000);

/// Link quality, changed by the fault schedule.
#[derive(Clone, Copy, Debug)]
pub struct LinkQuality {
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Chance that one write resets its connection.
    pub reset_per_write: f64,
}

impl Default for LinkQuality {
    fn default() -> Self {
        LinkQuality { latency_min_ms: 1, latency_max_ms: 3, reset_per_write: 0.0 }
    }
}

/// The network. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Net {
    inner: Arc<Mutex<NetState>>,
}

struct NetState {
    rng: SmallRng,
    quality: LinkQuality,
    listeners: BTreeMap<SocketAddr, (String, mpsc::UnboundedSender<SimStream>)>,
    /// Directed cuts: bytes from `.0` to `.1` are held.
    cuts: BTreeSet<(String, String)>,
    /// Readers parked on a cut, woken when cuts change.
    parked: Vec<Waker>,
    conns: Vec<std::sync::Weak<Conn>>,
    pub resets: u64,
}

impl Net {
    pub fn new(seed: u64) -> Net {
        Net {
            inner: Arc::new(Mutex::new(NetState {
                rng: SmallRng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
                quality: LinkQuality::default(),
                listeners: BTreeMap::new(),
                cuts: BTreeSet::new(),
                parked: Vec::new(),
                conns: Vec::new(),
                resets: 0,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, NetState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts connections to `addr` on behalf of `host`.
    pub fn listen(&self, host: &str, addr: SocketAddr) -> Incoming {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state().listeners.insert(addr, (host.to_string(), tx));
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            let s = rx.recv().await?;
            Some((Ok(ServerIo(Box::new(s) as BoxIo)), rx))
        });
        Box::pin(stream)
    }

    /// Stops accepting on `addr` and resets every connection of `host` (a crash).
    pub fn crash_host(&self, host: &str, addr: SocketAddr) {
        let mut s = self.state();
        s.listeners.remove(&addr);
        let conns: Vec<Arc<Conn>> =
            s.conns.iter().filter_map(|c| c.upgrade()).filter(|c| c.client_host == host || c.server_host == host).collect();
        drop(s);
        for c in conns {
            c.reset();
        }
    }

    /// A dialer for connections made by `host`.
    pub fn dialer(&self, host: &str) -> Arc<dyn Dialer> {
        Arc::new(NetDialer { net: self.clone(), host: host.to_string() })
    }

    pub fn set_quality(&self, quality: LinkQuality) {
        self.state().quality = quality;
    }

    /// Holds bytes from `from` to `to` until [`heal`](Self::heal).
    pub fn cut(&self, from: &str, to: &str) {
        self.state().cuts.insert((from.to_string(), to.to_string()));
    }

    /// Cuts `host` off from each of `others`, both ways.
    pub fn isolate(&self, host: &str, others: &[String]) {
        for o in others {
            if o != host {
                self.cut(host, o);
                self.cut(o, host);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        let mut s = self.state();
        s.cuts.clear();
        for w in s.parked.drain(..) {
            w.wake();
        }
    }

    pub fn resets(&self) -> u64 {
        self.state().resets
    }

    fn is_cut(&self, from: &str, to: &str) -> bool {
        self.state().cuts.contains(&(from.to_string(), to.to_string()))
    }
}

struct NetDialer {
    net: Net,
    host: String,
}

impl Dialer for NetDialer {
    fn dial(&self, uri: &Uri) -> DialFuture {
        let net = self.net.clone();
        let host = self.host.clone();
        let authority = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
        Box::pin(async move {
            let addr: SocketAddr = authority
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("simulated network: bad address {authority:?}")))?;
            let target = net.state().listeners.get(&addr).map(|(h, _)| h.clone());
            let Some(server_host) = target else {
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, format!("tcp connect error: Connection refused ({addr})")));
            };
            if net.is_cut(&host, &server_host) || net.is_cut(&server_host, &host) {
                tokio::time::sleep(DIAL_TIMEOUT).await;
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("tcp connect error: timed out ({addr}, link cut)")));
            }
            let conn = Arc::new(Conn {
                client_host: host.clone(),
                server_host: server_host.clone(),
                to_server: Mutex::new(Pipe::default()),
                to_client: Mutex::new(Pipe::default()),
            });
            let server = SimStream::new(net.clone(), conn.clone(), Side::Server);
            let client = SimStream::new(net.clone(), conn.clone(), Side::Client);
            let mut s = net.state();
            s.conns.retain(|c| c.strong_count() > 0);
            s.conns.push(Arc::downgrade(&conn));
            let sent = s.listeners.get(&addr).is_some_and(|(_, tx)| tx.send(server).is_ok());
            drop(s);
            if !sent {
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, format!("tcp connect error: Connection refused ({addr})")));
            }
            Ok(Box::new(client) as BoxIo)
        })
    }
}

#[derive(Default)]
struct Pipe {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    last_delivery: Option<Instant>,
    /// The writer shut down or went away: EOF after the last chunk.
    closed: bool,
    reset: bool,
    reader: Option<Waker>,
}

impl Pipe {
    fn wake(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

struct Conn {
    client_host: String,
    server_host: String,
    to_server: Mutex<Pipe>,
    to_client: Mutex<Pipe>,
}

impl Conn {
    fn reset(&self) {
        for pipe in [&self.to_server, &self.to_client] {
            let mut p = pipe.lock().unwrap_or_else(|e| e.into_inner());
            p.reset = true;
            p.wake();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// One end of a simulated connection.
pub struct SimStream {
    net: Net,
    conn: Arc<Conn>,
    side: Side,
    delay: Option<Pin<Box<Sleep>>>,
}

impl SimStream {
    fn new(net: Net, conn: Arc<Conn>, side: Side) -> SimStream {
        SimStream { net, conn, side, delay: None }
    }

    fn inbound(&self) -> &Mutex<Pipe> {
        match self.side {
            Side::Client => &self.conn.to_client,
            Side::Server => &self.conn.to_server,
        }
    }

    fn outbound(&self) -> &Mutex<Pipe> {
        match self.side {
            Side::Client => &self.conn.to_server,
            Side::Server => &self.conn.to_client,
        }
    }

    /// (sender, receiver) hosts of what this end reads.
    fn inbound_hosts(&self) -> (&str, &str) {
        match self.side {
            Side::Client => (&self.conn.server_host, &self.conn.client_host),
            Side::Server => (&self.conn.client_host, &self.conn.server_host),
        }
    }
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "connection reset (simulated)")
}

impl AsyncRead for SimStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let (from, to) = self.inbound_hosts();
        let (from, to) = (from.to_string(), to.to_string());
        let now = Instant::now();
        let next_due = {
            let mut pipe = self.inbound().lock().unwrap_or_else(|e| e.into_inner());
            if pipe.reset {
                return Poll::Ready(Err(reset_error()));
            }
            if pipe.chunks.is_empty() {
                if pipe.closed {
                    return Poll::Ready(Ok(()));
                }
                pipe.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if self.net.is_cut(&from, &to) {
                drop(pipe);
                self.net.state().parked.push(cx.waker().clone());
                return Poll::Pending;
            }
            let due = pipe.chunks.front().expect("not empty").0;
            if due <= now {
                let (_, chunk) = pipe.chunks.front_mut().expect("not empty");
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                chunk.drain(..n);
                if chunk.is_empty() {
                    pipe.chunks.pop_front();
                }
                return Poll::Ready(Ok(()));
            }
            pipe.reader = Some(cx.waker().clone());
            due
        };
        let mut sleep = Box::pin(tokio::time::sleep_until(next_due));
        if sleep.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
        self.delay = Some(sleep);
        Poll::Pending
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let (latency, reset) = {
            let mut s = self.net.state();
            let q = s.quality;
            let latency = s.rng.random_range(q.latency_min_ms..=q.latency_max_ms.max(q.latency_min_ms));
            let reset = q.reset_per_write > 0.0 && s.rng.random::<f64>() < q.reset_per_write;
            if reset {
                s.resets += 1;
            }
            (latency, reset)
        };
        if reset {
            self.conn.reset();
            return Poll::Ready(Err(reset_error()));
        }
        let mut pipe = self.outbound().lock().unwrap_or_else(|e| e.into_inner());
        if pipe.reset {
            return Poll::Ready(Err(reset_error()));
        }
        if pipe.closed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "write after shutdown (simulated)")));
        }
        let due = (Instant::now() + Duration::from_millis(latency)).max(pipe.last_delivery.unwrap_or_else(Instant::now));
        pipe.last_delivery = Some(due);
        pipe.chunks.push_back((due, buf.to_vec()));
        pipe.wake();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut pipe = self.outbound().lock().unwrap_or_else(|e| e.into_inner());
        pipe.closed = true;
        pipe.wake();
        Poll::Ready(Ok(()))
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        // The other end reads EOF after what was sent, and its writes fail.
        let mut out = self.outbound().lock().unwrap_or_else(|e| e.into_inner());
        out.closed = true;
        out.wake();
        drop(out);
        let mut inbound = self.inbound().lock().unwrap_or_else(|e| e.into_inner());
        inbound.closed = true;
        inbound.chunks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap()
    }

    #[test]
    fn bytes_arrive_in_order_and_a_cut_holds_them_until_it_heals() {
        rt().block_on(async {
            let net = Net::new(1);
            let addr: SocketAddr = "10.0.0.1:7000".parse().unwrap();
            let mut incoming = net.listen("server", addr);
            let dialer = net.dialer("client");
            let uri: Uri = "http://10.0.0.1:7000".parse().unwrap();
            let mut client = dialer.dial(&uri).await.unwrap();
            let mut server = futures::StreamExt::next(&mut incoming).await.unwrap().unwrap();
            client.write_all(b"hello ").await.unwrap();
            client.write_all(b"world").await.unwrap();
            let mut got = vec![0u8; 11];
            server.0.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello world");

            net.cut("client", "server");
            client.write_all(b"held").await.unwrap();
            let mut four = [0u8; 4];
            let read = tokio::time::timeout(Duration::from_secs(5), server.0.read_exact(&mut four)).await;
            assert!(read.is_err(), "nothing crosses a cut link");
            net.heal();
            server.0.read_exact(&mut four).await.unwrap();
            assert_eq!(&four, b"held");
        });
    }

    #[test]
    fn dialing_across_a_cut_or_to_a_stopped_host_fails() {
        rt().block_on(async {
            let net = Net::new(1);
            let addr: SocketAddr = "10.0.0.1:7000".parse().unwrap();
            let _incoming = net.listen("server", addr);
            let uri: Uri = "http://10.0.0.1:7000".parse().unwrap();
            net.cut("server", "client");
            let err = net.dialer("client").dial(&uri).await.err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            net.heal();
            net.crash_host("server", addr);
            let err = net.dialer("client").dial(&uri).await.err().unwrap();
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        });
    }
}
