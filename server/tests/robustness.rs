//! What a hostile or broken peer can do: malformed input over UDP and TCP, retransmissions,
//! and a SIGTERM in the middle of things.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::Server;
use support::ua::{Ua, status};

const VALID: &str = "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKbad;rport\r\n\
    From: <sip:alice@example.test>;tag=1\r\nTo: <sip:bob@example.test>\r\nCall-ID: bad-1\r\nCSeq: 1 OPTIONS\r\n\
    Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n";

/// Limits small enough that an oversized message still fits in one UDP datagram.
const SMALL_LIMITS: &str = "[limits]\nmax_message_bytes = 8192\nmax_body_bytes = 4096\n";

fn replace_bytes(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    match data.windows(from.len()).position(|w| w == from) {
        Some(i) => [&data[..i], to, &data[i + from.len()..]].concat(),
        None => data.to_vec(),
    }
}

/// At least 50 broken messages: truncations, bad lengths, garbage headers, oversize, noise.
fn malformed_inputs() -> Vec<(String, Vec<u8>)> {
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, data: Vec<u8>| cases.push((name.to_string(), data));
    for cut in [10, 25, 40, 60, 90, 120, 150, 200, 230] {
        add(&format!("truncated at {cut}"), VALID.as_bytes()[..cut.min(VALID.len() - 3)].to_vec());
    }
    let replace = |from: &str, to: &str| VALID.replacen(from, to, 1).into_bytes();
    for (name, from, to) in [
        ("content-length letters", "Content-Length: 0", "Content-Length: abc"),
        ("content-length negative", "Content-Length: 0", "Content-Length: -5"),
        ("content-length too big", "Content-Length: 0", "Content-Length: 500"),
        ("content-length huge", "Content-Length: 0", "Content-Length: 99999999999999999999"),
        ("content-length twice", "Content-Length: 0", "Content-Length: 0\r\nContent-Length: 7"),
        ("garbage second via", "Max-Forwards", "Via: \u{1}\u{2}garbage;;;==\r\nMax-Forwards"),
        ("garbage top via", "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKbad;rport", "Via: garbage"),
        ("via wrong version", "SIP/2.0/UDP 127.0.0.1:9", "SIP/3.0/UDP 127.0.0.1:9"),
        ("via bad port", "127.0.0.1:9;", "127.0.0.1:99999999;"),
        ("via unterminated ipv6", "127.0.0.1:9;", "[::1:9;"),
        ("missing from", "From: <sip:alice@example.test>;tag=1\r\n", ""),
        ("missing to", "To: <sip:bob@example.test>\r\n", ""),
        ("missing call-id", "Call-ID: bad-1\r\n", ""),
        ("missing cseq", "CSeq: 1 OPTIONS\r\n", ""),
        ("cseq no method", "CSeq: 1 OPTIONS", "CSeq: 1"),
        ("cseq letters", "CSeq: 1 OPTIONS", "CSeq: one OPTIONS"),
        ("cseq method mismatch", "CSeq: 1 OPTIONS", "CSeq: 1 MESSAGE"),
        ("max-forwards garbage", "Max-Forwards: 70", "Max-Forwards: lots"),
        ("max-forwards too big", "Max-Forwards: 70", "Max-Forwards: 70000"),
        ("header without colon", "Max-Forwards: 70", "Max-Forwards 70"),
        ("bad header name", "Max-Forwards: 70", "Max Forwards: 70"),
        ("continuation first", "Via:", " folded\r\nVia:"),
        ("request line extra field", "OPTIONS sip:127.0.0.1 SIP/2.0", "OPTIONS sip:127.0.0.1 SIP/2.0 extra"),
        ("request line missing uri", "OPTIONS sip:127.0.0.1 SIP/2.0", "OPTIONS SIP/2.0"),
        ("request line bad version", "sip:127.0.0.1 SIP/2.0", "sip:127.0.0.1 SIP/1.0"),
        ("request line bad method", "OPTIONS sip:", "OPT(IONS sip:"),
        ("request uri without scheme", "OPTIONS sip:127.0.0.1", "OPTIONS 127.0.0.1"),
        ("empty start line", "OPTIONS sip:127.0.0.1 SIP/2.0", ""),
        ("lowercase version", "SIP/2.0\r\nVia", "sip/2.0\r\nVia"),
        ("nul in header", "Call-ID: bad-1", "Call-ID: bad\u{0}-1"),
        ("status line response garbage", "OPTIONS sip:127.0.0.1 SIP/2.0", "SIP/2.0 abc Bad"),
        ("status code out of range", "OPTIONS sip:127.0.0.1 SIP/2.0", "SIP/2.0 999 Odd"),
    ] {
        add(name, replace(from, to));
    }
    let mut latin1 = VALID.as_bytes().to_vec();
    latin1.splice(60..60, [0xff, 0xfe, 0xfd]);
    add("invalid utf-8 in headers", latin1);
    add(
        "oversized header",
        VALID
            .replacen("Max-Forwards: 70", &format!("X-Big: {}\r\nMax-Forwards: 70", "a".repeat(20_000)), 1)
            .into_bytes(),
    );
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    add(
        "too many headers",
        VALID.replacen("Max-Forwards: 70\r\n", &format!("{many}Max-Forwards: 70\r\n"), 1).into_bytes(),
    );
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..8 {
        let noise: Vec<u8> = (0..64 + i * 97)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        add(&format!("binary noise {i}"), noise);
    }
    add("only spaces and tabs", b" \t \t".to_vec());
    add("headers but no start line", b"\r\nVia: SIP/2.0/UDP a\r\n\r\n".to_vec());
    add("sip-ish noise", b"INVITE INVITE INVITE\r\n\r\n".to_vec());
    cases
}

