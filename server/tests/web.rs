//! The web client in a real browser (Debian's headless Chromium, driven by puppeteer-core from
//! `web/test/browser.mjs`) against real servers over SIP on secure WebSocket: two pages sign in as
//! alice and bob, see each other come online and change status, and chat both ways; a wrong
//! password and an unreachable server are shown as such; a browser user and a baresip user
//! exchange messages; messages kept for an offline user, across a `kill -9` of the Home Server,
//! are shown once each when the user signs in in the browser; and the same chat through a
//! Front-End in front of a Home Server. Screenshots go to `<target>/tmp/web-screenshots/`.

mod support;

use std::time::Duration;
use support::baresip::Baresip;
use support::browser::{self, Scenario};
use support::cluster::{Ca, Node, file_directory, users_file};
use support::ua::{Ua, status};
use support::{Server, free_port, try_http};

const TOKEN: &str = "web-test-admin-token";
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(150);

/// A Home Server offering wss and the web client; the admin token file is written beside it.
fn web_server(extra: &str) -> (Server, String) {
    let (wss, web) = (free_port(), free_port());
    let token = std::env::temp_dir().join(format!("parley-web-token-{}-{wss}", std::process::id()));
    std::fs::write(&token, TOKEN).unwrap();
    let server = Server::start_with_listen(
        &format!("wss = \"127.0.0.1:{wss}\"\nweb = \"127.0.0.1:{web}\""),
        &format!("[web]\nroot = {:?}\n[api]\nadmin_token_file = {token:?}\n{extra}", browser::web_root()),
    );
    (server, format!("http://127.0.0.1:{web}/"))
}

fn set_contacts(ops: std::net::SocketAddr, user: &str, contacts: &[&str]) {
    let list = serde_json::json!({ "contacts": contacts }).to_string();
    let answer = try_http(ops, "PUT", &format!("/users/{user}/contacts"), Some(TOKEN), &list);
    assert_eq!(answer.as_ref().map(|a| a.0), Some(200), "PUT contacts of {user}: {answer:?}");
}

#[test]
fn two_browsers_sign_in_over_wss_see_presence_change_and_chat_both_ways() {
    if !browser::available() {
        return;
    }
    let (server, web) = web_server("");
    set_contacts(server.ops, "alice@example.test", &["bob@example.test"]);
    set_contacts(server.ops, "bob@example.test", &["alice@example.test"]);
    Scenario::start("chat", &web, &[]).finish(SCENARIO_TIMEOUT, &|| server.log_text());
    assert!(server.log_text().contains("transport=WSS"), "the browsers signed in over wss");
    assert!(server.metric("parley_messages_delivered_total") >= 2.0);
    for shot in ["web-alice.png", "web-bob.png", "web-bob-phone.png"] {
        assert!(browser::shots().join(shot).is_file(), "{shot} written");
    }
}

#[test]
fn a_wrong_password_and_an_unreachable_server_are_shown() {
    if !browser::available() {
        return;
    }
    let (server, web) = web_server("");
    let dead = free_port().to_string();
    Scenario::start("errors", &web, &[("PARLEY_DEAD_PORT", dead)]).finish(SCENARIO_TIMEOUT, &|| server.log_text());
    assert!(server.log_text().contains("authentication failed user=alice@example.test"));
}

#[test]
fn a_baresip_user_and_a_browser_user_exchange_messages() {
    if !browser::available() {
        return;
    }
    let (server, web) = web_server("");
    let account = format!(
        "<sip:carol@example.test>;auth_pass=carol-password;regint=300;outbound=\"sip:127.0.0.1:{};transport=udp\"",
        server.sip.port()
    );
    let mut carol = Baresip::start(
        &server.dir.path().join("baresip"),
        &server.cert(),
        &account,
        &["contact.so"],
        Some("<sip:alice@example.test>\n"),
        &[],
    );
    carol.wait_for(&server, "registration", Duration::from_secs(15), |t| t.contains("[1 binding]"));
    let env = [
        ("PARLEY_USER", "alice@example.test".to_string()),
        ("PARLEY_PEER", "carol@example.test".to_string()),
        ("PARLEY_TEXT", "hello carol, from the web".to_string()),
        ("PARLEY_EXPECT", "hello alice, from baresip".to_string()),
    ];
    let mut alice = Scenario::start("converse", &web, &env);
    alice.wait_step("sent", SCENARIO_TIMEOUT, &|| {
        format!("baresip:\n{}\nserver:\n{}", carol.output(), server.log_text())
    });
    carol.wait_for(&server, "alice's message", Duration::from_secs(10), |t| {
        t.contains("alice@example.test: \"hello carol, from the web\"")
    });
    carol.command("/message hello alice, from baresip");
    alice.finish(SCENARIO_TIMEOUT, &|| format!("baresip:\n{}\nserver:\n{}", carol.output(), server.log_text()));
}

