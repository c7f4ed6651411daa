//! UDP, TCP, TLS and WebSocket (`ws`) listeners and the flow table. A flow is where a message came
//! from and where requests for that peer go back: the UDP source address, or the very TCP, TLS or
//! WebSocket connection (so clients behind NAT, and browsers, are reachable over the connection
//! they opened, RFC 5626 style reuse).

pub mod admission;
mod inbox;
mod stream;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod ws;

use crate::ops::metrics::Metrics;
use bytes::Bytes;
use socket2::Socket;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use stream::Opened;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use parley_sip::flow::{Flow, Transport};

/// Socket buffers asked of the kernel for the UDP listener (it caps them at `net.core.rmem_max` /
/// `wmem_max`): the default ~200 KiB drops bursts such as a fan-out's NOTIFY responses.
const UDP_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Datagrams read without waiting after the first of a burst, at most: their store writes wait
/// for the burst's end, so the bound is how long the first may wait (about 30 µs each).
const MAX_BURST: usize = 32;

/// Threads reading the UDP socket: while one waits for the disk (its burst's sync), the other
/// reads and answers what comes meanwhile (the kernel wakes one of them per datagram).
const UDP_READERS: usize = 2;

/// A blocking socket: the reader threads sleep in `recvmmsg`; everyone else sends without
/// waiting (`MSG_DONTWAIT`).
fn bind_udp(addr: SocketAddr) -> std::io::Result<Socket> {
    use socket2::{Domain, Protocol, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(UDP_BUFFER_BYTES).and(socket.set_send_buffer_size(UDP_BUFFER_BYTES)) {
        tracing::warn!(error = %e, "could not enlarge the UDP socket buffers");
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Says, at most every `DropReport::EVERY`, that datagrams are being dropped for the per-address
/// limit: a client whose requests go unanswered otherwise leaves no trace but a counter.
#[derive(Default)]
struct DropReport {
    last: Option<std::time::Instant>,
    since_last: u64,
}

impl DropReport {
    const EVERY: Duration = Duration::from_secs(10);

    fn note(&mut self, from: IpAddr, now: std::time::Instant) {
        self.since_last += 1;
        if self.last.is_none_or(|t| now.duration_since(t) >= Self::EVERY) {
            tracing::warn!(
                dropped = self.since_last,
                latest_from = %from,
                "UDP datagrams dropped unread: their address sends more than limits.max_messages_per_source \
                 (see parley_overload_dropped_total)"
            );
            (self.last, self.since_last) = (Some(now), 0);
        }
    }
}

/// Resolves once the server stops accepting.
async fn closed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}

/// Receives every message the transports read.
pub trait Handler: Send + Sync + 'static {
    fn on_message(&self, flow: Flow, data: Bytes);

    /// The datagrams `next` reads until it returns `None` (one that had to be waited for, then
    /// those already arrived), handled in order on the calling thread, which may make their
    /// store writes durable together before their answers go: one sync for the burst, and no
    /// other thread woken to make it.
    fn on_burst(&self, next: &mut dyn FnMut() -> Option<(Flow, Bytes)>);
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no {0:?} listener")]
    NoTransport(Transport),
    #[error("connection to {0} is gone")]
    NoConnection(SocketAddr),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub message: crate::sip::message::Limits,
    pub max_connections_per_ip: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// Time to complete a begun message, and to send the first one.
    pub message_timeout: Duration,
    /// Messages a second one address may send (0: no limit); the internal link is exempt.
    pub max_messages_per_source: u32,
}

struct Connection {
    transport: Transport,
    remote: SocketAddr,
    tx: mpsc::Sender<Bytes>,
}

/// The listeners' shared state: the UDP socket, open connections, per-address counts.
pub struct Transports {
    limits: Limits,
    metrics: Arc<Metrics>,
    udp: Mutex<Option<Arc<Socket>>>,
    conns: Mutex<HashMap<u64, Connection>>,
    /// Newest connection per (transport, remote address), for requests to a peer without a flow.
    by_remote: Mutex<HashMap<(Transport, SocketAddr), u64>>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    next_conn: AtomicU64,
    handler: OnceLock<Arc<dyn Handler>>,
    /// Flips to true when the server stops accepting (SIGTERM).
    closing: watch::Sender<bool>,
    /// Client side of the internal link, for connections this server opens to a peer.
    internal: OnceLock<tokio_rustls::TlsConnector>,
    admission: Option<admission::Admission>,
    /// One report for every UDP reader, so the warning comes at most every `DropReport::EVERY`.
    drops: Mutex<DropReport>,
}

/// What a stream listener speaks.
#[derive(Clone)]
pub enum StreamKind {
    Tcp,
    Tls(tokio_rustls::TlsAcceptor),
    /// Mutual TLS: the acceptor demands a client certificate from the deployment CA.
    Internal(tokio_rustls::TlsAcceptor),
    /// SIP over WebSocket (RFC 7118), plain or (with an acceptor) over TLS.
    Ws(Option<tokio_rustls::TlsAcceptor>, Arc<ws::OriginPolicy>),
}

impl Transports {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Transports> {
        Arc::new(Transports {
            limits,
            metrics,
            udp: Mutex::new(None),
            conns: Mutex::new(HashMap::new()),
            by_remote: Mutex::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            handler: OnceLock::new(),
            closing: watch::channel(false).0,
            internal: OnceLock::new(),
            admission: admission::Admission::new(limits.max_messages_per_source),
            drops: Mutex::new(DropReport::default()),
        })
    }

    /// Sets who receives messages; call once before listening.
    pub fn set_handler(&self, handler: Arc<dyn Handler>) {
        let _ = self.handler.set(handler);
    }

    fn handler(&self) -> Arc<dyn Handler> {
        self.handler.get().expect("Transports::set_handler before listening").clone()
    }

    /// Binds UDP and starts its reader thread; returns the bound address.
    pub async fn listen_udp(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let handler = self.handler();
        let socket = Arc::new(bind_udp(addr)?);
        let local = socket.local_addr()?.as_socket().expect("an IP socket");
        *self.udp.lock().expect("udp") = Some(socket.clone());
        for _ in 0..UDP_READERS {
            let (this, socket, handler) = (self.clone(), socket.clone(), handler.clone());
            let runtime = tokio::runtime::Handle::current();
            std::thread::Builder::new().name("udp-reader".into()).spawn(move || {
                let _runtime = runtime.enter(); // what the handler hands to tasks runs there
                this.read_udp(&socket, &*handler);
            })?;
        }
        Ok(local)
    }

    /// The UDP reader, a thread of its own as in Kamailio: it sleeps until a datagram comes, then
    /// hands over that one and those queued with it as one burst, until the server stops
    /// accepting (which wakes it: `stop_accepting`).
    fn read_udp(&self, socket: &Socket, handler: &dyn Handler) {
        let mut inbox = inbox::Inbox::new();
        let closing = self.closing.subscribe();
        loop {
            let first = inbox.receive(socket, true);
            if *closing.borrow() {
                return;
            }
            let mut read = match first {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive");
                    continue;
                }
            };
            handler.on_burst(&mut || {
                loop {
                    let Some((datagram, from)) = inbox.take() else {
                        // A receive that came back short found nothing more queued a moment ago:
                        // the burst ends without another call (at a steady rate a lone datagram is
                        // the usual case, and that call found nothing nearly every time). A full
                        // one means load: what came meanwhile joins the burst.
                        if !inbox.was_full() || read >= MAX_BURST {
                            return None;
                        }
                        match inbox.receive(socket, false) {
                            Ok(n) => read += n,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                            Err(e) => {
                                tracing::debug!(error = %e, "udp receive");
                                return None;
                            }
                        }
                        continue;
                    };
                    let Some(from) = from else { continue }; // not from an IP peer
                    if let Some(a) = &self.admission {
                        let now = std::time::Instant::now();
                        if a.admit(from.ip(), now).is_err() {
                            self.metrics.overload_dropped.fetch_add(1, Ordering::Relaxed);
                            self.drops.lock().expect("drops").note(from.ip(), now);
                            continue;
                        }
                    }
                    if datagram.iter().all(|b| b.is_ascii_whitespace()) {
                        continue; // keep-alive datagram
                    }
                    return Some((Flow::datagram(Transport::Udp, from), Bytes::copy_from_slice(datagram)));
                }
            });
        }
    }

    /// Sets the client side of the internal link; call once before sending on Internal flows.
    pub fn set_internal_connector(&self, connector: tokio_rustls::TlsConnector) {
        let _ = self.internal.set(connector);
    }

    /// Binds a TCP listener of the given kind and accepts; returns the bound address.
    pub async fn listen_stream(self: &Arc<Self>, addr: SocketAddr, kind: StreamKind) -> std::io::Result<SocketAddr> {
        let handler = self.handler();
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let this = self.clone();
        let mut closing = self.closing.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((stream, remote)) => {
                            let _ = stream.set_nodelay(true);
                            let Some(conn) = this.admit(remote.ip()) else {
                                tracing::warn!(%remote, "connection refused: limit reached");
                                continue;
                            };
                            let this = this.clone();
                            let handler = handler.clone();
                            let kind = kind.clone();
                            tokio::spawn(async move {
                                this.accepted(conn, remote, stream, kind, handler).await;
                                this.release(remote.ip());
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    _ = closed(&mut closing) => break,
                }
            }
        });
        Ok(local)
    }

    /// Serves an accepted connection: TLS and WebSocket handshakes as its kind needs, then its
    /// messages until it closes.
    async fn accepted(
        self: &Arc<Self>,
        conn: u64,
        remote: SocketAddr,
        stream: tokio::net::TcpStream,
        kind: StreamKind,
        handler: Arc<dyn Handler>,
    ) {
        let (transport, acceptor, websocket) = match kind {
            StreamKind::Tcp => (Transport::Tcp, None, None),
            StreamKind::Tls(a) => (Transport::Tls, Some(a), None),
            StreamKind::Internal(a) => (Transport::Internal, Some(a), None),
            StreamKind::Ws(None, origins) => (Transport::Ws, None, Some(origins)),
            StreamKind::Ws(Some(a), origins) => (Transport::Wss, Some(a), Some(origins)),
        };
        let Some(acceptor) = acceptor else {
            return match websocket {
                None => self.serve_stream(conn, transport, remote, stream, handler).await,
                Some(origins) => self.serve_websocket(conn, transport, remote, stream, &origins, handler).await,
            };
        };
        let hs = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
        match (hs, websocket) {
            (Ok(Ok(s)), None) => self.serve_stream(conn, transport, remote, s, handler).await,
            (Ok(Ok(s)), Some(origins)) => self.serve_websocket(conn, transport, remote, s, &origins, handler).await,
            // A peer without a certificate from the deployment CA ends here.
            (Ok(Err(e)), _) => tracing::info!(%remote, ?transport, error = %e, "tls handshake failed"),
            (Err(_), _) => tracing::debug!(%remote, "tls handshake timed out"),
        }
    }

    /// The WebSocket handshake (within the message timeout), then the stream of its messages.
    async fn serve_websocket<S>(
        self: &Arc<Self>,
        conn: u64,
        transport: Transport,
        remote: SocketAddr,
        stream: S,
        origins: &ws::OriginPolicy,
        handler: Arc<dyn Handler>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let max = self.limits.message.max_message_bytes;
        match tokio::time::timeout(self.limits.message_timeout, ws::accept(stream, origins, max)).await {
            Ok(Ok(socket)) => self.serve_stream(conn, transport, remote, ws::WsBytes::new(socket), handler).await,
            Ok(Err(e)) => tracing::info!(%remote, ?transport, error = %e, "websocket handshake refused or failed"),
            Err(_) => tracing::debug!(%remote, "websocket handshake timed out"),
        }
    }

    /// Counts a new connection against the limits; `None` if it must be refused.
    fn admit(&self, ip: IpAddr) -> Option<u64> {
        let mut per_ip = self.per_ip.lock().expect("per_ip");
        let total: usize = per_ip.values().sum();
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.limits.max_connections_per_ip || total >= self.limits.max_connections {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            self.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    fn release(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip.lock().expect("per_ip");
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    fn register_conn(&self, id: u64, transport: Transport, remote: SocketAddr, tx: mpsc::Sender<Bytes>) {
        self.conns.lock().expect("conns").insert(id, Connection { transport, remote, tx });
        self.by_remote.lock().expect("by_remote").insert((transport, remote), id);
        self.metrics.active_connections.fetch_add(1, Ordering::Relaxed);
    }

    fn unregister_conn(&self, id: u64) {
        if let Some(c) = self.conns.lock().expect("conns").remove(&id) {
            let mut by_remote = self.by_remote.lock().expect("by_remote");
            if by_remote.get(&(c.transport, c.remote)) == Some(&id) {
                by_remote.remove(&(c.transport, c.remote));
            }
            self.metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Sends bytes along a flow: the UDP socket, the flow's connection, or (TCP only) the newest
    /// connection to that address, opening one if there is none.
    pub async fn send(self: &Arc<Self>, flow: &Flow, data: Bytes) -> Result<(), SendError> {
        let sent = self.send_or_connect(flow, data).await;
        if sent.is_err() {
            self.metrics.send_failures.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    async fn send_or_connect(self: &Arc<Self>, flow: &Flow, data: Bytes) -> Result<(), SendError> {
        if flow.transport == Transport::Udp {
            // The socket blocks: the wait for buffer space goes to a thread that may block.
            let socket = self.udp_socket()?;
            let remote = flow.remote.into();
            tokio::task::spawn_blocking(move || socket.send_to(&data, &remote))
                .await
                .map_err(|e| SendError::Io(std::io::Error::other(e)))??;
            return Ok(());
        }
        match self.sender(flow) {
            Some(tx) => tx.send(data).await.map_err(|_| SendError::NoConnection(flow.remote)),
            None if flow.transport == Transport::Tcp => self.connect(Transport::Tcp, flow.remote, data).await,
            None if flow.transport == Transport::Internal => self.connect(Transport::Internal, flow.remote, data).await,
            None => Err(SendError::NoConnection(flow.remote)),
        }
    }

    /// Queues bytes on a flow without waiting, so that calls leave in the order they were made.
    /// Fails when the flow has no open connection or its queue (or the UDP socket) is full; the
    /// caller may then fall back to `send`, which waits and connects.
    pub fn send_now(&self, flow: &Flow, data: Bytes) -> Result<(), SendError> {
        if flow.transport == Transport::Udp {
            self.udp_socket()?.send_to_with_flags(&data, &flow.remote.into(), libc::MSG_DONTWAIT)?;
            return Ok(());
        }
        let tx = self.sender(flow).ok_or(SendError::NoConnection(flow.remote))?;
        tx.try_send(data).map_err(|_| SendError::NoConnection(flow.remote))
    }

    fn udp_socket(&self) -> Result<Arc<Socket>, SendError> {
        self.udp.lock().expect("udp").clone().ok_or(SendError::NoTransport(Transport::Udp))
    }

    /// The queue of a stream flow's connection, or else of the newest connection to its address.
    fn sender(&self, flow: &Flow) -> Option<mpsc::Sender<Bytes>> {
        let conns = self.conns.lock().expect("conns");
        let found = conns.get(&flow.conn).or_else(|| {
            let id = self.by_remote.lock().expect("by_remote").get(&(flow.transport, flow.remote)).copied()?;
            conns.get(&id)
        });
        found.map(|c| c.tx.clone())
    }

    /// Opens a connection (plain TCP, or mutual TLS on the internal link), sends `first` on it and
    /// reads from it like an accepted one.
    async fn connect(
        self: &Arc<Self>,
        transport: Transport,
        remote: SocketAddr,
        first: Bytes,
    ) -> Result<(), SendError> {
        const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(remote))
            .await
            .map_err(|_| SendError::NoConnection(remote))??;
        let _ = stream.set_nodelay(true);
        let id = self.admit(remote.ip()).ok_or(SendError::NoConnection(remote))?;
        let (tx, rx) = mpsc::channel(256);
        tx.send(first).await.map_err(|_| SendError::NoConnection(remote))?;
        let this = self.clone();
        let handler = self.handler();
        if transport == Transport::Internal {
            let Some(connector) = self.internal.get().cloned() else {
                self.release(remote.ip());
                return Err(SendError::NoTransport(Transport::Internal));
            };
            // Peers are trusted by the deployment CA, not by name (see tls::DeploymentCa).
            let name = rustls::pki_types::ServerName::IpAddress(remote.ip().into());
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, stream)).await;
            let stream = match tls {
                Ok(Ok(s)) => s,
                _ => {
                    self.release(remote.ip());
                    return Err(SendError::NoConnection(remote));
                }
            };
            tokio::spawn(async move {
                this.run_stream(id, transport, remote, stream, handler, tx, rx, Opened::Here).await;
                this.release(remote.ip());
            });
        } else {
            tokio::spawn(async move {
                this.run_stream(id, transport, remote, stream, handler, tx, rx, Opened::Here).await;
                this.release(remote.ip());
            });
        }
        Ok(())
    }

    /// Stops accepting new messages and connections (the first step of a graceful shutdown).
    pub fn stop_accepting(&self) {
        self.closing.send_replace(true);
        if let Some(udp) = self.udp.lock().expect("udp").as_ref() {
            // Wakes the reader threads from `recvmmsg` (Linux does, though it answers ENOTCONN).
            let _ = udp.shutdown(std::net::Shutdown::Read);
        }
    }
}