/// A 400-class answer must name the problem in its reason phrase.
fn check_answer(name: &str, answer: &str) {
    let code = status(answer);
    assert!(code == 400 || code == 513, "{name}: expected 400/513, got {answer}");
    let reason = answer.lines().next().unwrap_or("").splitn(3, ' ').nth(2).unwrap_or("");
    assert!(reason.len() > 3 && reason != "Bad Request", "{name}: reason should say what is wrong: {reason:?}");
}

#[test]
fn malformed_input_over_udp_gets_400_or_is_dropped() {
    let server = Server::start_with(SMALL_LIMITS);
    let ua = Ua::new("alice", server.sip);
    let cases = malformed_inputs();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    let mut answered = 0;
    for (name, data) in &cases {
        ua.send_raw(data);
        if let Some(answer) = ua.recv(Duration::from_millis(200)) {
            check_answer(name, &answer);
            answered += 1;
        }
    }
    assert!(answered >= 30, "most malformed requests with a usable Via are answered: {answered}");
    let mut ok = Ua::new("carol", server.sip);
    let r = ok.send_authenticated("OPTIONS", "sip:127.0.0.1", "sip:127.0.0.1", "", "");
    assert_eq!(status(&r), 200, "server still answers OPTIONS: {r}");
    assert!(server.metric("parley_sip_malformed_requests_total") >= answered as f64);
    assert!(!server.log_text().contains("panicked"), "{}", server.log_text());
}

#[test]
fn malformed_input_over_tcp_gets_400_or_a_closed_connection() {
    let server = Server::start_with(SMALL_LIMITS);
    let mut answered = 0;
    for (name, data) in malformed_inputs() {
        let mut s = TcpStream::connect(server.sip).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let data = replace_bytes(&data, b"SIP/2.0/UDP", b"SIP/2.0/TCP");
        let _ = s.write_all(&data);
        let mut buf = vec![0u8; 65_536];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {} // closed or nothing: dropped
            Ok(n) => {
                check_answer(&name, &String::from_utf8_lossy(&buf[..n]));
                answered += 1;
            }
        }
    }
    assert!(answered >= 20, "answered {answered}");
    let mut s = TcpStream::connect(server.sip).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(VALID.replace("SIP/2.0/UDP", "SIP/2.0/TCP").as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"SIP/2.0 200 OK"), "{}", String::from_utf8_lossy(&buf[..n]));
}

#[test]
fn connections_that_send_nothing_or_trickle_a_header_are_closed_after_the_message_timeout() {
    let server = Server::start_with("[limits]\nmessage_timeout_secs = 1\nmax_connections_per_ip = 8\n");
    let started = Instant::now();
    // All of this address's connections, held by a slow client: silent ones and half-headers.
    let mut stalled: Vec<TcpStream> = (0..8)
        .map(|i| {
            let mut s = TcpStream::connect(server.sip).unwrap();
            if i % 2 == 1 {
                s.write_all(b"REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;bran").unwrap();
            }
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    for s in &mut stalled {
        let mut buf = [0u8; 64];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "the server closes a stalled connection");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "closed after {took:?}, not the 600 s idle timeout");
    // The address may connect again (once the server has counted the closed ones off), and a
    // complete request is answered.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(server.sip).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(VALID.replace("SIP/2.0/UDP", "SIP/2.0/TCP").as_bytes());
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        if buf[..n].starts_with(b"SIP/2.0 200 OK") {
            break;
        }
        assert!(Instant::now() < deadline, "the address cannot connect again: {}", String::from_utf8_lossy(&buf[..n]));
    }
}

