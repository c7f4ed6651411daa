//! A SIP message as the server sees it: start line, headers in order with long names, body.
//!
//! Parsing normalises what real clients send and stricter parsers (rsip 0.4.0) reject: LF-only line ends,
//! folded (continuation) lines, compact header names and extension methods. Errors carry the
//! headers that could be read, so even a broken request gets a 400 naming the problem.

use crate::compact;
use bytes::Bytes;
use std::borrow::Cow;

/// Limits applied while parsing; exceeding one is a parse error, never unbounded work.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_headers: usize,
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_headers: 128, max_message_bytes: 65_535 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

/// Header lines in order. A name is a static string for the usual headers (`compact::name`, and
/// names written as literals), so most lines cost one allocation, their value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(Cow<'static, str>, String)>);

impl Headers {
    pub fn with_capacity(lines: usize) -> Headers {
        Headers(Vec::with_capacity(lines))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order (several header lines of one name).
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Inserts a header line before every other (used for a proxy's own Via).
    pub fn push_front(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) {
        self.0.insert(0, (name.into(), value.into()));
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// Replaces every value of `name` with one value.
    pub fn set(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) {
        let (name, value) = (name.into(), value.into());
        match self.0.iter().position(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            Some(i) => {
                self.0[i].1 = value;
                let mut seen = false;
                self.0.retain(|(n, _)| {
                    let keep = !n.eq_ignore_ascii_case(&name) || !seen;
                    if n.eq_ignore_ascii_case(&name) {
                        seen = true;
                    }
                    keep
                });
            }
            None => self.0.push((name, value)),
        }
    }

    /// The first value of the first line of `name` (a header line may hold a comma list).
    pub fn first_mut(&mut self, name: &str) -> Option<&mut String> {
        self.0.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Removes the first value of a (possibly comma-separated) header, e.g. the top Via.
    pub fn pop_first_value(&mut self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|(n, _)| n.eq_ignore_ascii_case(name))?;
        let parts = crate::params::split_list(&self.0[i].1);
        let first = parts.first()?.to_string();
        if parts.len() <= 1 {
            self.0.remove(i);
        } else {
            self.0[i].1 = parts[1..].join(", ");
        }
        Some(first)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_ref(), v.as_str()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    pub headers: Headers,
    pub body: Bytes,
}

/// Why a message could not be parsed, with what could be read of it (for the 400 response).
#[derive(Clone, Debug)]
pub struct ParseError {
    pub reason: String,
    /// Headers read before the error; enough to answer when Via, From, To, Call-ID, CSeq are there.
    pub scan: Headers,
    /// Whether the start line looked like a request (a broken response is dropped, not answered).
    pub is_request: bool,
}

impl Message {
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn call_id(&self) -> &str {
        self.headers.get("Call-ID").unwrap_or("")
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        let (n, m) = self.headers.get("CSeq")?.trim_ascii().split_once(char::is_whitespace)?;
        Some((n.trim_ascii().parse().ok()?, m.trim_ascii()))
    }

    /// Serialises with CRLF line ends and a Content-Length that matches the body.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = String::with_capacity(256 + self.headers.len() * 48);
        match &self.start {
            StartLine::Request { method, uri } => {
                for part in [method.as_str(), " ", uri, " SIP/2.0\r\n"] {
                    out.push_str(part);
                }
            }
            StartLine::Response { code, reason } => {
                for part in ["SIP/2.0 ", itoa::Buffer::new().format(*code), " ", reason, "\r\n"] {
                    out.push_str(part);
                }
            }
        }
        // Pieces pushed, not `write!` per line: the formatting machinery took more than half of
        // this function's instructions (callgrind, 2026-12-05).
        for (n, v) in self.headers.iter() {
            if !n.eq_ignore_ascii_case("Content-Length") {
                for part in [n, ": ", v, "\r\n"] {
                    out.push_str(part);
                }
            }
        }
        for part in ["Content-Length: ", itoa::Buffer::new().format(self.body.len()), "\r\n\r\n"] {
            out.push_str(part);
        }
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        Bytes::from(bytes)
    }
}

/// Index just past the blank line ending the header section (CRLFCRLF or LFLF), if present.
pub fn header_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find_map(|nl| match &buf[nl + 1..] {
        [b'\n', ..] => Some(nl + 2),
        [b'\r', b'\n', ..] => Some(nl + 3),
        _ => None,
    })
}

/// Byte classes for the header scan: a table lookup per byte instead of a chain of comparisons.
const CONTROL: u8 = 1;
const TOKEN: u8 = 2;
static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        if (byte < 0x20 && byte != b'\t') || byte == 0x7f {
            table[b] |= CONTROL;
        }
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~')
        {
            table[b] |= TOKEN;
        }
        b += 1;
    }
    table
};

