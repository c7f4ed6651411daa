//! The Home Server driven by sipp (Debian's 3.6.1, no TLS) over UDP and TCP: REGISTER with MD5
//! digest, refresh and unregister; a wrong password; an expired nonce; MESSAGE between two
//! registered UAs; MESSAGE to an offline and to an unknown user. The scenarios are in
//! `tests/sipp/`; each sipp run is a bounded subprocess (`-m 1`, `-timeout 20s -timeout_error`,
//! and a kill after 30 s) whose exit status must be 0 (every call succeeded), with its error and
//! message logs and the server log printed when it is not.
//!
//! SHA-256 digests are tested with a small client written here, not with sipp: sipp 3.6.1 only
//! computes MD5 and AKAv1-MD5 digests. Against a server offering only SHA-256 it gives up before
//! answering the challenge ("createAuthHeader: authentication must use MD5 or AKAv1-MD5").

mod support;

use md5::Md5;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use support::{Server, free_port, require_tool};

#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// sipp's `-t`: one UDP socket, or one TCP connection.
    fn sipp_mode(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp").join(name)
}

/// A sipp process running one scenario once, in its own directory (where its logs go).
struct Sipp {
    child: Child,
    dir: tempfile::TempDir,
    what: String,
}

impl Sipp {
    /// Starts `scenario` against the server as user `user` (password `<user>-password` unless
    /// `args` gives another `-ap`), with extra sipp arguments.
    fn start(server: &Server, transport: Transport, scenario_file: &str, user: &str, args: &[&str]) -> Sipp {
        require_tool("sipp");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().to_string();
        let password = support::password(user);
        let mut cmd = Command::new("sipp");
        cmd.arg(server.sip.to_string())
            .arg("-sf")
            .arg(scenario(scenario_file))
            .args(["-s", user, "-ap", &password, "-i", "127.0.0.1", "-p", &port])
            .args(["-t", transport.sipp_mode(), "-m", "1", "-timeout", "20s", "-timeout_error"])
            .args(["-nostdin", "-trace_err", "-trace_msg"])
            .args(args) // a later -ap overrides the one above
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.txt")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.txt")).unwrap());
        let child = cmd.spawn().expect("start sipp");
        Sipp { child, dir, what: format!("sipp {scenario_file} as {user} over {transport:?} {args:?}") }
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Waits for sipp to exit (killing it after 30 s: its own timeout is 20 s).
    fn wait(mut self) -> SippRun {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        SippRun { status, dir: self.dir, what: self.what }
    }
}

struct SippRun {
    /// None: killed after the deadline.
    status: Option<ExitStatus>,
    dir: tempfile::TempDir,
    what: String,
}

