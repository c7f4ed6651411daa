//! A small SIP-over-UDP client for the loads sipp cannot time or hold: thousands of presence
//! watchers on one socket (answering every NOTIFY and timestamping it), filling a server with
//! registrations and subscriptions, and OPTIONS pings for the cold start. Each job is a list of
//! requests sent one after the other; a 401/407 is answered once with MD5 digest credentials
//! (password `<user>-password`, as the bench's users file), any 2xx moves to the next request.

use md5::{Digest, Md5};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

pub const DOMAIN: &str = "example.test";

/// One request of a job.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: &'static str,
    /// User part of the Request-URI and To (the From is the job's user).
    pub to: String,
    pub headers: String,
    pub body: String,
}

pub struct Job {
    pub user: String,
    pub reqs: Vec<Req>,
    idx: usize,
    cseq: u32,
    authed: bool,
    call_id: String,
    sent_at: Instant,
    tries: u32,
    data: Vec<u8>,
    /// When the job's first request was sent.
    pub started_at: Option<Instant>,
    /// When the request that was finally accepted (the one with credentials) was first sent.
    pub last_auth_sent: Option<Instant>,
    pub done_at: Option<Instant>,
    pub failed: Option<String>,
}

impl Job {
    pub fn new(user: impl Into<String>, reqs: Vec<Req>) -> Job {
        Job {
            user: user.into(),
            reqs,
            idx: 0,
            cseq: 1,
            authed: false,
            call_id: String::new(),
            sent_at: Instant::now(),
            tries: 0,
            data: Vec::new(),
            started_at: None,
            last_auth_sent: None,
            done_at: None,
            failed: None,
        }
    }
}

pub fn register(user: &str) -> Req {
    Req { method: "REGISTER", to: user.into(), headers: "Expires: 3600\r\n".into(), body: String::new() }
}

pub fn subscribe(presentity: &str) -> Req {
    Req {
        method: "SUBSCRIBE",
        to: presentity.into(),
        headers: "Event: presence\r\nAccept: application/pidf+xml\r\nExpires: 3600\r\n".into(),
        body: String::new(),
    }
}

pub fn message(to: &str, text: &str) -> Req {
    Req { method: "MESSAGE", to: to.into(), headers: "Content-Type: text/plain\r\n".into(), body: text.into() }
}

pub fn publish(user: &str, note: &str) -> Req {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         entity=\"sip:{user}@{DOMAIN}\"><tuple id=\"t1\"><status><basic>open</basic></status>\
         <note>{note}</note></tuple></presence>\n"
    );
    Req {
        method: "PUBLISH",
        to: user.into(),
        headers: "Event: presence\r\nExpires: 3600\r\nContent-Type: application/pidf+xml\r\n".into(),
        body,
    }
}

/// A NOTIFY the client received (and answered).
pub struct Notify {
    pub at: Instant,
    pub marked: bool,
    /// Its dialog and CSeq: the same for a retransmission.
    pub id: String,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct RunStats {
    pub done: usize,
    pub failed: usize,
    pub retransmissions: usize,
}

pub struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    local: SocketAddr,
    seq: u64,
    run_id: u64,
    /// NOTIFYs whose body contains this text are counted as `marked`.
    pub marker: Option<String>,
    pub notifies: Vec<Notify>,
    /// Dialog and CSeq of each marked NOTIFY received (a retransmission adds nothing).
    pub marked_ids: HashSet<String>,
    pub first_error: Option<String>,
}

