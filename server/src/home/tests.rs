//! The Home Server's flows run on the core alone: no sockets, no directory server, no disk, and a
//! clock the test moves. A `Sim` answers the core's fetches from a table of users and its store
//! writes at once (or with a failure), and collects what it sends; minutes of protocol time pass
//! in microseconds.

use super::auth::{Algorithm, DigestAuth, ha1, hash};
use super::core::{Action, Core, CoreSettings, Facts, Input, Now, Service, TaskId};
use super::guard;
use super::registrar::{Policy, Registrar};
use crate::directory::{DirectoryError, User};
use crate::ops::metrics::Metrics;
use crate::sip::Message;
use crate::sip::message::{Limits, parse_datagram};
use crate::sip::params::parse_auth_params;
use crate::store::{Table, Write};
use crate::transaction::Timers;
use crate::transport::{Flow, Transport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const DOMAIN: &str = "example.test";

/// A message the core sent, and the client transaction it belongs to (for requests).
struct Sent {
    flow: Flow,
    msg: Message,
    branch: Option<String>,
}

impl Sent {
    fn status(&self) -> Option<u16> {
        self.msg.status()
    }

    fn method(&self) -> Option<&str> {
        self.msg.method()
    }

    fn header(&self, name: &str) -> &str {
        self.msg.headers.get(name).unwrap_or_default()
    }

    fn reason(&self) -> &str {
        match &self.msg.start {
            crate::sip::StartLine::Response { reason, .. } => reason,
            crate::sip::StartLine::Request { .. } => "",
        }
    }

    fn body(&self) -> String {
        String::from_utf8_lossy(&self.msg.body).into_owned()
    }
}

type Fetch = (Vec<String>, Option<(String, u16)>);

struct Sim {
    core: Core,
    now: Now,
    users: HashMap<String, User>,
    directory_down: bool,
    store_fails: bool,
    writes: Vec<Write>,
    /// While set, store writes wait here (not yet durable) until `release_writes`.
    held: Option<Vec<(Option<TaskId>, Vec<Write>)>>,
    /// Each fetch: the users, and the route host to resolve.
    fetched: Vec<Fetch>,
    next: u32,
}

impl Sim {
    fn new() -> Sim {
        let settings = CoreSettings {
            domain: DOMAIN.into(),
            domain_aliases: vec![],
            server_name: "home-1".into(),
            max_body_bytes: 64 * 1024,
            timers: Timers::default(),
            min_expires: 60,
            max_expires: 7200,
            admin_token: None,
            max_pending_requests: 3,
            offline: crate::config::Offline::default(),
            max_requests_per_second: 0,
            guard: guard::Policy {
                max_failures_per_source: 10,
                max_failures_per_user: 100,
                window: Duration::from_secs(60),
                lockout: Duration::from_secs(300),
            },
        };
        let registrar = Registrar::new(Policy {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            max_contacts: 10,
            expires_jitter_percent: 0,
        });
        let auth = DigestAuth::new(vec![Algorithm::Md5], Duration::from_secs(300));
        let mut core = Core::new(settings, auth, registrar, Arc::new(Metrics::default()));
        core.set_advertised(Transport::Udp, "192.0.2.1:5060".into());
        let mut users = HashMap::new();
        for (name, home) in [("alice", "home-1"), ("bob", "home-1"), ("carol", "home-2")] {
            let address = format!("{name}@{DOMAIN}");
            let ha1_md5 = Some(ha1(Algorithm::Md5, name, DOMAIN, &format!("{name}-pw")));
            let user = User {
                address: address.clone(),
                enabled: true,
                home_server: Some(home.into()),
                ha1_md5,
                ha1_sha256: None,
            };
            users.insert(address, user);
        }
        // Both clocks start at an arbitrary point; only their progress matters.
        let now = Now { instant: Instant::now(), wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) };
        Sim {
            core,
            now,
            users,
            directory_down: false,
            store_fails: false,
            writes: vec![],
            held: None,
            fetched: vec![],
            next: 0,
        }
    }

    fn input(&mut self, input: Input) -> Vec<Sent> {
        self.core.handle(self.now, input);
        self.settle()
    }

    /// Performs the core's actions until only sends are left: fetches from `users`, writes
    /// accepted (or refused with `store_fails`).
    fn settle(&mut self) -> Vec<Sent> {
        let mut sent = Vec::new();
        loop {
            let actions = self.core.take_actions();
            if actions.is_empty() {
                return sent;
            }
            for action in actions {
                match action {
                    Action::Send { flow, data, branch } => {
                        let msg = parse_datagram(&data, &Limits::default()).expect("the core sends what it can parse");
                        sent.push(Sent { flow, msg, branch });
                    }
                    Action::Fetch { task, users, resolve } => {
                        self.fetched.push((users.clone(), resolve.clone()));
                        let mut facts = Facts::default();
                        for aor in users {
                            let found = match self.directory_down {
                                true => Err(DirectoryError::Unavailable("connection refused".into())),
                                false => Ok(self.users.get(&aor).cloned()),
                            };
                            facts.users.insert(aor, found);
                        }
                        facts.route = resolve.map(|_| "198.51.100.7:5062".parse().unwrap());
                        self.core.handle(self.now, Input::Fetched { task, facts });
                    }
                    Action::Forget { .. } => {}
                    Action::Store { task, writes } if self.held.is_some() => {
                        self.held.as_mut().expect("holding").push((task, writes));
                    }
                    Action::Store { task, writes } => {
                        let result = if self.store_fails { Err("disk full".to_string()) } else { Ok(()) };
                        if result.is_ok() {
                            self.writes.extend(writes);
                        }
                        if let Some(task) = task {
                            self.core.handle(self.now, Input::Stored { task, result });
                        }
                    }
                }
            }
        }
    }

    /// Holds store writes from now on: the disk is slow.
    fn hold_writes(&mut self) {
        self.held = Some(Vec::new());
    }

    /// Makes the held writes durable, in order, and stops holding; returns what the core sends.
    fn release_writes(&mut self) -> Vec<Sent> {
        let mut sent = Vec::new();
        for (task, writes) in self.held.take().unwrap_or_default() {
            self.writes.extend(writes);
            if let Some(task) = task {
                self.core.handle(self.now, Input::Stored { task, result: Ok(()) });
            }
            sent.extend(self.settle());
        }
        sent
    }

    fn receive(&mut self, flow: Flow, text: &str) -> Vec<Sent> {
        let message = parse_datagram(text.as_bytes(), &Limits::default());
        self.input(Input::Received { flow, message })
    }

    /// Moves both clocks on and runs the core's timers at 50 ms steps, as the IO layer does.
    fn wait(&mut self, d: Duration) -> Vec<Sent> {
        let mut sent = Vec::new();
        let end = self.now.after(d);
        while self.now.instant < end.instant {
            self.now = self.now.after(Duration::from_millis(50));
            self.core.on_tick(self.now);
            sent.extend(self.settle());
        }
        sent
    }

    /// Runs the timers until the core sends a `method` request, at most `max` of simulated time.
    fn wait_for(&mut self, method: &str, max: Duration) -> Sent {
        let end = self.now.after(max);
        while self.now.instant < end.instant {
            let mut sent = self.wait(Duration::from_millis(50));
            if let Some(i) = sent.iter().position(|s| s.method() == Some(method)) {
                return sent.swap_remove(i);
            }
        }
        panic!("no {method} within {max:?}");
    }

    fn written(&self, table: Table, key: &str) -> Option<bool> {
        self.writes.iter().rev().find(|w| w.table == table && w.key == key).map(|w| w.value.is_some())
    }

    fn unique(&mut self) -> u32 {
        self.next += 1;
        self.next
    }
}

