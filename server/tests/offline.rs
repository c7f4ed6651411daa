//! Messages for a user with no device, with real processes: alice (over UDP) messages bob while
//! he is signed out; each is kept and answered 202, and one over the per-user bound gets 480. The
//! Home Server is killed (`kill -9`) and restarted on its data; then bob signs in with Debian's
//! baresip and gets the kept messages in order, each once, with the original sender; the server
//! then holds none, also after another `kill -9`.

mod support;

use std::time::Duration;
use support::Server;
use support::baresip::{Baresip, plain};
use support::ua::{Ua, status};

#[test]
fn messages_kept_for_an_offline_user_survive_kill_9_and_reach_baresip_once_in_order() {
    let mut server = Server::start_with("[offline]\nmax_per_user = 2\n");
    let mut alice = Ua::new("alice", server.sip);
    let to = "sip:bob@example.test";
    let texts = ["kept one: hello bob", "kept two: are you there?"];
    for text in texts {
        let answer = alice.send_authenticated("MESSAGE", to, to, "Content-Type: text/plain\r\n", text);
        assert_eq!(status(&answer), 202, "{answer}");
    }
    let over = alice.send_authenticated("MESSAGE", to, to, "Content-Type: text/plain\r\n", "one too many");
    assert_eq!(status(&over), 480, "over the per-user bound: {over}");
    assert_eq!(server.metric("parley_offline_messages_stored_total"), 2.0);

    // Killed between storing and delivering.
    server.kill_and_restart();
    assert_eq!(server.metric("parley_offline_messages "), 2.0, "kept across kill -9");

    let account = format!(
        "<sip:bob@example.test>;auth_pass=bob-password;regint=300;outbound=\"sip:127.0.0.1:{};transport=udp\"",
        server.sip.port()
    );
    let bob = Baresip::start(&server.dir.path().join("baresip"), &server.cert(), &account, &[], None, &[]);
    let out = bob.wait_for(&server, "both kept messages", Duration::from_secs(20), |t| {
        texts.iter().all(|m| t.contains(&format!("sip:alice@example.test: \"{m}\"")))
    });
    let out = plain(&out);
    let (first, second) = (out.find(texts[0]).unwrap(), out.find(texts[1]).unwrap());
    assert!(first < second, "in the order sent:\n{out}");
    // Delivered (2xx) and deleted: the server holds none, and says each was delivered once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.metric("parley_offline_messages ") != 0.0 {
        assert!(std::time::Instant::now() < deadline, "still held:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.metric("parley_offline_messages_delivered_total"), 2.0);
    assert!(!out.contains("one too many"), "the refused message was not kept:\n{out}");
    server.kill_and_restart();
    assert_eq!(server.metric("parley_offline_messages "), 0.0, "the deletions were durable");
    let out = plain(&bob.output());
    for m in texts {
        assert_eq!(out.matches(m).count(), 1, "{m:?} shown once:\n{out}");
    }
}