impl Client {
    pub fn new(server: SocketAddr) -> std::io::Result<Client> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        set_buffers(&sock, 64 << 20);
        sock.set_read_timeout(Some(Duration::from_micros(500)))?;
        let local = sock.local_addr()?;
        let run_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(Client {
            sock,
            server,
            local,
            seq: 0,
            run_id,
            marker: None,
            notifies: Vec::new(),
            marked_ids: HashSet::new(),
            first_error: None,
        })
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    fn build(&mut self, job: &Job, auth: Option<(&str, String)>) -> Vec<u8> {
        self.seq += 1;
        let r = &job.reqs[job.idx];
        let ruri = if r.to.is_empty() { format!("sip:{}", self.server) } else { format!("sip:{}@{DOMAIN}", r.to) };
        let to = if r.to.is_empty() { format!("sip:{}@{DOMAIN}", job.user) } else { format!("sip:{}@{DOMAIN}", r.to) };
        let ruri = if r.method == "REGISTER" { format!("sip:{DOMAIN}") } else { ruri };
        let auth = auth.map(|(h, v)| format!("{h}: {v}\r\n")).unwrap_or_default();
        format!(
            "{m} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{run:x}x{seq};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{DOMAIN}>;tag=t{seq}\r\nTo: <{to}>\r\nCall-ID: {cid}\r\nCSeq: {cseq} {m}\r\n\
             Contact: <sip:{user}@{local}>\r\n{h}{auth}Content-Length: {len}\r\n\r\n{body}",
            m = r.method,
            local = self.local,
            run = self.run_id,
            seq = self.seq,
            user = job.user,
            cid = job.call_id,
            cseq = job.cseq,
            h = r.headers,
            len = r.body.len(),
            body = r.body,
        )
        .into_bytes()
    }

    fn start(&mut self, job: &mut Job, now: Instant) {
        self.seq += 1;
        job.call_id = format!("{:x}-{}-{}@bench", self.run_id, self.seq, job.user);
        job.authed = false;
        job.data = self.build(job, None);
        job.sent_at = now;
        job.started_at.get_or_insert(now);
        job.tries = 0;
        let _ = self.sock.send_to(&job.data, self.server);
    }

    /// Runs jobs with at most `window` in flight until all are done or `limit` passes.
    /// `jobs` is pulled lazily; finished jobs go to `finished` when given.
    pub fn run(
        &mut self,
        jobs: &mut dyn Iterator<Item = Job>,
        window: usize,
        limit: Duration,
        finished: Option<&mut Vec<Job>>,
    ) -> RunStats {
        self.run_paced(jobs, window, None, limit, finished)
    }

    /// As `run`, starting at most `rate` jobs per second (evenly paced) when given.
    pub fn run_paced(
        &mut self,
        jobs: &mut dyn Iterator<Item = Job>,
        window: usize,
        rate: Option<f64>,
        limit: Duration,
        mut finished: Option<&mut Vec<Job>>,
    ) -> RunStats {
        let t0 = Instant::now();
        let mut started = 0u64;
        let deadline = Instant::now() + limit;
        let mut stats = RunStats::default();
        let mut inflight: HashMap<String, Job> = HashMap::new();
        let mut exhausted = false;
        let mut buf = vec![0u8; 65536];
        let mut last_sweep = Instant::now();
        // When the next job may start (None: none until one finishes, or none left): the one pacing
        // rule for starting jobs and for how long to wait for datagrams.
        let next_start = |started: u64, inflight: usize, exhausted: bool| match rate {
            _ if exhausted || inflight >= window => None,
            Some(r) => Some(t0 + Duration::from_secs_f64(started as f64 / r)),
            None => Some(t0),
        };
        // Nonblocking reads, waited for with `wait_readable`: the socket's receive timeout counts
        // in scheduler ticks (4 ms here), so a paced run sent its jobs in bunches of several at
        // 1,000/s, not one a millisecond.
        let _ = self.sock.set_nonblocking(true);
        loop {
            let now = Instant::now();
            while next_start(started, inflight.len(), exhausted).is_some_and(|due| now >= due) {
                started += 1;
                match jobs.next() {
                    Some(mut j) => {
                        self.start(&mut j, now);
                        inflight.insert(j.call_id.clone(), j);
                    }
                    None => exhausted = true,
                }
            }
            if exhausted && inflight.is_empty() {
                break;
            }
            if now > deadline {
                for (_, mut j) in inflight.drain() {
                    j.failed = Some("deadline".into());
                    stats.failed += 1;
                    if let Some(f) = finished.as_deref_mut() {
                        f.push(j);
                    }
                }
                break;
            }
            // Wait for a datagram until the next job is due (at most 500 µs, for the timers), read
            // everything that is there unless a job falls due meanwhile, then look at timers.
            let due = next_start(started, inflight.len(), exhausted);
            let wait = due.map_or(Duration::from_micros(500), |d| d.saturating_duration_since(Instant::now()));
            wait_readable(&self.sock, wait.min(Duration::from_micros(500)));
            for _ in 0..4096 {
                if next_start(started, inflight.len(), exhausted).is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let n = match self.sock.recv_from(&mut buf) {
                    Ok((n, _)) => n,
                    Err(_) => break,
                };
                let Some(msg) = Msg::parse(&buf[..n]) else { continue };
                if msg.status.is_none() {
                    self.answer_request(&msg);
                    continue;
                }
                let Some(mut job) = inflight.remove(msg.header("call-id").unwrap_or_default()) else { continue };
                match self.on_response(&mut job, &msg) {
                    Outcome::Continue => {
                        inflight.insert(job.call_id.clone(), job);
                    }
                    Outcome::Finished => {
                        if job.failed.is_some() {
                            stats.failed += 1;
                            if self.first_error.is_none() {
                                self.first_error = job.failed.clone();
                            }
                        } else {
                            stats.done += 1;
                        }
                        if let Some(f) = finished.as_deref_mut() {
                            f.push(job);
                        }
                    }
                }
            }
            let now = Instant::now();
            if now.duration_since(last_sweep) >= Duration::from_millis(100) {
                last_sweep = now;
                let mut dead = Vec::new();
                for (cid, j) in inflight.iter_mut() {
                    let wait = Duration::from_millis(500u64 << j.tries.min(3));
                    if now.duration_since(j.sent_at) >= wait {
                        if j.tries >= 6 {
                            dead.push(cid.clone());
                        } else {
                            j.tries += 1;
                            j.sent_at = now;
                            stats.retransmissions += 1;
                            let _ = self.sock.send_to(&j.data, self.server);
                        }
                    }
                }
                for cid in dead {
                    let mut j = inflight.remove(&cid).expect("present");
                    j.failed = Some(format!("no answer to {}", j.reqs[j.idx].method));
                    stats.failed += 1;
                    if self.first_error.is_none() {
                        self.first_error = j.failed.clone();
                    }
                    if let Some(f) = finished.as_deref_mut() {
                        f.push(j);
                    }
                }
            }
        }
        let _ = self.sock.set_nonblocking(false);
        stats
    }

