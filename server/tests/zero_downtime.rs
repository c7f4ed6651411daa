//! Zero-downtime operations with real processes on 127.0.0.1: the steps of a SIGTERM (not ready,
//! then refusing new work with 503 + Retry-After, then closing connections, bounded), a rolling
//! restart of two Front-Ends and three Home Servers under load from clients with two outbound
//! proxies (no failed transaction, no acknowledged write lost), a Home Server killed with 10,000
//! registered users coming back under its request-rate limit, and the cold start of a store with
//! 100,000 bindings. The figures are printed on lines starting `zero-downtime:` (BENCHMARKS.md
//! quotes them).

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::cluster::{Ca, Node, users_file};
use support::ua::{Ua, header, status};
use support::{DOMAIN, Server, try_http};

/// Waits for `condition` until `within` has passed; panics with `what` if it never holds.
fn wait_for(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn md5(s: &str) -> String {
    hex::encode(<md5::Md5 as md5::Digest>::digest(s.as_bytes()))
}

fn param<'a>(challenge: &'a str, name: &str) -> &'a str {
    let key = format!("{name}=\"");
    challenge.split(&key).nth(1).and_then(|r| r.split('"').next()).unwrap_or("")
}

fn retry_after(r: &str) -> Option<u64> {
    header(r, "Retry-After").and_then(|v| v.trim().parse().ok())
}

#[test]
fn sigterm_turns_not_ready_then_refuses_new_work_then_closes_connections_within_the_bound() {
    let mut server = Server::start_with("[limits]\nshutdown_grace_secs = 6\nshutdown_timeout_secs = 14\n");
    let mut alice = Ua::new("alice", server.sip);
    let r = alice.register(300);
    assert_eq!(status(&r), 200, "{r}");
    // The expiry granted is spread: between 80% and 100% of what was asked.
    let granted: u32 = header(&r, "Contact")
        .and_then(|c| c.split("expires=").nth(1))
        .and_then(|e| e.split(';').next())
        .and_then(|e| e.trim().parse().ok())
        .unwrap_or_else(|| panic!("granted expiry in {r}"));
    assert!((240..=300).contains(&granted), "{granted}: {r}");
    // A client holding a connection (as an RFC 5626 client does).
    let mut held = TcpStream::connect(server.sip).unwrap();
    held.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    held.read_exact(&mut pong).unwrap();

    let sigterm = Instant::now();
    assert!(std::process::Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap().success());
    // 1. Not ready: /readyz and OPTIONS say 503 (with Retry-After), other requests are served.
    wait_for(Duration::from_secs(3), "/readyz 503", || server.http_get("/readyz").is_some_and(|(c, _)| c == 503));
    let probe = Ua::new("probe", server.sip);
    probe.send_raw(
        format!(
            "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKlb1;rport\r\nMax-Forwards: 70\r\n\
             From: <sip:lb@{DOMAIN}>;tag=1\r\nTo: <sip:{sip}>\r\nCall-ID: lb-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            sip = server.sip,
            local = probe.local()
        )
        .as_bytes(),
    );
    let answer = probe.recv_response(Duration::from_secs(5)).expect("OPTIONS answered");
    assert_eq!(status(&answer), 503, "{answer}");
    assert!(retry_after(&answer).is_some_and(|s| (1..=5).contains(&s)), "{answer}");
    let mut bob = Ua::new("bob", server.sip);
    let r = bob.register(300);
    assert_eq!(status(&r), 200, "a registration during the grace is served: {r}");
    assert!(sigterm.elapsed() < Duration::from_secs(6), "checked within the grace (busy machine?)");

    // 2. Refusing: a new registration gets 503 with Retry-After.
    let mut carol = Ua::new("carol", server.sip);
    let mut refused = None;
    wait_for(Duration::from_secs(14), "REGISTER refused", || {
        let r = carol.register(300);
        match status(&r) {
            503 => {
                refused = Some(r);
                true
            }
            200 => false,
            _ => panic!("neither served nor refused: {r}"),
        }
    });
    let refused = refused.unwrap();
    assert!(refused.contains(" Shutting Down"), "{refused}");
    assert!(retry_after(&refused).is_some_and(|s| (1..=5).contains(&s)), "{refused}");
    assert!(sigterm.elapsed() >= Duration::from_secs(6), "not before the grace ended");

    // 3. The held connection is closed by the server, and the process exits 0 within the bound.
    held.set_read_timeout(Some(Duration::from_secs(14))).unwrap();
    let mut rest = Vec::new();
    match held.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert!(
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "the server did not close the connection: {e}"
        ),
    }
    wait_for(Duration::from_secs(14), "exit after SIGTERM", || !server.is_running());
    let took = sigterm.elapsed();
    assert!(took < Duration::from_secs(14), "within shutdown_timeout_secs: {took:?}");
    let log = server.log_text();
    for step in ["shutting down: not ready", "new requests get 503", "closing connections", "stopped"] {
        assert!(log.contains(step), "log has {step:?}:\n{log}");
    }
    println!("zero-downtime: standalone shutdown with grace 6 s took {} ms", took.as_millis());

    // What was acknowledged is there after a restart on the same data.
    server.start_again();
    for ua in [&mut alice, &mut bob] {
        let r = ua.query_bindings().expect("bindings");
        assert!(r.contains(&format!("<sip:{}@{}>", ua.user, ua.local())), "{}: {r}", ua.user);
    }
    // (carol's registrations during the grace were served too: 2 or 3 bindings.)
    assert!(server.metric("parley_registrations") >= 2.0);
}

