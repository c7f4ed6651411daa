//! One TCP or TLS connection: a reader that frames messages by Content-Length and answers
//! keep-alive pings, and a writer fed by a channel so any task can send along the connection.

use super::{Flow, Handler, Transport, Transports, closed};
use crate::sip::framing::{Frame, FrameError, Framer};
use crate::sip::message::parse_head;
use crate::sip::response;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Which end opened a connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Opened {
    ByPeer,
    Here,
}

impl Transports {
    pub(super) async fn serve_stream<S>(
        self: &Arc<Self>,
        id: u64,
        transport: Transport,
        remote: SocketAddr,
        stream: S,
        handler: Arc<dyn Handler>,
    ) where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(256);
        self.run_stream(id, transport, remote, stream, handler, tx, rx, Opened::ByPeer).await;
    }

    /// Waits until the sender may send another message (reading nothing meanwhile).
    async fn admit_stream(&self, transport: Transport, remote: SocketAddr) {
        let Some(a) = self.admission.as_ref().filter(|_| transport != Transport::Internal) else { return };
        while let Err(wait) = a.admit(remote.ip(), std::time::Instant::now()) {
            self.metrics.overload_delayed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_stream<S>(
        self: &Arc<Self>,
        id: u64,
        transport: Transport,
        remote: SocketAddr,
        stream: S,
        handler: Arc<dyn Handler>,
        tx: mpsc::Sender<Bytes>,
        mut rx: mpsc::Receiver<Bytes>,
        opened: Opened,
    ) where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        self.register_conn(id, transport, remote, tx.clone());
        let writer_task = tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                // Flushed each time: a WebSocket sends a message only when flushed (on TCP and
                // TLS the bytes are on their way already and this costs nothing).
                if writer.write_all(&data).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
            }
            let _ = writer.shutdown().await;
        });
        let flow = Flow { transport, remote, conn: id };
        let mut framer = Framer::new(self.limits.message);
        let mut buf = vec![0u8; 16 * 1024];
        let mut closing = self.closing.subscribe();
        // After an answer to a request that cannot be read (513), what the peer still sends is
        // read and dropped for a moment before closing: closing with unread data would reset the
        // connection and could destroy the answer before the peer reads it.
        let mut drain = false;
        // Until the first message on a connection it opened, and while a message is incomplete,
        // the peer has the (short) message timeout; otherwise the idle timeout. A peer this server
        // connected to owes it nothing: its answers may come on a connection of its own.
        let mut unfinished_since = (opened == Opened::ByPeer).then(tokio::time::Instant::now);
        'read: loop {
            let deadline = match unfinished_since {
                Some(t) => t + self.limits.message_timeout,
                None => tokio::time::Instant::now() + self.limits.idle_timeout,
            };
            let n = tokio::select! {
                r = tokio::time::timeout_at(deadline, reader.read(&mut buf)) => match r {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => n,
                    Err(_) => {
                        let why = if unfinished_since.is_some() { "message not completed in time" } else { "idle" };
                        tracing::debug!(%remote, why, "closing connection");
                        break;
                    }
                },
                _ = closed(&mut closing) => break,
            };
            framer.push(&buf[..n]);
            loop {
                match framer.next_frame() {
                    Ok(None) => break,
                    Ok(Some(Frame::Ping)) => {
                        let _ = tx.send(Bytes::from_static(b"\r\n")).await;
                    }
                    Ok(Some(Frame::Message(data))) => {
                        unfinished_since = None;
                        self.admit_stream(transport, remote).await;
                        handler.on_message(flow, data)
                    }
                    Err(FrameError::TooLarge { limit, head }) => {
                        // 513 when the head is there to answer (RFC 3261 21.5.14), then close: the
                        // rest of the stream cannot be framed.
                        tracing::debug!(%remote, limit, "message too large: closing connection");
                        self.metrics.malformed_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if let Some(head) = head {
                            let reason = format!("Message Larger Than {limit} Bytes");
                            drain = self.answer_head(&tx, &head, 513, &reason).await;
                        }
                        break 'read;
                    }
                    Err(FrameError::BadLength { reason, head }) => {
                        // Answer 400 if the head identifies a request, then give up on the stream.
                        self.metrics.malformed_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        drain = self.answer_head(&tx, &head, 400, &reason).await;
                        break 'read;
                    }
                }
            }
            if framer.has_partial() && unfinished_since.is_none() {
                unfinished_since = Some(tokio::time::Instant::now());
            }
        }
        self.unregister_conn(id);
        drop(tx);
        let _ = writer_task.await;
        if drain {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, reader.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
            }
        }
    }

    /// Answers the request a header section starts, if it is one with a Via; says whether it did.
    async fn answer_head(&self, tx: &mpsc::Sender<Bytes>, head: &[u8], code: u16, reason: &str) -> bool {
        let scan = match parse_head(head, &self.limits.message) {
            Ok((start, h)) => matches!(start, crate::sip::StartLine::Request { .. }).then_some(h),
            Err(e) => e.is_request.then_some(e.scan),
        };
        let Some(h) = scan.filter(|h| h.get("Via").is_some()) else { return false };
        let r = response::from_headers(&h, code, reason, "parley");
        tx.send(r.to_bytes()).await.is_ok()
    }
}
