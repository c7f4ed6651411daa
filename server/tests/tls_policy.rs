//! The TLS listener speaks TLS 1.2 and 1.3 only, with forward-secret AEAD suites only: what
//! `openssl s_client` can and cannot negotiate with it.

mod support;

use std::process::{Command, Stdio};
use support::{Server, require_tool};

/// Runs `openssl s_client` against the server with extra options; success and its output.
fn handshake(server: &Server, options: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &server.tls.to_string(), "-brief"])
        .args(options)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && text.contains("CONNECTION ESTABLISHED"), text)
}

#[test]
fn only_tls_1_2_and_1_3_with_forward_secret_aead_suites() {
    require_tool("openssl");
    let server = Server::start();
    // SECLEVEL=0: the client offers what OpenSSL 3 would otherwise refuse itself, so a refusal
    // is the server's.
    for old in ["-tls1", "-tls1_1"] {
        let (ok, text) = handshake(&server, &[old, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(!ok, "{old} was accepted:\n{text}");
    }
    // Without forward secrecy (RSA key exchange), or without an AEAD (CBC): refused.
    for weak in ["AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA"] {
        let (ok, text) = handshake(&server, &["-tls1_2", "-cipher", &format!("{weak}@SECLEVEL=0")]);
        assert!(!ok, "TLS 1.2 with {weak} was accepted:\n{text}");
    }
    let (ok, text) = handshake(&server, &["-tls1_2"]);
    assert!(ok, "TLS 1.2 refused:\n{text}");
    let suite = text.lines().find(|l| l.contains("Ciphersuite")).unwrap_or_default().to_string();
    assert!(suite.contains("ECDHE") && (suite.contains("GCM") || suite.contains("CHACHA20")), "{suite}");
    let (ok, text) = handshake(&server, &["-tls1_3"]);
    assert!(ok, "TLS 1.3 refused:\n{text}");
    println!("TLS 1.2: {suite}");
}