/// A SIP client of the simulated server.
struct Client {
    user: &'static str,
    flow: Flow,
    call_id: String,
    cseq: u32,
}

fn client(user: &'static str, remote: &str) -> Client {
    let flow = Flow::datagram(Transport::Udp, remote.parse::<SocketAddr>().unwrap());
    Client { user, flow, call_id: format!("{user}-call"), cseq: 0 }
}

impl Client {
    fn aor(&self) -> String {
        format!("{}@{DOMAIN}", self.user)
    }

    /// A request from this client; `extra` are whole header lines.
    fn request(&mut self, sim: &mut Sim, method: &str, uri: &str, to: &str, extra: &[String], body: &str) -> String {
        self.cseq += 1;
        let branch = sim.unique();
        let mut text = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{}>;tag={}-tag\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {} {method}\r\n",
            self.flow.remote,
            self.aor(),
            self.user,
            self.call_id,
            self.cseq
        );
        for line in extra {
            text.push_str(line);
            text.push_str("\r\n");
        }
        text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        text
    }

    /// Sends a request, answers a digest challenge once, and returns everything the server sent
    /// after the credentials.
    fn transact(
        &mut self,
        sim: &mut Sim,
        method: &str,
        uri: &str,
        to: &str,
        extra: &[String],
        body: &str,
    ) -> Vec<Sent> {
        let first = self.request(sim, method, uri, to, extra, body);
        let sent = sim.receive(self.flow, &first);
        let challenge = sent.iter().find(|s| matches!(s.status(), Some(401 | 407)));
        let Some(challenge) = challenge else { return sent };
        let (challenge_header, header) = match challenge.status() {
            Some(401) => ("WWW-Authenticate", "Authorization"),
            _ => ("Proxy-Authenticate", "Proxy-Authorization"),
        };
        let creds = digest(&challenge.msg, challenge_header, self.user, &format!("{}-pw", self.user), method, uri);
        let mut extra = extra.to_vec();
        extra.push(format!("{header}: {creds}"));
        let second = self.request(sim, method, uri, to, &extra, body);
        sim.receive(self.flow, &second)
    }

    fn register(&mut self, sim: &mut Sim, expires: u32) -> Vec<Sent> {
        let (to, contact) =
            (format!("<sip:{}>", self.aor()), format!("Contact: <sip:{}@{}>", self.user, self.flow.remote));
        self.transact(sim, "REGISTER", &format!("sip:{DOMAIN}"), &to, &[contact, format!("Expires: {expires}")], "")
    }

    fn subscribe(&mut self, sim: &mut Sim, target: &str, expires: u32) -> Vec<Sent> {
        let (uri, to) = (format!("sip:{target}"), format!("<sip:{target}>"));
        let extra = [
            "Event: presence".to_string(),
            format!("Contact: <sip:{}@{}>", self.user, self.flow.remote),
            format!("Expires: {expires}"),
        ];
        self.transact(sim, "SUBSCRIBE", &uri, &to, &extra, "")
    }

    fn publish(&mut self, sim: &mut Sim, note: &str) -> Vec<Sent> {
        let (uri, to) = (format!("sip:{}", self.aor()), format!("<sip:{}>", self.aor()));
        let pidf = format!(
            "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:{}\">\
             <tuple id=\"t1\"><status><basic>open</basic></status><note>{note}</note></tuple></presence>",
            self.aor()
        );
        let extra = ["Event: presence".to_string(), "Content-Type: application/pidf+xml".to_string()];
        self.transact(sim, "PUBLISH", &uri, &to, &extra, &pidf)
    }

    fn message(&mut self, sim: &mut Sim, target: &str, text: &str) -> Vec<Sent> {
        let (uri, to) = (format!("sip:{target}"), format!("<sip:{target}>"));
        self.transact(sim, "MESSAGE", &uri, &to, &["Content-Type: text/plain".to_string()], text)
    }

    /// Answers a request the server sent to this client.
    fn answer(&self, sim: &mut Sim, request: &Sent, code: u16) -> Vec<Sent> {
        assert_eq!(request.flow, self.flow, "{} went to the wrong client", request.method().unwrap_or("?"));
        let response = crate::sip::response::respond(&request.msg, code, "client");
        sim.input(Input::Received { flow: self.flow, message: Ok(response) })
    }
}