/// An OPTIONS without a user (a load balancer's health probe) to `to`: the answer.
fn probe_options(to: SocketAddr) -> String {
    let probe = Ua::new("probe", to);
    probe.send_raw(
        format!(
            "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKlb{n};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:lb@{DOMAIN}>;tag=1\r\nTo: <sip:{to}>\r\nCall-ID: lb-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            local = probe.local(),
            n = rand_suffix(),
        )
        .as_bytes(),
    );
    probe.recv_response(Duration::from_secs(5)).expect("OPTIONS answered")
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

#[test]
fn a_front_end_stops_sending_to_a_home_server_shutting_down_and_refuses_new_work_when_it_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "deployment-ca");
    let users = users_file(dir.path(), &[("alice", "home-1")]);
    let directory = format!("[directory]\nbackend = \"file\"\nfile = {users:?}\n");
    let limits = "[limits]\nshutdown_grace_secs = 4\nshutdown_timeout_secs = 12\n";
    let mut home = Node::start_with(dir.path(), "home-1", &ca, &directory, None, "", limits);
    let table = vec![(home.name.clone(), home.internal)];
    let mut fe = Node::start_with(dir.path(), "fe-1", &ca, &directory, Some(&table), "", limits);
    let mut alice = Ua::new("alice", fe.sip);
    assert_eq!(status(&alice.register(300)), 200);

    // The Home Server's grace: its probe answers 503, so the Front-End answers its users' new
    // requests itself (503 + Retry-After) while it still runs.
    home.signal("TERM");
    wait_for(Duration::from_secs(4), "the Front-End refuses alice's requests", || {
        let r = alice.register(300);
        status(&r) == 503 && r.contains("Home Server Unavailable") && retry_after(&r).is_some()
    });
    assert!(support::http_get(home.ops, "/readyz").is_some_and(|(c, _)| c == 503), "home-1 still runs, not ready");
    let (exit, _) = home.wait_exit(Duration::from_secs(14));
    assert!(exit.success(), "{}", home.log_text());
    home.start_again();
    wait_for(Duration::from_secs(10), "alice served again", || status(&alice.register(300)) == 200);

    // The Front-End's own shutdown: not ready (probe 503), then new requests 503 Shutting Down.
    let sigterm = Instant::now();
    fe.signal("TERM");
    wait_for(Duration::from_secs(3), "Front-End /readyz 503", || {
        support::http_get(fe.ops, "/readyz").is_some_and(|(c, _)| c == 503)
    });
    let answer = probe_options(fe.sip);
    assert_eq!(status(&answer), 503, "{answer}");
    assert!(retry_after(&answer).is_some(), "{answer}");
    let r = alice.register(300);
    assert_eq!(status(&r), 200, "served during the grace: {r}");
    assert!(sigterm.elapsed() < Duration::from_secs(4), "checked within the grace (busy machine?)");
    let mut refused = String::new();
    wait_for(Duration::from_secs(12), "REGISTER refused by the Front-End", || {
        refused = alice.register(300);
        status(&refused) == 503
    });
    assert!(refused.contains("Shutting Down") && retry_after(&refused).is_some(), "{refused}");
    let (exit, took) = fe.wait_exit(Duration::from_secs(14));
    assert!(exit.success() && sigterm.elapsed() < Duration::from_secs(12), "{took:?}; {}", fe.log_text());
}

// ---- a SIP client over TCP with two outbound proxies ----

#[derive(Default, Debug)]
struct Tally {
    /// Transactions by method that ended 2xx.
    ok: HashMap<&'static str, u64>,
    /// Transactions that ended otherwise (any final answer but 2xx, or nothing): must stay 0.
    failed: Vec<String>,
    /// 503s with Retry-After met (each then retried, at the other proxy at once or here later).
    retried_503: u64,
    /// Requests sent again at the other proxy because the connection closed before an answer.
    resent_after_close: u64,
    /// Connections the proxy closed (the client then registers again through the other one).
    closes_seen: u64,
    /// MESSAGEs received (each client messages itself, through its Home Server and proxy).
    received: u64,
}

