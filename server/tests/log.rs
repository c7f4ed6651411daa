//! What the log says at the default level (no PARLEY_LOG), line by line: sign-in, sign-out,
//! subscription start and end at INFO with the user and the source address; failed
//! authentication and authentication schemes other than Digest at WARN with the address and never
//! the password; messages not at INFO; no DEBUG line.

mod support;

use std::time::{Duration, Instant};
use support::ua::{Ua, header, status};
use support::{Server, free_port, repo_root};

const WAIT: Duration = Duration::from_secs(5);

/// A server with the sample users at the default log level; `extra` is appended to its config.
fn server(extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (sip, tls, ops) = (free_port(), free_port(), free_port());
    let config = format!(
        "sip_domain = \"example.test\"\n[listen]\nudp = \"127.0.0.1:{sip}\"\ntcp = \"127.0.0.1:{sip}\"\n\
         tls = \"127.0.0.1:{tls}\"\nops = \"127.0.0.1:{ops}\"\n[tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n\
         self_signed = true\n[storage]\ndata_dir = \"data\"\nlogs_dir = \"logs\"\n[directory]\nbackend = \"file\"\nfile = {:?}\n{extra}",
        repo_root().join("examples/standalone/users.toml")
    );
    std::fs::write(dir.path().join("parley.toml"), config).unwrap();
    Server::start_from_with_log(dir, sip, tls, ops, None)
}