/// Digest credentials (RFC 7616, MD5, qop=auth) for the first challenge in `header`.
fn digest(challenge: &Message, header: &str, user: &str, password: &str, method: &str, uri: &str) -> String {
    let value = challenge.headers.get(header).expect("a challenge");
    let params: HashMap<String, String> = parse_auth_params(value.trim().strip_prefix("Digest").unwrap())
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let (realm, nonce) = (&params["realm"], &params["nonce"]);
    let ha1 = hash(Algorithm::Md5, &format!("{user}:{realm}:{password}"));
    let ha2 = hash(Algorithm::Md5, &format!("{method}:{uri}"));
    let response = hash(Algorithm::Md5, &format!("{ha1}:{nonce}:00000001:0a4f113b:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", \
         algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\""
    )
}

fn statuses(sent: &[Sent]) -> Vec<u16> {
    sent.iter().filter_map(Sent::status).collect()
}

fn requests<'a>(sent: &'a [Sent], method: &str) -> Vec<&'a Sent> {
    sent.iter().filter(|s| s.method() == Some(method)).collect()
}

#[test]
fn register_is_challenged_then_bound_and_made_durable() {
    let mut sim = Sim::new();
    let mut alice = client("alice", "192.0.2.10:5060");
    let first = alice.request(&mut sim, "REGISTER", "sip:example.test", "<sip:alice@example.test>", &[], "");
    let sent = sim.receive(alice.flow, &first);
    assert_eq!(statuses(&sent), [401]);
    assert!(
        sent[0].header("WWW-Authenticate").contains("realm=\"example.test\""),
        "{}",
        sent[0].header("WWW-Authenticate")
    );
    assert_eq!(sent[0].flow, alice.flow);
    assert_eq!(sim.fetched.last().unwrap().0, ["alice@example.test"]);

    let sent = alice.register(&mut sim, 600);
    let ok = sent.iter().find(|s| s.status() == Some(200)).expect("200");
    assert!(ok.header("Contact").contains("<sip:alice@192.0.2.10:5060>;expires=600"), "{}", ok.header("Contact"));
    assert_eq!(sim.written(Table::Registrations, "alice@example.test"), Some(true));
    assert_eq!(sim.core.binding_count(), 1);
}

#[test]
fn a_registration_that_cannot_be_stored_is_refused_and_a_directory_outage_is_503() {
    let mut sim = Sim::new();
    sim.store_fails = true;
    let mut alice = client("alice", "192.0.2.10:5060");
    let sent = alice.register(&mut sim, 600);
    let last = sent.last().unwrap();
    assert_eq!((last.status(), last.reason()), (Some(500), "Storage Failure"));

    sim.store_fails = false;
    sim.directory_down = true;
    let sent = alice.register(&mut sim, 600);
    assert_eq!(statuses(&sent), [503]);
    assert_eq!(sent[0].header("Retry-After"), "5");
}

#[test]
fn a_retransmitted_request_gets_the_same_answer_without_a_second_lookup() {
    let mut sim = Sim::new();
    let mut alice = client("alice", "192.0.2.10:5060");
    let first = alice.request(&mut sim, "OPTIONS", "sip:example.test", "<sip:example.test>", &[], "");
    let answer = sim.receive(alice.flow, &first);
    let again = sim.receive(alice.flow, &first);
    assert_eq!(statuses(&answer), [200]);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].msg.to_bytes(), answer[0].msg.to_bytes());
    assert!(sim.fetched.is_empty(), "OPTIONS needs nobody from the directory");
}

#[test]
fn a_request_whose_top_via_does_not_parse_is_counted_malformed_and_not_answered() {
    use std::sync::atomic::Ordering::Relaxed;
    let mut sim = Sim::new();
    let mut alice = client("alice", "192.0.2.10:5060");
    let good = alice.request(&mut sim, "OPTIONS", "sip:example.test", "<sip:example.test>", &[], "");
    let top = good.lines().find(|l| l.starts_with("Via: ")).expect("a Via");
    for bad in ["Via: garbage", "Via: SIP/3.0/UDP 192.0.2.10:5060;branch=z9hG4bK1", "Via: SIP/2.0/UDP h:99999"] {
        let sent = sim.receive(alice.flow, &good.replacen(top, bad, 1));
        assert!(sent.is_empty(), "{bad}: nowhere to answer, yet sent {:?}", statuses(&sent));
    }
    assert_eq!(sim.core.metrics.malformed_requests.load(Relaxed), 3);
    assert_eq!(statuses(&sim.receive(alice.flow, &good)), [200], "a good one is still answered");
    assert_eq!(sim.core.metrics.malformed_requests.load(Relaxed), 3);
}

#[test]
fn a_challenge_is_not_kept_but_an_answer_to_credentials_is() {
    let mut sim = Sim::new();
    let mut alice = client("alice", "192.0.2.10:5060");
    let first = alice.request(&mut sim, "REGISTER", "sip:example.test", "<sip:alice@example.test>", &[], "");
    let challenge = sim.receive(alice.flow, &first);
    let again = sim.receive(alice.flow, &first);
    assert_eq!((statuses(&challenge), statuses(&again)), (vec![401], vec![401]));
    assert_ne!(challenge[0].header("WWW-Authenticate"), again[0].header("WWW-Authenticate"), "a fresh challenge");
    assert_eq!(sim.core.server_transactions(), 0, "nothing held for a request without credentials");

    let sent = alice.register(&mut sim, 600);
    assert_eq!(statuses(&sent), [200]);
    assert_eq!(sim.core.server_transactions(), 1, "the 200 is kept for a retransmission of the REGISTER");
}