#[test]
fn a_request_stuffed_with_via_values_is_refused_without_echoing_them() {
    let server = Server::start();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let local = socket.local_addr().unwrap();
    let extra: Vec<String> =
        (0..500).map(|i| format!("SIP/2.0/UDP 192.0.2.{}:5060;branch=z9hG4bK{i}", i % 250)).collect();
    let request = format!(
        "OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKtop;rport, {}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@example.test>;tag=1\r\nTo: <sip:example.test>\r\nCall-ID: vias\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        extra.join(", ")
    );
    socket.send_to(request.as_bytes(), server.sip).unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, _) = socket.recv_from(&mut buf).expect("an answer");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        answer.starts_with("SIP/2.0 400 ") && answer.contains("500 Via") || answer.contains("501 Via"),
        "{answer:.300}"
    );
    assert!(n < 1024, "the answer is small ({n} bytes), not an echo of {} bytes", request.len());
}

#[test]
fn a_message_larger_than_the_limit_over_tcp_gets_513_before_the_connection_closes() {
    let server = Server::start();
    let mut s = TcpStream::connect(server.sip).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = "x".repeat(70_000);
    let request = format!(
        "MESSAGE sip:bob@example.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKbig\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=1\r\nTo: <sip:bob@example.test>\r\n\
         Call-ID: big\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // The server may close before it has read everything: what matters is what it said first.
    let _ = s.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("SIP/2.0 513 "), "{answer:.200}");
    assert!(answer.contains("Call-ID: big"), "{answer:.400}");
}

#[test]
fn retransmitted_register_is_answered_without_reprocessing() {
    let server = Server::start();
    let mut alice = Ua::new("alice", server.sip);
    let first = alice.register(300);
    assert_eq!(status(&first), 200, "{first}");
    // Reprocessing would see a replayed nonce count and answer 401 stale; the transaction layer
    // must answer with the very same 200 instead.
    alice.send_raw(alice.last_request.clone().as_bytes());
    let again = alice.recv_response(Duration::from_secs(5)).expect("retransmitted response");
    assert_eq!(again, first);
    assert_eq!(server.metric("parley_sip_retransmissions_absorbed_total"), 1.0);
    assert_eq!(server.metric("parley_registrations"), 1.0);
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = Server::start();
    let mut alice = Ua::new("alice", server.sip);
    assert_eq!(status(&alice.register(300)), 200);
    let status = server.terminate();
    assert!(status.success(), "exit status {status}; log:\n{}", server.log_text());
    assert!(server.log_text().contains("shutting down"), "{}", server.log_text());
    assert!(!server.is_running());
}

#[test]
fn unknown_and_unsupported_methods_get_501_or_405_with_allow() {
    let server = Server::start();
    let ua = Ua::new("alice", server.sip);
    // SERVICE and BENOTIFY are what LCS-dialect clients (pidgin-sipe) send.
    for (method, code) in [("SERVICE", 501), ("BENOTIFY", 501), ("INVITE", 405), ("INFO", 405)] {
        let req = VALID.replace("OPTIONS sip:", &format!("{method} sip:")).replace("1 OPTIONS", &format!("1 {method}"));
        let req = req.replace("z9hG4bKbad", &format!("z9hG4bK{method}"));
        ua.send_raw(req.as_bytes());
        let answer = ua.recv_response(Duration::from_secs(5)).expect("answer");
        assert_eq!(status(&answer), code, "{method}: {answer}");
        assert!(answer.contains("\r\nAllow: REGISTER, MESSAGE, OPTIONS, SUBSCRIBE, PUBLISH\r\n"), "{method}: {answer}");
    }
}

#[test]
fn compact_folded_lf_only_request_is_understood() {
    let server = Server::start();
    let ua = Ua::new("alice", server.sip);
    let req = "OPTIONS sip:127.0.0.1 SIP/2.0\nv: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKcompact;rport\n\
        f: <sip:alice@example.test>\n ;tag=1\nt: <sip:bob@example.test>\ni: compact-1\nCSeq: 1 OPTIONS\nl: 0\n\n";
    ua.send_raw(req.as_bytes());
    let answer = ua.recv_response(Duration::from_secs(5)).expect("answer");
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(answer.contains("From: <sip:alice@example.test> ;tag=1"), "{answer}");
}

#[test]
fn connections_beyond_the_per_address_limit_are_closed() {
    let server = Server::start_with("[limits]\nmax_connections_per_ip = 2\n");
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(server.sip).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut third = TcpStream::connect(server.sip).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(third.read(&mut buf), Ok(0) | Err(_)), "third connection is closed");
    assert_eq!(server.metric("parley_connections_refused_total"), 1.0);
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let mut again = TcpStream::connect(server.sip).unwrap();
    again.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    again.write_all(VALID.replace("SIP/2.0/UDP", "SIP/2.0/TCP").as_bytes()).unwrap();
    let n = again.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"SIP/2.0 200"), "a freed slot is usable again");
}
