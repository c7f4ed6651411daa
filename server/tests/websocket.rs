//! SIP over WebSocket (RFC 7118) against a real server, with a plain WebSocket client
//! (tungstenite): the handshake needs the `sip` subprotocol and an allowed Origin; a client signs
//! in over its WebSocket and a message from a UDP user reaches it over that same connection; a
//! message without Content-Length is read (the frame is its end); and the stream limits hold as on
//! TCP: message size (513), connections per address, the first-message and idle timeouts.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::ua::{Ua, header, status};
use support::{Server, free_port};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

type Ws = WebSocket<TcpStream>;

fn ws_server(listen: &str, extra: &str) -> (Server, SocketAddr) {
    let port = free_port();
    let server = Server::start_with_listen(&format!("ws = \"127.0.0.1:{port}\"\n{listen}"), extra);
    (server, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Opens a WebSocket with the given subprotocol and Origin; Err is the HTTP status of a refusal
/// (0 when the connection was dropped without one).
fn connect(addr: SocketAddr, protocol: Option<&str>, origin: Option<&str>) -> Result<Ws, u16> {
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", HeaderValue::from_str(o).unwrap());
    }
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|_| 0u16)?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    match tungstenite::client(req, stream) {
        Ok((ws, resp)) => {
            assert_eq!(resp.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap()), Some("sip"));
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => Err(r.status().as_u16()),
        Err(_) => Err(0),
    }
}

/// The next SIP message on the socket (text or binary), or None when it closes or times out.
fn next_message(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Binary(b)) => return Some(String::from_utf8_lossy(&b).into_owned()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).unwrap();
}

fn options(branch: &str, with_length: bool) -> String {
    let length = if with_length { "Content-Length: 0\r\n" } else { "" };
    format!(
        "OPTIONS sip:example.test SIP/2.0\r\nVia: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=ws1\r\nTo: <sip:example.test>\r\n\
         Call-ID: ws-{branch}\r\nCSeq: 1 OPTIONS\r\n{length}\r\n"
    )
}

fn md5(s: &str) -> String {
    hex::encode(<md5::Md5 as md5::Digest>::digest(s.as_bytes()))
}