/// Control characters other than tab have no place in a header value (RFC 3261 25.1).
fn has_control(s: &str) -> bool {
    s.bytes().any(|b| CLASS[b as usize] & CONTROL != 0)
}

/// Whether the only control characters of a header section are its line ends (LF or CR LF), as
/// in nearly every message: then no line needs a check of its own (that check was 1.4
/// instructions a byte, callgrind). The other control characters are looked for in one pass
/// without branches, which the compiler vectorises; each CR is then checked for its LF.
fn only_line_ends(head: &[u8]) -> bool {
    let others = head.iter().fold(0u8, |found, &b| {
        found | u8::from(((b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r')) | (b == 0x7f))
    });
    others == 0 && memchr::memchr_iter(b'\r', head).all(|i| head.get(i + 1) == Some(&b'\n'))
}

/// A token (RFC 3261 25.1): header names, methods, parameter names.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| CLASS[b as usize] & TOKEN != 0)
}

/// The lines of a header section: split at LF, one CR before it dropped. By `memchr` rather than
/// `str::split('\n')`, whose char searcher cost about 2,000 more instructions a message (callgrind).
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        let line = match memchr::memchr(b'\n', current.as_bytes()) {
            Some(i) => {
                rest = Some(&current[i + 1..]);
                &current[..i]
            }
            None => {
                rest = None;
                current
            }
        };
        Some(line.strip_suffix('\r').unwrap_or(line))
    })
}

/// Parses the header section (everything before the blank line) into a start line and headers.
pub fn parse_head(head: &[u8], limits: &Limits) -> Result<(StartLine, Headers), ParseError> {
    let mut scan = Headers(Vec::with_capacity(16));
    let fail = |reason: String, scan: Headers, is_request: bool| ParseError { reason, scan, is_request };
    let Ok(text) = std::str::from_utf8(head) else {
        return Err(fail("header section is not valid UTF-8".into(), scan, false));
    };
    let mut lines = lines(text);
    let start_line = lines.by_ref().find(|l| !l.is_empty()).unwrap_or("");
    let looks_like_request = !start_line.starts_with("SIP/");
    let mut error: Option<String> = None;
    let clean = only_line_ends(head);
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // Folded line: continues the previous header's value, under the same rules.
            if !clean && has_control(line) {
                error = error.or(Some("control character in a continuation line".into()));
                continue;
            }
            match scan.0.last_mut() {
                Some((_, v)) => {
                    v.push(' ');
                    v.push_str(line.trim_ascii());
                }
                None => error = error.or(Some("continuation line before any header".into())),
            }
            continue;
        }
        // A plain scan, not `memchr`: the colon ends the name, a few bytes in, sooner than
        // `memchr`'s set-up for a line (about 85 instructions a call, callgrind).
        let Some(colon) = line.bytes().position(|b| b == b':') else {
            error = error.or(Some(format!("header line without a colon: {:.40}", line)));
            continue;
        };
        let (name, value) = (line[..colon].trim_ascii_end(), &line[colon + 1..]);
        if !clean && has_control(value) {
            error = error.or(Some(format!("control character in header {:.40}", name)));
            continue;
        }
        if !is_token(name) {
            error = error.or(Some(format!("invalid header name: {:.40}", name)));
            continue;
        }
        if scan.len() >= limits.max_headers {
            return Err(fail(format!("too many headers (limit {})", limits.max_headers), scan, looks_like_request));
        }
        scan.push(compact::name(name), value.trim_ascii());
    }
    let start = match parse_start_line(start_line) {
        Ok(s) => s,
        Err(reason) => return Err(fail(reason, scan, looks_like_request)),
    };
    let is_request = matches!(start, StartLine::Request { .. });
    if let Some(reason) = error {
        return Err(fail(reason, scan, is_request));
    }
    Ok((start, scan))
}

