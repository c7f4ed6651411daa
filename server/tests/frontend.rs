//! The multi-server configuration over real sockets: two Front-Ends and three Home Servers with
//! mutual TLS between them. Users homed on different Home Servers sign in through either
//! Front-End, message each other and watch each other's presence; traffic for a client comes back
//! through the instance holding its flow; a stopped Home Server costs only its own users, and only
//! until it returns; the internal port admits only the deployment's certificates.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::baresip::{Baresip, plain};
use support::cluster::{Ca, Node, file_directory, users_file};
use support::pidf::PIDF_AWAY;
use support::ua::{Ua, body, header, status};

const WAIT: Duration = Duration::from_secs(5);

struct Deployment {
    dir: tempfile::TempDir,
    ca: Ca,
    homes: Vec<Node>,
    front_ends: Vec<Node>,
}

impl Deployment {
    /// Every server's log, for a failure's message.
    fn logs(&self) -> String {
        self.homes.iter().chain(&self.front_ends).map(|n| format!("--- {}\n{}", n.name, n.log_text())).collect()
    }
}

/// alice on home-1, bob on home-2, carol on home-3, dave of the admitted domain partner.test on
/// home-3; Front-Ends fe-1 and fe-2.
fn deploy() -> Deployment {
    deploy_with_front_end_config("")
}

/// As `deploy`, with `frontend` lines added to the Front-Ends' `[frontend]` section.
fn deploy_with_front_end_config(frontend: &str) -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "deployment-ca");
    let users = users_file(
        dir.path(),
        &[("alice", "home-1"), ("bob", "home-2"), ("carol", "home-3"), ("dave@partner.test", "home-3")],
    );
    let homes: Vec<Node> = (1..=3).map(|i| Node::start(dir.path(), &format!("home-{i}"), &ca, &users, None)).collect();
    let table: Vec<(String, SocketAddr)> = homes.iter().map(|h| (h.name.clone(), h.internal)).collect();
    // The extra config follows the `[frontend]` section the routing table opens.
    let front_ends = (1..=2)
        .map(|i| {
            let name = format!("fe-{i}");
            Node::start_with(dir.path(), &name, &ca, &file_directory(&users), Some(&table), "", frontend)
        })
        .collect();
    Deployment { dir, ca, homes, front_ends }
}

/// Receives the next request of `method`, answers 200, and says which address it came from.
fn expect_request(ua: &Ua, method: &str) -> (String, SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some((m, from)) = ua.recv_from(left) else { break };
        if m.starts_with(&format!("{method} ")) {
            ua.answer(&m, 200);
            return (m, from);
        }
    }
    panic!("{}: no {method}", ua.user);
}

/// `from` sends `text` to `to`'s user while `to` waits for it: (final response, the MESSAGE as
/// received, where it came from).
fn message(from: &mut Ua, to: &Ua, text: &str) -> (String, String, SocketAddr) {
    let uri = format!("sip:{}@{}", to.user, to.domain);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| expect_request(to, "MESSAGE"));
        let r = from.send_authenticated("MESSAGE", &uri, &uri, "Content-Type: text/plain\r\n", text);
        let (m, source) = waiter.join().unwrap();
        (r, m, source)
    })
}

