//! `kill -9` of a Home Server in the middle of a burst of registrations: every registration a
//! client was answered 200 for is there after the restart (redb commits before the answer), and
//! the clients carry on without any manual step.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::Server;
use support::ua::{Ua, status};

const USERS: usize = 200;
const THREADS: usize = 4;

#[test]
fn every_acknowledged_registration_survives_kill_9_under_load() {
    let mut server = Server::start_with_users(USERS, "");
    let acked = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let (acked, stop, sent, target) = (acked.clone(), stop.clone(), sent.clone(), server.sip);
            std::thread::spawn(move || {
                let mut uas: Vec<(usize, Ua)> = (t..USERS)
                    .step_by(THREADS)
                    .map(|i| (i, Ua::new(&format!("u{i}"), target).retransmitting()))
                    .collect();
                for (i, ua) in uas.iter_mut() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    // Retransmitting, as real clients do: a request lost with the old process reaches
                    // the new one. Only a 200 counts as told.
                    if ua
                        .try_send_authenticated(
                            "REGISTER",
                            "sip:example.test",
                            &format!("sip:u{i}@example.test"),
                            "Expires: 600\r\n",
                            "",
                        )
                        .is_some_and(|r| status(&r) == 200)
                    {
                        acked.lock().unwrap().push((*i, format!("<sip:u{i}@{}>", ua.local())));
                    }
                }
                uas
            })
        })
        .collect();
    // Kill it once a third of the users are told they are registered, with more on their way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < USERS / 3 {
        assert!(Instant::now() < deadline, "registrations did not get going");
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    server.kill_and_restart();
    let uas: Vec<(usize, Ua)> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let acked = acked.lock().unwrap().clone();
    let bindings = server.metric("parley_registrations");
    println!(
        "{} REGISTERs sent, {} answered 200 before kill -9, {bindings} bindings after the restart",
        sent.load(Ordering::Relaxed),
        acked.len()
    );

    // Every client told 200 finds its binding; every client can sign in again without help.
    let mut uas: std::collections::HashMap<usize, Ua> = uas.into_iter().collect();
    for (i, contact) in &acked {
        let ua = uas.get_mut(i).unwrap();
        let answer = ua.query_bindings().expect("an answer after the restart");
        assert_eq!(status(&answer), 200, "{answer}");
        let contacts: Vec<&str> = answer.lines().filter(|l| l.to_ascii_lowercase().starts_with("contact:")).collect();
        assert!(
            contacts.iter().any(|c| c.contains(contact.as_str())),
            "u{i} was told 200 but its binding {contact} is gone: {contacts:?}"
        );
    }
    assert!(bindings >= acked.len() as f64);
    for ua in uas.values_mut().take(20) {
        assert_eq!(status(&ua.register(600)), 200);
    }
}