impl SippRun {
    /// sipp's logs: the error and message logs of -trace_err/-trace_msg and its output.
    fn logs(&self) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let mut out = String::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let text = if f.ends_with("stdout.txt") { tail(&text, 2000) } else { tail(&text, 12000) };
            out += &format!("==== {}\n{text}\n", f.file_name().unwrap().to_string_lossy());
        }
        out
    }

    /// Exit status 0: the scenario's call succeeded, every expected message and check passed.
    fn assert_success(&self, server: &Server) {
        if self.status.is_some_and(|s| s.success()) {
            return;
        }
        panic!(
            "{} failed with {:?}\n{}\n==== server log\n{}",
            self.what,
            self.status,
            self.logs(),
            tail(&server.log_text(), 8000)
        );
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn run_sipp(server: &Server, transport: Transport, scenario_file: &str, user: &str, args: &[&str]) {
    Sipp::start(server, transport, scenario_file, user, args).wait().assert_success(server);
}

/// The scenarios check the expiry granted exactly: the registrar's spread of expiries is off
/// (`zero_downtime.rs` tests it).
const EXACT_EXPIRES: &str = "[registrar]\nexpires_jitter_percent = 0\n";

fn register_refresh_unregister(transport: Transport) {
    let server = Server::start_with(EXACT_EXPIRES);
    run_sipp(&server, transport, "register.xml", "alice", &[]);
    assert!(server.metric("parley_sip_requests_total{method=\"REGISTER\"}") >= 4.0);
    assert_eq!(server.metric("parley_registrations"), 0.0, "unregistered");
    assert_eq!(server.metric("parley_auth_failures_total"), 0.0);
}

#[test]
fn register_refresh_unregister_udp() {
    register_refresh_unregister(Transport::Udp);
}

#[test]
fn register_refresh_unregister_tcp() {
    register_refresh_unregister(Transport::Tcp);
}

fn wrong_password(transport: Transport) {
    let server = Server::start();
    assert_eq!(server.metric("parley_auth_failures_total"), 0.0);
    run_sipp(&server, transport, "wrong_password.xml", "alice", &["-ap", "not-alice-password"]);
    assert_eq!(server.metric("parley_auth_failures_total"), 1.0);
    assert_eq!(server.metric("parley_sip_responses_total{class=\"2xx\"}"), 0.0);
    assert_eq!(server.metric("parley_registrations"), 0.0);
}

#[test]
fn wrong_password_is_challenged_again_udp() {
    wrong_password(Transport::Udp);
}

#[test]
fn wrong_password_is_challenged_again_tcp() {
    wrong_password(Transport::Tcp);
}

/// Nonces carry the second they were issued, so a nonce may look up to 1 s older than it is: with
/// a TTL of 1 s even an immediate answer could be stale now and then. A TTL of 2 s and a pause of
/// 3.1 s in the scenario make both answers deterministic.
fn stale_nonce(transport: Transport) {
    let server = Server::start_with(&format!("[auth]\nnonce_ttl_secs = 2\n{EXACT_EXPIRES}"));
    run_sipp(&server, transport, "stale_nonce.xml", "bob", &[]);
    assert_eq!(server.metric("parley_registrations"), 1.0);
    assert_eq!(server.metric("parley_auth_failures_total"), 0.0, "a stale nonce is not a failure");
}

#[test]
fn expired_nonce_is_stale_udp() {
    stale_nonce(Transport::Udp);
}

#[test]
fn expired_nonce_is_stale_tcp() {
    stale_nonce(Transport::Tcp);
}

fn message_relay(transport: Transport) {
    let server = Server::start();
    // Both sides use the same Call-ID (see message_uas.xml), unique to this run.
    let cid = format!("%u-parley-sipp-{}-{transport:?}", server.sip.port());
    let mut bob = Sipp::start(&server, transport, "message_uas.xml", "bob", &["-cid_str", &cid]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("parley_registrations") < 1.0 {
        if bob.exited() || Instant::now() > deadline {
            bob.wait().assert_success(&server);
            panic!("bob did not register");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let alice = Sipp::start(&server, transport, "message_uac.xml", "alice", &["-key", "to", "bob", "-cid_str", &cid]);
    alice.wait().assert_success(&server);
    bob.wait().assert_success(&server);
    assert_eq!(server.metric("parley_messages_delivered_total"), 1.0);
    assert_eq!(server.metric("parley_registrations"), 2.0);
}

#[test]
fn message_between_registered_users_udp() {
    message_relay(Transport::Udp);
}

#[test]
fn message_between_registered_users_tcp() {
    message_relay(Transport::Tcp);
}

fn message_not_delivered(transport: Transport) {
    // With offline messages off, as before them: 480 (tests/offline.rs has them on: 202).
    let server = Server::start_with("[offline]\nenabled = false\n");
    run_sipp(
        &server,
        transport,
        "message_fail.xml",
        "alice",
        &["-key", "offline", "carol", "-key", "unknown", "nobody"],
    );
    assert_eq!(server.metric("parley_sip_requests_total{method=\"MESSAGE\"}"), 3.0);
    assert_eq!(server.metric("parley_messages_delivered_total"), 0.0);
}

#[test]
fn message_to_offline_480_and_unknown_404_udp() {
    message_not_delivered(Transport::Udp);
}

#[test]
fn message_to_offline_480_and_unknown_404_tcp() {
    message_not_delivered(Transport::Tcp);
}

// SHA-256 digest (RFC 7616, RFC 8760) with a client written here, since sipp 3.6.1 cannot.

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Conn {
    fn open(server: &Server, transport: Transport) -> Conn {
        match transport {
            Transport::Udp => {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.connect(server.sip).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                Conn::Udp(s)
            }
            Transport::Tcp => {
                let s = TcpStream::connect(server.sip).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                Conn::Tcp(s)
            }
        }
    }

    fn local(&self) -> std::net::SocketAddr {
        match self {
            Conn::Udp(s) => s.local_addr().unwrap(),
            Conn::Tcp(s) => s.local_addr().unwrap(),
        }
    }

    /// Sends a request and returns the response (status line and headers; responses here have
    /// no body).
    fn request(&mut self, req: &str) -> String {
        match self {
            Conn::Udp(s) => {
                s.send(req.as_bytes()).unwrap();
                let mut buf = [0u8; 65535];
                let n = s.recv(&mut buf).expect("a response over UDP");
                String::from_utf8_lossy(&buf[..n]).into_owned()
            }
            Conn::Tcp(s) => {
                s.write_all(req.as_bytes()).unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).expect("a response over TCP");
                    assert!(n > 0, "connection closed; got {:?}", String::from_utf8_lossy(&got));
                    got.extend_from_slice(&buf[..n]);
                }
                String::from_utf8_lossy(&got).into_owned()
            }
        }
    }
}

fn status(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not a response: {resp}"))
}

fn headers<'a>(resp: &'a str, name: &str) -> Vec<&'a str> {
    resp.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

fn param<'a>(challenge: &'a str, name: &str) -> &'a str {
    let start = challenge.find(&format!("{name}=")).unwrap_or_else(|| panic!("no {name} in {challenge}"));
    let v = &challenge[start + name.len() + 1..];
    match v.strip_prefix('"') {
        Some(q) => &q[..q.find('"').unwrap()],
        None => v.split([',', ' ']).next().unwrap(),
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

fn register(conn: &Conn, transport: Transport, cseq: u32, authorization: Option<&str>) -> String {
    let local = conn.local();
    let via = format!("{transport:?}").to_uppercase();
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/{via} {local};branch=z9hG4bK-sha256-{cseq}-{}\r\n\
         From: <sip:alice@127.0.0.1>;tag=sha256\r\n\
         To: <sip:alice@127.0.0.1>\r\n\
         Call-ID: sha256-{}@127.0.0.1\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:alice@{local};transport={}>\r\n\
         Expires: 600\r\n\
         Max-Forwards: 70\r\n\
         {auth}Content-Length: 0\r\n\r\n",
        local.port(),
        local.port(),
        via.to_lowercase()
    )
}