/// The log line that `want` picks, waiting for it a little (it is written before the answer, but
/// a failing test should say what it looked for).
fn line(server: &Server, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(l) = server.log_text().lines().find(|l| want(l)) {
            return l.to_string();
        }
        assert!(Instant::now() < deadline, "no log line for {what}; log:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(server: &Server, level: &str) -> usize {
    server.log_text().lines().filter(|l| l.contains(&format!(" {level} "))).count()
}

#[test]
fn default_log_shows_sign_ins_subscriptions_and_failures_with_their_source() {
    let server = server("");
    let mut alice = Ua::new("alice", server.sip);
    let mut bob = Ua::new("bob", server.sip);
    let (a, b) = (alice.local().to_string(), bob.local().to_string());

    // Sign-in: one INFO line; a refresh adds none.
    assert_eq!(status(&alice.register(300)), 200);
    let l = line(&server, "sign-in", |l| l.contains("signed in"));
    assert!(l.contains(" INFO ") && l.contains("user=alice@example.test") && l.contains(&format!("source={a}")), "{l}");
    let info = count(&server, "INFO");
    assert_eq!(status(&alice.register(300)), 200);
    assert_eq!(count(&server, "INFO"), info, "a refresh is not a sign-in:\n{}", server.log_text());

    // A wrong password: WARN with user and address, never the password.
    let mut mallory = Ua::new("alice", server.sip);
    mallory.password = "guessed-Secret-42".into();
    assert_eq!(status(&mallory.register(300)), 401);
    let l = line(&server, "failed authentication", |l| l.contains("authentication failed"));
    let m = mallory.local().to_string();
    assert!(l.contains(" WARN ") && l.contains("user=alice@example.test") && l.contains(&format!("source={m}")), "{l}");
    assert!(!server.log_text().contains("guessed-Secret-42"), "{}", server.log_text());

    // A scheme other than Digest (as Microsoft clients send it): WARN naming it.
    let ntlm = format!(
        "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP {m};branch=z9hG4bKntlm1;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:alice@example.test>;tag=n1\r\nTo: <sip:alice@example.test>\r\nCall-ID: ntlm-1\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:alice@{m}>\r\nAuthorization: NTLM qop=\"auth\", realm=\"SIP Communications Service\", \
         targetname=\"sip/parley\", gssapi-data=\"\"\r\nContent-Length: 0\r\n\r\n"
    );
    mallory.send_raw(ntlm.as_bytes());
    let r = mallory.recv_response(WAIT).expect("answer to NTLM");
    assert_eq!(status(&r), 401, "{r}");
    assert!(header(&r, "WWW-Authenticate").unwrap().starts_with("Digest"), "{r}");
    let l = line(&server, "NTLM", |l| l.contains("scheme=NTLM"));
    assert!(l.contains(" WARN ") && l.contains(&format!("source={m}")) && l.contains("user=alice@example.test"), "{l}");

    // pidgin-sipe's first REGISTER: no credentials, but Microsoft's extensions.
    let sipe = format!(
        "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP {m};branch=z9hG4bKsipe1;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:alice@example.test>;tag=s1;epid=1234\r\nTo: <sip:alice@example.test>\r\nCall-ID: sipe-1\r\nCSeq: 1 REGISTER\r\n\
         User-Agent: Purple/2.14.12 Sipe/1.25.0 (linux-x86_64; )\r\n\
         Contact: <sip:{m};transport=udp;ms-opaque=d3470f2e1d>;methods=\"INVITE, MESSAGE, INFO, SUBSCRIBE, OPTIONS, BYE, CANCEL, NOTIFY, ACK, REFER, BENOTIFY\";proxy=replace\r\n\
         Supported: gruu-10, adhoclist, msrtc-event-categories, com.microsoft.msrtc.presence\r\nEvent: registration\r\n\
         Allow-Events: presence\r\nms-keep-alive: UAC;hop-hop=yes\r\nContent-Length: 0\r\n\r\n"
    );
    mallory.send_raw(sipe.as_bytes());
    assert_eq!(status(&mallory.recv_response(WAIT).expect("answer to sipe")), 401);
    let l = line(&server, "sipe", |l| l.contains("Microsoft"));
    assert!(l.contains(" WARN ") && l.contains(&format!("source={m}")) && l.contains("Sipe/1.25.0"), "{l}");

    // Subscription start and end (unsubscribe): INFO with the watcher and its address.
    let uri = "sip:alice@example.test";
    let r = bob.send_authenticated("SUBSCRIBE", uri, uri, "Event: presence\r\nExpires: 600\r\n", "");
    assert_eq!(status(&r), 200, "{r}");
    bob.expect_notify(WAIT);
    let l = line(&server, "subscription start", |l| l.contains("subscription started"));
    assert!(l.contains(" INFO ") && l.contains("user=bob@example.test") && l.contains(&format!("source={b}")), "{l}");
    assert!(l.contains("resource=alice@example.test") && l.contains("event=presence"), "{l}");
    let to = header(&r, "To").unwrap().to_string();
    let r = bob.send_authenticated("SUBSCRIBE", uri, &to, "Event: presence\r\nExpires: 0\r\n", "");
    assert_eq!(status(&r), 200, "{r}");
    bob.expect_notify(WAIT);
    let l = line(&server, "subscription end", |l| l.contains("subscription ended"));
    assert!(l.contains(" INFO ") && l.contains("user=bob@example.test") && l.contains(&format!("source={b}")), "{l}");
    assert!(l.contains("unsubscribed"), "{l}");

    // A message: delivered, counted, and not logged at INFO.
    let (info, warn) = (count(&server, "INFO"), count(&server, "WARN"));
    let sender = std::thread::spawn(move || {
        bob.send_authenticated("MESSAGE", uri, uri, "Content-Type: text/plain\r\n", "hello alice")
    });
    let m = alice.recv_request("MESSAGE", WAIT).expect("alice gets the message");
    alice.answer(&m, 200);
    assert_eq!(status(&sender.join().unwrap()), 200);
    assert_eq!((count(&server, "INFO"), count(&server, "WARN")), (info, warn), "{}", server.log_text());
    assert_eq!(server.metric("parley_messages_delivered_total"), 1.0);

    // Sign-out: INFO.
    assert_eq!(status(&alice.register(0)), 200);
    let l = line(&server, "sign-out", |l| l.contains("signed out"));
    assert!(l.contains(" INFO ") && l.contains("user=alice@example.test") && l.contains(&format!("source={a}")), "{l}");
    assert!(!server.log_text().contains(" DEBUG "), "DEBUG at the default level:\n{}", server.log_text());
}

#[test]
fn expiry_ends_sign_ins_and_subscriptions_with_a_line_each() {
    let server = server("[registrar]\nmin_expires = 1\n");
    let mut alice = Ua::new("alice", server.sip);
    let mut bob = Ua::new("bob", server.sip);
    let (a, b) = (alice.local().to_string(), bob.local().to_string());
    assert_eq!(status(&alice.register(1)), 200);
    let uri = "sip:alice@example.test";
    let r = bob.send_authenticated("SUBSCRIBE", uri, uri, "Event: presence\r\nExpires: 1\r\n", "");
    assert_eq!(status(&r), 200, "{r}");
    bob.expect_notify(WAIT);
    let l = line(&server, "expired registration", |l| l.contains("registration expired"));
    assert!(l.contains(" INFO ") && l.contains("user=alice@example.test") && l.contains(&format!("source={a}")), "{l}");
    let l = line(&server, "expired subscription", |l| l.contains("subscription ended"));
    assert!(l.contains(" INFO ") && l.contains("user=bob@example.test") && l.contains(&format!("source={b}")), "{l}");
    assert!(l.contains("expired"), "{l}");
}
