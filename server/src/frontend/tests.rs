//! The Front-End's routing and hop state on the state machine alone, with simulated time: probes,
//! forwarding with Path and flow tokens, relaying back to a UDP client with retransmission, and
//! Home Servers that refuse connections or stop answering.

use super::{PROBE_TIMEOUT, Proxy, Settings};
use crate::config::HomeServerRoute;
use crate::directory::{DirectoryError, User};
use crate::ops::metrics::Metrics;
use crate::service::{Action, Facts, Input, Now, Service};
use crate::sip::Message;
use crate::sip::message::{Limits, parse_datagram};
use crate::sip::response::respond;
use crate::transaction::Timers;
use crate::transport::{Flow, Transport};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const HOME_1: &str = "10.0.0.1:5062";
const HOME_2: &str = "10.0.0.2:5062";

struct Sent {
    flow: Flow,
    msg: Message,
    branch: Option<String>,
}

struct Sim {
    proxy: Proxy,
    metrics: Arc<Metrics>,
    now: Now,
    users: HashMap<String, User>,
    directory_down: bool,
    lookups: usize,
    next: u32,
    /// Users whose cached directory answer the proxy asked to drop.
    forgotten: Vec<String>,
}

impl Sim {
    fn new() -> Sim {
        let home_servers = [("home-1", HOME_1), ("home-2", HOME_2)]
            .map(|(name, address)| HomeServerRoute { name: name.into(), address: address.into() })
            .to_vec();
        let settings = Settings {
            domain: "example.test".into(),
            domain_aliases: vec![],
            home_servers,
            route_cache: Duration::from_secs(10),
            probe_interval: Duration::from_millis(500),
            timers: Timers::default(),
            max_pending_requests: 3,
            flow_secret: None,
        };
        let metrics = Arc::new(Metrics::default());
        let mut proxy = Proxy::new(settings, metrics.clone());
        proxy.set_advertised(Transport::Udp, "203.0.113.1:5060".into());
        proxy.set_advertised(Transport::Internal, "10.0.0.9:5062".into());
        let mut users = HashMap::new();
        for (name, home) in [("alice", "home-1"), ("carol", "home-2")] {
            let address = format!("{name}@example.test");
            let user = User {
                address: address.clone(),
                enabled: true,
                home_server: Some(home.into()),
                ha1_md5: None,
                ha1_sha256: None,
            };
            users.insert(address, user);
        }
        let now = Now { instant: Instant::now(), wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) };
        Sim { proxy, metrics, now, users, directory_down: false, lookups: 0, next: 0, forgotten: vec![] }
    }

    fn settle(&mut self) -> Vec<Sent> {
        let mut sent = Vec::new();
        loop {
            let actions = self.proxy.take_actions();
            if actions.is_empty() {
                return sent;
            }
            for action in actions {
                match action {
                    Action::Send { flow, data, branch } => {
                        let msg = parse_datagram(&data, &Limits::default()).expect("parseable");
                        sent.push(Sent { flow, msg, branch });
                    }
                    Action::Fetch { task, users, .. } => {
                        self.lookups += users.len();
                        let mut facts = Facts::default();
                        for aor in users {
                            let found = match self.directory_down {
                                true => Err(DirectoryError::Unavailable("down".into())),
                                false => Ok(self.users.get(&aor).cloned()),
                            };
                            facts.users.insert(aor, found);
                        }
                        self.proxy.handle(self.now, Input::Fetched { task, facts });
                    }
                    Action::Store { .. } => panic!("a Front-End stores nothing"),
                    Action::Forget { user } => self.forgotten.push(user),
                }
            }
        }
    }

    fn input(&mut self, input: Input) -> Vec<Sent> {
        self.proxy.handle(self.now, input);
        self.settle()
    }

    fn receive(&mut self, flow: Flow, msg: Message) -> Vec<Sent> {
        self.input(Input::Received { flow, message: Ok(msg) })
    }

    fn wait(&mut self, d: Duration) -> Vec<Sent> {
        let end = self.now.after(d);
        let mut sent = Vec::new();
        while self.now.instant < end.instant {
            self.now = self.now.after(Duration::from_millis(50));
            self.proxy.on_tick(self.now);
            sent.extend(self.settle());
        }
        sent
    }

    /// Runs the timers for long enough that every Home Server is probed (a probe still in flight
    /// must time out first), answering at once the probes of those at `answering`.
    fn probe_round(&mut self, answering: &[&str]) {
        let end = self.now.after(PROBE_TIMEOUT + Duration::from_millis(500));
        while self.now.instant < end.instant {
            let sent = self.wait(Duration::from_millis(50));
            for probe in sent.iter().filter(|s| s.msg.method() == Some("OPTIONS")) {
                if answering.contains(&probe.flow.remote.to_string().as_str()) {
                    self.receive(internal(&probe.flow.remote.to_string()), respond(&probe.msg, 200, "home"));
                }
            }
        }
    }

    fn client_request(&mut self, client: Flow, method: &str, uri: &str, to: &str, extra: &str) -> Message {
        self.next += 1;
        let text = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKc{};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:alice@example.test>;tag=a\r\nTo: {to}\r\nCall-ID: call-{}\r\nCSeq: 1 {method}\r\n{extra}\
             Content-Length: 0\r\n\r\n",
            client.remote, self.next, self.next
        );
        parse_datagram(text.as_bytes(), &Limits::default()).unwrap()
    }

    fn up(&self, home: &str) -> bool {
        self.metrics.home_servers.lock().unwrap()[home].up
    }
}