    /// Keeps answering NOTIFYs until `until` says stop or `limit` passes.
    pub fn pump(&mut self, limit: Duration, until: &mut dyn FnMut(&Client) -> bool) {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline && !until(self) {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf)
                && let Some(msg) = Msg::parse(&buf[..n])
                && msg.status.is_none()
            {
                self.answer_request(&msg);
            }
        }
    }

    fn answer_request(&mut self, msg: &Msg) {
        let at = Instant::now();
        if msg.method == "NOTIFY" {
            let marked = self.marker.as_ref().is_some_and(|m| msg.body.contains(m.as_str()));
            let id = format!("{} {}", msg.header("call-id").unwrap_or(""), msg.header("cseq").unwrap_or(""));
            if marked {
                self.marked_ids.insert(id.clone());
            }
            self.notifies.push(Notify { at, marked, id });
        }
        let mut out = String::from("SIP/2.0 200 OK\r\n");
        for (name, value) in &msg.headers {
            let canon = match name.as_str() {
                "via" | "v" => "Via",
                "from" | "f" => "From",
                "to" | "t" => "To",
                "call-id" | "i" => "Call-ID",
                "cseq" => "CSeq",
                _ => continue,
            };
            out.push_str(&format!("{canon}: {value}\r\n"));
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        let target = msg.via_target().unwrap_or(self.server);
        let _ = self.sock.send_to(out.as_bytes(), target);
    }

    fn on_response(&mut self, job: &mut Job, msg: &Msg) -> Outcome {
        // A late answer to an earlier request of this job (a retransmission's 407 arriving after
        // the authenticated request went out) is not an answer to the request in flight.
        let answers = msg.header("cseq").and_then(|v| v.split_whitespace().next()).and_then(|n| n.parse().ok());
        if answers != Some(job.cseq) {
            return Outcome::Continue;
        }
        let code = msg.status.unwrap_or(0);
        if code < 200 {
            return Outcome::Continue;
        }
        if (code == 401 || code == 407) && !job.authed {
            let header = if code == 401 { "www-authenticate" } else { "proxy-authenticate" };
            let Some(challenge) = msg.header(header) else {
                job.failed = Some(format!("{code} without {header}"));
                return Outcome::Finished;
            };
            let req = &job.reqs[job.idx];
            let uri = if req.method == "REGISTER" {
                format!("sip:{DOMAIN}")
            } else if req.to.is_empty() {
                format!("sip:{}", self.server)
            } else {
                format!("sip:{}@{DOMAIN}", req.to)
            };
            let creds = digest(challenge, &job.user, &format!("{}-password", job.user), req.method, &uri);
            let name = if code == 401 { "Authorization" } else { "Proxy-Authorization" };
            job.cseq += 1;
            job.authed = true;
            job.data = self.build(job, Some((name, creds)));
            job.sent_at = Instant::now();
            job.last_auth_sent = Some(job.sent_at);
            job.tries = 0;
            let _ = self.sock.send_to(&job.data, self.server);
            return Outcome::Continue;
        }
        if !(200..300).contains(&code) {
            job.failed = Some(format!("{} answered {code}", job.reqs[job.idx].method));
            return Outcome::Finished;
        }
        job.idx += 1;
        job.cseq += 1;
        if job.idx == job.reqs.len() {
            job.done_at = Some(Instant::now());
            return Outcome::Finished;
        }
        // The next request of the job: a new Call-ID (REGISTER then SUBSCRIBE are unrelated).
        let now = Instant::now();
        self.start(job, now);
        Outcome::Continue
    }
}

