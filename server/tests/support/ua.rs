//! A minimal SIP user agent for tests, over a real UDP socket: registers with MD5 digest,
//! sends requests, receives and answers them. Deliberately independent of the server's code.

use md5::{Digest, Md5};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

pub struct Ua {
    pub socket: UdpSocket,
    pub user: String,
    /// The user's SIP domain (`example.test` unless `in_domain` says otherwise).
    pub domain: String,
    pub server: SocketAddr,
    /// The password `send_authenticated` answers challenges with (`<user>-password`).
    pub password: String,
    cseq: u32,
    call_id: String,
    /// The last request sent by `send_authenticated` (to replay it).
    pub last_request: String,
    /// Whether `send_authenticated` retransmits unanswered requests, as a real client does over
    /// UDP (timer E: 500 ms, doubling to 4 s).
    retransmit: bool,
    /// Whether requests leave out Contact (a REGISTER then asks for the bindings).
    no_contact: bool,
    /// Whether NOTIFYs that arrive while waiting for something else are answered 200 (as a
    /// client with subscriptions does), rather than dropped unanswered.
    answer_notifies: bool,
    /// How long `send_authenticated` waits for the answer to the first request and to the one
    /// with credentials.
    patience: (Duration, Duration),
}

/// A header's value in a raw message (first occurrence, case-insensitive, long names only).
pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The body of a raw message.
pub fn body(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

pub fn status(msg: &str) -> u16 {
    msg.strip_prefix("SIP/2.0 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn param<'a>(challenge: &'a str, name: &str) -> &'a str {
    let key = format!("{name}=\"");
    challenge.split(&key).nth(1).and_then(|r| r.split('"').next()).unwrap_or("")
}

fn md5(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

impl Ua {
    pub fn new(user: &str, server: SocketAddr) -> Ua {
        Self::bound(user, server, "127.0.0.1")
    }

    /// A user agent on another local address (any of 127.0.0.0/8), e.g. a second machine.
    pub fn bound(user: &str, server: SocketAddr, ip: &str) -> Ua {
        let socket = UdpSocket::bind((ip, 0)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Ua {
            socket,
            user: user.into(),
            domain: "example.test".into(),
            server,
            password: format!("{user}-password"),
            cseq: 0,
            call_id: format!("{user}-{}", std::process::id()),
            last_request: String::new(),
            retransmit: false,
            no_contact: false,
            answer_notifies: false,
            patience: (Duration::from_secs(5), Duration::from_secs(40)),
        }
    }

    /// The same user agent, answering 200 to every NOTIFY it meets while waiting for something else.
    pub fn answering_notifies(mut self) -> Ua {
        self.answer_notifies = true;
        self
    }

    /// The same user agent, giving up on a request unanswered for `wait` (a client's
    /// transaction timeout; by default 5 s for a first request, 40 s once authenticated).
    pub fn giving_up_after(mut self, wait: Duration) -> Ua {
        self.patience = (wait, wait);
        self
    }

    /// The Call-ID of the current dialog (see `new_call`).
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The same user agent, retransmitting what `send_authenticated` sends until it is answered.
    pub fn retransmitting(mut self) -> Ua {
        self.retransmit = true;
        self
    }

    /// The final response to `req` (just sent), resending it on timer E when `retransmit` is set.
    /// Responses to other requests are skipped: a second copy of an earlier answer (one for the
    /// request, one for its retransmission) must not pass for this one's.
    fn await_response(&self, req: &str, timeout: Duration) -> Option<String> {
        let cseq = header(req, "CSeq").unwrap_or_default().to_string();
        let deadline = std::time::Instant::now() + timeout;
        let mut interval = if self.retransmit { Duration::from_millis(500) } else { timeout };
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let resend = std::time::Instant::now() + interval.min(left);
            while let Some(wait) = resend.checked_duration_since(std::time::Instant::now()) {
                match self.recv_response(wait) {
                    Some(r) if status(&r) >= 200 && header(&r, "CSeq") == Some(cseq.as_str()) => return Some(r),
                    Some(_) => {}
                    None => break,
                }
            }
            if self.retransmit {
                self.send_raw(req.as_bytes());
                interval = (interval * 2).min(Duration::from_secs(4));
            }
        }
    }

    /// The same user agent for a user of another SIP domain.
    pub fn in_domain(mut self, domain: &str) -> Ua {
        self.domain = domain.into();
        self
    }

    pub fn local(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    pub fn send_raw(&self, data: &[u8]) {
        self.socket.send_to(data, self.server).unwrap();
    }

    /// Next datagram as text, or None after the timeout.
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        self.recv_from(timeout).map(|(m, _)| m)
    }

    /// Next datagram as text and the address it came from, or None after the timeout.
    pub fn recv_from(&self, timeout: Duration) -> Option<(String, SocketAddr)> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = vec![0u8; 65_535];
        let (n, from) = self.socket.recv_from(&mut buf).ok()?;
        Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    }

    /// Next response (skipping requests), or None.
    pub fn recv_response(&self, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let m = self.recv(left)?;
            if m.starts_with("SIP/2.0 ") {
                return Some(m);
            }
            self.skipped(&m);
        }
        None
    }

    /// A request met while waiting for something else: a NOTIFY is answered if so asked.
    fn skipped(&self, m: &str) {
        if self.answer_notifies && m.starts_with("NOTIFY ") {
            self.answer(m, 200);
        }
    }

    fn request(&mut self, method: &str, uri: &str, to: &str, extra: &str, body: &str) -> String {
        self.cseq += 1;
        // A To that carries its own brackets (and tag) is used as it is.
        let to = if to.starts_with('<') { to.to_string() } else { format!("<{to}>") };
        let local = self.local();
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{}{};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={user}tag\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n\
             {contact}{extra}Content-Length: {len}\r\n\r\n{body}",
            self.call_id,
            self.cseq,
            user = self.user,
            domain = self.domain,
            cid = self.call_id,
            cseq = self.cseq,
            contact = if self.no_contact { String::new() } else { format!("Contact: <sip:{}@{local}>\r\n", self.user) },
            len = body.len()
        )
    }

    /// Sends a request, answers one digest challenge, returns the final response.
    pub fn send_authenticated(&mut self, method: &str, uri: &str, to: &str, extra: &str, body: &str) -> String {
        self.try_send_authenticated(method, uri, to, extra, body).expect("response")
    }

    /// `send_authenticated`, or None when an answer does not come.
    pub fn try_send_authenticated(
        &mut self,
        method: &str,
        uri: &str,
        to: &str,
        extra: &str,
        body: &str,
    ) -> Option<String> {
        let req = self.request(method, uri, to, extra, body);
        self.send_raw(req.as_bytes());
        let first = self.await_response(&req, self.patience.0)?;
        self.last_request = req;
        let (challenge_header, auth_header) = match status(&first) {
            401 => ("WWW-Authenticate", "Authorization"),
            407 => ("Proxy-Authenticate", "Proxy-Authorization"),
            _ => return Some(first),
        };
        let challenge = header(&first, challenge_header).expect("challenge");
        assert!(challenge.contains("algorithm=MD5"), "first challenge is MD5: {challenge}");
        let (realm, nonce) = (param(challenge, "realm"), param(challenge, "nonce"));
        let ha1 = md5(&format!("{}:{realm}:{}", self.user, self.password));
        let ha2 = md5(&format!("{method}:{uri}"));
        let response = md5(&format!("{ha1}:{nonce}:00000001:abcdef:auth:{ha2}"));
        let creds = format!(
            "{auth_header}: Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"abcdef\"\r\n",
            self.user
        );
        let req = self.request(method, uri, to, &format!("{extra}{creds}"), body);
        self.send_raw(req.as_bytes());
        let last = self.await_response(&req, self.patience.1);
        self.last_request = req;
        last
    }

    /// A REGISTER without Contact: the answer lists the user's bindings.
    pub fn query_bindings(&mut self) -> Option<String> {
        self.no_contact = true;
        let (to, uri) = (format!("sip:{}@{}", self.user, self.domain), format!("sip:{}", self.domain));
        let answer = self.try_send_authenticated("REGISTER", &uri, &to, "", "");
        self.no_contact = false;
        answer
    }

    pub fn register(&mut self, expires: u32) -> String {
        let to = format!("sip:{}@{}", self.user, self.domain);
        let uri = format!("sip:{}", self.domain);
        self.send_authenticated("REGISTER", &uri, &to, &format!("Expires: {expires}\r\n"), "")
    }

    /// Answers a received request with `code`, copying the dialog headers.
    pub fn answer(&self, request: &str, code: u16) {
        let mut out = format!("SIP/2.0 {code} OK\r\n");
        for line in request.lines() {
            let name = line.split(':').next().unwrap_or("").trim();
            if ["Via", "From", "Call-ID", "CSeq"].iter().any(|h| h.eq_ignore_ascii_case(name)) {
                out.push_str(line.trim_end());
                out.push_str("\r\n");
            } else if name.eq_ignore_ascii_case("To") {
                let has_tag = line.contains(";tag=");
                out.push_str(&format!("{}{}\r\n", line.trim_end(), if has_tag { "" } else { ";tag=uas" }));
            }
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        self.send_raw(out.as_bytes());
    }

    /// Publishes `pidf` as this user (refreshing the publication `if_match`, if any), expects 200
    /// and returns the new SIP-ETag.
    pub fn publish(&mut self, pidf: &str, if_match: Option<&str>, expires: u32) -> String {
        let uri = format!("sip:{}@{}", self.user, self.domain);
        let m = if_match.map(|e| format!("SIP-If-Match: {e}\r\n")).unwrap_or_default();
        let extra = format!("Event: presence\r\nExpires: {expires}\r\n{m}Content-Type: application/pidf+xml\r\n");
        let r = self.send_authenticated("PUBLISH", &uri, &uri, &extra, pidf);
        assert_eq!(status(&r), 200, "PUBLISH: {r}");
        header(&r, "SIP-ETag").expect("SIP-ETag").to_string()
    }

    /// Starts a new Call-ID (a new dialog for the next requests).
    pub fn new_call(&mut self, name: &str) {
        self.call_id = format!("{}-{name}-{}", self.user, std::process::id());
    }

    /// Receives a NOTIFY, answers 200, returns it.
    pub fn expect_notify(&self, timeout: Duration) -> String {
        let n = self.recv_request("NOTIFY", timeout).unwrap_or_else(|| panic!("{}: no NOTIFY", self.user));
        self.answer(&n, 200);
        n
    }

    /// Waits for a request of `method`, skipping anything else.
    pub fn recv_request(&self, method: &str, timeout: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let m = self.recv(left)?;
            if m.starts_with(&format!("{method} ")) {
                return Some(m);
            }
            self.skipped(&m);
        }
        None
    }
}
