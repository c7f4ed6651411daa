//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer): each takes arbitrary
//! bytes and must never panic. `tests/fuzz_corpus.rs` replays the kept corpus through the same
//! functions in `make test`, so a crash found once stays fixed.

use crate::config::{Config, Role};
use crate::directory::User;
use crate::frontend::Proxy;
use crate::home::Core;
use crate::home::auth::{Algorithm, DigestAuth, ha1};
use crate::home::presence::{pidf, state::PresenceState};
use crate::ops::metrics::Metrics;
use crate::service::{Action, Facts, Input, Now, Service};
use crate::sip::message::{Limits, content_length, header_end, parse_datagram, parse_head};
use crate::transport::{Flow, Transport};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const HOME: &str = r#"
sip_domain = "example.test"
server_name = "home-1"
[storage]
data_dir = "/nonexistent"
logs_dir = "/nonexistent"
[directory]
backend = "file"
file = "/nonexistent"
"#;

const FRONT_END: &str = r#"
[listen]
udp = "127.0.0.1:5060"
internal = "127.0.0.1:5062"
[tls]
cert = "/nonexistent"
key = "/nonexistent"
ca = "/nonexistent"
[frontend]
home_servers = [{ name = "home-1", address = "10.0.0.1:5062" }, { name = "home-2", address = "10.0.0.2:5062" }]
"#;

/// The users every fuzzed request path knows: alice and bob (password `secret`), alice on
/// home-1, bob on home-2.
fn user(aor: &str) -> Option<User> {
    let (name, domain) = aor.split_once('@')?;
    let home = match name {
        "alice" => "home-1",
        "bob" => "home-2",
        _ => return None,
    };
    Some(User {
        address: aor.to_string(),
        enabled: true,
        home_server: Some(home.into()),
        ha1_md5: Some(ha1(Algorithm::Md5, name, domain, "secret")),
        ha1_sha256: Some(ha1(Algorithm::Sha256, name, domain, "secret")),
    })
}

/// The whole request path of either role: the first byte picks the role (bit 2) and the
/// transport the messages arrive on (bits 0-1); the rest is messages separated by NUL bytes,
/// 10 ms apart, then a minute of timers. Directory lookups are answered from `user`, store
/// writes succeed, name lookups give an address. Whatever the core sends must parse again.
pub fn request_path(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let metrics = Arc::new(Metrics::default());
    let mut service: Box<dyn Service> = if selector & 4 == 0 {
        let config = Config::parse(HOME, Role::Home).expect("the fuzzing config is valid");
        Box::new(Core::from_config(&config, Some("token".into()), metrics))
    } else {
        let config = Config::parse(&format!("{HOME}{FRONT_END}"), Role::FrontEnd).expect("valid");
        Box::new(Proxy::from_config(&config, metrics).expect("a Front-End config"))
    };
    for (transport, host) in [(Transport::Udp, "192.0.2.1:5060"), (Transport::Internal, "192.0.2.1:5062")] {
        service.set_advertised(transport, host.into());
    }
    let transport = [Transport::Udp, Transport::Tcp, Transport::Tls, Transport::Internal][usize::from(selector & 3)];
    let flow = Flow { transport, remote: "192.0.2.7:5060".parse().expect("address"), conn: 1 };
    let mut now = Now { instant: Instant::now(), wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) };
    for chunk in rest.split(|b| *b == 0) {
        let message = parse_datagram(chunk, &Limits::default());
        service.handle(now, Input::Received { flow, message });
        settle(service.as_mut(), now);
        now = now.after(Duration::from_millis(10));
    }
    for _ in 0..60 {
        now = now.after(Duration::from_secs(1));
        service.on_tick(now);
        settle(service.as_mut(), now);
    }
}

fn settle(service: &mut dyn Service, now: Now) {
    loop {
        let actions = service.take_actions();
        if actions.is_empty() {
            return;
        }
        for action in actions {
            match action {
                Action::Send { data, .. } => well_formed(&data),
                Action::Fetch { task, users, resolve } => {
                    let mut facts = Facts::default();
                    for aor in users {
                        let found = user(&aor);
                        facts.users.insert(aor, Ok(found));
                    }
                    facts.route = resolve.map(|_| "10.0.0.3:5062".parse().expect("address"));
                    service.handle(now, Input::Fetched { task, facts });
                }
                Action::Store { task: Some(task), .. } => service.handle(now, Input::Stored { task, result: Ok(()) }),
                Action::Store { task: None, .. } | Action::Forget { .. } => {}
            }
        }
    }
}

/// What the core sends is well-formed SIP: a start line and headers that parse, and a body of
/// the length declared. (Not every semantic rule: a 400 to a request without a CSeq has none.)
fn well_formed(data: &[u8]) {
    let shown = || String::from_utf8_lossy(data).into_owned();
    let end = header_end(data).unwrap_or_else(|| panic!("sent a message without a header end: {:?}", shown()));
    let big = Limits { max_message_bytes: usize::MAX, max_headers: usize::MAX };
    let (_, headers) = parse_head(&data[..end], &big)
        .unwrap_or_else(|e| panic!("sent an unparseable head ({}): {:?}", e.reason, shown()));
    let declared = content_length(&headers).unwrap_or_else(|e| panic!("sent {e}: {:?}", shown()));
    assert_eq!(declared, Some(data.len() - end), "sent a wrong Content-Length: {:?}", shown());
}

/// A digest `Authorization` value checked for a known and an unknown user.
pub fn digest(data: &[u8]) {
    let header = String::from_utf8_lossy(data);
    let auth = DigestAuth::new(vec![Algorithm::Md5, Algorithm::Sha256], Duration::from_secs(300));
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let alice = user("alice@example.test");
    for method in ["REGISTER", "MESSAGE"] {
        let _ = auth.verify(&header, "example.test", method, alice.as_ref(), now);
        let _ = auth.verify(&header, "example.test", method, None, now);
    }
    let _ = crate::sip::params::parse_auth_params(&header);
}

/// A PUBLISH body: validated, and when valid composed into the documents watchers get, which
/// must be valid PIDF themselves.
pub fn pidf(data: &[u8]) {
    let body = String::from_utf8_lossy(data).into_owned();
    let _ = pidf::availability(&body);
    if pidf::validate(&body).is_err() {
        return;
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut state = PresenceState::default();
    state.publish("alice@example.test", None, Some(body), 60, now).expect("an initial publication with a body");
    for registered in [false, true] {
        let document = state.document("alice@example.test", registered, now);
        pidf::validate(&document).unwrap_or_else(|e| panic!("composed an invalid document ({e}): {document}"));
    }
}

/// Config text for both roles; a config that loads must load again from its own TOML.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for role in [Role::Home, Role::FrontEnd] {
        if let Ok(config) = Config::parse(&text, role) {
            let again = Config::parse(&config.to_toml(), role).expect("a loaded config reloads from its TOML");
            assert_eq!(again, config, "the TOML round trip changed the config");
        }
    }
}
