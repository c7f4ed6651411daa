//! The scanners every SIP server on the internet meets, Debian's sipvicious: `svcrack` guessing
//! alice's password from a 1,000-word list that holds it finds nothing (the guessing address is
//! locked out after a few failures, and locked-out guesses are answered as wrong ones), alice
//! herself, on another address, still signs in, and `svwar` finds no user name.

mod support;

use std::process::Command;
use support::ua::{Ua, status};
use support::{Server, free_port, require_tool};

fn scanner(tool: &str, args: &[&str]) -> String {
    // `timeout` bounds a scanner that would wait for answers forever.
    let out = Command::new("timeout").arg("120").arg(tool).args(args).output().expect("run the scanner");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn svcrack_finds_no_password_and_svwar_no_user() {
    require_tool("svcrack");
    require_tool("svwar");
    let server = Server::start();
    let dir = server.dir.path();
    let mut words: Vec<String> = (0..1000).map(|i| format!("guess{i}")).collect();
    words[500] = "alice-password".into();
    std::fs::write(dir.join("words.txt"), words.join("\n") + "\n").unwrap();
    let port = server.sip.port().to_string();

    let out = scanner(
        "svcrack",
        &[
            "-u",
            "alice",
            "-d",
            dir.join("words.txt").to_str().unwrap(),
            "-p",
            &port,
            "-P",
            &free_port().to_string(),
            "127.0.0.1",
        ],
    );
    assert!(!out.contains("alice-password"), "svcrack found the password:\n{out}");
    assert!(out.contains("found nothing"), "{out}");
    assert_eq!(server.metric("parley_auth_lockouts_total"), 1.0);
    let refused = server.metric("parley_auth_refused_locked_total");
    assert!(refused >= 900.0, "most guesses were refused unchecked: {refused}");
    let log = server.log_text();
    assert!(log.contains("address locked out") && !log.contains("guess500"), "logged, without passwords");

    // alice on another machine is not locked out by the attacker's address.
    let mut alice = Ua::bound("alice", server.sip, "127.0.0.2");
    assert_eq!(status(&alice.register(60)), 200);

    let names: Vec<String> = ["alice", "bob", "carol", "admin", "zed", "100"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..50).map(|i| format!("u{i}")))
        .collect();
    std::fs::write(dir.join("names.txt"), names.join("\n") + "\n").unwrap();
    let out = scanner(
        "svwar",
        &[
            "-d",
            dir.join("names.txt").to_str().unwrap(),
            "-m",
            "REGISTER",
            "-p",
            &port,
            "-P",
            &free_port().to_string(),
            "127.0.0.1",
        ],
    );
    assert!(out.contains("found nothing"), "svwar told users apart:\n{out}");
}
