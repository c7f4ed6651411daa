//! Overload: a flood from one address at ten times the benchmark's sustainable rate (about 5,000
//! requests a second) costs only that address. Its datagrams are dropped unread, memory stays
//! flat, and clients on other addresses still register and message within a couple of seconds.

mod support;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::Server;
use support::ua::{Ua, status};

/// Datagrams a second the flood sends: ten times the benchmark's sustainable REGISTER rate.
const FLOOD_RATE: u64 = 50_000;

fn flood(target: std::net::SocketAddr, stop: Arc<AtomicBool>) -> u64 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Paced in 5 ms slices: each slice sends what the rate allows so far.
        let due = started.elapsed().as_micros() as u64 * FLOOD_RATE / 1_000_000;
        while sent < due {
            let options = format!(
                "OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKflood{sent}\r\n\
                 From: <sip:flood@example.test>;tag=f\r\nTo: <sip:example.test>\r\nCall-ID: flood-{sent}\r\n\
                 CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            );
            let _ = socket.send_to(options.as_bytes(), target);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    sent
}

#[test]
fn a_flood_from_one_address_costs_only_that_address() {
    let server = Server::start();
    let mut alice = Ua::bound("alice", server.sip, "127.0.0.2").retransmitting();
    let mut bob = Ua::bound("bob", server.sip, "127.0.0.3").retransmitting();
    let rss_before = server.rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let flood_began = Instant::now();
    let flooder = {
        let (stop, target) = (stop.clone(), server.sip);
        std::thread::spawn(move || flood(target, stop))
    };
    // Two seconds' worth of flood dropped first, so the clients meet it in full swing.
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.metric("parley_overload_dropped_total") < (2 * FLOOD_RATE) as f64 * 0.8 {
        assert!(Instant::now() < deadline, "the flood was never limited");
        std::thread::sleep(Duration::from_millis(20));
    }

    let started = Instant::now();
    assert_eq!(status(&bob.register(300)), 200);
    assert_eq!(status(&alice.register(300)), 200);
    let registered = started.elapsed();
    // Bob's device answers on its own thread, as a device would.
    let bob = std::thread::spawn(move || {
        let request = bob.recv_request("MESSAGE", Duration::from_secs(10)).expect("bob gets the message");
        bob.answer(&request, 200);
    });
    let started = Instant::now();
    let answer = alice.send_authenticated("MESSAGE", "sip:bob@example.test", "sip:bob@example.test", "", "hi");
    let messaged = started.elapsed();
    assert_eq!(status(&answer), 200, "{answer}");
    bob.join().unwrap();
    let rss_during = server.rss_kib();

    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().unwrap();
    let dropped = server.metric("parley_overload_dropped_total");
    let log = server.log_text();
    let said = log.lines().filter(|l| l.contains("dropped unread") && l.contains("max_messages_per_source")).count();
    // Both UDP readers drop datagrams: one warning every 10 s between them, not one each.
    let most = flood_began.elapsed().as_secs() as usize / 10 + 1;
    assert!(
        (1..=most).contains(&said),
        "the drops are logged, at most every 10 s ({said} lines, {most} at most):\n{log}"
    );
    println!(
        "flood: {sent} datagrams at {FLOOD_RATE}/s, {dropped} dropped unread; two sign-ins took {registered:?}, \
         a message {messaged:?}; RSS {rss_before} KiB before, {rss_during} KiB during"
    );
    assert!(registered < Duration::from_secs(3), "signing in took {registered:?} under the flood");
    assert!(messaged < Duration::from_secs(3), "the message took {messaged:?} under the flood");
    assert!(dropped > sent as f64 / 2.0, "most of the flood is dropped unread: {dropped} of {sent}");
    assert!(rss_during < rss_before + 50 * 1024, "memory grew from {rss_before} to {rss_during} KiB");
}

/// The server turns transparent huge pages off for itself: a huge page's fault zeroes 2 MiB at
/// once (and may first compact memory), which held a thread for 20 to 40 ms in the benchmark.
#[test]
fn the_server_runs_without_transparent_huge_pages() {
    let server = Server::start();
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let thp = status.lines().find(|l| l.starts_with("THP_enabled:")).expect("THP_enabled in /proc/PID/status");
    assert_eq!(thp.split_whitespace().nth(1), Some("0"), "{thp}");
}