enum Outcome {
    Continue,
    Finished,
}

/// Sets SO_RCVBUF/SO_SNDBUF (up to net.core.[rw]mem_max; the bench raises those first).
pub fn set_buffers(sock: &UdpSocket, bytes: i32) {
    use std::os::fd::AsRawFd;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: a valid fd and a pointer to an int of the right size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &bytes as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
        }
    }
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

fn param<'a>(challenge: &'a str, name: &str) -> Option<&'a str> {
    challenge
        .trim_start_matches("Digest")
        .split(',')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().trim_matches('"'))
}

/// Digest credentials (MD5, qop=auth when offered) for a challenge.
pub fn digest(challenge: &str, user: &str, password: &str, method: &str, uri: &str) -> String {
    let realm = param(challenge, "realm").unwrap_or(DOMAIN);
    let nonce = param(challenge, "nonce").unwrap_or_default();
    let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let opaque = param(challenge, "opaque").map(|o| format!(", opaque=\"{o}\"")).unwrap_or_default();
    if param(challenge, "qop").is_some_and(|q| q.split(',').any(|q| q.trim() == "auth")) {
        let cnonce = format!("{:08x}", rand_u32());
        let response = md5_hex(&format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", \
             algorithm=MD5, qop=auth, nc=00000001, cnonce=\"{cnonce}\"{opaque}"
        )
    } else {
        let response = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", \
             algorithm=MD5{opaque}"
        )
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() as u32
}

/// A received message, just enough of it.
pub struct Msg {
    pub status: Option<u16>,
    pub method: String,
    /// Lower-case names, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Msg {
    pub fn parse(data: &[u8]) -> Option<Msg> {
        let text = std::str::from_utf8(data).ok()?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let mut lines = head.split("\r\n");
        let first = lines.next()?;
        let (status, method) = if let Some(rest) = first.strip_prefix("SIP/2.0 ") {
            (Some(rest.get(..3)?.parse().ok()?), String::new())
        } else {
            (None, first.split(' ').next()?.to_string())
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            if let Some((n, v)) = line.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        Some(Msg { status, method, headers, body: body.to_string() })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let compact = match name {
            "call-id" => "i",
            "via" => "v",
            "from" => "f",
            "to" => "t",
            _ => "",
        };
        self.headers.iter().find(|(n, _)| n == name || n == compact).map(|(_, v)| v.as_str())
    }

    /// Where a response to this request goes: the top Via's received/rport or sent-by.
    fn via_target(&self) -> Option<SocketAddr> {
        let via = self.header("via")?.split(',').next()?;
        let sent_by = via.split_whitespace().nth(1)?.split(';').next()?;
        let mut addr: SocketAddr =
            if sent_by.contains(':') { sent_by.parse().ok()? } else { format!("{sent_by}:5060").parse().ok()? };
        for p in via.split(';').skip(1) {
            match p.trim().split_once('=') {
                Some(("received", v)) => addr.set_ip(v.parse().ok()?),
                Some(("rport", v)) => addr.set_port(v.parse().ok()?),
                _ => {}
            }
        }
        Some(addr)
    }
}

/// Sends OPTIONS every millisecond until a final response comes back; `None` after `limit`.
pub fn wait_options(server: SocketAddr, limit: Duration) -> Option<Instant> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(1))).ok()?;
    let local = sock.local_addr().ok()?;
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 65536];
    let mut n = 0u32;
    while Instant::now() < deadline {
        n += 1;
        let req = format!(
            "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKcold{n};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:bench@{DOMAIN}>;tag=c{n}\r\nTo: <sip:{server}>\r\nCall-ID: cold-{n}@bench\r\nCSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let _ = sock.send_to(req.as_bytes(), server);
        if let Ok((len, _)) = sock.recv_from(&mut buf)
            && Msg::parse(&buf[..len]).and_then(|m| m.status).is_some_and(|s| s >= 200)
        {
            return Some(Instant::now());
        }
    }
    None
}