#[test]
fn users_on_different_home_servers_message_and_watch_each_other_through_either_front_end() {
    let d = deploy();
    let (fe1, fe2) = (&d.front_ends[0], &d.front_ends[1]);
    let mut alice = Ua::new("alice", fe1.sip);
    let mut bob = Ua::new("bob", fe2.sip);
    let r = alice.register(300);
    assert_eq!(status(&r), 200, "{r}");
    let path = header(&r, "Path").expect("the registrar echoes the Path");
    assert!(path.contains(&fe1.internal.to_string()) && path.contains(";lr"), "Path names fe-1: {path}");
    assert_eq!(status(&bob.register(300)), 200);

    // alice (home-1, via fe-1) -> bob (home-2): bob's copy comes through fe-2, which holds his flow.
    let (r, m, from) = message(&mut alice, &bob, "hi bob");
    assert_eq!(status(&r), 200, "alice's MESSAGE is answered 200 by bob: {r}");
    assert_eq!(from, fe2.sip, "bob's MESSAGE arrives from the Front-End holding his flow");
    assert_eq!(body(&m), "hi bob");
    assert!(m.contains("<sip:alice@example.test>"), "{m}");
    bob.new_call("to-alice");
    let (r, m, from) = message(&mut bob, &alice, "hi alice");
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(from, fe1.sip, "alice's MESSAGE arrives from fe-1");
    assert_eq!(body(&m), "hi alice");

    // bob watches alice: SUBSCRIBE through fe-2 to home-1; NOTIFYs reach bob through fe-2.
    bob.new_call("watch-alice");
    let uri = "sip:alice@example.test";
    let ok = bob.send_authenticated("SUBSCRIBE", uri, uri, "Event: presence\r\nExpires: 120\r\n", "");
    assert_eq!(status(&ok), 200, "{ok}");
    assert!(ok.contains("Record-Route"), "the dialog's route set comes back: {ok}");
    let (n, from) = expect_request(&bob, "NOTIFY");
    assert_eq!(from, fe2.sip, "NOTIFY comes through fe-2");
    assert!(body(&n).contains("<basic>open</basic>"), "alice is registered: {n}");
    alice.new_call("publish");
    alice.publish(PIDF_AWAY, None, 300);
    let (n, from) = expect_request(&bob, "NOTIFY");
    assert_eq!(from, fe2.sip);
    assert!(body(&n).contains("rpid:away"), "{n}");

    // And the other way: alice watches bob through fe-1.
    alice.new_call("watch-bob");
    let uri = "sip:bob@example.test";
    assert_eq!(
        status(&alice.send_authenticated("SUBSCRIBE", uri, uri, "Event: presence\r\nExpires: 120\r\n", "")),
        200
    );
    let (n, from) = expect_request(&alice, "NOTIFY");
    assert_eq!(from, fe1.sip);
    assert!(body(&n).contains("<basic>open</basic>"), "{n}");

    // Home Servers log the client's own address for a sign-in through a Front-End, not the
    // Front-End's (fail2ban-style tools and people read these lines).
    let signed_in = d.homes[0]
        .log_text()
        .lines()
        .find(|l| l.contains("signed in user=alice@example.test"))
        .unwrap_or("")
        .to_string();
    assert!(signed_in.contains(&format!("source={}", alice.local())), "{signed_in}");

    // Each Front-End counted what it forwarded, per Home Server.
    let m = fe2.metrics();
    assert!(m.contains("parley_frontend_forwarded_total{home_server=\"home-1\"}"), "{m}");
    assert!(m.contains("parley_frontend_home_server_up{home_server=\"home-2\"} 1"), "{m}");

    // An unknown user: 404 from the Front-End itself.
    let mut ghost = Ua::new("ghost", fe1.sip);
    let r = ghost.send_authenticated("MESSAGE", "sip:nobody@example.test", "sip:nobody@example.test", "", "x");
    assert_eq!(status(&r), 404, "{r}");
    drop(d.dir);
}