enum Failure {
    /// The connection closed (or could not be opened) before the answer came.
    Closed,
    /// No answer in time.
    Timeout,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(to: SocketAddr) -> Option<Conn> {
        let stream = TcpStream::connect_timeout(&to, Duration::from_secs(1)).ok()?;
        stream.set_nodelay(true).ok()?;
        Some(Conn { stream, buf: Vec::new() })
    }

    /// The next message, or `Ok(None)` at `deadline`.
    fn next(&mut self, deadline: Instant) -> Result<Option<String>, Failure> {
        loop {
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end + 4]).into_owned();
                let len: usize = header(&head, "Content-Length").and_then(|l| l.parse().ok()).unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let msg: Vec<u8> = self.buf.drain(..end + 4 + len).collect();
                    return Ok(Some(String::from_utf8_lossy(&msg).into_owned()));
                }
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return Ok(None) };
            self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).map_err(|_| Failure::Closed)?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(Failure::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Ok(None);
                }
                Err(_) => return Err(Failure::Closed),
            }
        }
    }
}

/// A user's client: every request goes to its current proxy over one TCP connection; when that
/// connection closes, or the proxy answers 503 with Retry-After, the next request goes to the
/// other proxy (RFC 3263 failover), after registering again through it so that requests for
/// the user come over the new connection (as an RFC 5626 client re-creates its flow).
struct Client {
    user: String,
    proxies: [SocketAddr; 2],
    current: usize,
    conn: Option<Conn>,
    cseq: u32,
    call_id: String,
    tally: Arc<Mutex<Tally>>,
}

impl Client {
    fn new(user: &str, proxies: [SocketAddr; 2], first: usize, tally: Arc<Mutex<Tally>>) -> Client {
        Client {
            user: user.into(),
            proxies,
            current: first,
            conn: None,
            cseq: 0,
            call_id: format!("{user}-zdt-{}", std::process::id()),
            tally,
        }
    }

    fn aor(&self) -> String {
        format!("sip:{}@{DOMAIN}", self.user)
    }

    /// The contact: stable across connections, so a registration through the other proxy
    /// replaces the binding (and its Path) rather than adding one.
    fn contact(&self) -> String {
        format!("<sip:{}@client.invalid;transport=tcp;ob>", self.user)
    }

    fn switch(&mut self) {
        self.conn = None;
        self.current = 1 - self.current;
    }

