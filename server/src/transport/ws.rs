//! SIP over WebSocket (RFC 7118). The opening handshake (tokio-tungstenite: subprotocol `sip`
//! required, the Origin checked against `web.origins`) turns an accepted TCP or TLS connection
//! into a WebSocket; `WsBytes` then presents that as a byte stream, one WebSocket message after the
//! other, so the connection joins the same stream machinery as TCP and TLS (`stream.rs`): framer,
//! limits, timeouts, keep-alives, the flow table and flow tokens. Each message the server sends
//! (one `write` per message, as the stream writer does) leaves as one WebSocket text message.

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The WebSocket subprotocol of RFC 7118.
pub const SUBPROTOCOL: &str = "sip";

/// Which pages may open a connection: the configured origins (`*` for any), or when none are
/// configured, pages from the same host as the listener.
#[derive(Clone, Debug, Default)]
pub struct OriginPolicy {
    pub allowed: Vec<String>,
}

impl OriginPolicy {
    /// Whether a handshake with this Origin (and Host) header may proceed. No Origin: not a
    /// browser, which the check is not about.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let origin = origin.trim().trim_end_matches('/');
        if !self.allowed.is_empty() {
            return self.allowed.iter().any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin));
        }
        let Some(host) = host else { return false };
        let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
        !origin_host.is_empty() && strip_port(origin_host).eq_ignore_ascii_case(strip_port(host.trim()))
    }
}

/// `host[:port]` or `[v6]:port` without the port.
fn strip_port(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => host_port,
    }
}

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why.to_string()));
    *r.status_mut() = status;
    r
}

/// Accepts the WebSocket handshake on a connection, or refuses it (400 without subprotocol
/// `sip`, 403 for an Origin not allowed) with the reason.
pub async fn accept<S>(
    stream: S,
    policy: &OriginPolicy,
    max_message_bytes: usize,
) -> Result<WebSocketStream<S>, tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The callback's error type is tungstenite's (a whole HTTP response): not ours to shrink.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let offered = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case(SUBPROTOCOL));
        if !offered {
            return Err(refuse(StatusCode::BAD_REQUEST, "the WebSocket subprotocol \"sip\" is required (RFC 7118)"));
        }
        if !policy.allows(header("Origin"), header("Host")) {
            return Err(refuse(StatusCode::FORBIDDEN, "this Origin may not connect (web.origins)"));
        }
        resp.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL));
        Ok(resp)
    };
    // Twice the SIP limit: a message over the SIP limit still arrives whole, so the framer can
    // answer it 513 as on TCP, and nothing larger is ever buffered.
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes * 2))
        .max_frame_size(Some(max_message_bytes * 2));
    tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await
}

/// A WebSocket as a byte stream of the SIP messages it carries.
pub struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// The rest of the message being read.
    pending: Bytes,
}

impl<S> WsBytes<S> {
    pub fn new(ws: WebSocketStream<S>) -> WsBytes<S> {
        WsBytes { ws, pending: Bytes::new() }
    }
}

/// One WebSocket message as one framed SIP message: RFC 7118 does not require Content-Length
/// (the message's end is the frame's), so a message without one gets one for the stream framer.
pub fn with_length(msg: Bytes) -> Bytes {
    if msg.iter().all(|b| b.is_ascii_whitespace()) {
        return msg; // a keep-alive
    }
    let Some(end) = crate::sip::message::header_end(&msg) else { return msg };
    let has_length = msg[..end].split(|&b| b == b'\n').skip(1).any(|line| {
        let name = line.split(|&b| b == b':').next().unwrap_or_default().trim_ascii();
        line.contains(&b':') && (name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l"))
    });
    if has_length {
        return msg;
    }
    // Before the blank line that ends the header section.
    let blank = if msg[..end].ends_with(b"\r\n\r\n") { end - 2 } else { end - 1 };
    let mut out = Vec::with_capacity(msg.len() + 24);
    out.extend_from_slice(&msg[..blank]);
    out.extend_from_slice(format!("Content-Length: {}\r\n", msg.len() - end).as_bytes());
    out.extend_from_slice(&msg[blank..]);
    Bytes::from(out)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = buf.remaining().min(this.pending.len());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                // The end, or a close frame (answered by tungstenite): end of stream.
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Some(Ok(Message::Text(t))) => this.pending = with_length(Bytes::from(t)),
                Some(Ok(Message::Binary(b))) => this.pending = with_length(b),
                // Pings are answered by tungstenite; pongs and raw frames carry nothing.
                Some(Ok(_)) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    /// Sends `buf` as one message (the stream writer writes one SIP message per call).
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io::Error::other)?;
        let data = Bytes::copy_from_slice(buf);
        let msg = match Utf8Bytes::try_from(data.clone()) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Binary(data),
        };
        Pin::new(&mut this.ws).start_send(msg).map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_flush(cx).map_err(io::Error::other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_close(cx).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let same = OriginPolicy::default();
        assert!(same.allows(None, Some("127.0.0.1:5066")), "not a browser");
        assert!(same.allows(Some("http://127.0.0.1:8088"), Some("127.0.0.1:5066")));
        assert!(same.allows(Some("https://Chat.Example.test"), Some("chat.example.test:443")));
        assert!(!same.allows(Some("https://evil.example"), Some("chat.example.test")));
        assert!(!same.allows(Some("null"), Some("chat.example.test")));
        assert!(!same.allows(Some("http://x"), None));
        assert!(same.allows(Some("http://[::1]:8088"), Some("[::1]:5066")));
        let listed = OriginPolicy { allowed: vec!["https://chat.example.test".into()] };
        assert!(listed.allows(Some("https://chat.example.test/"), Some("sip.example.test")));
        assert!(!listed.allows(Some("https://sip.example.test"), Some("sip.example.test")));
        assert!(OriginPolicy { allowed: vec!["*".into()] }.allows(Some("https://any"), None));
    }

    #[test]
    fn content_length_is_added_when_missing_only() {
        let m = with_length(Bytes::from_static(b"MESSAGE sip:b@x SIP/2.0\r\nVia: x\r\n\r\nhello"));
        assert_eq!(&m[..], b"MESSAGE sip:b@x SIP/2.0\r\nVia: x\r\nContent-Length: 5\r\n\r\nhello");
        let m = Bytes::from_static(b"OPTIONS sip:b@x SIP/2.0\r\nl: 0\r\n\r\n");
        assert_eq!(with_length(m.clone()), m);
        let partial = Bytes::from_static(b"OPTIONS sip:b@x SIP/2.0\r\nVia: x");
        assert_eq!(with_length(partial.clone()), partial);
        assert_eq!(with_length(Bytes::from_static(b"\r\n\r\n")), Bytes::from_static(b"\r\n\r\n"));
    }
}
