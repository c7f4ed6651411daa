//! The README's promises: the standalone example config starts, the client instructions between
//! its markers work as written (paths and ports moved to a temporary directory and free ports),
//! the log says what the README says it does at the default level, and `make run` shows its build.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::baresip::Baresip;
use support::ua::{Ua, body, status};
use support::{Server, free_port, repo_root, require_tool};

/// The lines of the README between `<!-- NAME` and `<!-- end NAME`, without the fences.
fn readme_block(name: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let block = readme.split(&format!("<!-- {name}")).nth(1).and_then(|b| b.split(&format!("<!-- end {name}")).next());
    let block = block.unwrap_or_else(|| panic!("README has the {name} block"));
    block.lines().skip(1).filter(|l| !l.starts_with("```")).map(str::to_string).collect()
}

/// The example config as shipped, at the default log level (no PARLEY_LOG), with its fixed ports
/// moved to free ones and its demo folder to `<temp>/.parley-demo` (so that `$PWD/.parley-demo`
/// in the README means the same, run from `<temp>`).
fn example_server() -> Server {
    example_server_with_web().0
}

/// `example_server`, and the address of its web client.
fn example_server_with_web() -> (Server, std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let (sip, tls, ops) = (free_port(), free_port(), free_port());
    let (ws, wss, web) = (free_port(), free_port(), free_port());
    let example = std::fs::read_to_string(repo_root().join("examples/standalone/parley.toml")).unwrap();
    let demo = dir.path().join(".parley-demo");
    let config = example
        .replace(":5060", &format!(":{sip}"))
        .replace(":5061", &format!(":{tls}"))
        .replace(":8080", &format!(":{ops}"))
        .replace(":5066", &format!(":{ws}"))
        .replace(":5067", &format!(":{wss}"))
        .replace(":8088", &format!(":{web}"))
        .replace("../../web/dist", repo_root().join("web/dist").to_str().unwrap())
        .replace("../../.parley-demo", demo.to_str().unwrap())
        .replace("\"users.toml\"", &format!("{:?}", repo_root().join("examples/standalone/users.toml")));
    std::fs::write(dir.path().join("parley.toml"), config).unwrap();
    (Server::start_from_with_log(dir, sip, tls, ops, None), std::net::SocketAddr::from(([127, 0, 0, 1], web)))
}