fn quoted<'a>(challenge: &'a str, name: &str) -> &'a str {
    challenge.split(&format!("{name}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("")
}

/// bob's REGISTER over the WebSocket, with credentials for `challenge` when given.
fn register(cseq: u32, challenge: Option<&str>) -> String {
    let uri = "sip:example.test";
    let auth = challenge
        .map(|c| {
            let (realm, nonce) = (quoted(c, "realm"), quoted(c, "nonce"));
            let ha1 = md5(&format!("bob:{realm}:bob-password"));
            let response = md5(&format!("{ha1}:{nonce}:00000001:0a4f113b:auth:{}", md5(&format!("REGISTER:{uri}"))));
            format!(
                "Authorization: Digest username=\"bob\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
                 response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\"\r\n"
            )
        })
        .unwrap_or_default();
    format!(
        "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/WS k3j4h5.invalid;branch=z9hG4bKreg{cseq}\r\nMax-Forwards: 70\r\n\
         From: <sip:bob@example.test>;tag=wsbob\r\nTo: <sip:bob@example.test>\r\nCall-ID: ws-bob-reg\r\n\
         CSeq: {cseq} REGISTER\r\nContact: <sip:b0b@k3j4h5.invalid;transport=ws>\r\nExpires: 300\r\n{auth}\
         Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn the_handshake_needs_subprotocol_sip_and_an_allowed_origin() {
    let (_server, addr) = ws_server("", "");
    assert_eq!(connect(addr, None, None).err(), Some(400), "no subprotocol");
    assert_eq!(connect(addr, Some("chat"), None).err(), Some(400), "another subprotocol");
    assert!(connect(addr, Some("sip"), None).is_ok(), "not a browser: no Origin");
    assert!(connect(addr, Some("sip"), Some("http://127.0.0.1:8088")).is_ok(), "a page from the same host");
    assert_eq!(connect(addr, Some("sip"), Some("https://evil.example")).err(), Some(403), "another site's page");

    let (_server, addr) = ws_server("", "[web]\norigins = [\"https://chat.example.test\"]\n");
    assert!(connect(addr, Some("sip"), Some("https://chat.example.test")).is_ok(), "a listed origin");
    assert_eq!(connect(addr, Some("sip"), Some("http://127.0.0.1:8088")).err(), Some(403), "only the list counts");
}

#[test]
fn a_websocket_client_signs_in_and_gets_a_message_over_its_connection() {
    let (server, addr) = ws_server("", "");
    let mut bob = connect(addr, Some("sip"), None).unwrap();
    // Without Content-Length: the WebSocket message is the SIP message (RFC 7118).
    send(&mut bob, &options("nolength", false));
    let ok = next_message(&mut bob).expect("an answer to OPTIONS");
    assert_eq!(status(&ok), 200, "{ok}");
    assert!(header(&ok, "Via").unwrap().starts_with("SIP/2.0/WS df7jal23ls0d.invalid"), "{ok}");

    send(&mut bob, &register(1, None));
    let challenge = next_message(&mut bob).unwrap();
    assert_eq!(status(&challenge), 401, "{challenge}");
    send(&mut bob, &register(2, header(&challenge, "WWW-Authenticate")));
    let ok = next_message(&mut bob).unwrap();
    assert_eq!(status(&ok), 200, "{ok}\n{}", server.log_text());
    assert!(server.log_text().contains("signed in user=bob@example.test"), "{}", server.log_text());

    // alice, over UDP: the server sends it along bob's WebSocket (bob cannot be dialled).
    let sip = server.sip;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut alice = Ua::new("alice", sip);
        let to = "sip:bob@example.test";
        let _ = tx.send(alice.send_authenticated("MESSAGE", to, to, "Content-Type: text/plain\r\n", "hi bob, on ws"));
    });
    let msg = next_message(&mut bob).expect("alice's MESSAGE over the WebSocket");
    assert!(msg.starts_with("MESSAGE sip:b0b@k3j4h5.invalid;transport=ws SIP/2.0"), "{msg}");
    assert!(msg.ends_with("hi bob, on ws"), "{msg}");
    // bob answers (a response echoes the request's Via, To with a tag, From, Call-ID and CSeq).
    let mut answer = String::from("SIP/2.0 200 OK\r\n");
    for name in ["Via", "From", "Call-ID", "CSeq"] {
        for line in msg.lines().filter(|l| l.split(':').next().is_some_and(|n| n.eq_ignore_ascii_case(name))) {
            answer.push_str(line);
            answer.push_str("\r\n");
        }
    }
    answer.push_str(&format!("To: {};tag=b0b\r\nContent-Length: 0\r\n\r\n", header(&msg, "To").unwrap()));
    send(&mut bob, &answer);
    let delivered = rx.recv_timeout(Duration::from_secs(10)).expect("alice's answer");
    assert_eq!(status(&delivered), 200, "{delivered}");
    assert_eq!(server.metric("parley_messages_delivered_total"), 1.0);
}

#[test]
fn the_stream_limits_hold_on_websocket() {
    let (server, addr) = ws_server(
        "",
        "[limits]\nmax_message_bytes = 2048\nmax_body_bytes = 1024\nmax_connections_per_ip = 3\n\
         idle_timeout_secs = 6\nmessage_timeout_secs = 3\n",
    );
    // Connections per address: three at once, and the fourth is refused.
    let mut held: Vec<Ws> = (0..3).map(|_| connect(addr, Some("sip"), None).unwrap()).collect();
    assert!(connect(addr, Some("sip"), None).is_err(), "a fourth from the same address");
    assert!(server.metric("parley_connections_refused_total") >= 1.0);
    send(&mut held[1], &options("idle", true));
    assert_eq!(status(&next_message(&mut held[1]).unwrap()), 200);
    let answered = Instant::now();
    // One that sends nothing is closed after the first-message timeout (3 s) ...
    assert_eq!(next_message(&mut held[0]), None);
    // ... and one that went quiet after a message, after the idle timeout (6 s).
    assert_eq!(next_message(&mut held[1]), None);
    let idle = answered.elapsed();
    assert!(idle >= Duration::from_secs(5) && idle < Duration::from_secs(10), "closed after {idle:?} idle");
    drop(held);

    // Too large: 513, then the connection ends. (Its slot comes free once the server has seen
    // the others go.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut big = loop {
        match connect(addr, Some("sip"), None) {
            Ok(ws) => break ws,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("no connection after the others closed: {e}"),
        }
    };
    let body = "x".repeat(3000);
    let request =
        options("big", false).replace("\r\n\r\n", &format!("\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    send(&mut big, &request);
    let answer = next_message(&mut big).expect("an answer to the large request");
    assert_eq!(status(&answer), 513, "{answer}");
    assert_eq!(next_message(&mut big), None, "then closed");
}
