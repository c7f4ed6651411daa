//! Cutting a TCP or TLS byte stream into SIP messages by Content-Length (RFC 3261 section 18.3),
//! with RFC 5626 keep-alives: a double CRLF "ping" is answered with a single CRLF "pong".

use crate::message::{Limits, header_end};
use bytes::{Buf, Bytes, BytesMut};

#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// One whole message: header section and exactly Content-Length body bytes.
    Message(Bytes),
    /// A CRLFCRLF keep-alive ping; the connection owner answers with CRLF.
    Ping,
}

/// Framing failures end the connection: the stream cannot be resynchronised.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    TooLarge {
        limit: usize,
    },
    /// The header section is complete but its length cannot be known. Carries the header bytes so
    /// the caller can still answer 400.
    BadLength {
        reason: String,
        head: Bytes,
    },
}

#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    limits: Limits,
}

impl Framer {
    pub fn new(limits: Limits) -> Framer {
        Framer { buf: BytesMut::with_capacity(4096), limits }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if self.buf.starts_with(b"\r\n\r\n") {
                self.buf.advance(4);
                return Ok(Some(Frame::Ping));
            }
            // A lone CRLF (a pong, or padding between messages) is skipped; wait to see whether a
            // CR LF is the start of a ping.
            if self.buf.starts_with(b"\r\n") && self.buf.len() >= 4 || self.buf.starts_with(b"\n") {
                let n = if self.buf.starts_with(b"\n") { 1 } else { 2 };
                self.buf.advance(n);
                continue;
            }
            if self.buf.starts_with(b"\r\n") || self.buf.as_ref() == b"\r" {
                return Ok(None);
            }
            break;
        }
        let Some(end) = header_end(&self.buf) else {
            if self.buf.len() > self.limits.max_message_bytes {
                return Err(FrameError::TooLarge { limit: self.limits.max_message_bytes });
            }
            return Ok(None);
        };
        let body = match scan_content_length(&self.buf[..end]) {
            Ok(n) => n,
            Err(reason) => {
                let head = self.buf.split_to(end).freeze();
                return Err(FrameError::BadLength { reason, head });
            }
        };
        let total = end + body;
        if total > self.limits.max_message_bytes {
            return Err(FrameError::TooLarge { limit: self.limits.max_message_bytes });
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        Ok(Some(Frame::Message(self.buf.split_to(total).freeze())))
    }
}

/// Reads Content-Length (or compact `l`) from a header section without parsing the rest.
fn scan_content_length(head: &[u8]) -> Result<usize, String> {
    let mut found: Option<usize> = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let value = std::str::from_utf8(line[colon + 1..].trim_ascii()).unwrap_or("");
            let n = value.parse::<usize>().map_err(|_| format!("bad Content-Length: {:.20}", value))?;
            if found.is_some_and(|f| f != n) {
                return Err("conflicting Content-Length headers".into());
            }
            found = Some(n);
        }
    }
    found.ok_or_else(|| "missing Content-Length on a stream transport".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: &str) -> String {
        format!("MESSAGE sip:b@x SIP/2.0\r\nl: {}\r\n\r\n{body}", body.len())
    }

    #[test]
    fn splits_by_content_length_across_reads() {
        let mut f = Framer::new(Limits::default());
        let two = format!("{}{}", msg("hello"), msg("world!"));
        let (a, b) = two.as_bytes().split_at(20);
        f.push(a);
        assert_eq!(f.next_frame(), Ok(None));
        f.push(b);
        assert_eq!(f.next_frame(), Ok(Some(Frame::Message(Bytes::from(msg("hello"))))));
        assert_eq!(f.next_frame(), Ok(Some(Frame::Message(Bytes::from(msg("world!"))))));
        assert_eq!(f.next_frame(), Ok(None));
    }

    #[test]
    fn body_that_looks_like_headers_is_not_split() {
        let mut f = Framer::new(Limits::default());
        let m = msg("SIP/2.0 200 OK\r\n\r\n");
        f.push(m.as_bytes());
        assert_eq!(f.next_frame(), Ok(Some(Frame::Message(Bytes::from(m)))));
    }

    #[test]
    fn keepalive_ping_and_pong() {
        let mut f = Framer::new(Limits::default());
        f.push(b"\r\n\r\n");
        assert_eq!(f.next_frame(), Ok(Some(Frame::Ping)));
        f.push(b"\r\n");
        assert_eq!(f.next_frame(), Ok(None));
        f.push(msg("x").as_bytes());
        assert_eq!(f.next_frame(), Ok(Some(Frame::Message(Bytes::from(msg("x"))))));
    }

    #[test]
    fn limits_and_bad_lengths_end_the_stream() {
        let mut f = Framer::new(Limits { max_message_bytes: 64, ..Limits::default() });
        f.push(&[b'A'; 100]);
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 64 }));
        let mut f = Framer::new(Limits::default());
        f.push(b"OPTIONS sip:x SIP/2.0\r\nVia: a\r\n\r\n");
        assert!(matches!(f.next_frame(), Err(FrameError::BadLength { .. })));
        let mut f = Framer::new(Limits::default());
        f.push(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: -1\r\n\r\n");
        assert!(
            matches!(f.next_frame(), Err(FrameError::BadLength { reason, .. }) if reason.contains("bad Content-Length"))
        );
        let mut f = Framer::new(Limits { max_message_bytes: 64, ..Limits::default() });
        f.push(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 1000\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 64 }));
    }
}
