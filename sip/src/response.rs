//! Building responses to requests (RFC 3261 section 8.2.6): Via, From, To, Call-ID and CSeq copied,
//! a To tag added where the request had none.

use crate::message::{Headers, Message, StartLine};
use bytes::Bytes;

pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        489 => "Bad Event",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        513 => "Message Too Large",
        _ => "Unknown",
    }
}

/// A response to a request given its headers (which may be a partial scan of a broken request).
pub fn from_headers(request: &Headers, code: u16, reason: &str, to_tag: &str) -> Message {
    // Room for the copied lines and those a handler adds (challenges, Contact, Expires, ...):
    // grown from empty, the list moved twice or three times per response.
    let mut headers = Headers::with_capacity(12);
    for v in request.get_all("Via") {
        headers.push("Via", v);
    }
    for name in ["From", "To", "Call-ID", "CSeq"] {
        if let Some(v) = request.get(name) {
            if name == "To" && code > 100 && crate::params::find_param(v, "tag").is_none() {
                headers.push(name, [v, ";tag=", to_tag].concat());
            } else {
                headers.push(name, v);
            }
        }
    }
    Message { start: StartLine::Response { code, reason: reason.to_string() }, headers, body: Bytes::new() }
}

/// A response with the standard reason phrase.
pub fn respond(request: &Message, code: u16, to_tag: &str) -> Message {
    from_headers(&request.headers, code, reason_phrase(code), to_tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Limits, parse_datagram};

    #[test]
    fn copies_dialog_headers_and_adds_a_to_tag() {
        let req = "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b\r\n\
            From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 2 OPTIONS\r\nMax-Forwards: 70\r\n\r\n";
        let m = parse_datagram(req.as_bytes(), &Limits::default()).unwrap();
        let r = respond(&m, 200, "srv");
        assert_eq!(r.status(), Some(200));
        assert_eq!(r.headers.get_all("Via").count(), 2);
        assert_eq!(r.headers.get("To"), Some("<sip:b@x>;tag=srv"));
        assert_eq!(r.cseq(), Some((2, "OPTIONS")));
        let bytes = r.to_bytes();
        assert!(bytes.starts_with(b"SIP/2.0 200 OK\r\n"));
    }
}