fn internal(addr: &str) -> Flow {
    Flow { transport: Transport::Internal, remote: addr.parse().unwrap(), conn: 9 }
}

fn udp(addr: &str) -> Flow {
    Flow::datagram(Transport::Udp, addr.parse::<SocketAddr>().unwrap())
}

#[test]
fn probes_decide_which_home_servers_are_up() {
    let mut sim = Sim::new();
    assert!(!sim.proxy.probes_settled());
    sim.probe_round(&[HOME_1]);
    assert!(sim.up("home-1"));
    // Home 2 did not answer within PROBE_TIMEOUT: down (and every Home Server has been heard of).
    assert!(sim.proxy.probes_settled());
    assert!(!sim.up("home-2"));
    sim.probe_round(&[HOME_1, HOME_2]);
    assert!(sim.up("home-2"));
}

#[test]
fn a_register_goes_to_the_users_home_server_with_a_path_and_the_answer_comes_back() {
    let mut sim = Sim::new();
    sim.probe_round(&[HOME_1, HOME_2]);
    let carol = udp("192.0.2.30:5060");
    let register = sim.client_request(carol, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
    let sent = sim.receive(carol, register);
    let [forwarded] = &sent[..] else { panic!("one forward") };
    assert_eq!(forwarded.flow.remote.to_string(), HOME_2);
    assert_eq!(forwarded.flow.transport, Transport::Internal);
    let path = forwarded.msg.headers.get("Path").unwrap();
    assert!(path.contains("@10.0.0.9:5062;transport=tls;lr;ob"), "{path}");
    assert!(forwarded.msg.headers.get("Via").unwrap().contains(";pft="));

    let sent = sim.receive(internal(HOME_2), respond(&forwarded.msg, 401, "home"));
    let [answer] = &sent[..] else { panic!("one answer") };
    assert_eq!((answer.flow, answer.msg.status()), (carol, Some(401)));
    assert!(answer.msg.headers.get("Via").unwrap().contains("192.0.2.30:5060"), "our Via is gone");

    // The route is cached: a second request for carol asks the directory nothing.
    let lookups = sim.lookups;
    let again = sim.client_request(carol, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
    assert_eq!(sim.receive(carol, again).len(), 1);
    assert_eq!(sim.lookups, lookups);
}

#[test]
fn a_users_old_home_saying_rehome_gets_the_request_once_more_where_the_directory_now_says() {
    let mut sim = Sim::new();
    sim.probe_round(&[HOME_1, HOME_2]);
    let carol = udp("192.0.2.30:5060");
    let register = sim.client_request(carol, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
    let sent = sim.receive(carol, register.clone());
    assert_eq!(sent[0].flow.remote.to_string(), HOME_2);
    sim.receive(internal(HOME_2), respond(&sent[0].msg, 401, "home"));
    // Carol moves to home-1; the Front-End's cached route still says home-2.
    sim.users.get_mut("carol@example.test").unwrap().home_server = Some("home-1".into());
    let again = sim.client_request(carol, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
    let sent = sim.receive(carol, again);
    let [to_old] = &sent[..] else { panic!("one forward") };
    assert_eq!(to_old.flow.remote.to_string(), HOME_2, "the cached route");
    let mut moved = respond(&to_old.msg, 503, "home");
    moved.headers.push("Retry-After", "1");
    moved.headers.push("Parley-Rehome", "1");
    let sent = sim.receive(internal(HOME_2), moved);
    let [to_new] = &sent[..] else { panic!("the request once more, and nothing to the client") };
    assert_eq!(to_new.flow.remote.to_string(), HOME_1, "where the directory says now");
    assert_eq!(sim.forgotten, ["carol@example.test"], "the directory's cached answer is dropped");
    assert_eq!(to_new.msg.headers.get_all("Path").count(), 1, "one Path, ours, not two");
    assert_eq!(to_new.msg.headers.get_all("Via").count(), 2, "ours and the client's");
    // Should the new home also say so, the client gets the 503 (with Retry-After), once.
    let mut again = respond(&to_new.msg, 503, "home");
    again.headers.push("Retry-After", "1");
    again.headers.push("Parley-Rehome", "1");
    let sent = sim.receive(internal(HOME_1), again);
    let [answer] = &sent[..] else { panic!("one answer") };
    assert_eq!((answer.flow, answer.msg.status()), (carol, Some(503)));
    assert!(answer.msg.headers.get("Retry-After").is_some() && answer.msg.headers.get("Parley-Rehome").is_none());
}

#[test]
fn a_contact_list_subscription_goes_to_the_owners_home_server() {
    let mut sim = Sim::new();
    sim.probe_round(&[HOME_1, HOME_2]);
    let carol = udp("192.0.2.30:5060");
    let list = "sip:carol+contacts@example.test";
    let subscribe = sim.client_request(carol, "SUBSCRIBE", list, &format!("<{list}>"), "Event: presence\r\n");
    let sent = sim.receive(carol, subscribe);
    let [forwarded] = &sent[..] else { panic!("one forward") };
    assert_eq!(forwarded.flow.remote.to_string(), HOME_2, "carol's home, not a 404 for carol+contacts");
}

#[test]
fn a_request_to_a_udp_client_is_retransmitted_until_it_answers() {
    let mut sim = Sim::new();
    sim.probe_round(&[HOME_1, HOME_2]);
    let carol = udp("192.0.2.30:5060");
    let register = sim.client_request(carol, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
    let path = sim.receive(carol, register)[0].msg.headers.get("Path").unwrap().to_string();

    // The Home Server sends carol a NOTIFY along her Path, over the reliable internal link.
    let notify = format!(
        "NOTIFY sip:carol@192.0.2.30:5060 SIP/2.0\r\nVia: SIP/2.0/TLS {HOME_2};branch=z9hG4bKn1\r\nRoute: {path}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=h\r\nTo: <sip:carol@example.test>;tag=c\r\n\
         Call-ID: sub-1\r\nCSeq: 1 NOTIFY\r\nEvent: presence\r\nSubscription-State: active\r\nContent-Length: 0\r\n\r\n"
    );
    let notify = parse_datagram(notify.as_bytes(), &Limits::default()).unwrap();
    let sent = sim.receive(internal(HOME_2), notify);
    let [relayed] = &sent[..] else { panic!("one NOTIFY to carol") };
    assert_eq!(relayed.flow, carol);
    assert!(relayed.msg.headers.get("Route").is_none(), "our Route entry is used up");

    let sent = sim.wait(Duration::from_millis(600));
    let resent: Vec<&Sent> = sent.iter().filter(|s| s.msg.method() == Some("NOTIFY")).collect();
    assert_eq!(resent.len(), 1, "timer E: the lost NOTIFY is sent again");
    assert_eq!(resent[0].msg.to_bytes(), relayed.msg.to_bytes());

    let sent = sim.receive(carol, respond(&relayed.msg, 200, "carol"));
    let [answer] = &sent[..] else { panic!("the 200 goes to the Home Server") };
    assert_eq!((answer.flow.remote.to_string(), answer.msg.status()), (HOME_2.to_string(), Some(200)));
    let sent = sim.wait(Duration::from_secs(5));
    assert!(sent.iter().all(|s| s.msg.method() != Some("NOTIFY")), "answered: no more retransmissions");
}

#[test]
fn a_flow_that_is_gone_is_reported_to_the_home_server_as_430() {
    let mut sim = Sim::new();
    sim.probe_round(&[HOME_1, HOME_2]);
    let carol = Flow { transport: Transport::Tcp, remote: "192.0.2.30:40000".parse().unwrap(), conn: 4 };
    let mut register = sim.client_request(carol, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
    register.headers.set("Via", "SIP/2.0/TCP 192.0.2.30:40000;branch=z9hG4bKt1");
    let path = sim.receive(carol, register)[0].msg.headers.get("Path").unwrap().to_string();
    let message = format!(
        "MESSAGE sip:carol@192.0.2.30:40000 SIP/2.0\r\nVia: SIP/2.0/TLS {HOME_2};branch=z9hG4bKm1\r\nRoute: {path}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=h\r\nTo: <sip:carol@example.test>\r\n\
         Call-ID: m-1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    );
    let sent = sim.receive(internal(HOME_2), parse_datagram(message.as_bytes(), &Limits::default()).unwrap());
    let branch = sent[0].branch.clone().expect("relayed in a transaction");
    let sent = sim.input(Input::NotSent { branch });
    let [answer] = &sent[..] else { panic!("one answer to the Home Server") };
    assert_eq!((answer.flow.remote.to_string(), answer.msg.status()), (HOME_2.to_string(), Some(430)));
}

#[test]
fn a_flow_token_from_before_a_restart_is_a_failed_flow_not_a_new_request() {
    let mut sim = Sim::new();
    sim.probe_round(&[HOME_1, HOME_2]);
    let carol = udp("192.0.2.30:5060");
    let register = sim.client_request(carol, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
    let path = sim.receive(carol, register)[0].msg.headers.get("Path").unwrap().to_string();

    // The instance restarts (same address, a new key): the Home Server still routes by the old Path.
    let mut restarted = Sim::new();
    restarted.probe_round(&[HOME_1, HOME_2]);
    let message = format!(
        "MESSAGE sip:carol@192.0.2.30:5060 SIP/2.0\r\nVia: SIP/2.0/TLS {HOME_2};branch=z9hG4bKm1\r\nRoute: {path}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@example.test>;tag=h\r\nTo: <sip:carol@example.test>\r\n\
         Call-ID: m-1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    );
    let sent = restarted.receive(internal(HOME_2), parse_datagram(message.as_bytes(), &Limits::default()).unwrap());
    let [answer] = &sent[..] else { panic!("only an answer, no forward: {}", sent.len()) };
    assert_eq!((answer.flow.remote.to_string(), answer.msg.status()), (HOME_2.to_string(), Some(430)));
}

#[test]
fn a_home_server_that_refuses_the_connection_costs_its_users_a_503_at_once() {
    let mut sim = Sim::new();
    sim.probe_round(&[HOME_1, HOME_2]);
    let carol = udp("192.0.2.30:5060");
    let register = sim.client_request(carol, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
    let branch = sim.receive(carol, register)[0].branch.clone().unwrap();
    let sent = sim.input(Input::NotSent { branch });
    let [answer] = &sent[..] else { panic!("one answer") };
    assert_eq!((answer.flow, answer.msg.status()), (carol, Some(503)));
    assert!(retry_after_ok(answer.msg.headers.get("Retry-After")), "{:?}", answer.msg.headers.get("Retry-After"));
    assert!(!sim.up("home-2") && sim.up("home-1"));

    // While it is down its users are answered at once, others are forwarded as usual.
    let again = sim.client_request(carol, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
    assert_eq!(sim.receive(carol, again)[0].msg.status(), Some(503));
    let alice = udp("192.0.2.10:5060");
    let register = sim.client_request(alice, "REGISTER", "sip:example.test", "<sip:alice@example.test>", "");
    assert_eq!(sim.receive(alice, register)[0].flow.remote.to_string(), HOME_1);
}

#[test]
fn a_hung_home_server_is_marked_down_when_its_probe_goes_unanswered_and_waiting_requests_get_503() {
    let mut sim = Sim::new();
    sim.probe_round(&[HOME_1, HOME_2]);
    let carol = udp("192.0.2.30:5060");
    let register = sim.client_request(carol, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
    assert_eq!(sim.receive(carol, register)[0].flow.remote.to_string(), HOME_2);
    // Home 2 hangs: its connection stays open, nothing comes back, not even to probes.
    let started = sim.now.instant;
    let mut answer = None;
    while answer.is_none() {
        assert!(sim.now.instant.duration_since(started) < Duration::from_secs(2), "no 503 within 2 s");
        let sent = sim.wait(Duration::from_millis(50));
        for s in &sent {
            if s.msg.method() == Some("OPTIONS") && s.flow.remote.to_string() == HOME_1 {
                sim.receive(internal(HOME_1), respond(&s.msg, 200, "home"));
            }
        }
        answer = sent.into_iter().find(|s| s.msg.status().is_some());
    }
    let answer = answer.unwrap();
    assert_eq!((answer.flow, answer.msg.status()), (carol, Some(503)));
    assert!(!sim.up("home-2") && sim.up("home-1"));
    // It wakes up and answers a probe: in use again.
    sim.probe_round(&[HOME_1, HOME_2]);
    assert!(sim.up("home-2"));
}

#[test]
fn unknown_users_get_404_and_a_directory_outage_503() {
    let mut sim = Sim::new();
    sim.probe_round(&[HOME_1, HOME_2]);
    let client = udp("192.0.2.10:5060");
    let msg = sim.client_request(client, "MESSAGE", "sip:nobody@example.test", "<sip:nobody@example.test>", "");
    assert_eq!(sim.receive(client, msg)[0].msg.status(), Some(404));
    let msg = sim.client_request(client, "MESSAGE", "sip:dave@elsewhere.test", "<sip:dave@elsewhere.test>", "");
    assert_eq!(sim.receive(client, msg)[0].msg.status(), Some(404));
    sim.directory_down = true;
    let msg = sim.client_request(client, "MESSAGE", "sip:alice@example.test", "<sip:alice@example.test>", "");
    let sent = sim.receive(client, msg);
    assert_eq!(sent[0].msg.status(), Some(503));
    assert!(retry_after_ok(sent[0].msg.headers.get("Retry-After")));
}

#[test]
fn when_too_many_requests_wait_for_home_servers_new_ones_get_503() {
    let mut sim = Sim::new(); // at most 3 waiting
    sim.probe_round(&[HOME_1, HOME_2]);
    for i in 0..3 {
        let client = udp(&format!("192.0.2.{}:5060", 30 + i));
        let register = sim.client_request(client, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
        assert_eq!(sim.receive(client, register)[0].flow.remote.to_string(), HOME_2);
    }
    let client = udp("192.0.2.40:5060");
    let register = sim.client_request(client, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
    let sent = sim.receive(client, register);
    assert_eq!((sent[0].flow, sent[0].msg.status()), (client, Some(503)));
    assert!(retry_after_ok(sent[0].msg.headers.get("Retry-After")));
    assert_eq!(sim.metrics.overload_refused.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// A Retry-After of 1 to 5 seconds (chosen at random, to spread the clients' return).
fn retry_after_ok(value: Option<&str>) -> bool {
    value.and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| (1..=5).contains(&s))
}

#[test]
fn shutting_down_it_answers_its_own_probes_503_then_refuses_new_client_requests_but_not_what_it_took_on() {
    use crate::ops::metrics::phase;
    let mut sim = Sim::new();
    sim.probe_round(&[HOME_1, HOME_2]);
    let (carol, lb) = (udp("192.0.2.30:5060"), udp("192.0.2.99:5060"));
    let register = sim.client_request(carol, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
    let [forwarded] = &sim.receive(carol, register.clone())[..] else { panic!("one forward") };
    let forwarded = forwarded.msg.clone();

    // Not ready: a load balancer's OPTIONS to this instance gets 503 + Retry-After; users are served.
    sim.metrics.phase.store(phase::NOT_READY, std::sync::atomic::Ordering::Relaxed);
    let options = sim.client_request(lb, "OPTIONS", "sip:203.0.113.1:5060", "<sip:203.0.113.1:5060>", "");
    let [answer] = &sim.receive(lb, options)[..] else { panic!("one answer") };
    assert_eq!(answer.msg.status(), Some(503));
    assert!(retry_after_ok(answer.msg.headers.get("Retry-After")));
    let alice = udp("192.0.2.10:5060");
    let message = sim.client_request(alice, "MESSAGE", "sip:carol@example.test", "<sip:carol@example.test>", "");
    assert_eq!(sim.receive(alice, message)[0].flow.transport, Transport::Internal, "forwarded");

    // Refusing: a new request from a client gets 503 + Retry-After (it goes to another instance);
    // the retransmission of the REGISTER taken on before is forwarded again, not refused, and the
    // Home Server's answer still reaches the client.
    sim.metrics.phase.store(phase::REFUSING, std::sync::atomic::Ordering::Relaxed);
    let new = sim.client_request(alice, "MESSAGE", "sip:carol@example.test", "<sip:carol@example.test>", "");
    let [refused] = &sim.receive(alice, new)[..] else { panic!("one answer") };
    assert_eq!((refused.flow, refused.msg.status()), (alice, Some(503)));
    assert!(retry_after_ok(refused.msg.headers.get("Retry-After")));
    let again = sim.receive(carol, register);
    assert!(
        !again.is_empty() && again.iter().all(|s| s.flow.transport == Transport::Internal),
        "the retransmission is forwarded"
    );
    let [answer] = &sim.receive(internal(HOME_2), respond(&forwarded, 200, "home"))[..] else { panic!("answer") };
    assert_eq!((answer.flow, answer.msg.status()), (carol, Some(200)));
    assert!(sim.metrics.shutdown_refused.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}

#[test]
fn a_home_server_whose_probe_says_503_gets_no_new_requests_until_it_answers_200() {
    let mut sim = Sim::new();
    sim.probe_round(&[HOME_1, HOME_2]);
    // Probes of home-2 answered 503 (shutting down).
    let end = sim.now.after(Duration::from_secs(1));
    while sim.now.instant < end.instant {
        for probe in sim.wait(Duration::from_millis(50)).iter().filter(|s| s.msg.method() == Some("OPTIONS")) {
            let code = if probe.flow.remote.to_string() == HOME_2 { 503 } else { 200 };
            sim.receive(internal(&probe.flow.remote.to_string()), respond(&probe.msg, code, "home"));
        }
    }
    let carol = udp("192.0.2.30:5060");
    let register = sim.client_request(carol, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
    let [answer] = &sim.receive(carol, register)[..] else { panic!("one answer") };
    assert_eq!((answer.flow, answer.msg.status()), (carol, Some(503)), "answered here, not forwarded");
    assert!(retry_after_ok(answer.msg.headers.get("Retry-After")));
    sim.probe_round(&[HOME_1, HOME_2]);
    let register = sim.client_request(carol, "REGISTER", "sip:example.test", "<sip:carol@example.test>", "");
    assert_eq!(sim.receive(carol, register)[0].flow.transport, Transport::Internal, "forwarded again");
}

#[test]
fn a_shared_flow_key_too_short_to_be_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "secret\n").unwrap();
    let err = super::read_flow_key(&short).unwrap_err().to_string();
    assert!(err.contains("holds 6 bytes") && err.contains("at least 16"), "{err}");
    let good = dir.path().join("good");
    std::fs::write(&good, "0123456789abcdef0123").unwrap();
    assert!(super::read_flow_key(&good).is_ok());
}

/// What does not parse is counted: a request answered 400 where its Via says where, a request
/// whose top Via does not parse left unanswered (nowhere to answer), a response dropped.
#[test]
fn malformed_messages_are_counted_and_answered_where_they_can_be() {
    use std::sync::atomic::Ordering::Relaxed;
    let mut sim = Sim::new();
    sim.probe_round(&[HOME_1, HOME_2]);
    let carol = udp("192.0.2.30:5060");
    let good = sim.client_request(carol, "OPTIONS", "sip:example.test", "<sip:example.test>", "");
    let good = String::from_utf8(good.to_bytes().to_vec()).unwrap();
    let (requests, responses) =
        (sim.metrics.malformed_requests.load(Relaxed), sim.metrics.malformed_responses.load(Relaxed));

    let bad_via = good.replacen("SIP/2.0/UDP 192.0.2.30:5060", "SIP/3.0/UDP 192.0.2.30:5060", 1);
    let sent = sim.receive(carol, parse_datagram(bad_via.as_bytes(), &Limits::default()).unwrap());
    assert!(sent.is_empty(), "nowhere to answer, yet sent {} messages", sent.len());

    let no_colon = good.replacen("Max-Forwards: 70", "Max-Forwards 70", 1);
    let e = parse_datagram(no_colon.as_bytes(), &Limits::default()).unwrap_err();
    let sent = sim.input(Input::Received { flow: carol, message: Err(e) });
    let [answer] = &sent[..] else { panic!("one answer, got {}", sent.len()) };
    assert_eq!((answer.flow, answer.msg.status()), (carol, Some(400)));

    let e = parse_datagram(b"SIP/2.0 200 OK\r\nbroken\r\n\r\n", &Limits::default()).unwrap_err();
    assert!(sim.input(Input::Received { flow: internal(HOME_1), message: Err(e) }).is_empty());

    assert_eq!(sim.metrics.malformed_requests.load(Relaxed), requests + 2);
    assert_eq!(sim.metrics.malformed_responses.load(Relaxed), responses + 1);
}
