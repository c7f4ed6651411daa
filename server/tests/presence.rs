//! Presence over real sockets: SUBSCRIBE/NOTIFY with PUBLISH (RFC 3856, 3903, 6665), polite
//! blocking and watcher info (RFC 3857), resource lists (RFC 4662), and state that survives
//! `kill -9`.

mod support;

use std::time::{Duration, Instant};
use support::Server;
use support::ua::{Ua, body, header, status};

use support::pidf::{PIDF_AWAY, PIDF_ONLINE};
const WAIT: Duration = Duration::from_secs(5);

fn subscribe(ua: &mut Ua, target: &str, event: &str, expires: u32, extra: &str) -> String {
    let uri = format!("sip:{target}@example.test");
    let r =
        ua.send_authenticated("SUBSCRIBE", &uri, &uri, &format!("Event: {event}\r\nExpires: {expires}\r\n{extra}"), "");
    assert_eq!(status(&r), 200, "SUBSCRIBE {target}: {r}");
    r
}

#[test]
fn watcher_follows_publications_refresh_unsubscribe_and_expiry() {
    let server = Server::start_with("[registrar]\nmin_expires = 1\n");
    let mut alice = Ua::new("alice", server.sip);
    let mut bob = Ua::new("bob", server.sip);
    assert_eq!(status(&alice.register(300)), 200);

    let ok = subscribe(&mut bob, "alice", "presence", 120, "");
    let to = header(&ok, "To").unwrap().to_string();
    assert!(to.contains("tag="), "{ok}");
    let n = bob.expect_notify(WAIT);
    assert!(n.contains("Subscription-State: active;expires="), "{n}");
    assert_eq!(header(&n, "Content-Type"), Some("application/pidf+xml"));
    assert!(body(&n).contains("<basic>open</basic>"), "registered, no publication: online\n{n}");

    let etag = alice.publish(PIDF_AWAY, None, 300);
    let sent = Instant::now();
    let n = bob.expect_notify(WAIT);
    let latency = sent.elapsed();
    assert!(body(&n).contains("rpid:away"), "{n}");
    assert!(latency < Duration::from_millis(100), "NOTIFY after {latency:?}");

    alice.publish(PIDF_ONLINE, Some(&etag), 300);
    let sent = Instant::now();
    let n = bob.expect_notify(WAIT);
    assert!(body(&n).contains("Online and typing") && !body(&n).contains("away"), "{n}");
    assert!(sent.elapsed() < Duration::from_millis(100), "NOTIFY after {:?}", sent.elapsed());
    let cseq1: u32 = header(&n, "CSeq").unwrap().split(' ').next().unwrap().parse().unwrap();

    // Refresh inside the dialog: 200 and a NOTIFY with the current state.
    let r =
        bob.send_authenticated("SUBSCRIBE", "sip:alice@example.test", &to, "Event: presence\r\nExpires: 120\r\n", "");
    assert_eq!(status(&r), 200, "{r}");
    let n = bob.expect_notify(WAIT);
    assert!(n.contains("Subscription-State: active") && body(&n).contains("Online and typing"), "{n}");
    let cseq2: u32 = header(&n, "CSeq").unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(cseq2 > cseq1, "NOTIFY CSeq grows within the dialog");

    // Unsubscribe: the final NOTIFY says terminated with a reason.
    let r = bob.send_authenticated("SUBSCRIBE", "sip:alice@example.test", &to, "Event: presence\r\nExpires: 0\r\n", "");
    assert_eq!(status(&r), 200, "{r}");
    let n = bob.expect_notify(WAIT);
    assert!(n.contains("Subscription-State: terminated;reason=timeout"), "{n}");

    // Expiry: a short subscription ends by itself with a final NOTIFY.
    bob.new_call("short");
    subscribe(&mut bob, "alice", "presence", 2, "");
    bob.expect_notify(WAIT);
    let n = bob.expect_notify(Duration::from_secs(6));
    assert!(n.contains("Subscription-State: terminated;reason=timeout"), "{n}");
    assert_eq!(server.metric("parley_subscriptions"), 0.0);

    // Unknown event packages get 489 with Allow-Events.
    bob.new_call("bad-event");
    let r = bob.send_authenticated(
        "SUBSCRIBE",
        "sip:alice@example.test",
        "sip:alice@example.test",
        "Event: dialog\r\n",
        "",
    );
    assert_eq!(status(&r), 489, "{r}");
    assert!(header(&r, "Allow-Events").is_some_and(|a| a.contains("presence")), "{r}");
}