/// Waits until `sock` has a datagram or `timeout` passes, on a high-resolution timer (ppoll).
fn wait_readable(sock: &UdpSocket, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ts =
        libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    unsafe { libc::ppoll(&mut fd, 1, &ts, std::ptr::null()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_rfc_2617_example() {
        // RFC 2617 section 3.5, with the cnonce fixed by computing the response by hand.
        let ha1 = md5_hex("Mufasa:testrealm@host.com:Circle Of Life");
        assert_eq!(ha1, "939e7578ed9e3c518a452acee763bce9");
        let c = digest("Digest realm=\"r\", nonce=\"n\"", "u", "p", "REGISTER", "sip:d");
        let want = md5_hex(&format!("{}:n:{}", md5_hex("u:r:p"), md5_hex("REGISTER:sip:d")));
        assert!(c.contains(&want), "{c}");
    }

    #[test]
    fn parses_responses_and_via_targets() {
        let m = Msg::parse(
            b"NOTIFY sip:x SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK1;rport=6000\r\ni: abc\r\n\r\nbody",
        )
        .unwrap();
        assert_eq!(m.method, "NOTIFY");
        assert_eq!(m.header("call-id"), Some("abc"));
        assert_eq!(m.via_target(), Some("127.0.0.1:6000".parse().unwrap()));
        assert_eq!(m.body, "body");
        let r = Msg::parse(b"SIP/2.0 407 Proxy Authentication Required\r\nCall-ID: x\r\n\r\n").unwrap();
        assert_eq!(r.status, Some(407));
    }

    /// At 1,000/s, jobs start one a millisecond, not in bunches: the client used to wait for
    /// datagrams with the socket's receive timeout, which counts in scheduler ticks (4 ms here), and
    /// then started every job that had fallen due meanwhile at once.
    #[test]
    fn a_paced_run_starts_its_jobs_evenly() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let addr = server.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answering = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok((n, from)) = server.recv_from(&mut buf) else { continue };
                    let m = Msg::parse(&buf[..n]).expect("a request");
                    let ok = format!(
                        "SIP/2.0 200 OK\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
                        m.header("call-id").unwrap(),
                        m.header("cseq").unwrap()
                    );
                    server.send_to(ok.as_bytes(), from).unwrap();
                }
            })
        };
        let mut client = Client::new(addr).unwrap();
        let mut jobs = (0..300).map(|i| Job::new(format!("u{i}"), vec![message("u0", "hi")]));
        let mut done = Vec::new();
        let stats = client.run_paced(&mut jobs, 100, Some(1000.0), Duration::from_secs(30), Some(&mut done));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        answering.join().unwrap();
        assert_eq!((stats.done, stats.failed), (300, 0));
        let mut starts: Vec<Instant> = done.iter().filter_map(|j| j.started_at).collect();
        starts.sort();
        let mut gaps: Vec<f64> = starts.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0).collect();
        gaps.sort_by(f64::total_cmp);
        // The median, which a busy machine's occasional late wake-up does not move.
        let median = gaps[gaps.len() / 2];
        assert!((0.5..1.5).contains(&median), "median gap between starts {median:.3} ms, not about 1 ms");
    }
}
