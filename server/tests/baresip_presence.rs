//! Presence with a real client: Debian's baresip 1.0.0 (libre 1.1.0) as bob over TLS, with the
//! contact.so and presence.so modules. bob's contacts file lists alice with `;presence=p2p`, so
//! baresip subscribes to her presence and shows each change; with `pubint` on the account it also
//! PUBLISHes bob's own state, which a watcher of bob (carol, the UDP test UA) receives.
//!
//! What baresip 1.0.0's presence module does (checked against the module's strings and source):
//! - the subscriber reads a NOTIFY's PIDF as `<basic>` open/closed, overridden by `<rpid:away/>`
//!   (shown as Offline: 1.0.0 has no "away" state), `<rpid:busy/>` or `<rpid:on-the-phone/>`
//!   (Busy). A change from a known state is logged as `<sip:alice@example.test> changed status
//!   from X to Y` (the first NOTIFY, from Unknown, is not); `/contacts` lists the current state.
//! - the publisher (account `pubint` > 0) PUBLISHes 10 ms after start with `<basic>unknown</basic>`
//!   and again, without SIP-If-Match, on REGISTER_OK with `<basic>open</basic>` (a tuple `t4109`
//!   with bob's AOR as contact) when the first 200 has not arrived yet, which is the usual case: two
//!   publications. It keeps the SIP-ETag of whichever 200 arrives last and refreshes and modifies
//!   only that one (`/presence_offline`, `/presence_online` publish `closed` / `open`); the other
//!   stays until it expires. When the kept one is the `unknown` publication, the stray `open` one
//!   outranks bob's later `closed` (the server composes devices most-available-first), so the test
//!   uses a short `pubint` and lets the stray publication expire before bob goes offline.
//! - like registration, SUBSCRIBE and PUBLISH need the server to offer MD5 only (see baresip.rs).

mod support;

use std::time::{Duration, Instant};
use support::Server;
use support::baresip::{Baresip, plain};
use support::ua::{Ua, body, header, status};

/// baresip's publication interval (s): short, so that a stray start-up publication expires soon.
const PUBINT: u32 = 4;
use support::pidf::{PIDF_AWAY, PIDF_ONLINE};

/// Receives NOTIFYs (answering each 200) until one whose body satisfies `want`.
fn notify_until(ua: &Ua, baresip: &Baresip, server: &Server, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(n) = ua.recv_request("NOTIFY", left) else { break };
        ua.answer(&n, 200);
        if want(body(&n)) {
            return n;
        }
        seen.push(n);
    }
    panic!(
        "{}: no NOTIFY with {what}; got:\n{}\nbaresip:\n{}\nserver:\n{}",
        ua.user,
        seen.join("\n----\n"),
        baresip.output(),
        server.log_text()
    );
}

