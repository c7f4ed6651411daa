//! `parley-server probe` against real servers: a Home Server over TLS (verifying its certificate)
//! and UDP, a Front-End in front of Home Servers, and a server whose certificate the CA did not
//! sign (the probe refuses it, as a client should).

mod support;

use support::Server;
use support::cluster::{Ca, Node, users_file};

fn probe(server: &str, extra: &[&str], dir: &std::path::Path) -> support::Out {
    let (a, b) = (dir.join("alice.pw"), dir.join("bob.pw"));
    std::fs::write(&a, "alice-password\n").unwrap();
    std::fs::write(&b, "bob-password\n").unwrap();
    let mut args = vec!["probe", "--server", server, "--user", "alice@example.test", "--peer", "bob@example.test"];
    let (a, b) = (a.to_str().unwrap().to_string(), b.to_str().unwrap().to_string());
    args.extend(["--password-file", &a, "--peer-password-file", &b]);
    args.extend(extra);
    support::run_parley(&args, &[], "")
}

#[test]
fn probe_passes_against_a_home_server_over_tls_and_udp() {
    let server = Server::start();
    let tls = server.tls.to_string();
    let cert = server.cert();
    let out = probe(&tls, &["--ca", cert.to_str().unwrap(), "--server-name", "example.test"], server.dir.path());
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    for step in ["connect", "register alice@example.test", "watches", "publishes", "messages", "sign out"] {
        assert!(out.stdout.lines().any(|l| l.starts_with("ok ") && l.contains(step)), "{step}:\n{}", out.stdout);
    }
    assert!(out.stdout.contains("certificate verified"), "{}", out.stdout);
    let out = probe(&server.sip.to_string(), &["--transport", "udp"], server.dir.path());
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert_eq!(server.metric("parley_registrations"), 0.0, "the probe signs out again");
    // Every request answered is timed: two probes, each with four REGISTERs answered (two 401s).
    let timed = server.metric("parley_sip_request_duration_seconds_count{method=\"REGISTER\"}");
    assert!(timed >= 8.0, "{timed}");
}

#[test]
fn probe_passes_through_a_front_end_and_refuses_a_certificate_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "deployment-ca");
    let users = users_file(dir.path(), &[("alice", "home-1"), ("bob", "home-2")]);
    let homes: Vec<Node> = (1..=2).map(|i| Node::start(dir.path(), &format!("home-{i}"), &ca, &users, None)).collect();
    let table: Vec<_> = homes.iter().map(|h| (h.name.clone(), h.internal)).collect();
    let fe = Node::start(dir.path(), "fe-1", &ca, &users, Some(&table));
    let tls = fe.tls.to_string();
    let out = probe(&tls, &["--ca", ca.cert.to_str().unwrap()], dir.path());
    assert!(out.ok, "{}{}\n{}", out.stdout, out.stderr, fe.log_text());

    let other = Ca::new(dir.path(), "other-ca");
    let out = probe(&tls, &["--ca", other.cert.to_str().unwrap()], dir.path());
    assert!(!out.ok, "a server certificate from another CA is refused:\n{}", out.stdout);
    assert!(out.stdout.starts_with("FAIL connect"), "{}", out.stdout);
    assert!(
        out.stdout.contains("TLS handshake") || out.stderr.contains("TLS handshake"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}