    fn request(&mut self, method: &str, uri: &str, to: &str, extra: &str, body: &str) -> String {
        self.cseq += 1;
        let local = self.conn.as_ref().and_then(|c| c.stream.local_addr().ok()).expect("connected");
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK{cid}{cseq}\r\nMax-Forwards: 70\r\n\
             From: <{aor}>;tag={user}t\r\nTo: <{to}>\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n\
             Contact: {contact}\r\n{extra}Content-Length: {len}\r\n\r\n{body}",
            cid = self.call_id,
            cseq = self.cseq,
            aor = self.aor(),
            user = self.user,
            contact = self.contact(),
            len = body.len()
        )
    }

    /// Answers a request that came in (a MESSAGE to this user) with 200.
    fn answer(&mut self, req: &str) {
        let mut out = String::from("SIP/2.0 200 OK\r\n");
        for line in req.split("\r\n") {
            let name = line.split(':').next().unwrap_or("").trim();
            if ["Via", "From", "Call-ID", "CSeq"].iter().any(|h| h.eq_ignore_ascii_case(name)) {
                out.push_str(line);
                out.push_str("\r\n");
            } else if name.eq_ignore_ascii_case("To") {
                out.push_str(line);
                out.push_str(if line.contains(";tag=") { "\r\n" } else { ";tag=uas\r\n" });
            }
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        if let Some(c) = self.conn.as_mut() {
            let _ = c.stream.write_all(out.as_bytes());
        }
        if req.starts_with("MESSAGE ") {
            self.tally.lock().unwrap().received += 1;
        }
    }

    /// Sends `req` and returns its final answer, answering requests that come in meanwhile.
    fn exchange(&mut self, req: &str) -> Result<String, Failure> {
        let cseq = header(req, "CSeq").unwrap_or_default().to_string();
        let conn = self.conn.as_mut().ok_or(Failure::Closed)?;
        conn.stream.write_all(req.as_bytes()).map_err(|_| Failure::Closed)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let Some(m) = self.conn.as_mut().ok_or(Failure::Closed)?.next(deadline)? else {
                return Err(Failure::Timeout);
            };
            if m.starts_with("SIP/2.0 ") {
                if status(&m) >= 200 && header(&m, "CSeq") == Some(cseq.as_str()) {
                    return Ok(m);
                }
            } else {
                self.answer(&m);
            }
        }
    }

    /// One attempt: the request, and again with credentials when challenged.
    fn attempt(&mut self, method: &str, uri: &str, to: &str, extra: &str, body: &str) -> Result<String, Failure> {
        let req = self.request(method, uri, to, extra, body);
        let first = self.exchange(&req)?;
        let (challenge, auth) = match status(&first) {
            401 => ("WWW-Authenticate", "Authorization"),
            407 => ("Proxy-Authenticate", "Proxy-Authorization"),
            _ => return Ok(first),
        };
        let c = header(&first, challenge).unwrap_or_default().to_string();
        let (realm, nonce) = (param(&c, "realm"), param(&c, "nonce"));
        let ha1 = md5(&format!("{}:{realm}:{}-password", self.user, self.user));
        let ha2 = md5(&format!("{method}:{uri}"));
        let response = md5(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
        let creds = format!(
            "{auth}: Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\"\r\n",
            self.user
        );
        let req = self.request(method, uri, to, &format!("{extra}{creds}"), body);
        self.exchange(&req)
    }

    /// A transaction as a client with two outbound proxies runs it: `None` when it failed.
    fn transact(&mut self, method: &'static str, uri: &str, to: &str, extra: &str, body: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut tried_other = false;
        while Instant::now() < deadline {
            if self.conn.is_none() {
                let Some(conn) = Conn::open(self.proxies[self.current]) else {
                    // Refused: that proxy is down; the other one, then (after a pause) again.
                    self.switch();
                    if tried_other {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    tried_other = !tried_other;
                    continue;
                };
                self.conn = Some(conn);
                if method != "REGISTER" && !self.register() {
                    return self.failed(method, "no registration through the new connection".into());
                }
            }
            match self.attempt(method, uri, to, extra, body) {
                Ok(r) if status(&r) == 503 && retry_after(&r).is_some() => {
                    self.tally.lock().unwrap().retried_503 += 1;
                    if !tried_other {
                        tried_other = true;
                        self.switch();
                    } else {
                        tried_other = false;
                        std::thread::sleep(Duration::from_secs(retry_after(&r).unwrap().min(10)));
                    }
                }
                Ok(r) if (200..300).contains(&status(&r)) => {
                    *self.tally.lock().unwrap().ok.entry(method).or_default() += 1;
                    return Some(r);
                }
                Ok(r) => return self.failed(method, r),
                Err(Failure::Closed) => {
                    self.tally.lock().unwrap().resent_after_close += 1;
                    self.switch();
                }
                Err(Failure::Timeout) => return self.failed(method, "no answer in 10 s".into()),
            }
        }
        self.failed(method, "gave up after 40 s".into())
    }

    fn failed(&mut self, method: &str, why: String) -> Option<String> {
        self.tally.lock().unwrap().failed.push(format!("{} {method}: {why}", self.user));
        None
    }

    fn register(&mut self) -> bool {
        let (aor, uri) = (self.aor(), format!("sip:{DOMAIN}"));
        self.transact("REGISTER", &uri, &aor, "Expires: 600\r\n", "").is_some()
    }

    /// Waits `pause` for requests (answering them); a connection the proxy closes meanwhile is
    /// noticed at once and replaced through the other proxy, registering again.
    fn idle(&mut self, pause: Duration) {
        let deadline = Instant::now() + pause;
        while let Some(conn) = self.conn.as_mut() {
            match conn.next(deadline) {
                Ok(Some(m)) if !m.starts_with("SIP/2.0 ") => self.answer(&m),
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => {
                    self.tally.lock().unwrap().closes_seen += 1;
                    self.switch();
                    self.register();
                    return;
                }
            }
        }
    }
}

/// The deployment of `frontend.rs` (three Home Servers, two Front-Ends), each server with a short
/// grace, and an administrator token on the Home Servers' API.
struct Deployment {
    _dir: tempfile::TempDir,
    homes: Vec<Node>,
    front_ends: Vec<Node>,
}

const TOKEN: &str = "zero-downtime-admin-token";

fn deploy(users: &[(String, String)]) -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "deployment-ca");
    let pairs: Vec<(&str, &str)> = users.iter().map(|(u, h)| (u.as_str(), h.as_str())).collect();
    let users = users_file(dir.path(), &pairs);
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let directory = format!("[directory]\nbackend = \"file\"\nfile = {users:?}\n");
    let limits = "[limits]\nshutdown_grace_secs = 1\nshutdown_timeout_secs = 10\nmax_messages_per_source = 0\n";
    let home_extra = format!("{limits}[api]\nadmin_token_file = {token_file:?}\n");
    let homes: Vec<Node> = (1..=3)
        .map(|i| Node::start_with(dir.path(), &format!("home-{i}"), &ca, &directory, None, "", &home_extra))
        .collect();
    let table: Vec<(String, SocketAddr)> = homes.iter().map(|h| (h.name.clone(), h.internal)).collect();
    let front_ends = (1..=2)
        .map(|i| Node::start_with(dir.path(), &format!("fe-{i}"), &ca, &directory, Some(&table), "", limits))
        .collect();
    Deployment { _dir: dir, homes, front_ends }
}

