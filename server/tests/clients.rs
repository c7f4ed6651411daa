//! Real SIP clients against a real server: sipsak (OPTIONS and MESSAGE over UDP and TLS) and
//! baresip (registers over TLS, verifying the server's certificate, and receives a MESSAGE).

mod support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::ua::{Ua, header, status};
use support::{Server, require_tool};

fn sipsak(args: &[&str]) -> Output {
    require_tool("sipsak");
    Command::new("timeout").arg("20").arg("sipsak").args(args).stdin(Stdio::null()).output().expect("run sipsak")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn sipsak_options_over_udp_and_tls() {
    let server = Server::start();
    let udp = format!("sip:alice@127.0.0.1:{}", server.sip.port());
    let out = sipsak(&["-vv", "-s", &udp]);
    assert!(out.status.success() && text(&out).contains("SIP/2.0 200 OK"), "{}", text(&out));
    assert!(text(&out).contains("Allow: REGISTER, MESSAGE, OPTIONS, SUBSCRIBE, PUBLISH"), "{}", text(&out));
    // sipsak checks the certificate's name against "host:port" (a sipsak bug), so it cannot verify
    // our certificate; baresip below does verify it.
    let tls = format!("sip:alice@127.0.0.1:{}", server.tls.port());
    let out = sipsak(&["-vv", "-E", "tls", "--tls-ignore-cert-failure", "-s", &tls]);
    assert!(out.status.success() && text(&out).contains("SIP/2.0 200 OK"), "{}", text(&out));
    assert_eq!(server.metric("parley_sip_requests_total{method=\"OPTIONS\"}"), 2.0);
}

/// sipsak sends a MESSAGE file as alice (answering the 407 itself) to bob, registered over UDP.
fn sipsak_message(server: &Server, transport: &[&str], port: u16) {
    let mut bob = Ua::new("bob", server.sip);
    assert_eq!(status(&bob.register(300)), 200);
    let file = server.dir.path().join(format!("message-{port}.sip"));
    let body = format!("hello bob over {}", transport.get(1).unwrap_or(&"udp"));
    std::fs::write(
        &file,
        format!(
            "MESSAGE sip:bob@127.0.0.1 SIP/2.0\nFrom: <sip:alice@127.0.0.1>;tag=sipsak{port}\nTo: <sip:bob@127.0.0.1>\n\
             Call-ID: sipsak-{port}\nCSeq: 1 MESSAGE\nMax-Forwards: 70\nContent-Type: text/plain\n\
             Content-Length: {}\n\n{body}",
            body.len()
        ),
    )
    .unwrap();
    let target = format!("sip:bob@127.0.0.1:{port}");
    let file_arg = file.to_str().unwrap().to_string();
    let mut args: Vec<&str> = vec!["-vv", "-u", "alice", "-a", "alice-password", "-f", &file_arg, "-s", &target];
    args.extend_from_slice(transport);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let handle = std::thread::spawn(move || sipsak(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let got = bob.recv_request("MESSAGE", Duration::from_secs(15)).expect("bob receives the MESSAGE");
    assert!(got.ends_with(&body), "{got}");
    assert_eq!(header(&got, "Content-Type"), Some("text/plain"));
    assert!(header(&got, "Proxy-Authorization").is_none(), "credentials are not forwarded");
    bob.answer(&got, 200);
    let out = handle.join().unwrap();
    assert!(out.status.success() && text(&out).contains("SIP/2.0 200 OK"), "{}", text(&out));
}

#[test]
fn sipsak_message_over_udp() {
    let server = Server::start();
    sipsak_message(&server, &[], server.sip.port());
    assert_eq!(server.metric("parley_messages_delivered_total"), 1.0);
}

#[test]
fn sipsak_message_over_tls() {
    let server = Server::start();
    sipsak_message(&server, &["-E", "tls", "--tls-ignore-cert-failure"], server.tls.port());
    assert_eq!(server.metric("parley_messages_delivered_total"), 1.0);
}