#[test]
fn blocked_watcher_sees_offline_allowed_sees_state_and_winfo_shows_both() {
    let token_dir = tempfile::tempdir().unwrap();
    let token = token_dir.path().join("admin-token");
    std::fs::write(&token, "s3cret-admin\n").unwrap();
    let server = Server::start_with(&format!("[api]\nadmin_token_file = {:?}\n", token));
    let (mut alice, mut bob, mut carol) =
        (Ua::new("alice", server.sip), Ua::new("bob", server.sip), Ua::new("carol", server.sip));
    assert_eq!(status(&alice.register(300)), 200);

    let (code, _) = server.http("PUT", "/users/alice/presence-rules", None, "{\"block\":[\"carol@example.test\"]}");
    assert_eq!(code, 401, "the API needs credentials");
    let (code, _) = server.http("PUT", "/users/alice/presence-rules", Some("wrong"), "{\"block\":[]}");
    assert_eq!(code, 401);
    let (code, body_) = server.http(
        "PUT",
        "/users/alice/presence-rules",
        Some("s3cret-admin"),
        "{\"block\":[\"sip:carol@example.test\"]}",
    );
    assert_eq!(code, 200, "{body_}");
    let (code, rules) = server.http("GET", "/users/alice/presence-rules", Some("s3cret-admin"), "");
    assert_eq!((code, rules.trim()), (200, "{\"allow\":[],\"block\":[\"carol@example.test\"]}"));

    subscribe(&mut bob, "alice", "presence", 300, "");
    assert!(body(&bob.expect_notify(WAIT)).contains("<basic>open</basic>"));
    subscribe(&mut carol, "alice", "presence", 300, "");
    let n = carol.expect_notify(WAIT);
    assert!(body(&n).contains("<basic>closed</basic>"), "blocked: offline, not 403\n{n}");

    alice.publish(PIDF_AWAY, None, 300);
    assert!(body(&bob.expect_notify(WAIT)).contains("rpid:away"));
    let n = carol.expect_notify(WAIT);
    assert!(body(&n).contains("<basic>closed</basic>") && !body(&n).contains("away"), "{n}");

    alice.new_call("winfo");
    subscribe(&mut alice, "alice", "presence.winfo", 300, "");
    let n = alice.expect_notify(WAIT);
    assert_eq!(header(&n, "Content-Type"), Some("application/watcherinfo+xml"));
    let b = body(&n);
    assert!(b.contains("status=\"active\" event=\"subscribe\">sip:bob@example.test</watcher>"), "{b}");
    assert!(b.contains(">sip:carol@example.test</watcher>"), "{b}");

    // A user manages their own rules with HTTP digest (their SIP password); credentials made for
    // one path do not open another.
    let (code, head, _) = server.http_raw("GET", "/users/alice/presence-rules", None, "");
    assert_eq!(code, 401);
    let challenge = head.lines().find_map(|l| l.strip_prefix("www-authenticate: ")).expect("challenge");
    let nonce = challenge.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap();
    let md5 = |s: String| hex::encode(<md5::Md5 as md5::Digest>::digest(s));
    let ha1 = md5("alice:example.test:alice-password".into());
    let creds = |path: &str, nc: &str| {
        let response = md5(format!("{ha1}:{nonce}:{nc}:c1:auth:{}", md5(format!("GET:{path}"))));
        format!(
            "Digest username=\"alice\", realm=\"example.test\", nonce=\"{nonce}\", uri=\"{path}\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"c1\""
        )
    };
    let (code, _, rules) = server.http_raw(
        "GET",
        "/users/alice/presence-rules",
        Some(&creds("/users/alice/presence-rules", "00000001")),
        "",
    );
    assert_eq!(code, 200, "{rules}");
    assert!(rules.contains("carol@example.test"));
    let (code, _, _) =
        server.http_raw("GET", "/users/alice/contacts", Some(&creds("/users/alice/presence-rules", "00000002")), "");
    assert_eq!(code, 401, "credentials for another path are refused");
    let (code, _, _) =
        server.http_raw("GET", "/users/bob/presence-rules", Some(&creds("/users/bob/presence-rules", "00000003")), "");
    assert_eq!(code, 401, "alice's password does not open bob's rules");

    // Unblocking shows carol the real state at once.
    let (code, _) = server.http("PUT", "/users/alice/presence-rules", Some("s3cret-admin"), "{\"block\":[]}");
    assert_eq!(code, 200);
    assert!(body(&carol.expect_notify(WAIT)).contains("rpid:away"));
}