#[test]
fn messages_kept_for_an_offline_user_across_kill_9_are_shown_once_in_the_browser() {
    if !browser::available() {
        return;
    }
    let (mut server, web) = web_server("");
    let mut alice = Ua::new("alice", server.sip);
    let to = "sip:bob@example.test";
    for text in ["first, while you were out", "second, while you were out"] {
        let answer = alice.send_authenticated("MESSAGE", to, to, "Content-Type: text/plain\r\n", text);
        assert_eq!(status(&answer), 202, "{answer}");
    }
    server.kill_and_restart();
    assert_eq!(server.metric("parley_offline_messages "), 2.0, "both kept across kill -9");
    let env = [
        ("PARLEY_USER", "bob@example.test".to_string()),
        ("PARLEY_PEER", "alice@example.test".to_string()),
        ("PARLEY_EXPECT", "first, while you were out|second, while you were out".to_string()),
    ];
    Scenario::start("offline", &web, &env).finish(SCENARIO_TIMEOUT, &|| server.log_text());
    assert_eq!(server.metric("parley_offline_messages_delivered_total"), 2.0, "each delivered once");
    assert_eq!(server.metric("parley_offline_messages "), 0.0);
}

#[test]
fn a_message_from_the_browser_to_an_offline_user_is_kept_and_shown_when_they_sign_in() {
    if !browser::available() {
        return;
    }
    let (server, web) = web_server("");
    Scenario::start("kept-from-browser", &web, &[]).finish(SCENARIO_TIMEOUT, &|| server.log_text());
    assert_eq!(server.metric("parley_offline_messages_stored_total"), 1.0);
    assert_eq!(server.metric("parley_offline_messages_delivered_total"), 1.0);
}

#[test]
fn a_lost_connection_is_shown_and_the_page_signs_in_again_by_itself() {
    if !browser::available() {
        return;
    }
    let (mut server, web) = web_server("");
    let env = [
        ("PARLEY_USER", "alice@example.test".to_string()),
        ("PARLEY_PEER", "bob@example.test".to_string()),
        ("PARLEY_EXPECT", "still there, alice?".to_string()),
    ];
    let mut alice = Scenario::start("reconnect", &web, &env);
    alice.wait_step("alice@example.test signed in", SCENARIO_TIMEOUT, &|| server.log_text());
    server.kill_and_restart();
    alice.wait_step("signed in again", SCENARIO_TIMEOUT, &|| server.log_text());
    let mut bob = Ua::new("bob", server.sip);
    let to = "sip:alice@example.test";
    let answer = bob.send_authenticated("MESSAGE", to, to, "Content-Type: text/plain\r\n", "still there, alice?");
    assert_eq!(status(&answer), 200, "delivered over the new connection: {answer}");
    let out = alice.finish(SCENARIO_TIMEOUT, &|| server.log_text());
    assert!(out.contains("step: connection lost shown"), "{out}");
}

#[test]
fn two_browsers_chat_through_a_front_end_over_wss() {
    if !browser::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let users = users_file(dir.path(), &[("alice", "home-1"), ("bob", "home-1")]);
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let home = Node::start_with(
        dir.path(),
        "home-1",
        &ca,
        &file_directory(&users),
        None,
        "",
        &format!("[api]\nadmin_token_file = {token:?}\n"),
    );
    let table = vec![("home-1".to_string(), home.internal)];
    let (wss, web) = (free_port(), free_port());
    let fe = Node::start_with(
        dir.path(),
        "fe-1",
        &ca,
        &file_directory(&users),
        Some(&table),
        &format!("wss = \"127.0.0.1:{wss}\"\nweb = \"127.0.0.1:{web}\""),
        &format!("[web]\nroot = {:?}\n", browser::web_root()),
    );
    set_contacts(home.ops, "alice@example.test", &["bob@example.test"]);
    set_contacts(home.ops, "bob@example.test", &["alice@example.test"]);
    let context = || format!("front-end:\n{}\nhome:\n{}", fe.log_text(), home.log_text());
    // The same chat as on the Home Server, contact list and presence included: the Front-End
    // routes the list subscription (`<user>+contacts`) to its owner's Home Server.
    let env = [("PARLEY_SHOT_PREFIX", "fe-".to_string())];
    Scenario::start("chat", &format!("http://127.0.0.1:{web}/"), &env).finish(SCENARIO_TIMEOUT, &context);
    assert!(fe.log_text().contains("listening on secure WebSocket"), "{}", context());
}