#[test]
fn a_message_is_forked_to_the_device_and_its_answer_relayed() {
    let mut sim = Sim::new();
    let (mut alice, mut bob) = (client("alice", "192.0.2.10:5060"), client("bob", "192.0.2.20:5060"));
    alice.register(&mut sim, 600);
    let sent = bob.message(&mut sim, "alice@example.test", "hello");
    let [relayed] = requests(&sent, "MESSAGE")[..] else { panic!("one MESSAGE to alice: {:?}", statuses(&sent)) };
    assert_eq!(relayed.msg.request_uri(), Some("sip:alice@192.0.2.10:5060"));
    assert_eq!(relayed.body(), "hello");
    assert!(relayed.msg.headers.get("Proxy-Authorization").is_none(), "bob's credentials stay here");
    assert!(statuses(&sent).is_empty(), "bob waits for alice's answer");

    let sent = alice.answer(&mut sim, relayed, 200);
    assert_eq!(statuses(&sent), [200]);
    assert_eq!(sent[0].flow, bob.flow);
    assert_eq!(sent[0].header("Call-ID"), "bob-call");
}

#[test]
fn an_unanswered_message_over_udp_is_retransmitted_then_480() {
    let mut sim = Sim::new();
    let (mut alice, mut bob) = (client("alice", "192.0.2.10:5060"), client("bob", "192.0.2.20:5060"));
    alice.register(&mut sim, 3600);
    let sent = bob.message(&mut sim, "alice@example.test", "are you there?");
    let original = requests(&sent, "MESSAGE")[0].msg.to_bytes();
    // Timer E: T1 (500 ms), then doubling.
    let sent = sim.wait(Duration::from_millis(600));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].msg.to_bytes(), original);
    // Timer F: 64*T1 after the first send, bob gets 480 (a timeout is not passed on as 408).
    let sent = sim.wait(Duration::from_secs(32));
    let answers: Vec<&Sent> = sent.iter().filter(|s| s.status().is_some()).collect();
    assert_eq!(answers.len(), 1);
    assert_eq!((answers[0].status(), answers[0].flow), (Some(480), bob.flow));
    assert!(requests(&sent, "MESSAGE").len() >= 4, "retransmitted meanwhile");
}

#[test]
fn a_failed_flow_is_480_for_the_sender_and_ends_the_dialog_it_carried() {
    let mut sim = Sim::new();
    let (mut alice, mut bob) = (client("alice", "192.0.2.10:5060"), client("bob", "192.0.2.20:5060"));
    alice.register(&mut sim, 600);
    let sent = bob.message(&mut sim, "alice@example.test", "hello");
    let sent = alice.answer(&mut sim, requests(&sent, "MESSAGE")[0], 430);
    assert_eq!(statuses(&sent), [480], "430 is for proxies, not for bob");

    let sent = alice.subscribe(&mut sim, "bob@example.test", 600);
    assert_eq!(sim.core.presence.all_subscription_ids().len(), 1);
    alice.answer(&mut sim, requests(&sent, "NOTIFY")[0], 430);
    assert!(sim.core.presence.all_subscription_ids().is_empty(), "its route leads nowhere");
}

#[test]
fn messages_to_offline_unknown_and_foreign_users() {
    let mut sim = Sim::new();
    sim.core.settings.offline.enabled = false;
    let mut bob = client("bob", "192.0.2.20:5060");
    assert_eq!(statuses(&bob.message(&mut sim, "alice@example.test", "hi")), [480]);
    assert_eq!(statuses(&bob.message(&mut sim, "nobody@example.test", "hi")), [404]);
    assert_eq!(statuses(&bob.message(&mut sim, "dave@elsewhere.test", "hi")), [404]);
}