#[test]
fn resource_list_subscription_carries_fifty_contacts_then_partial_state() {
    let token_dir = tempfile::tempdir().unwrap();
    let token = token_dir.path().join("admin-token");
    std::fs::write(&token, "tok").unwrap();
    let server = Server::start_with_users(51, &format!("[api]\nadmin_token_file = {:?}\n", token));
    let contacts: Vec<String> = (1..=50).map(|i| format!("\"u{i}@example.test\"")).collect();
    let (code, b) =
        server.http("PUT", "/users/u0/contacts", Some("tok"), &format!("{{\"contacts\":[{}]}}", contacts.join(",")));
    assert_eq!(code, 200, "{b}");
    let log = server.log_text();
    let audit = log.lines().find(|l| l.contains("contact list set")).unwrap_or_else(|| panic!("no audit line:\n{log}"));
    assert!(audit.contains("administrator (API token)") && audit.contains("u0@example.test"), "{audit}");

    let mut owner = Ua::new("u0", server.sip);
    let uri = "sip:u0+contacts@example.test";
    let without = owner.send_authenticated("SUBSCRIBE", uri, uri, "Event: presence\r\n", "");
    assert_eq!(status(&without), 421, "lists need Supported: eventlist\n{without}");
    owner.new_call("rls");
    let r = owner.send_authenticated(
        "SUBSCRIBE",
        uri,
        uri,
        "Event: presence\r\nSupported: eventlist\r\nExpires: 300\r\n",
        "",
    );
    assert_eq!(status(&r), 200, "{r}");
    let n = owner.expect_notify(WAIT);
    assert!(header(&n, "Content-Type").unwrap().starts_with("multipart/related;type=\"application/rlmi+xml\""), "{n}");
    assert_eq!(header(&n, "Require"), Some("eventlist"));
    assert!(body(&n).contains("fullState=\"true\""));
    assert_eq!(body(&n).matches("<resource ").count(), 50);
    assert_eq!(body(&n).matches("application/pidf+xml").count(), 50);

    let mut u7 = Ua::new("u7", server.sip);
    u7.publish(&PIDF_AWAY.replace("alice", "u7"), None, 300);
    let n = owner.expect_notify(WAIT);
    let b = body(&n);
    assert!(b.contains("fullState=\"false\""), "{b}");
    assert_eq!(b.matches("<resource ").count(), 1, "{b}");
    assert!(b.contains("uri=\"sip:u7@example.test\"") && b.contains("rpid:away"), "{b}");
    assert_eq!(server.metric("parley_subscriptions"), 1.0, "one dialog for the whole list");
}

#[test]
fn registrations_publications_and_subscriptions_survive_kill_9() {
    let mut server = Server::start_with_users(100, "");
    let mut uas: Vec<Ua> = (0..100).map(|i| Ua::new(&format!("u{i}"), server.sip)).collect();
    for ua in uas.iter_mut() {
        assert_eq!(status(&ua.register(600)), 200);
    }
    let mut etags = Vec::new();
    for ua in uas.iter_mut().take(10) {
        etags.push(ua.publish(&PIDF_ONLINE.replace("alice", &ua.user.clone()), None, 600));
    }
    // Every user watches u0.
    for ua in uas.iter_mut() {
        subscribe(ua, "u0", "presence", 600, "");
        ua.expect_notify(WAIT);
    }
    assert_eq!(server.metric("parley_subscriptions"), 100.0);

    server.kill_and_restart();
    assert_eq!(server.metric("parley_registrations"), 100.0);
    assert_eq!(server.metric("parley_subscriptions"), 100.0);
    assert!(server.log_text().contains("subscriptions=100"), "restored subscriptions are logged");

    // The next change reaches every watcher without re-subscribing; the etag still works.
    let first = uas[0].user.clone();
    uas[0].publish(&PIDF_AWAY.replace("alice", &first), Some(&etags[0]), 600);
    for ua in &uas {
        let n = ua.expect_notify(WAIT);
        assert!(body(&n).contains("rpid:away"), "{}: {n}", ua.user);
    }
}

#[test]
fn one_change_fans_out_to_a_thousand_watchers() {
    // A thousand watchers from one address, each sending twice and answering a NOTIFY without
    // pause, pass the per-address limit (1,000 messages a second, a burst of 2,000) on a fast
    // machine, and these user agents do not retransmit: the limit is overload.rs's business.
    let server = Server::start_with_users(1001, "[limits]\nmax_messages_per_source = 0\n");
    let mut watchers: Vec<Ua> = (1..=1000).map(|i| Ua::new(&format!("u{i}"), server.sip)).collect();
    for w in watchers.iter_mut() {
        subscribe(w, "u0", "presence", 600, "");
        w.expect_notify(WAIT);
    }
    assert_eq!(server.metric("parley_subscriptions"), 1000.0);
    let mut presentity = Ua::new("u0", server.sip);
    presentity.publish(&PIDF_AWAY.replace("alice", "u0"), None, 600);
    // Count every NOTIFY; how long the last one takes is the benchmark's business, not this test's.
    let delivered = watchers.iter().filter(|w| body(&w.expect_notify(WAIT)).contains("rpid:away")).count();
    assert_eq!(delivered, 1000);
    let log = std::fs::read_to_string(server.dir.path().join("logs/parley.log")).unwrap();
    assert!(log.contains("home server ready"), "the logs volume holds the server's log");
}