/// Debian's baresip 1.0 as bob, signed in through fe-1 over TLS (trusting the deployment CA; see
/// baresip.rs for what this baresip checks), watching alice, who is homed on another Home Server
/// and signed in through fe-2.
#[test]
fn baresip_through_a_front_end_over_tls_gets_messages_and_presence_from_another_home_server() {
    let d = deploy();
    let (fe1, fe2) = (&d.front_ends[0], &d.front_ends[1]);
    let mut alice = Ua::new("alice", fe2.sip);
    assert_eq!(status(&alice.register(300)), 200);
    let account = format!(
        "<sip:bob@example.test;transport=tls>;auth_pass=bob-password;regint=300;\
         outbound=\"sip:{}:{};transport=tls\"",
        fe1.tls.ip(),
        fe1.tls.port()
    );
    let baresip = Baresip::start(
        &d.dir.path().join("baresip"),
        &d.ca.cert,
        &account,
        &["contact.so", "presence.so"],
        Some("\"Alice\" <sip:alice@example.test>;presence=p2p\n"),
        &["-s", "-t", "30"], // SIP trace (read below); quits by itself if the test dies
    );
    let logs = || d.logs();
    let out = baresip.wait_until("200 to REGISTER", WAIT * 2, &logs, |t| t.contains("200 OK () [1 binding]"));
    assert!(out.contains("{0/TLS/v4} 200 OK"), "{out}");

    let (tx, rx) = std::sync::mpsc::channel();
    let text = "hello bob, from home-1 through both Front-Ends";
    std::thread::scope(|s| {
        s.spawn(|| {
            let to = "sip:bob@example.test";
            let _ = tx.send(alice.send_authenticated("MESSAGE", to, to, "Content-Type: text/plain\r\n", text));
        });
        let answer = rx.recv_timeout(WAIT * 2).expect("alice's MESSAGE is answered");
        assert_eq!(status(&answer), 200, "{answer}");
    });
    let shown = format!("sip:alice@example.test: \"{text}\"");
    baresip.wait_until("the message", WAIT, &logs, |t| t.contains(&shown));

    // baresip subscribes to alice (through fe-1, to home-1) a moment after signing in. Her status
    // changes only after its first NOTIFY has arrived (read from the SIP trace): published
    // earlier, the change would be in that NOTIFY already, which baresip does not report.
    baresip.wait_until("the first NOTIFY", WAIT, &logs, |t| t.contains("NOTIFY sip:bob"));
    alice.new_call("publish");
    alice.publish(PIDF_AWAY, None, 300);
    baresip.wait_until("alice's new status", WAIT, &logs, |t| {
        plain(t).contains("<sip:alice@example.test> changed status from Online to Offline")
    });
}

#[test]
fn a_user_of_an_admitted_domain_signs_in_and_messages_across_home_servers() {
    let d = deploy();
    let mut dave = Ua::new("dave", d.front_ends[0].sip).in_domain("partner.test");
    let mut alice = Ua::new("alice", d.front_ends[1].sip);
    let r = dave.register(300);
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(status(&alice.register(300)), 200);
    let (r, m, _) = message(&mut dave, &alice, "from partner.test");
    assert_eq!(status(&r), 200, "{r}");
    assert!(m.contains("<sip:dave@partner.test>") && body(&m) == "from partner.test", "{m}");
    alice.new_call("to-dave");
    let (r, m, from) = message(&mut alice, &dave, "to partner.test");
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(from, d.front_ends[0].sip, "dave's flow is on fe-1");
    assert_eq!(body(&m), "to partner.test");
}