#[test]
fn the_example_serves_the_web_client_and_names_its_websocket_ports() {
    let (server, web) = example_server_with_web();
    let (code, body) = support::http_get(web, "/config.json").expect("the web client's listener answers");
    assert_eq!(code, 200, "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["domain"], "example.test");
    assert!(config["ws"].is_u64() && config["wss"].is_u64(), "{config}");
    assert!(server.log_text().contains("listening on secure WebSocket"), "{}", server.log_text());
    // Nothing but plain file names under web.root.
    assert_eq!(support::http_get(web, "/..%2Fparley.toml").map(|r| r.0), Some(404));
}

/// A README command with the example's ports replaced by the server's.
fn moved(server: &Server, line: &str, contact: u16) -> String {
    line.split(" # ")
        .next()
        .unwrap()
        .trim()
        .replace(":5060", &format!(":{}", server.sip.port()))
        .replace(":5061", &format!(":{}", server.tls.port()))
        .replace(":5070", &format!(":{contact}"))
}

fn run_sh(command: &str, dir: &Path, home: &Path) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["20", "sh", "-c", command])
        .current_dir(dir)
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Waits until a line of the server's log satisfies `want`; returns it.
fn log_line(server: &Server, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = server.log_text().lines().find(|l| want(l)) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no log line for {what}; log:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Nothing below INFO at the default level, on standard error or in the JSON log file.
fn assert_no_debug(server: &Server) {
    let text = server.log_text();
    assert!(!text.lines().any(|l| l.contains(" DEBUG ") || l.contains(" TRACE ")), "DEBUG by default:\n{text}");
    let file = std::fs::read_to_string(server.dir.path().join(".parley-demo/logs/parley.log")).unwrap();
    assert!(!file.contains("\"level\":\"DEBUG\""), "DEBUG in parley.log:\n{file}");
    assert!(file.contains("\"level\":\"INFO\""), "{file}");
}

#[test]
fn readme_sipsak_commands_work_and_the_log_shows_sign_in_and_failure() {
    require_tool("sipsak");
    let commands: Vec<String> =
        readme_block("client-commands").into_iter().filter(|l| l.starts_with("sipsak")).collect();
    assert!(commands.len() >= 4, "{commands:?}");
    let server = example_server();
    let contact = free_port();
    for line in &commands {
        let command = moved(&server, line, contact);
        let (ok, text) = run_sh(&command, server.dir.path(), server.dir.path());
        assert!(ok, "README command failed: {command}\n{text}");
        assert!(text.contains("200 OK") || text.contains("completed successful"), "{command}\n{text}");
    }
    assert!(server.metric("parley_sip_requests_total{method=\"REGISTER\"}") >= 4.0);
    assert_eq!(server.metric("parley_registrations"), 0.0, "the last command signs out: no dead binding is left");

    // The sign-in and sign-out at INFO, with the user and the source address.
    let contact_uri = format!("contact=sip:alice@127.0.0.1:{contact}");
    let signed_in = |l: &str| l.contains(" INFO ") && l.contains("signed in") && l.contains(&contact_uri);
    let line = log_line(&server, "sipsak's sign-in", signed_in);
    assert!(line.contains("user=alice@example.test") && line.contains("source=127.0.0.1:"), "{line}");
    let line = log_line(&server, "sipsak's sign-out", |l| l.contains(" INFO ") && l.contains("signed out"));
    assert!(line.contains("user=alice@example.test") && line.contains("source=127.0.0.1:"), "{line}");

    // A wrong password, as the README shows it: WARN with the user and address, no password.
    let example = readme_block("log-example");
    let wrong = example.iter().find(|l| l.starts_with("sipsak")).expect("the log example's command");
    let password = wrong.rsplit(" -a ").next().unwrap().split_whitespace().next().unwrap().to_string();
    let (ok, text) = run_sh(&moved(&server, wrong, contact), server.dir.path(), server.dir.path());
    assert!(!ok && !text.contains("200 OK"), "a wrong password signs in?\n{text}");
    let line = log_line(&server, "the failed sign-in", |l| l.contains(" WARN ") && l.contains("authentication failed"));
    assert!(line.contains("user=alice@example.test") && line.contains("source=127.0.0.1:"), "{line}");
    assert!(!server.log_text().contains(&password), "the password is in the log");
    assert_no_debug(&server);
}

#[test]
fn readme_baresip_setup_signs_in_over_udp_and_tls_and_sends_a_message() {
    require_tool("baresip");
    let lines = readme_block("baresip-setup");
    let run = lines.iter().position(|l| l.starts_with("baresip ")).expect("the README starts baresip");
    assert_eq!(lines[run], "baresip -f ~/.parley-baresip", "the test starts baresip itself, with -t");
    let server = example_server();
    let home = tempfile::tempdir().unwrap();
    let config_dir = home.path().join(".parley-baresip");

    // The setup commands as written (ports moved), run from the directory holding .parley-demo.
    let setup = lines[..run].iter().map(|l| moved(&server, l, 0)).collect::<Vec<_>>().join("\n");
    let (ok, text) = run_sh(&setup, server.dir.path(), home.path());
    assert!(ok, "README baresip setup failed:\n{setup}\n{text}");
    let cert = server.dir.path().join(".parley-demo/data/tls/cert.pem");
    assert!(std::fs::read_to_string(config_dir.join("config")).unwrap().contains(cert.to_str().unwrap()));

    // baresip signs in over UDP through the outbound proxy.
    let mut baresip = Baresip::start_configured(&config_dir, &["-t", "60"]);
    baresip.wait_for(&server, "UDP sign-in", Duration::from_secs(15), |t| {
        t.contains("alice@example.test: {0/UDP/v4} 200 OK () [1 binding]")
    });
    let line = log_line(&server, "baresip's sign-in", |l| {
        l.contains(" INFO ") && l.contains("signed in user=alice@example.test") && l.contains("transport=UDP")
    });
    assert!(line.contains("user=alice@example.test") && line.contains("source="), "{line}");

    // `/message hello bob` reaches bob, the current contact.
    let mut bob = Ua::new("bob", server.sip);
    assert_eq!(status(&bob.register(120)), 200);
    baresip.command("/message hello bob");
    let message = bob.recv_request("MESSAGE", Duration::from_secs(10)).unwrap_or_else(|| {
        panic!("bob got no MESSAGE; baresip:\n{}\nserver:\n{}", baresip.output(), server.log_text())
    });
    bob.answer(&message, 200);
    assert_eq!(body(&message), "hello bob", "{message}");
    assert!(message.contains("sip:alice@example.test"), "{message}");

    // `/quit` signs out.
    baresip.command("/quit");
    log_line(&server, "baresip's sign-out", |l| {
        l.contains(" INFO ") && l.contains("signed out") && l.contains("transport=UDP")
    });
    drop(baresip);

    // The TLS accounts line, trusting the demo certificate.
    let tls = readme_block("baresip-tls-account");
    let account = tls.iter().find(|l| l.starts_with("<sip:")).expect("the README's TLS account line");
    std::fs::write(config_dir.join("accounts"), format!("{}\n", moved(&server, account, 0))).unwrap();
    let baresip = Baresip::start_configured(&config_dir, &["-t", "60"]);
    baresip.wait_for(&server, "TLS sign-in", Duration::from_secs(15), |t| {
        t.contains("alice@example.test: {0/TLS/v4} 200 OK () [1 binding]")
    });
    log_line(&server, "the TLS sign-in", |l| {
        l.contains(" INFO ") && l.contains("signed in") && l.contains("transport=TLS")
    });
    assert_no_debug(&server);
}

/// `make run` on a machine that has not built yet: it says the first build takes minutes and lets
/// cargo show its progress (no `-q`), and says that `make deps` installs sipsak when it is missing.
/// Run on a copy of the script with a stand-in `cargo` and a PATH without sipsak.
#[test]
fn make_run_shows_the_build_and_what_is_missing() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("scripts")).unwrap();
    std::fs::copy(repo_root().join("scripts/run.sh"), root.path().join("scripts/run.sh")).unwrap();
    let bin = root.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("cargo"), "#!/bin/sh\necho \"stand-in cargo $*\"\n").unwrap();
    for tool in ["bash", "cat", "dirname", "sh"] {
        let path = ["/usr/bin", "/bin"].iter().map(|d| Path::new(d).join(tool)).find(|p| p.exists());
        std::os::unix::fs::symlink(path.unwrap_or_else(|| panic!("{tool} not found")), bin.join(tool)).unwrap();
    }
    let mut perms = std::fs::metadata(bin.join("cargo")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(bin.join("cargo"), perms).unwrap();
    let out = Command::new(bin.join("bash"))
        .arg(root.path().join("scripts/run.sh"))
        .env("PATH", &bin)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let notice = text.find("first build").unwrap_or_else(|| panic!("no first-build notice:\n{text}"));
    let build = text.find("stand-in cargo build --release -p parley-server\n").expect(&text);
    assert!(notice < build, "the notice comes before the build:\n{text}");
    assert!(text.contains("sipsak") && text.contains("make deps"), "{text}");
    assert!(text.contains("Parley standalone Home Server"), "the banner:\n{text}");
    assert!(!out.status.success(), "there is no binary to start in the copy:\n{text}");
}