/// RFC 7616 section 3.4.1 with qop=auth.
fn digest(hash: fn(&str) -> String, alg: &str, nonce: &str, nc: &str, password: &str) -> String {
    let (uri, cnonce) = ("sip:127.0.0.1", "0a4f113b");
    let ha1 = hash(&format!("alice:example.test:{password}"));
    let ha2 = hash(&format!("REGISTER:{uri}"));
    let response = hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"alice\", realm=\"example.test\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={alg}, qop=auth, nc={nc}, cnonce=\"{cnonce}\""
    )
}

fn register_sha256(transport: Transport) {
    let server = Server::start_with(&format!("[auth]\nalgorithms = [\"SHA-256\"]\n{EXACT_EXPIRES}"));
    let mut conn = Conn::open(&server, transport);
    let resp = conn.request(&register(&conn, transport, 1, None));
    assert_eq!(status(&resp), 401, "{resp}");
    let challenges = headers(&resp, "WWW-Authenticate");
    assert_eq!(challenges.len(), 1, "only SHA-256 is offered: {resp}");
    let challenge = challenges[0];
    assert_eq!(param(challenge, "algorithm"), "SHA-256", "{resp}");
    assert_eq!(param(challenge, "realm"), "example.test", "{resp}");
    assert!(param(challenge, "qop").split(',').any(|q| q.trim() == "auth"), "{resp}");
    let nonce = param(challenge, "nonce");

    // MD5 was not offered: a right MD5 answer is refused.
    let md5 = digest(md5_hex, "MD5", nonce, "00000001", "alice-password");
    let resp = conn.request(&register(&conn, transport, 2, Some(&md5)));
    assert_eq!(status(&resp), 401, "MD5 answer to a SHA-256-only challenge: {resp}");
    assert_eq!(server.metric("parley_auth_failures_total"), 1.0);
    assert_eq!(server.metric("parley_registrations"), 0.0);

    let sha = digest(sha256_hex, "SHA-256", nonce, "00000002", "alice-password");
    let resp = conn.request(&register(&conn, transport, 3, Some(&sha)));
    assert_eq!(status(&resp), 200, "{resp}");
    let contacts = headers(&resp, "Contact");
    let expected = format!("<sip:alice@{};transport={}>", conn.local(), format!("{transport:?}").to_lowercase());
    assert_eq!(contacts.len(), 1, "{resp}");
    assert!(contacts[0].starts_with(&expected) && ["600", "599"].contains(&param(contacts[0], "expires")), "{resp}");
    assert_eq!(server.metric("parley_registrations"), 1.0);
    assert_eq!(server.metric("parley_auth_failures_total"), 1.0);
}

#[test]
fn register_with_sha256_digest_udp() {
    register_sha256(Transport::Udp);
}

#[test]
fn register_with_sha256_digest_tcp() {
    register_sha256(Transport::Tcp);
}