fn parse_start_line(line: &str) -> Result<StartLine, String> {
    if line.is_empty() {
        return Err("missing start line".into());
    }
    if let Some(rest) = line.strip_prefix("SIP/") {
        let rest = rest.strip_prefix("2.0 ").ok_or("unsupported SIP version in status line")?;
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.parse().map_err(|_| format!("bad status code: {:.10}", code))?;
        if !(100..700).contains(&code) {
            return Err(format!("status code out of range: {code}"));
        }
        return Ok(StartLine::Response { code, reason: reason.to_string() });
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line".into());
    };
    if !is_token(method) {
        return Err("invalid method token".into());
    }
    if version != "SIP/2.0" {
        return Err(format!("unsupported SIP version: {:.16}", version));
    }
    if uri.is_empty() || !uri.contains(':') {
        return Err("malformed Request-URI".into());
    }
    Ok(StartLine::Request { method: method.to_string(), uri: uri.to_string() })
}

/// Content-Length as declared, or an error naming what is wrong with it.
pub fn content_length(headers: &Headers) -> Result<Option<usize>, String> {
    let mut values = headers.get_all("Content-Length");
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.any(|v| v.trim_ascii() != first.trim_ascii()) {
        return Err("conflicting Content-Length headers".into());
    }
    first.trim_ascii().parse::<usize>().map(Some).map_err(|_| format!("bad Content-Length: {:.20}", first))
}

/// Checks that a request carries what every request must (RFC 3261 section 8.1.1).
fn validate_request(method: &str, headers: &Headers) -> Result<(), String> {
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if headers.get(name).is_none_or(|v| v.is_empty()) {
            return Err(format!("missing {name} header"));
        }
    }
    let cseq = headers.get("CSeq").unwrap_or_default();
    let Some((n, m)) = cseq.trim_ascii().split_once(char::is_whitespace) else {
        return Err("malformed CSeq".into());
    };
    if n.parse::<u32>().is_err() {
        return Err("malformed CSeq number".into());
    }
    if m.trim_ascii() != method {
        return Err("CSeq method does not match the request method".into());
    }
    if headers.get("Max-Forwards").is_some_and(|mf| mf.trim_ascii().parse::<u8>().is_err()) {
        return Err("malformed Max-Forwards".into());
    }
    // The top Via itself is parsed once, where it is used (`routing::stamp_top_via`): a request
    // whose top Via does not parse is malformed there.
    let vias: usize = headers.get_all("Via").map(|v| crate::params::top_level(v, b',').count()).sum();
    if vias > MAX_VIAS {
        return Err(format!("{vias} Via values (at most {MAX_VIAS})"));
    }
    Ok(())
}

/// More Via values than hops a request may take (Max-Forwards starts at 70): a request with more
/// is refused, and its answer would otherwise echo them all (an amplifier over UDP).
pub const MAX_VIAS: usize = 70;

/// The headers an answer to a malformed request echoes: only the top Via (where the answer goes),
/// so that a request stuffed with Via values does not get them all back.
pub fn answerable(scan: &Headers) -> Headers {
    let mut out = Headers::default();
    if let Some(top) = scan.get("Via").and_then(|v| crate::params::split_list(v).first().map(|s| s.to_string())) {
        out.push("Via", top);
    }
    for (name, value) in scan.0.iter().filter(|(n, _)| !n.eq_ignore_ascii_case("Via")) {
        out.push(name.clone(), value.as_str());
    }
    out
}