/// A Front-End replica dies (-9) holding a UDP client's flow: the client's Home Server finds it
/// gone and sends through the other replica, which reads the flow token (the replicas share its
/// key) and reaches the client from its own socket. The client, baresip over UDP, does not sign
/// in again; later requests skip the dead replica at once. Without a shared key the other replica
/// cannot read the token and says so (430 Flow Failed), never misroutes.
#[test]
fn a_udp_client_of_a_front_end_replica_that_died_is_reached_through_another_without_signing_in_again() {
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), b"the domain's flow key, shared by its replicas").unwrap();
    let mut d = deploy_with_front_end_config(&format!("flow_key_file = {:?}\n", key.path()));
    let (fe1, fe2) = (d.front_ends[0].sip, d.front_ends[1].sip);
    let account = format!(
        "<sip:bob@example.test>;auth_pass=bob-password;regint=600;outbound=\"sip:{}:{}\"",
        fe1.ip(),
        fe1.port()
    );
    let baresip = Baresip::start(&d.dir.path().join("baresip"), &d.ca.cert, &account, &[], None, &["-t", "40"]);
    let out = baresip.wait_until("200 to REGISTER", WAIT * 2, &|| d.logs(), |t| t.contains("200 OK () [1 binding]"));
    assert!(out.contains("{0/UDP/v4} 200 OK"), "{out}");

    d.front_ends[0].kill();
    let mut alice = Ua::new("alice", fe2);
    assert_eq!(status(&alice.register(300)), 200);
    for (i, text) in ["after fe-1 died", "and again"].into_iter().enumerate() {
        alice.new_call(&format!("m{i}"));
        let sent = Instant::now();
        let to = "sip:bob@example.test";
        let r = alice.send_authenticated("MESSAGE", to, to, "Content-Type: text/plain\r\n", text);
        assert_eq!(status(&r), 200, "{r}\n{}", d.logs());
        let took = sent.elapsed();
        assert!(took < Duration::from_secs(3), "answered after {took:?}");
        eprintln!("zero-downtime: Front-End replica killed: MESSAGE {} to its UDP client answered in {took:?}", i + 1);
        baresip.wait_until("the message", WAIT, &|| d.logs(), |t| {
            t.contains(&format!("sip:alice@example.test: \"{text}\""))
        });
    }
    let home = d.homes[1].log_text();
    assert_eq!(home.matches("Front-End gone: sent through another").count(), 1, "the dead replica is skipped:\n{home}");
    assert_eq!(baresip.output().matches("200 OK () [1 binding]").count(), 1, "bob signed in once");
}

/// Without a shared key, another replica cannot read a token that names a gone replica's client.
#[test]
fn a_replica_without_the_shared_key_answers_flow_failed_for_another_replicas_client() {
    let mut d = deploy();
    let (fe1, fe2) = (d.front_ends[0].sip, d.front_ends[1].sip);
    let mut bob = Ua::new("bob", fe1);
    assert_eq!(status(&bob.register(300)), 200);
    d.front_ends[0].kill();
    let mut alice = Ua::new("alice", fe2);
    assert_eq!(status(&alice.register(300)), 200);
    let to = "sip:bob@example.test";
    let r = alice.send_authenticated("MESSAGE", to, to, "Content-Type: text/plain\r\n", "lost?");
    assert_eq!(status(&r), 480, "{r}");
    assert!(bob.recv(Duration::from_millis(500)).is_none(), "nothing reached bob");
    // Sent through fe-2, which cannot read fe-1's token: 430, which bob's Home Server reports as
    // 480 (no device reached).
    let home = d.homes[1].log_text();
    assert!(home.contains("Front-End gone: sent through another"), "{home}");
}

/// Registers until it works again (the Front-End's probes find the Home Server back), 5 s at most.
fn served_again(ua: &mut Ua) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = ua.register(300);
        if status(&r) == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{} is not served again: {r}", ua.user);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_stopped_home_server_costs_only_its_users_and_only_until_it_returns() {
    let mut d = deploy();
    let fe1 = d.front_ends[0].sip;
    let mut carol = Ua::new("carol", fe1);
    let mut alice = Ua::new("alice", fe1);
    assert_eq!(status(&carol.register(300)), 200);
    d.homes[2].kill();

    let sent = Instant::now();
    let r = carol.register(300);
    assert_eq!(status(&r), 503, "{r}");
    assert!(header(&r, "Retry-After").is_some(), "{r}");
    assert!(sent.elapsed() < Duration::from_secs(2), "answered after {:?}", sent.elapsed());
    assert_eq!(status(&alice.register(300)), 200, "other users are unaffected");
    assert!(d.front_ends[0].metrics().contains("parley_frontend_home_server_up{home_server=\"home-3\"} 0"));

    d.homes[2].restart();
    // The Front-End probes it and uses it again, without a restart of its own.
    served_again(&mut carol);
}