#[test]
fn baresip_publishes_its_presence_and_follows_a_contact() {
    let server = Server::start_with("[auth]\nalgorithms = [\"MD5\"]\n[registrar]\nmin_expires = 1\n");
    let mut alice = Ua::new("alice", server.sip);
    assert_eq!(status(&alice.register(300)), 200);

    // carol watches bob before bob's client runs: bob is offline.
    let mut carol = Ua::new("carol", server.sip);
    let uri = "sip:bob@example.test";
    let r = carol.send_authenticated("SUBSCRIBE", uri, uri, "Event: presence\r\nExpires: 300\r\n", "");
    assert_eq!(status(&r), 200, "{r}");
    let n = carol.expect_notify(Duration::from_secs(5));
    assert!(body(&n).contains("<basic>closed</basic>"), "{n}");

    let account = format!(
        "<sip:bob@example.test;transport=tls>;auth_pass=bob-password;regint=300;pubint={PUBINT};\
         outbound=\"sip:{}:{};transport=tls\"",
        server.tls.ip(),
        server.tls.port()
    );
    let mut baresip = Baresip::start(
        &server.dir.path().join("baresip"),
        &server.cert(),
        &account,
        // presence.so finds the UAs and contacts that account.so and contact.so created.
        &["contact.so", "presence.so"],
        Some("\"Alice\" <sip:alice@example.test>;presence=p2p\n"),
        &["-s", "-t", "35"], // SIP trace; quits by itself even if the test process dies
    );

    let out = baresip.wait_for(&server, "200 to REGISTER", Duration::from_secs(10), |t| {
        t.contains("bob@example.test: {0/TLS/v4} 200 OK") || t.contains("reg: ")
    });
    assert!(out.contains("{0/TLS/v4} 200 OK () [1 binding]"), "baresip did not register:\n{out}");
    let registered = Instant::now();

    // baresip publishes bob's state (after one 407) and carol, watching bob, is notified of it:
    // the published tuple (baresip's id t4109, bob's AOR as contact), not just "registered".
    let n = notify_until(&carol, &baresip, &server, "bob's published PIDF", |b| {
        b.contains("t4109") && b.contains("<basic>open</basic>")
    });
    assert_eq!(header(&n, "Content-Type"), Some("application/pidf+xml"), "{n}");
    let publishes = server.metric("parley_sip_requests_total{method=\"PUBLISH\"}");
    assert!(publishes >= 2.0, "baresip's PUBLISH was challenged, then accepted: {publishes}");

    // baresip subscribed to alice (registered, nothing published: Online).
    wait_for_contacts(&mut baresip, &server, "Online Alice <sip:alice@example.test>");

    // alice's publications reach baresip: away (shown as Offline by 1.0.0), then online again.
    let etag = alice.publish(PIDF_AWAY, None, 300);
    baresip.wait_for(&server, "alice away", Duration::from_secs(5), |t| {
        plain(t).contains("<sip:alice@example.test> changed status from Online to Offline")
    });
    alice.publish(PIDF_ONLINE, Some(&etag), 300);
    baresip.wait_for(&server, "alice online", Duration::from_secs(5), |t| {
        plain(t).contains("<sip:alice@example.test> changed status from Offline to Online")
    });
    wait_for_contacts(&mut baresip, &server, "Online Alice <sip:alice@example.test>");

    // bob goes offline in baresip: a new PUBLISH, and carol sees bob closed although bob's
    // registration is still there; then online again. First baresip's stray start-up publication
    // (see above) expires: it was sent when the registration succeeded. baresip refreshes its own
    // at 90% of pubint, well before this.
    let stray_gone = registered + Duration::from_secs(u64::from(PUBINT)) + Duration::from_millis(700);
    std::thread::sleep(stray_gone.saturating_duration_since(Instant::now()));
    baresip.command("/presence_offline");
    let n = notify_until(&carol, &baresip, &server, "bob closed", |b| b.contains("<basic>closed</basic>"));
    assert!(body(&n).contains("t4109"), "the published tuple: {n}");
    assert_eq!(server.metric("parley_registrations"), 2.0, "alice and bob stay registered");
    assert!(server.metric("parley_sip_requests_total{method=\"PUBLISH\"}") > publishes);
    baresip.command("/presence_online");
    notify_until(&carol, &baresip, &server, "bob open again", |b| {
        b.contains("t4109") && b.contains("<basic>open</basic>")
    });
    let out = plain(&baresip.output());
    // baresip's first PUBLISH carries `<basic>unknown</basic>`, which RFC 3863 does not allow: the
    // server answers it 400. Every other publication must have been accepted.
    for line in out.lines().filter(|l| l.contains("publisher got error response")) {
        assert!(line.contains("400"), "{line}\n{out}");
    }
}

/// Runs `/contacts` until the listing after the last command shows `line` (within 8 s).
fn wait_for_contacts(baresip: &mut Baresip, server: &Server, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let before = baresip.output().len();
        baresip.command("/contacts");
        std::thread::sleep(Duration::from_millis(300));
        let out = baresip.output();
        let listing = plain(out.get(before..).unwrap_or(&out));
        if listing.contains("--- Contacts (1) ---") && listing.contains(line) {
            return;
        }
        if Instant::now() > deadline {
            panic!("baresip: /contacts does not show {line:?}; output:\n{out}\nserver:\n{}", server.log_text());
        }
    }
}