/// Parses a whole message whose body is everything after the header section, as over UDP, or as
/// cut out of a stream by the framer. The body is cut to Content-Length when that is shorter.
pub fn parse_datagram(buf: &[u8], limits: &Limits) -> Result<Message, ParseError> {
    if buf.len() > limits.max_message_bytes {
        let scan = header_end(buf).and_then(|e| parse_head(&buf[..e], limits).ok()).map(|(_, h)| h);
        return Err(ParseError {
            reason: format!("message larger than {} bytes", limits.max_message_bytes),
            scan: scan.unwrap_or_default(),
            is_request: !buf.starts_with(b"SIP/"),
        });
    }
    let Some(end) = header_end(buf) else {
        let scan = parse_head(buf, limits).map(|(_, h)| h).unwrap_or_else(|e| e.scan);
        return Err(ParseError {
            reason: "truncated message: no blank line after the headers".into(),
            scan,
            is_request: !buf.starts_with(b"SIP/"),
        });
    };
    let (start, headers) = parse_head(&buf[..end], limits)?;
    let is_request = matches!(start, StartLine::Request { .. });
    let fail = |reason: String, headers: &Headers| ParseError { reason, scan: headers.clone(), is_request };
    let available = buf.len() - end;
    let body_len = match content_length(&headers) {
        Ok(Some(n)) if n > available => {
            return Err(fail(format!("Content-Length {n} exceeds the {available} body bytes received"), &headers));
        }
        Ok(Some(n)) => n,
        Ok(None) => available,
        Err(reason) => return Err(fail(reason, &headers)),
    };
    if let StartLine::Request { method, .. } = &start {
        validate_request(method, &headers).map_err(|r| fail(r, &headers))?;
    } else if headers.get("Via").is_none() || headers.get("CSeq").is_none() {
        return Err(fail("response without Via or CSeq".into(), &headers));
    }
    Ok(Message { start, headers, body: Bytes::copy_from_slice(&buf[end..end + body_len]) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = "MESSAGE sip:bob@example.test SIP/2.0\r\n\
        v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
        f: <sip:alice@example.test>;tag=a\r\n\
        t: <sip:bob@example.test>\r\n\
        i: call-1\r\n\
        CSeq: 1 MESSAGE\r\n\
        Subject: hello\r\n  world\r\n\
        c: text/plain\r\n\
        l: 5\r\n\r\nhello";

    #[test]
    fn compact_names_and_folded_lines_are_normalised() {
        let m = parse_datagram(REQ.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(m.method(), Some("MESSAGE"));
        assert_eq!(m.headers.get("Via"), Some("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1"));
        assert_eq!(m.headers.get("Subject"), Some("hello world"));
        assert_eq!(m.headers.get("Content-Type"), Some("text/plain"));
        assert_eq!(m.call_id(), "call-1");
        assert_eq!(&m.body[..], b"hello");
    }

    #[test]
    fn a_control_character_in_a_folded_line_is_refused_and_not_kept_for_the_answer() {
        // Found by the request_path fuzz target: the 400 echoed a CSeq with \x0f in it.
        let bad = REQ.replace("Subject: hello\r\n  world", "Subject: hello\r\n  wo\x0frld");
        let e = parse_datagram(bad.as_bytes(), &Limits::default()).unwrap_err();
        assert!(e.reason.contains("control character"), "{}", e.reason);
        assert!(e.scan.iter().all(|(_, v)| !has_control(v)), "{:?}", e.scan);
    }

    #[test]
    fn the_header_section_ends_at_the_first_blank_line_whatever_its_line_ends() {
        for msg in [&b"A\r\nB: c\r\n\r\nbody"[..], b"A\nB: c\n\nbody", b"A\nB: c\n\r\nbody", b"A\r\nB: c\n\nbody"] {
            assert_eq!(
                header_end(msg).map(|end| &msg[end..]),
                Some(&b"body"[..]),
                "{:?}",
                String::from_utf8_lossy(msg)
            );
        }
        assert_eq!(header_end(b"A\r\nB: c\r\n"), None);
        assert_eq!(header_end(b""), None);
    }

    /// The whole-section check agrees with the byte rule of `has_control` on every line, and a
    /// control character anywhere in a value is refused whichever way it is found.
    #[test]
    fn only_line_ends_is_the_byte_rule_without_line_ends() {
        for (head, clean) in [
            (&b""[..], true),
            (b"a: b\r\nc: d\r\n", true),
            (b"a: b\nc:\td\n", true),
            (b"a: b\rc: d\r\n", false),
            (b"a: b\r", false),
            (b"a: b\n\r", false),
            (b"a: \x01b\r\n", false),
            (b"a: b\x7f\r\n", false),
            (b"a: b\r\r\n", false),
        ] {
            assert_eq!(only_line_ends(head), clean, "{:?}", String::from_utf8_lossy(head));
        }
        for bad in ["\x01", "\x7f", "\r", "\x0b", "\x00"] {
            let e = parse_datagram(REQ.replace("call-1", &format!("call{bad}1")).as_bytes(), &Limits::default());
            assert!(e.unwrap_err().reason.contains("control character"), "{bad:?}");
        }
    }

    #[test]
    fn values_are_trimmed_of_sip_whitespace_only() {
        // RFC 3261 25.1: linear white space is spaces and tabs; a no-break space is content.
        let m = parse_datagram(REQ.replace("Subject: hello", "Subject: \t hello\u{a0}").as_bytes(), &Limits::default());
        assert_eq!(m.unwrap().headers.get("Subject"), Some("hello\u{a0} world"));
    }

    #[test]
    fn lf_only_line_ends_are_accepted() {
        let lf = REQ.replace("\r\n", "\n");
        let m = parse_datagram(lf.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(m.cseq(), Some((1, "MESSAGE")));
        assert_eq!(&m.body[..], b"hello");
    }

    #[test]
    fn extension_methods_parse_so_they_can_be_answered() {
        let svc = REQ.replace("MESSAGE sip", "SERVICE sip").replace("1 MESSAGE", "1 SERVICE");
        let m = parse_datagram(svc.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(m.method(), Some("SERVICE"));
    }

    #[test]
    fn errors_name_the_problem_and_keep_the_headers() {
        let bad = REQ.replace("l: 5", "l: 50");
        let e = parse_datagram(bad.as_bytes(), &Limits::default()).unwrap_err();
        assert!(e.reason.contains("Content-Length 50"), "{}", e.reason);
        assert_eq!(e.scan.get("Call-ID"), Some("call-1"));
        let e = parse_datagram(b"MESSAGE sip:bob@x SIP/2.0\r\nVia: SIP/2.0/UDP h", &Limits::default()).unwrap_err();
        assert!(e.reason.contains("truncated"));
        let e = parse_datagram(REQ.replace("1 MESSAGE", "1 INVITE").as_bytes(), &Limits::default()).unwrap_err();
        assert!(e.reason.contains("CSeq method"));
        let limits = Limits { max_headers: 3, ..Limits::default() };
        let e = parse_datagram(REQ.as_bytes(), &limits).unwrap_err();
        assert!(e.reason.contains("too many headers"));
    }

    #[test]
    fn serialising_recomputes_content_length() {
        let mut m = parse_datagram(REQ.as_bytes(), &Limits::default()).unwrap();
        m.body = Bytes::from_static(b"hi");
        let out = m.to_bytes();
        let again = parse_datagram(&out, &Limits::default()).unwrap();
        assert_eq!(&again.body[..], b"hi");
        assert_eq!(again.headers.get_all("Content-Length").count(), 1);
    }
}