#[test]
fn messages_for_a_user_with_no_device_are_kept_then_delivered_in_order_once() {
    let mut sim = Sim::new();
    sim.core.settings.offline.max_per_user = 2;
    let (mut alice, mut bob) = (client("alice", "192.0.2.10:5060"), client("bob", "192.0.2.20:5060"));
    let sent = bob.message(&mut sim, "alice@example.test", "first");
    assert_eq!(statuses(&sent), [202], "kept, once durable");
    assert_eq!(sim.written(Table::Offline, "alice@example.test\u{0}00000000000000000000"), Some(true));
    sim.now = sim.now.after(Duration::from_secs(5));
    assert_eq!(statuses(&bob.message(&mut sim, "alice@example.test", "second")), [202]);
    assert_eq!(statuses(&bob.message(&mut sim, "alice@example.test", "third")), [480], "over the bound");

    // alice signs in: the oldest first, from bob, dated when bob sent it; the next only after.
    let sent = alice.register(&mut sim, 600);
    let [first] = requests(&sent, "MESSAGE")[..] else { panic!("one MESSAGE: {:?}", statuses(&sent)) };
    assert_eq!((first.body(), first.msg.request_uri()), ("first".to_string(), Some("sip:alice@192.0.2.10:5060")));
    assert!(first.header("From").contains("sip:bob@example.test"), "{}", first.header("From"));
    assert_eq!(first.header("Date"), "Fri, 15 Jan 2027 08:00:00 GMT");
    let sent = alice.answer(&mut sim, first, 200);
    assert_eq!(sim.written(Table::Offline, "alice@example.test\u{0}00000000000000000000"), Some(false));
    let [second] = requests(&sent, "MESSAGE")[..] else { panic!("the second MESSAGE: {:?}", statuses(&sent)) };
    assert_eq!(second.body(), "second");
    // A refusal keeps it for the next sign-in; it is not sent again meanwhile.
    let sent = alice.answer(&mut sim, second, 486);
    assert!(requests(&sent, "MESSAGE").is_empty());
    assert_eq!(sim.core.offline.pending("alice@example.test"), 1);
    // The next REGISTER, a refresh too (a device back on a new connection registers the same
    // contact), sends it again.
    let sent = alice.register(&mut sim, 600);
    let [again] = requests(&sent, "MESSAGE")[..] else {
        panic!("sent again at the next REGISTER: {:?}", statuses(&sent))
    };
    assert_eq!(again.body(), "second");
    alice.answer(&mut sim, again, 200);
    assert_eq!(sim.core.offline.total(), 0);
    // carol is homed on home-2: her messages are not kept here.
    assert_eq!(statuses(&bob.message(&mut sim, "carol@example.test", "hi")), [480]);
    assert_eq!(sim.core.metrics.offline_delivered.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn kept_messages_expire() {
    let mut sim = Sim::new();
    sim.core.settings.offline.expiry_secs = 60;
    let mut bob = client("bob", "192.0.2.20:5060");
    assert_eq!(statuses(&bob.message(&mut sim, "alice@example.test", "soon gone")), [202]);
    sim.wait(Duration::from_secs(61));
    assert_eq!(sim.core.offline.total(), 0);
    assert_eq!(sim.written(Table::Offline, "alice@example.test\u{0}00000000000000000000"), Some(false));
    assert_eq!(sim.core.metrics.offline_expired.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn a_watcher_gets_the_200_then_a_notify_and_one_per_publication() {
    let mut sim = Sim::new();
    let (mut alice, mut bob) = (client("alice", "192.0.2.10:5060"), client("bob", "192.0.2.20:5060"));
    alice.register(&mut sim, 3600);
    let sent = bob.subscribe(&mut sim, "alice@example.test", 600);
    let order: Vec<String> =
        sent.iter().map(|s| s.status().map_or_else(|| s.method().unwrap().to_string(), |c| c.to_string())).collect();
    assert_eq!(order, ["200", "NOTIFY"], "the 200 leaves before the first NOTIFY");
    let notify = &sent[1];
    assert_eq!(notify.flow, bob.flow);
    assert!(notify.header("Subscription-State").starts_with("active"), "{}", notify.header("Subscription-State"));
    assert!(notify.body().contains("<basic>open</basic>"), "alice is registered: {}", notify.body());
    assert!(notify.branch.is_some(), "NOTIFY runs in a client transaction");
    assert!(bob.answer(&mut sim, notify, 200).is_empty());
    assert_eq!(sim.written(Table::Subscriptions, &sim.core.presence.all_subscription_ids()[0].clone()), Some(true));

    let sent = alice.publish(&mut sim, "in a meeting");
    assert_eq!(statuses(&sent), [200]);
    let [notify] = requests(&sent, "NOTIFY")[..] else { panic!("one NOTIFY") };
    assert_eq!(notify.flow, bob.flow);
    assert!(notify.body().contains("in a meeting"), "{}", notify.body());
    assert_eq!(sim.written(Table::Publications, "alice@example.test"), Some(true));
}

#[test]
fn expiry_in_simulated_time_signs_out_and_ends_subscriptions() {
    let mut sim = Sim::new();
    let (mut alice, mut bob) = (client("alice", "192.0.2.10:5060"), client("bob", "192.0.2.20:5060"));
    let start = sim.now.wall;
    alice.register(&mut sim, 60);
    let sent = bob.subscribe(&mut sim, "alice@example.test", 120);
    bob.answer(&mut sim, requests(&sent, "NOTIFY")[0], 200);

    // Alice's binding runs out: bob hears she is offline, and the store forgets her binding.
    let notify = sim.wait_for("NOTIFY", Duration::from_secs(62));
    assert!(sim.now.wall >= start + Duration::from_secs(60), "not before the binding expired");
    assert!(notify.body().contains("<basic>closed</basic>"), "{}", notify.body());
    bob.answer(&mut sim, &notify, 200);
    assert_eq!(sim.written(Table::Registrations, "alice@example.test"), Some(false));
    assert_eq!(sim.core.binding_count(), 0);

    // Bob's subscription runs out: a final NOTIFY says so and it is gone.
    let notify = sim.wait_for("NOTIFY", Duration::from_secs(62));
    assert!(sim.now.wall >= start + Duration::from_secs(120), "not before the subscription expired");
    assert_eq!(notify.header("Subscription-State"), "terminated;reason=timeout");
    assert!(sim.core.presence.all_subscription_ids().is_empty());
}

#[test]
fn an_unsubscribe_is_answered_once_its_end_is_durable_and_nothing_writes_it_back() {
    let mut sim = Sim::new();
    let (mut alice, mut bob) = (client("alice", "192.0.2.10:5060"), client("bob", "192.0.2.20:5060"));
    alice.register(&mut sim, 60);
    let sent = bob.subscribe(&mut sim, "alice@example.test", 600);
    bob.answer(&mut sim, requests(&sent, "NOTIFY")[0], 200);
    let to = sent.iter().find(|s| s.status() == Some(200)).expect("200").header("To").to_string();
    let id = sim.core.presence.all_subscription_ids()[0].clone();

    // The disk is slow: the unsubscribe waits for its write, and is not answered before it lands
    // (else a crash meanwhile would bring back a subscription its subscriber was told had ended).
    sim.hold_writes();
    let extra = ["Event: presence".to_string(), "Expires: 0".to_string()];
    let sent = bob.transact(&mut sim, "SUBSCRIBE", "sip:alice@example.test", &to, &extra, "");
    assert!(statuses(&sent).is_empty(), "answered before its end is on disk: {:?}", statuses(&sent));
    // alice's binding expires meanwhile: the NOTIFY round that follows leaves the ended dialog
    // alone, and writes nothing of it after its deletion.
    let sent = sim.wait(Duration::from_secs(61));
    assert!(requests(&sent, "NOTIFY").is_empty(), "the ended subscription is notified");

    let sent = sim.release_writes();
    let order: Vec<String> =
        sent.iter().map(|s| s.status().map_or_else(|| s.method().unwrap().to_string(), |c| c.to_string())).collect();
    assert_eq!(order, ["200", "NOTIFY"], "the 200, then the final NOTIFY");
    assert!(sent.iter().all(|s| s.flow == bob.flow));
    assert_eq!(sent[1].header("Subscription-State"), "terminated;reason=timeout");
    let ours: Vec<bool> = sim
        .writes
        .iter()
        .filter(|w| w.table == Table::Subscriptions && w.key == id)
        .map(|w| w.value.is_some())
        .collect();
    let deleted = ours.iter().position(|put| !put).expect("deleted");
    assert!(ours[deleted..].iter().all(|put| !put), "written back after its deletion: {ours:?}");
    assert!(sim.core.presence.all_subscription_ids().is_empty());
}

#[test]
fn a_subscriber_that_never_answers_is_dropped() {
    let mut sim = Sim::new();
    let mut bob = client("bob", "192.0.2.20:5060");
    let sent = bob.subscribe(&mut sim, "alice@example.test", 600);
    assert_eq!(requests(&sent, "NOTIFY").len(), 1);
    let id = sim.core.presence.all_subscription_ids()[0].clone();
    let sent = sim.wait(Duration::from_secs(33));
    assert!(requests(&sent, "NOTIFY").len() >= 5, "the NOTIFY is retransmitted over UDP");
    assert!(sim.core.presence.all_subscription_ids().is_empty());
    assert_eq!(sim.written(Table::Subscriptions, &id), Some(false));
}

#[test]
fn a_notify_that_cannot_be_sent_drops_the_subscription() {
    let mut sim = Sim::new();
    let mut bob = client("bob", "192.0.2.20:5060");
    let sent = bob.subscribe(&mut sim, "alice@example.test", 600);
    let branch = requests(&sent, "NOTIFY")[0].branch.clone().unwrap();
    assert_eq!(sim.core.metrics.subscriptions.load(std::sync::atomic::Ordering::Relaxed), 1);
    sim.input(Input::NotSent { branch });
    assert!(sim.core.presence.all_subscription_ids().is_empty());
    assert_eq!(sim.core.metrics.subscriptions.load(std::sync::atomic::Ordering::Relaxed), 0, "the gauge follows");
}

/// A change watched by more subscribers than the window goes out as earlier NOTIFYs are answered,
/// not as one burst: every watcher still gets exactly one, and the gauge shows what waits.
#[test]
fn a_publication_watched_by_many_is_notified_a_window_at_a_time() {
    use super::notify_window::{HOLD, WINDOW as NOTIFY_WINDOW};
    use std::sync::atomic::Ordering::Relaxed;
    let mut sim = Sim::new();
    let waiting = 44;
    let mut watchers = HashMap::new();
    for i in 0..NOTIFY_WINDOW + waiting {
        let name: &'static str = Box::leak(format!("w{i}").into_boxed_str());
        let address = format!("{name}@{DOMAIN}");
        let ha1_md5 = Some(ha1(Algorithm::Md5, name, DOMAIN, &format!("{name}-pw")));
        let home_server = Some("home-1".into());
        sim.users.insert(address.clone(), User { address, enabled: true, home_server, ha1_md5, ha1_sha256: None });
        let mut w = client(name, &format!("192.0.2.{}:{}", 100 + i / 250, 5000 + i));
        let sent = w.subscribe(&mut sim, "alice@example.test", 600);
        w.answer(&mut sim, requests(&sent, "NOTIFY")[0], 200);
        watchers.insert(w.flow, w);
    }
    let mut alice = client("alice", "192.0.2.10:5060");
    let mut unanswered: Vec<Sent> =
        alice.publish(&mut sim, "lunch").into_iter().filter(|s| s.method() == Some("NOTIFY")).collect();
    assert_eq!(unanswered.len(), NOTIFY_WINDOW, "a window's worth at once");
    assert_eq!(sim.core.metrics.notifies_queued.load(Relaxed), waiting as u64);
    assert!(sim.core.requests_in_progress() >= waiting, "a shutdown waits for them");

    // Each answer lets the next one go, until every watcher has had its NOTIFY.
    let mut notified = std::collections::HashSet::new();
    while let Some(notify) = unanswered.pop() {
        assert!(notified.insert(notify.flow), "a second NOTIFY to {}", notify.flow.remote);
        let more = watchers[&notify.flow].answer(&mut sim, &notify, 200);
        unanswered.extend(more.into_iter().filter(|s| s.method() == Some("NOTIFY")));
        assert!(unanswered.len() <= NOTIFY_WINDOW);
    }
    assert_eq!(notified.len(), watchers.len(), "every watcher notified");
    assert_eq!(sim.core.metrics.notifies_queued.load(Relaxed), 0);

    // Watchers that answer nothing (gone without unsubscribing) hold their places only briefly.
    let sent = alice.publish(&mut sim, "back");
    assert_eq!(requests(&sent, "NOTIFY").len(), NOTIFY_WINDOW);
    let sent = sim.wait(HOLD);
    assert_eq!(requests(&sent, "NOTIFY").len(), waiting, "the rest, though nobody answered");
}

#[test]
fn wrong_passwords_lock_the_address_out_but_not_the_user_elsewhere() {
    let mut sim = Sim::new();
    let mut guesser = client("alice", "203.0.113.9:5060");
    for _ in 0..10 {
        let first = guesser.request(&mut sim, "REGISTER", "sip:example.test", "<sip:alice@example.test>", &[], "");
        let challenge = sim.receive(guesser.flow, &first);
        let creds = digest(&challenge[0].msg, "WWW-Authenticate", "alice", "guess", "REGISTER", "sip:example.test");
        let second = guesser.request(
            &mut sim,
            "REGISTER",
            "sip:example.test",
            "<sip:alice@example.test>",
            &[format!("Authorization: {creds}")],
            "",
        );
        assert_eq!(statuses(&sim.receive(guesser.flow, &second)), [401]);
    }
    // The right password from the locked-out address is refused exactly as a wrong one is...
    assert_eq!(statuses(&guesser.register(&mut sim, 600)), [401]);
    // ...while alice on her own address signs in.
    let mut alice = client("alice", "192.0.2.10:5060");
    assert_eq!(statuses(&alice.register(&mut sim, 600)), [200]);
}

#[test]
fn the_right_password_with_a_nonce_of_an_earlier_process_is_stale_not_a_failure() {
    let mut before = Sim::new();
    let mut after = Sim::new(); // the restarted process: another nonce secret
    let mut alice = client("alice", "192.0.2.10:5060");
    let first = alice.request(&mut before, "REGISTER", "sip:example.test", "<sip:alice@example.test>", &[], "");
    let challenge = before.receive(alice.flow, &first);
    let creds = digest(&challenge[0].msg, "WWW-Authenticate", "alice", "alice-pw", "REGISTER", "sip:example.test");
    // More times than the lockout threshold: none of them counts as a wrong password.
    for _ in 0..12 {
        let again = alice.request(
            &mut after,
            "REGISTER",
            "sip:example.test",
            "<sip:alice@example.test>",
            &[format!("Authorization: {creds}")],
            "",
        );
        let sent = after.receive(alice.flow, &again);
        assert_eq!(statuses(&sent), [401]);
        assert!(sent[0].header("WWW-Authenticate").contains("stale=true"), "{}", sent[0].header("WWW-Authenticate"));
    }
    assert_eq!(statuses(&alice.register(&mut after, 600)), [200], "not locked out");
}

#[test]
fn a_user_homed_elsewhere_is_refused() {
    let mut sim = Sim::new();
    let mut carol = client("carol", "192.0.2.30:5060");
    let sent = carol.register(&mut sim, 600);
    let last = sent.last().unwrap();
    assert_eq!((last.status(), last.reason()), (Some(403), "Homed On Another Home Server"));
    assert_eq!(sim.core.binding_count(), 0);
}

#[test]
fn behind_a_front_end_the_path_leads_back_to_the_instance_that_holds_the_client() {
    let mut sim = Sim::new();
    // A REGISTER relayed by a Front-End over the internal link: its Path names the instance.
    let fe = Flow { transport: Transport::Internal, remote: "10.0.0.5:40000".parse().unwrap(), conn: 7 };
    for (path_host, expect) in [("10.0.0.5:5062", "10.0.0.5:5062"), ("fe-0.parley:5062", "198.51.100.7:5062")] {
        let mut alice = client("alice", "192.0.2.10:5060");
        alice.flow = fe;
        alice.call_id = format!("alice-via-{path_host}");
        let path = format!("Path: <sip:tok@{path_host};lr;transport=tls>");
        let contact = "Contact: <sip:alice@192.0.2.10:5060>".to_string();
        let sent =
            alice.transact(&mut sim, "REGISTER", "sip:example.test", "<sip:alice@example.test>", &[path, contact], "");
        let ok = sent.last().unwrap();
        assert_eq!(ok.status(), Some(200));
        assert!(ok.header("Path").contains(path_host), "the Path is echoed: {}", ok.header("Path"));
        let resolve = sim.fetched.last().unwrap().1.clone();
        assert_eq!(resolve.is_some(), path_host.starts_with("fe-"), "names are resolved, addresses are not");

        // A MESSAGE for alice goes to that instance with the Path as its Route.
        let mut bob = client("bob", "192.0.2.20:5060");
        bob.call_id = format!("bob-{path_host}");
        let sent = bob.message(&mut sim, "alice@example.test", "via the front-end");
        let relayed = requests(&sent, "MESSAGE")[0];
        assert_eq!(relayed.flow.remote.to_string(), expect);
        assert_eq!((relayed.flow.transport, relayed.flow.conn), (Transport::Internal, 7));
        assert!(relayed.header("Route").contains(path_host));
    }
}

#[test]
fn when_too_many_requests_are_in_progress_new_ones_get_503_before_any_work() {
    let mut sim = Sim::new(); // at most 3 in progress
    let (mut alice, mut bob) = (client("alice", "192.0.2.10:5060"), client("bob", "192.0.2.20:5060"));
    alice.register(&mut sim, 3600);
    // Three messages to alice wait for her device's answer.
    let waiting: Vec<Sent> =
        (0..3).flat_map(|i| bob.message(&mut sim, "alice@example.test", &format!("m{i}"))).collect();
    assert_eq!(requests(&waiting, "MESSAGE").len(), 3);
    let fetches = sim.fetched.len();
    let sent = bob.message(&mut sim, "alice@example.test", "one too many");
    assert_eq!(statuses(&sent), [503]);
    assert_eq!(sent[0].reason(), "Overloaded");
    assert_eq!(sent[0].header("Retry-After"), "5");
    assert_eq!(sim.fetched.len(), fetches, "no directory lookup for a refused request");
    assert_eq!(sim.core.metrics.overload_refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Once alice answers, there is room again.
    alice.answer(&mut sim, requests(&waiting, "MESSAGE")[0], 200);
    assert_eq!(statuses(&bob.message(&mut sim, "alice@example.test", "now")), Vec::<u16>::new(), "forwarded");
}

#[test]
fn a_user_being_moved_gets_503_then_rehome_and_their_dialogs_end_deactivated() {
    let mut sim = Sim::new();
    let (mut alice, mut bob) = (client("alice", "192.0.2.10:5060"), client("bob", "192.0.2.20:5060"));
    assert_eq!(statuses(&alice.register(&mut sim, 3600)), [200]);
    bob.register(&mut sim, 3600);
    let sent = bob.subscribe(&mut sim, "alice@example.test", 600);
    let notify = requests(&sent, "NOTIFY")[0];
    bob.answer(&mut sim, notify, 200);

    // Locked: every request for alice is 503 with Retry-After, never 404; bob is served.
    sim.core.begin_move_out(sim.now, "alice@example.test").unwrap();
    assert!(sim.core.begin_move_out(sim.now, "alice@example.test").is_err(), "one move at a time");
    assert_eq!(sim.core.write_refusal("alice@example.test", sim.now.wall), Some(false));
    for sent in [alice.register(&mut sim, 3600), bob.message(&mut sim, "alice@example.test", "hi")] {
        let [answer] = &sent[..] else { panic!("one answer: {:?}", statuses(&sent)) };
        assert_eq!((answer.status(), answer.header("Retry-After")), (Some(503), "1"));
        assert_eq!(answer.header("Parley-Rehome"), "");
    }
    assert_eq!(statuses(&bob.register(&mut sim, 3600)), [200]);
    assert_eq!(sim.core.moves_in_progress(sim.now.wall), 1);

    // Done: bob's dialog about alice ends (deactivated); alice's state is gone from memory and
    // from the store; requests for her get 503 with Parley-Rehome.
    let writes = sim.core.finish_move_out(sim.now, "alice@example.test");
    assert!(writes.iter().any(|w| w.table == Table::Registrations && w.value.is_none()), "{writes:?}");
    let sent = sim.settle();
    let [notify] = requests(&sent, "NOTIFY")[..] else { panic!("one final NOTIFY") };
    assert_eq!(notify.header("Subscription-State"), "terminated;reason=deactivated");
    assert_eq!(sim.core.registered_users(), 1, "only bob");
    let sent = bob.message(&mut sim, "alice@example.test", "hi");
    let [answer] = &sent[..] else { panic!("one answer") };
    assert_eq!((answer.status(), answer.header("Parley-Rehome")), (Some(503), "1"));
    assert_eq!(sim.core.write_refusal("alice@example.test", sim.now.wall), Some(true));

    // Moved back: served again, and homed here whatever the directory's cached answer says.
    sim.users.get_mut("alice@example.test").unwrap().home_server = Some("home-2".into());
    sim.core.receive_user(sim.now, "alice@example.test", Default::default());
    assert_eq!(sim.core.write_refusal("alice@example.test", sim.now.wall), None);
    assert_eq!(statuses(&alice.register(&mut sim, 3600)), [200]);

    // A lock whose mover died lifts by itself.
    sim.core.begin_move_out(sim.now, "bob@example.test").unwrap();
    sim.wait(crate::home::moves::MOVE_LOCK + Duration::from_secs(2));
    assert_eq!(sim.core.moves_in_progress(sim.now.wall), 0);
    assert_eq!(statuses(&bob.register(&mut sim, 3600)), [200]);
}

#[test]
fn a_moved_users_kept_messages_go_with_them_and_are_delivered_at_the_new_home() {
    use crate::home::moves::Loaded;
    // The old home keeps two messages for alice, who has no device.
    let mut old = Sim::new();
    let mut bob = client("bob", "192.0.2.20:5060");
    bob.register(&mut old, 3600);
    for text in ["first", "second"] {
        assert_eq!(statuses(&bob.message(&mut old, "alice@example.test", text)), [202]);
    }
    // The move: what the store exports for alice (her kept messages by key suffix) ...
    let mut state = crate::store::UserState::new();
    let kept: serde_json::Map<String, serde_json::Value> = (0..2)
        .map(|i| {
            let k = &old.core.offline.queues_for_tests("alice@example.test")[i];
            (format!("{:020}", k.seq), serde_json::to_value(k).unwrap())
        })
        .collect();
    state.insert("offline_messages".into(), serde_json::Value::Object(kept));
    // ... the old home lets her go and deletes them from its store ...
    let writes = old.core.finish_move_out(old.now, "alice@example.test");
    let deleted: Vec<&str> =
        writes.iter().filter(|w| w.table == Table::Offline && w.value.is_none()).map(|w| w.key.as_str()).collect();
    assert_eq!(deleted.len(), 2, "{writes:?}");
    assert!(deleted.iter().all(|k| k.starts_with("alice@example.test\u{0}")));
    assert_eq!(old.core.offline.total(), 0);
    // ... and the new home holds them and delivers them, oldest first, at her next sign-in.
    let mut new = Sim::new();
    new.core.receive_user(new.now, "alice@example.test", Loaded::parse(&state).unwrap());
    assert_eq!(new.core.offline.pending("alice@example.test"), 2);
    let mut alice = client("alice", "192.0.2.10:5060");
    let sent = alice.register(&mut new, 3600);
    let [first] = requests(&sent, "MESSAGE")[..] else { panic!("the first kept message: {:?}", statuses(&sent)) };
    assert_eq!(first.body(), "first");
}