#[test]
fn a_hung_home_server_costs_its_users_a_503_within_2_seconds_and_is_used_again_when_it_wakes() {
    let d = deploy();
    let fe1 = d.front_ends[0].sip;
    let mut carol = Ua::new("carol", fe1);
    let mut alice = Ua::new("alice", fe1);
    assert_eq!(status(&carol.register(300)), 200);
    // Frozen: its connections stay open and nothing comes back, so only silence tells.
    d.homes[2].signal("STOP");
    let sent = Instant::now();
    let r = carol.register(300);
    assert_eq!(status(&r), 503, "{r}");
    assert!(header(&r, "Retry-After").is_some(), "{r}");
    assert!(sent.elapsed() < Duration::from_secs(2), "answered after {:?}", sent.elapsed());
    assert_eq!(status(&alice.register(300)), 200, "other users are unaffected");

    d.homes[2].signal("CONT");
    served_again(&mut carol);
}

#[test]
fn the_internal_port_admits_only_the_deployments_certificates_and_public_identity_claims_are_dropped() {
    let d = deploy();
    let home = &d.homes[0];
    let options = "OPTIONS sip:parley@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKprobe\r\n\
                   Max-Forwards: 70\r\nFrom: <sip:probe@example.test>;tag=1\r\nTo: <sip:parley@127.0.0.1>\r\n\
                   Call-ID: probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    // A certificate from the deployment CA: answered.
    let (cert, key) = d.ca.issue(d.dir.path(), "peer");
    let answer = tls_exchange(home.internal, &d.ca.cert, Some((&cert, &key)), options);
    assert!(answer.as_deref().is_some_and(|a| a.starts_with("SIP/2.0 200")), "{answer:?}");
    // No certificate, or one from another CA: no SIP at all.
    assert_eq!(tls_exchange(home.internal, &d.ca.cert, None, options), None);
    let other = Ca::new(d.dir.path(), "other-ca");
    let (cert, key) = other.issue(d.dir.path(), "intruder");
    assert_eq!(tls_exchange(home.internal, &d.ca.cert, Some((&cert, &key)), options), None);
    // Plain TCP on the internal port: nothing either.
    assert_eq!(plain_exchange(home.internal, options), None);

    // A client's P-Asserted-Identity is removed at the Front-End, never believed downstream.
    let fe = d.front_ends[0].sip;
    let mut alice = Ua::new("alice", fe);
    let mut bob = Ua::new("bob", fe);
    assert_eq!(status(&bob.register(300)), 200);
    let forged = "P-Asserted-Identity: <sip:carol@example.test>\r\nContent-Type: text/plain\r\n";
    let uri = "sip:bob@example.test";
    std::thread::scope(|s| {
        let waiter = s.spawn(|| expect_request(&bob, "MESSAGE"));
        let r = alice.send_authenticated("MESSAGE", uri, uri, forged, "who am i");
        assert_eq!(status(&r), 200, "{r}");
        let (m, _) = waiter.join().unwrap();
        assert!(!m.contains("P-Asserted-Identity"), "forwarded with the forged identity: {m}");
        assert!(m.contains("<sip:alice@example.test>"), "{m}");
    });
    // A REGISTER sent straight to a Home Server that is not the user's: refused with a reason.
    let mut stray = Ua::new("bob", home.sip);
    let r = stray.register(300);
    assert_eq!(status(&r), 403, "{r}");
    assert!(r.contains("Homed On Another Home Server"), "{r}");
}

/// Sends `request` over TLS (trusting `ca`, presenting `client` if given) and returns the first
/// bytes answered, or None when the handshake or the read fails.
fn tls_exchange(
    addr: SocketAddr,
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
    request: &str,
) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::{Read, Write};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap()).ok()?;
    let sock = TcpStream::connect_timeout(&addr, WAIT).ok()?;
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(request.as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    match tls.read(&mut buf) {
        Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

fn plain_exchange(addr: SocketAddr, request: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut sock = TcpStream::connect_timeout(&addr, WAIT).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.write_all(request.as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    match sock.read(&mut buf) {
        Ok(n) if n > 0 && buf.starts_with(b"SIP/2.0") => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}