#[test]
fn a_rolling_restart_of_two_front_ends_and_three_home_servers_fails_no_transaction_and_loses_nothing() {
    const CLIENTS: usize = 12;
    // u0..u11 are busy clients; u12..u17 register once, before the restarts, and never again.
    const SILENT: usize = 6;
    let all: Vec<(String, String)> =
        (0..CLIENTS + SILENT).map(|i| (format!("u{i}"), format!("home-{}", i % 3 + 1))).collect();
    let mut d = deploy(&all);
    let users = all[..CLIENTS].to_vec();
    let proxies = [d.front_ends[0].sip, d.front_ends[1].sip];
    let mut silent: Vec<Ua> = (CLIENTS..CLIENTS + SILENT).map(|i| Ua::new(&format!("u{i}"), proxies[i % 2])).collect();
    for ua in &mut silent {
        let r = ua.register(3600);
        assert_eq!(status(&r), 200, "{r}");
    }
    let homes_ops: Vec<SocketAddr> = d.homes.iter().map(|h| h.ops).collect();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));

    // Load: each client registers, then loops MESSAGE (to itself: through its Home Server and
    // back through its proxy), PUBLISH and a registration refresh, pausing a little between.
    let mut load = Vec::new();
    for (i, (user, _)) in users.iter().enumerate() {
        let (tally, stop, user) = (tally.clone(), stop.clone(), user.clone());
        load.push(std::thread::spawn(move || {
            let mut c = Client::new(&user, proxies, i % 2, tally);
            assert!(c.register(), "{user}: first registration");
            let aor = c.aor();
            let pidf = format!(
                "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"{aor}\">\
                 <tuple id=\"t\"><status><basic>open</basic></status></tuple></presence>"
            );
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                c.transact("MESSAGE", &aor, &aor, "Content-Type: text/plain\r\n", &format!("round {round}"));
                c.idle(Duration::from_millis(40));
                let publish = "Event: presence\r\nExpires: 600\r\nContent-Type: application/pidf+xml\r\n";
                c.transact("PUBLISH", &aor, &aor, publish, &pidf);
                c.idle(Duration::from_millis(40));
                if round.is_multiple_of(3) {
                    c.register();
                }
                c.idle(Duration::from_millis(40));
            }
            c
        }));
    }
    // Contact-list writes through the Home Servers' API throughout: the last one acknowledged
    // for each user must be what a read gives afterwards.
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let api_failures = Arc::new(Mutex::new(0u64));
    let writer = {
        let (stop, acked, api_failures, users) = (stop.clone(), acked.clone(), api_failures.clone(), users.clone());
        let homes_ops = homes_ops.clone();
        std::thread::spawn(move || {
            let mut version = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (i, (user, _)) in users.iter().enumerate() {
                    version += 1;
                    let body = format!("{{\"contacts\": [\"v{version}@{DOMAIN}\"]}}");
                    let path = format!("/users/{user}@{DOMAIN}/contacts");
                    match try_http(homes_ops[i % 3], "PUT", &path, Some(TOKEN), &body) {
                        Some((200 | 204, _)) => {
                            acked.lock().unwrap().insert(user.clone(), version);
                        }
                        // The Home Server is restarting: not acknowledged, not counted.
                        _ => *api_failures.lock().unwrap() += 1,
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    wait_for(Duration::from_secs(20), "load running", || {
        tally.lock().unwrap().ok.get("MESSAGE").copied().unwrap_or(0) >= 24
    });

    // The rolling restart: Front-Ends first, then each Home Server; one process at a time.
    let started = Instant::now();
    let mut stops = Vec::new();
    for node in d.front_ends.iter_mut().chain(d.homes.iter_mut()) {
        let before = tally.lock().unwrap().ok.values().sum::<u64>();
        let (exit, took) = node.terminate(Duration::from_secs(12));
        assert!(exit.success(), "{} exit {exit}; log:\n{}", node.name, node.log_text());
        stops.push(format!("{} {} ms", node.name, took.as_millis()));
        node.start_again();
        // Load must go on through the restarted process's neighbours before the next one.
        wait_for(Duration::from_secs(20), "load continues", || {
            tally.lock().unwrap().ok.values().sum::<u64>() >= before + 2 * CLIENTS as u64
        });
    }
    let rolling = started.elapsed();
    // A little more load on the restarted deployment, then stop.
    let before = tally.lock().unwrap().ok.values().sum::<u64>();
    wait_for(Duration::from_secs(20), "load after the restart", || {
        tally.lock().unwrap().ok.values().sum::<u64>() >= before + 2 * CLIENTS as u64
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let mut clients: Vec<Client> = load.into_iter().map(|t| t.join().unwrap()).collect();

    // Nothing acknowledged is lost: every registration, every last acknowledged contact list.
    let mut registrations_kept = 0;
    for c in &mut clients {
        let (aor, uri) = (c.aor(), format!("sip:{DOMAIN}"));
        let r = c.transact("REGISTER", &uri, &aor, "", "").expect("bindings listed");
        assert!(r.contains("client.invalid"), "{}'s binding is there: {r}", c.user);
        registrations_kept += 1;
    }
    // Registrations made once, before all the restarts, and never refreshed: still there.
    for ua in &mut silent {
        let r = ua.query_bindings().expect("bindings listed");
        assert_eq!(status(&r), 200, "{r}");
        assert!(r.contains(&format!("<sip:{}@{}>", ua.user, ua.local())), "{}'s binding is there: {r}", ua.user);
        registrations_kept += 1;
    }
    let acked = acked.lock().unwrap().clone();
    let mut lists_kept = 0;
    for (i, (user, _)) in users.iter().enumerate() {
        let want = acked.get(user).unwrap_or_else(|| panic!("{user}: no contact-list write acknowledged"));
        let (code, body) =
            try_http(homes_ops[i % 3], "GET", &format!("/users/{user}@{DOMAIN}/contacts"), Some(TOKEN), "").unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&format!("\"v{want}@{DOMAIN}\"")), "{user}: last acknowledged v{want}, read {body}");
        lists_kept += 1;
    }
    let t = tally.lock().unwrap();
    let ok: u64 = t.ok.values().sum();
    println!(
        "zero-downtime: rolling restart of 2 Front-Ends and 3 Home Servers in {:.1} s under load from {CLIENTS} \
         clients: {ok} transactions ok ({:?}), failed {}, 503 with Retry-After retried {}, resent after a closed \
         connection {}, connections closed by a proxy {}, messages received {}; registrations kept {registrations_kept}/{}, \
         contact lists kept {lists_kept}/{CLIENTS} (API writes refused while a Home Server restarted: {}); SIGTERM to exit: {}",
        rolling.as_secs_f64(),
        t.ok,
        t.failed.len(),
        t.retried_503,
        t.resent_after_close,
        t.closes_seen,
        t.received,
        CLIENTS + SILENT,
        api_failures.lock().unwrap(),
        stops.join(", ")
    );
    assert!(t.failed.is_empty(), "failed transactions: {:#?}", t.failed);
    assert!(t.ok.get("MESSAGE").copied().unwrap_or(0) >= 10 * CLIENTS as u64, "{:?}", t.ok);
    assert!(t.received >= t.ok.get("MESSAGE").copied().unwrap_or(0), "every answered MESSAGE was received");
}

// ---- a crowd of UDP clients: 10,000 users registering at once ----

/// Registers `users` over one UDP socket as a crowd of clients would (each answers its challenge,
/// waits Retry-After after a 503, retransmits after 1 s of silence), all starting at once.
/// Returns when `share` of them have a 200, with the time each 200 came (from `since`).
fn crowd_register(
    server: SocketAddr,
    users: std::ops::Range<usize>,
    share: f64,
    since: Instant,
    give_up: Duration,
) -> Vec<Duration> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let _ = socket.set_nonblocking(false);
    socket.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let local = socket.local_addr().unwrap();
    // Per user: what to send next and when; None once registered.
    struct Pending {
        user: usize,
        cseq: u32,
        auth: Option<String>,
        at: Instant,
        sent: Option<Instant>,
    }
    let total = users.len();
    let mut pending: HashMap<usize, Pending> =
        users.map(|u| (u, Pending { user: u, cseq: 0, auth: None, at: Instant::now(), sent: None })).collect();
    let mut done = Vec::new();
    let want = (total as f64 * share).ceil() as usize;
    let deadline = Instant::now() + give_up;
    let mut buf = vec![0u8; 65_535];
    // Outstanding requests at once, as many clients' worth as one socket carries comfortably.
    const WINDOW: usize = 200;
    while done.len() < want {
        assert!(Instant::now() < deadline, "only {} of {want} registered within {give_up:?}", done.len());
        let now = Instant::now();
        let in_flight = pending.values().filter(|p| p.sent.is_some_and(|s| now < s + Duration::from_secs(1))).count();
        let due: Vec<usize> = pending
            .values()
            .filter(|p| p.at <= now && p.sent.is_none_or(|s| now >= s + Duration::from_secs(1)))
            .map(|p| p.user)
            .take(WINDOW.saturating_sub(in_flight))
            .collect();
        for u in due {
            let p = pending.get_mut(&u).unwrap();
            p.cseq += 1;
            let auth = p.auth.clone().unwrap_or_default();
            let req = format!(
                "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKc{u}x{cseq};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:u{u}@{DOMAIN}>;tag=t{u}\r\nTo: <sip:u{u}@{DOMAIN}>\r\n\
                 Call-ID: crowd-{u}@test\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:u{u}@{local}>\r\nExpires: 3600\r\n\
                 {auth}Content-Length: 0\r\n\r\n",
                cseq = p.cseq
            );
            let _ = socket.send_to(req.as_bytes(), server);
            p.sent = Some(now);
        }
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            let r = String::from_utf8_lossy(&buf[..n]).into_owned();
            let Some(u) = header(&r, "Call-ID")
                .and_then(|c| c.strip_prefix("crowd-"))
                .and_then(|c| c.strip_suffix("@test"))
                .and_then(|c| c.parse::<usize>().ok())
            else {
                continue;
            };
            let cseq: u32 =
                header(&r, "CSeq").and_then(|c| c.split(' ').next()).and_then(|c| c.parse().ok()).unwrap_or(0);
            let Some(p) = pending.get_mut(&u).filter(|p| p.cseq == cseq) else { continue };
            match status(&r) {
                200 => {
                    pending.remove(&u);
                    done.push(since.elapsed());
                }
                401 => {
                    let c = header(&r, "WWW-Authenticate").unwrap_or_default();
                    let (realm, nonce) = (param(c, "realm"), param(c, "nonce"));
                    let ha1 = md5(&format!("u{u}:{realm}:u{u}-password"));
                    let ha2 = md5(&format!("REGISTER:sip:{DOMAIN}"));
                    let response = md5(&format!("{ha1}:{nonce}:00000001:abc:auth:{ha2}"));
                    p.auth = Some(format!(
                        "Authorization: Digest username=\"u{u}\", realm=\"{realm}\", nonce=\"{nonce}\", \
                         uri=\"sip:{DOMAIN}\", response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"abc\"\r\n"
                    ));
                    p.at = Instant::now();
                    p.sent = None;
                }
                503 => {
                    let wait = retry_after(&r).expect("503 with Retry-After");
                    p.at = Instant::now() + Duration::from_secs(wait);
                    p.sent = None;
                    // A new challenge after the wait: the nonce may have gone stale meanwhile.
                    p.auth = None;
                }
                other => panic!("u{u}: unexpected {other}: {r}"),
            }
        }
    }
    done
}

/// Samples `parley_sip_requests_total` (all methods) and `parley_rate_limited_total` every
/// 250 ms until `stop`: (requests seen, requests taken on) per second, peak over any 1 s window.
fn sample_rates(ops: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(f64, f64)> {
    std::thread::spawn(move || {
        let read = || -> Option<(f64, f64)> {
            let (_, body) = support::http_get(ops, "/metrics")?;
            let sum = |prefix: &str| -> f64 {
                body.lines()
                    .filter(|l| l.starts_with(prefix))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            };
            Some((sum("parley_sip_requests_total"), sum("parley_rate_limited_total")))
        };
        let mut samples: Vec<(Instant, f64, f64)> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Some((seen, limited)) = read() {
                samples.push((Instant::now(), seen, seen - limited));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let (mut peak_seen, mut peak_taken) = (0f64, 0f64);
        for (i, (t0, s0, k0)) in samples.iter().enumerate() {
            if let Some((t1, s1, k1)) =
                samples[i..].iter().find(|(t, _, _)| t.duration_since(*t0) >= Duration::from_secs(1))
            {
                let secs = t1.duration_since(*t0).as_secs_f64();
                peak_seen = peak_seen.max((s1 - s0) / secs);
                peak_taken = peak_taken.max((k1 - k0) / secs);
            }
        }
        (peak_seen, peak_taken)
    })
}

#[test]
fn a_home_server_killed_with_10000_registered_users_comes_back_within_its_rate_limit() {
    const USERS: usize = 10_000;
    // Filled without a rate limit (the fill is not what is measured), then restarted with one.
    let mut server = Server::start_with_users(USERS, "[limits]\nmax_messages_per_source = 0\n");
    let filled = Instant::now();
    let done = crowd_register(server.sip, 0..USERS, 1.0, filled, Duration::from_secs(120));
    let fill = done.last().unwrap().as_secs_f64();
    println!("zero-downtime: {USERS} users registered in {fill:.1} s");
    assert_eq!(server.metric("parley_registrations"), USERS as f64);
    // The limit: a quarter of what this build on this machine took on while filling (two requests
    // per registration), so that it is the limit, not the machine, that paces the return: the
    // limiter admits the rate plus a second's burst, and a busy machine's crowd, offering no more
    // than the fill took on, must still be over that.
    let rate = ((2.0 * USERS as f64 / fill / 4.0) as u32).clamp(200, 2_000);

    server.kill9();
    let config = server.dir.path().join("parley.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("[limits]\n", &format!("[limits]\nmax_requests_per_second = {rate}\n")))
        .unwrap();
    let restarted = Instant::now();
    let ready_after = server.start_again();
    assert_eq!(server.metric("parley_registrations"), USERS as f64, "every binding survived kill -9");
    // Every client noticed the crash and registers again as soon as the server answers.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rates(server.ops, stop.clone());
    // Two requests per registration at the rate, plus the longest Retry-After given, plus slack:
    // the crowd gives up at that bound, which follows from the rate this machine set.
    let bound = 2.0 * USERS as f64 / f64::from(rate) + 60.0;
    let served = crowd_register(server.sip, 0..USERS, 0.99, restarted, Duration::from_secs_f64(bound));
    stop.store(true, Ordering::Relaxed);
    let (peak_seen, peak_taken) = sampler.join().unwrap();
    let recovery = *served.last().unwrap();
    let limited = server.metric("parley_rate_limited_total");
    println!(
        "zero-downtime: kill -9 with {USERS} registered users, max_requests_per_second = {rate}: ready {} ms after exec, \
         99% served again {:.1} s after exec; peak requests seen {:.0}/s, peak taken on {:.0}/s; {limited} answered 503 \
         rate-limited",
        ready_after.as_millis(),
        recovery.as_secs_f64(),
        peak_seen,
        peak_taken
    );
    // Taken on: the rate plus the one-second burst at most, whatever the crowd offers.
    assert!(peak_taken <= 2.0 * f64::from(rate) * 1.1, "peak taken on {peak_taken:.0}/s over twice {rate}/s");
    assert!(limited > 0.0, "the crowd was over the rate");
    assert!(recovery.as_secs_f64() < bound, "99% served after {recovery:?}, bound {bound} s");
}

#[test]
fn cold_start_with_100000_bindings_in_the_store() {
    use parley_server::home::registrar::Binding;
    use parley_server::store::{Store, Table, Write};
    use parley_server::transport::{Flow, Transport};
    const BINDINGS: usize = 100_000;
    let mut server = Server::start_with_users(1, "");
    server.kill9();
    {
        let store = Store::open(&server.dir.path().join("data"), Default::default()).unwrap();
        let expires_at = std::time::SystemTime::now() + Duration::from_secs(3600);
        let writes: Vec<Write> = (0..BINDINGS)
            .map(|i| {
                let flow =
                    Flow::datagram(Transport::Udp, SocketAddr::from(([127, 0, 0, 1], 10_000 + (i % 50_000) as u16)));
                let binding = Binding {
                    uri: format!("sip:u{i}@127.0.0.1:{}", 10_000 + i % 50_000),
                    expires_at,
                    call_id: format!("cold-{i}"),
                    cseq: 1,
                    q: None,
                    flow,
                    path: Vec::new(),
                };
                Write::put(Table::Registrations, format!("u{i}@{DOMAIN}"), &vec![binding])
            })
            .collect();
        futures::executor::block_on(store.apply(writes)).unwrap();
    }
    let mut runs: Vec<Duration> = Vec::new();
    for _ in 0..3 {
        runs.push(server.start_again());
        assert_eq!(server.metric("parley_registrations"), BINDINGS as f64);
        server.kill9();
    }
    runs.sort();
    println!(
        "zero-downtime: cold start with {BINDINGS} bindings in the store, exec to /readyz 200: median {} ms (runs {:?})",
        runs[1].as_millis(),
        runs.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );
    assert!(runs[1] < Duration::from_secs(15), "{runs:?}");
}
