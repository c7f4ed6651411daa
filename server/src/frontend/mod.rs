//! The Front-End role: a proxy (RFC 3261 section 16) in front of the Home Servers that keeps no
//! user state. Each request goes to its destination's Home Server (REGISTER: the address of
//! record; others: the Request-URI user; in-dialog: the Home Server the Request-URI names), found
//! in the directory with a short cache, over the internal mutual-TLS link.
//!
//! What comes back finds its way without state here: the Via, Path and Record-Route this proxy
//! adds carry a flow token naming the connection the request came from, so responses, and
//! requests from a Home Server to a client, leave through the very connection the client holds
//! (with several Front-End replicas, the replica holding it). Tokens are honoured only from the
//! internal link, where every peer presented a certificate from the deployment CA.
//!
//! The little state it keeps is about the hops, not the users: requests forwarded to a Home
//! Server and not yet answered (so they get 503 at once when it goes away, rather than waiting
//! for a client that may never retransmit), requests relayed to a client over UDP (retransmitted
//! until answered: the Home Server sent them over a reliable link and will not), and each Home
//! Server's health from OPTIONS probes (refused or unanswered for `PROBE_TIMEOUT`: down).
//!
//! Authentication: the Home Server that receives a request authenticates its sender, against the
//! same directory (the Front-End relays its challenge). No identity is asserted across the
//! internal link, so a `P-Asserted-Identity` from a client is removed, never believed.
//!
//! Like the Home Server's core, this is a state machine without IO (`crate::service`).

use crate::config::HomeServerRoute;
use crate::domains::Domains;
use crate::ops::metrics::Metrics;
use crate::service::{Action, Facts, Input, Now, Service, TaskId};
use crate::sip::response::{from_headers, reason_phrase};
use crate::sip::routing::{Decoded, FlowTokens, stamp_top_via, stateless_branch};
use crate::sip::uri::{NameAddr, SipUri};
use crate::sip::via::{Via, split_host_port};
use crate::sip::{Message, ParseError};
use crate::transaction::{ClientTransactions, Timers};
use crate::transport::{Flow, Transport};
use anyhow::Context;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Via parameter holding the flow token of the hop a request came from.
const FLOW_PARAM: &str = "pft";
/// How long a Home Server may take to answer a probe before it is marked down: a hung process
/// keeps its connections open, so only silence tells.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Header of a Home Server's 503 saying the user now lives on another Home Server.
const REHOME_HEADER: &str = crate::home::moves::REHOME_HEADER;
/// How long an unanswered forward is remembered (RFC 3261 timer F).
const PENDING_LIFETIME: Duration = Duration::from_secs(32);

#[derive(Clone, Debug)]
pub struct Settings {
    pub domain: String,
    /// Hosts that stand for `domain` in addresses (lower-case).
    pub domain_aliases: Vec<String>,
    pub home_servers: Vec<HomeServerRoute>,
    pub route_cache: Duration,
    pub probe_interval: Duration,
    pub timers: Timers,
    /// Requests waiting for a Home Server or the directory above which new ones get 503 at once.
    pub max_pending_requests: usize,
    /// The secret the domain's Front-End replicas share their flow tokens under (`None`: a key
    /// of this process's own).
    pub flow_secret: Option<Vec<u8>>,
}

/// A Home Server as the routing table names it, and what the probes say of it.
struct Home {
    name: String,
    /// `host:port` of its internal listener, as configured.
    address: String,
    /// The address resolved, until sending to it fails.
    resolved: Option<SocketAddr>,
    up: bool,
    /// Whether its last probe was answered other than 503: a Home Server shutting down answers
    /// 503, and gets no new requests from then on (those it has still get their answers).
    ready: bool,
    /// Whether a probe has told anything yet (`up` is false until then).
    settled: bool,
    /// The probe in flight: its branch and when it left.
    probe: Option<(String, Instant)>,
    resolving: bool,
}

/// A request forwarded to a Home Server and not yet answered.
struct Pending {
    home: usize,
    client: Flow,
    /// The 503 to send if the Home Server goes away.
    unavailable: Bytes,
    since: Instant,
    /// The flow it came in on and the request as forwarded (shared with the send, not copied):
    /// sent once more where the directory now says if the Home Server answers that the user
    /// moved away (`503` with `Parley-Rehome`).
    flow: Flow,
    request: Bytes,
    /// Whether this is that second try already.
    retried: bool,
}

/// A request relayed from a Home Server to a client, kept for retransmission over UDP.
#[derive(Debug)]
struct ToClient {
    client: Flow,
    data: Bytes,
    home: Flow,
    /// The 430 to send the Home Server if the client's flow is gone.
    flow_failed: Bytes,
}

/// Work waiting for a `Fetch`.
enum Task {
    /// A request waiting for its destination user's directory entry.
    Route { flow: Flow, req: Box<Message>, incoming_via: Via, aor: String, retried: bool },
    /// A Home Server's address being resolved.
    Resolve(usize),
}

pub struct Proxy {
    settings: Settings,
    metrics: Arc<Metrics>,
    tokens: FlowTokens,
    /// The SIP domains whose users the Home Servers serve.
    domains: Domains,
    homes: Vec<Home>,
    /// A user's Home Server (index into `homes`, `None`: no such user) and when that was read.
    cache: HashMap<String, (Option<usize>, Instant)>,
    /// `host:port` this instance is known by, per transport (Internal: the internal listener).
    advertised: HashMap<Transport, (String, u16)>,
    /// Forwards to Home Servers, by the branch of our Via.
    pending: HashMap<String, Pending>,
    to_clients: ClientTransactions<ToClient>,
    /// Probes in flight, by branch: which Home Server.
    probes: HashMap<String, usize>,
    tasks: HashMap<TaskId, Task>,
    next_task: TaskId,
    last_round: Option<Instant>,
    actions: Vec<Action>,
    tag: String,
}

impl Service for Proxy {
    fn handle(&mut self, now: Now, input: Input) {
        match input {
            Input::Received { flow, message: Ok(msg) } if msg.is_request() => self.on_request(now, flow, msg),
            Input::Received { flow, message: Ok(msg) } => self.on_response(now, flow, msg),
            Input::Received { flow, message: Err(e) } => self.on_malformed(flow, e),
            Input::Fetched { task, facts } => self.on_fetched(now, task, facts),
            Input::Stored { .. } => {}
            Input::NotSent { branch } => self.not_sent(&branch),
        }
    }

    /// Retransmits requests relayed to UDP clients, and every `probe_interval` probes each Home
    /// Server and forgets forwards no one will answer.
    fn on_tick(&mut self, now: Now) {
        let mut resend = Vec::new();
        self.to_clients.on_timer(now.instant, |action, leg| {
            if action == crate::transaction::ClientAction::Retransmit {
                resend.push((leg.client, leg.data.clone()));
            }
        });
        self.metrics.retransmissions_sent.fetch_add(resend.len() as u64, Relaxed);
        for (flow, data) in resend {
            self.send(flow, data);
        }
        if self.last_round.is_some_and(|last| now.instant.duration_since(last) < self.settings.probe_interval) {
            return;
        }
        self.last_round = Some(now.instant);
        self.pending.retain(|_, p| now.instant.duration_since(p.since) < PENDING_LIFETIME);
        let route_cache = self.settings.route_cache;
        self.cache.retain(|_, (_, at)| now.instant.duration_since(*at) < route_cache);
        for i in 0..self.homes.len() {
            self.probe(now, i);
        }
    }

    fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    fn admit_domains(&mut self, domains: Vec<String>) {
        self.domains.admit(domains);
    }

    /// Records the `host:port` this instance is reached at over a transport.
    fn set_advertised(&mut self, transport: Transport, host_port: String) {
        if let Ok((host, Some(port))) = split_host_port(&host_port) {
            self.advertised.insert(transport, (host.to_ascii_lowercase(), port));
        }
    }
}

/// The routing headers a Front-End adds to a request it forwards to a Home Server (and takes off
/// again to send it to another): a Path to a client's REGISTER, two Record-Routes to a client's
/// dialog-creating SUBSCRIBE.
struct OwnHeaders {
    path: bool,
    record_route: bool,
}

impl OwnHeaders {
    fn of(flow: Flow, req: &Message) -> OwnHeaders {
        let from_client = flow.transport != Transport::Internal;
        let method = req.method().unwrap_or_default();
        let dialog_creating = method == "SUBSCRIBE"
            && NameAddr::parse(req.headers.get("To").unwrap_or_default()).is_ok_and(|to| to.param("tag").is_none());
        OwnHeaders { path: from_client && method == "REGISTER", record_route: from_client && dialog_creating }
    }
}

/// The replicas' shared flow-token secret: a short one would let tokens be forged by guessing it.
fn read_flow_key(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    const MIN_BYTES: usize = 16;
    let key = std::fs::read(path).with_context(|| format!("reading frontend.flow_key_file {}", path.display()))?;
    if key.trim_ascii().len() < MIN_BYTES {
        anyhow::bail!(
            "frontend.flow_key_file {} holds {} bytes: a shared flow-token key needs at least {MIN_BYTES} \
             (e.g. `openssl rand -hex 32`)",
            path.display(),
            key.trim_ascii().len()
        );
    }
    Ok(key)
}

impl Proxy {
    /// The proxy a Front-End's config describes.
    pub fn from_config(config: &crate::config::Config, metrics: Arc<Metrics>) -> anyhow::Result<Proxy> {
        let table = config.frontend.as_ref().ok_or_else(|| anyhow::anyhow!("a Front-End needs [frontend]"))?;
        let settings = Settings {
            domain: config.sip_domain.clone(),
            domain_aliases: config.domain_aliases.iter().map(|a| a.to_ascii_lowercase()).collect(),
            home_servers: table.home_servers.clone(),
            route_cache: Duration::from_secs(table.route_cache_secs),
            probe_interval: Duration::from_millis(table.probe_interval_ms),
            timers: Timers::default(),
            max_pending_requests: config.limits.max_pending_requests,
            flow_secret: match &table.flow_key_file {
                Some(path) => Some(read_flow_key(path)?),
                None => None,
            },
        };
        Ok(Proxy::new(settings, metrics))
    }

    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Proxy {
        let homes = settings
            .home_servers
            .iter()
            .map(|h| Home {
                name: h.name.clone(),
                address: h.address.clone(),
                resolved: h.address.parse().ok(),
                // Unknown until probed: not assumed reachable.
                up: false,
                ready: true,
                settled: false,
                probe: None,
                resolving: false,
            })
            .collect::<Vec<_>>();
        {
            let mut stats = metrics.home_servers.lock().expect("home server stats");
            for h in &homes {
                stats.entry(h.name.clone()).or_default().up = false;
            }
        }
        Proxy {
            domains: Domains::new(&settings.domain, &settings.domain_aliases),
            to_clients: ClientTransactions::new(settings.timers),
            tokens: settings.flow_secret.as_deref().map_or_else(FlowTokens::new, FlowTokens::shared),
            settings,
            metrics,
            homes,
            cache: HashMap::new(),
            advertised: HashMap::new(),
            pending: HashMap::new(),
            probes: HashMap::new(),
            tasks: HashMap::new(),
            next_task: 0,
            last_round: None,
            actions: Vec::new(),
            tag: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// Requests in flight: waiting for the directory or a Home Server, or relayed to a client and
    /// not yet answered (a shutdown waits for them).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
            + self.tasks.iter().filter(|(_, t)| matches!(t, Task::Route { .. })).count()
            + self.to_clients.len()
    }

    /// Whether a client's request is refused (503 + Retry-After) because this instance is
    /// shutting down: every out-of-dialog request (a registration, a new subscription, a
    /// message), which the client's next attempt takes to another instance; requests inside a
    /// dialog, and everything from a Home Server, still go through.
    /// A retransmission of a request already forwarded is not refused: it was taken on, and its
    /// answer is on its way (a 503 now would have the client send it again elsewhere).
    fn refuses_while_shutting_down(&self, flow: Flow, req: &Message, incoming_via: &Via) -> bool {
        if flow.transport == Transport::Internal || self.metrics.phase() < crate::ops::metrics::phase::REFUSING {
            return false;
        }
        if self.pending.contains_key(&stateless_branch(incoming_via, req.request_uri().unwrap_or_default(), "h")) {
            return false;
        }
        let in_dialog =
            NameAddr::parse(req.headers.get("To").unwrap_or_default()).is_ok_and(|to| to.param("tag").is_some());
        !in_dialog && req.method() != Some("CANCEL")
    }

    /// Records whether a Home Server takes new requests (its probe's answer was not 503).
    fn mark_ready(&mut self, i: usize, ready: bool) {
        let home = &mut self.homes[i];
        if home.ready != ready {
            home.ready = ready;
            if ready {
                tracing::info!(home_server = %home.name, "home server takes requests again");
            } else {
                tracing::info!(home_server = %home.name, "home server shutting down: no new requests sent to it");
            }
        }
    }

    /// Whether every Home Server has been probed once (answered, refused or timed out).
    pub fn probes_settled(&self) -> bool {
        self.homes.iter().all(|h| h.settled)
    }

    fn send(&mut self, flow: Flow, data: Bytes) {
        self.actions.push(Action::Send { flow, data, branch: None });
    }

    fn advertised(&self, transport: Transport) -> String {
        match self.advertised.get(&transport).or_else(|| self.advertised.values().next()) {
            Some((host, port)) => format!("{host}:{port}"),
            None => self.domains.primary().to_string(),
        }
    }

    /// Whether a URI names this instance (any transport it advertises).
    fn is_own(&self, uri: &SipUri) -> bool {
        let host = uri.host();
        let port = uri.port();
        self.advertised.values().any(|(h, p)| *h == host && port.is_none_or(|q| q == *p))
    }

    // ---- Home Server health ----

    /// One probe round for a Home Server: a probe unanswered for too long marks it down;
    /// otherwise (its address known) a new OPTIONS goes out.
    fn probe(&mut self, now: Now, i: usize) {
        if let Some((branch, sent)) = self.homes[i].probe.clone() {
            if now.instant.duration_since(sent) < PROBE_TIMEOUT {
                return;
            }
            self.probes.remove(&branch);
            self.homes[i].probe = None;
            tracing::debug!(home_server = %self.homes[i].name, "probe unanswered");
            self.mark(i, false);
        }
        let Some(addr) = self.homes[i].resolved else {
            if !self.homes[i].resolving {
                self.homes[i].resolving = true;
                let resolve = match split_host_port(&self.homes[i].address) {
                    Ok((host, port)) => Some((host.to_string(), port.unwrap_or(5062))),
                    Err(_) => None,
                };
                let task = self.task(Task::Resolve(i));
                self.actions.push(Action::Fetch { task, users: vec![], resolve });
            }
            return;
        };
        let internal = self.advertised(Transport::Internal);
        let branch = crate::sip::routing::new_branch();
        let options = format!(
            "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/TLS {internal};branch={branch}\r\nMax-Forwards: 1\r\n\
             From: <sip:frontend@{internal}>;tag={tag}\r\nTo: <sip:{addr}>\r\nCall-ID: {branch}\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            addr = self.homes[i].address,
            tag = self.tag,
        );
        self.homes[i].probe = Some((branch.clone(), now.instant));
        self.probes.insert(branch.clone(), i);
        let flow = Flow::datagram(Transport::Internal, addr);
        self.actions.push(Action::Send { flow, data: Bytes::from(options), branch: Some(branch) });
    }

    fn task(&mut self, task: Task) -> TaskId {
        let id = self.next_task;
        self.next_task += 1;
        self.tasks.insert(id, task);
        id
    }

    /// Marks a Home Server up or down; down answers 503 to every request waiting for it.
    fn mark(&mut self, i: usize, up: bool) {
        let home = &mut self.homes[i];
        home.settled = true;
        if home.up != up {
            home.up = up;
            if up {
                tracing::info!(home_server = %home.name, address = %home.address, "home server reachable");
            } else {
                tracing::warn!(home_server = %home.name, address = %home.address, "home server unreachable: marked down");
            }
            self.metrics.home_servers.lock().expect("home server stats").entry(home.name.clone()).or_default().up = up;
        }
        if !up {
            let failed: Vec<String> =
                self.pending.iter().filter(|(_, p)| p.home == i).map(|(b, _)| b.clone()).collect();
            for branch in failed {
                let p = self.pending.remove(&branch).expect("listed");
                self.metrics.count_response(503);
                self.send(p.client, p.unavailable);
            }
        }
    }

    fn not_sent(&mut self, branch: &str) {
        if let Some(i) = self.probes.remove(branch) {
            self.homes[i].probe = None;
            // Resolve again next time: a restarted pod may have a new address.
            if self.homes[i].address.parse::<SocketAddr>().is_err() {
                self.homes[i].resolved = None;
            }
            self.mark(i, false);
        } else if let Some(home) = self.pending.get(branch).map(|p| p.home) {
            self.mark(home, false);
        } else if let Some(leg) = self.to_clients.data_mut(branch) {
            // RFC 5626 section 5.3: the flow is gone; the Home Server may try another contact.
            let (home, answer) = (leg.home, std::mem::take(&mut leg.flow_failed));
            if !answer.is_empty() {
                self.metrics.count_response(430);
                self.send(home, answer);
            }
        }
    }

    // ---- requests ----

    /// A response generated here, sent back along the request's flow.
    fn reply(&mut self, flow: Flow, req: &Message, code: u16, reason: &str, retry_after: bool) {
        let mut r = from_headers(&req.headers, code, reason, &self.tag);
        if retry_after {
            r.headers.push("Retry-After", crate::ops::metrics::phase::retry_after().to_string());
        }
        self.metrics.count_response(code);
        let target = match req.headers.get("Via").and_then(|v| Via::parse(v).ok()) {
            Some(via) => crate::sip::routing::response_flow(flow, &via),
            None => flow,
        };
        self.send(target, r.to_bytes());
    }

    fn on_request(&mut self, now: Now, flow: Flow, mut req: Message) {
        let incoming_via = match stamp_top_via(&mut req, flow.remote) {
            Ok(via) => via,
            Err(reason) => return self.metrics.count_malformed_request(flow.remote, &reason), // nowhere to answer
        };
        let method = req.method().unwrap_or_default().to_string();
        self.metrics.count_request(&method);
        if method == "ACK" {
            return; // only INVITE has an ACK worth relaying, and nothing here speaks INVITE
        }
        if flow.transport != Transport::Internal {
            req.headers.remove("P-Asserted-Identity");
        }
        match req.headers.get("Max-Forwards").map(|v| v.trim().parse::<u8>()) {
            Some(Ok(0)) => return self.reply(flow, &req, 483, reason_phrase(483), false),
            Some(Ok(n)) => req.headers.set("Max-Forwards", (n - 1).to_string()),
            Some(Err(_)) => return self.reply(flow, &req, 400, "Bad Max-Forwards", false),
            None => req.headers.push("Max-Forwards", "69"),
        }
        // Route entries naming this instance are used up here. From a Home Server, an entry with
        // a user part is a flow token from a Path or Record-Route a Front-End added: this
        // replica's, or another's whose client the Home Server could not reach through it (it
        // is gone); with the key the replicas share, this one reads the token too.
        let mut client = None;
        while let Some(top) = req.headers.get("Route").and_then(|r| crate::sip::params::split_list(r).first().copied())
        {
            let Ok(route) = NameAddr::parse(top) else {
                return self.reply(flow, &req, 400, "Bad Route header", false);
            };
            let token = route.uri.user().filter(|_| flow.transport == Transport::Internal);
            if token.is_none() && !self.is_own(&route.uri) {
                break;
            }
            req.headers.pop_first_value("Route");
            if let Some(token) = token {
                match self.tokens.decode(token) {
                    Some(Decoded::Flow(f)) => client = Some(f),
                    // A connection that went with another replica or with this one before it
                    // restarted, or a token under a key this instance lacks. Routed on as a new
                    // request it would go back to a Home Server without the credentials it was
                    // authorised with (a 407 for its sender); RFC 5626 section 5.3 reports the
                    // flow failed instead.
                    Some(Decoded::Gone) | None => return self.reply(flow, &req, 430, "Flow Failed", false),
                }
            }
        }
        match client {
            Some(client) => self.relay_to_client(now, flow, req, client, &incoming_via),
            None if self.refuses_while_shutting_down(flow, &req, &incoming_via) => {
                self.metrics.shutdown_refused.fetch_add(1, Relaxed);
                self.reply(flow, &req, 503, "Shutting Down", true)
            }
            None if self.pending.len() + self.tasks.len() >= self.settings.max_pending_requests => {
                self.metrics.overload_refused.fetch_add(1, Relaxed);
                self.reply(flow, &req, 503, "Overloaded", true)
            }
            None => self.relay_to_home_server(now, flow, req, &method, incoming_via, false),
        }
    }

    /// A request from a Home Server to a client whose connection this instance holds.
    fn relay_to_client(&mut self, now: Now, from: Flow, mut req: Message, client: Flow, incoming_via: &Via) {
        let host = self.advertised(client.transport);
        let branch = stateless_branch(incoming_via, req.request_uri().unwrap_or_default(), "c");
        let flow_failed = from_headers(&req.headers, 430, "Flow Failed", &self.tag).to_bytes();
        let token = self.tokens.encode(&from);
        req.headers.push_front(
            "Via",
            format!("SIP/2.0/{} {host};branch={branch};{FLOW_PARAM}={token}", client.transport.via_token()),
        );
        let data = req.to_bytes();
        let leg = ToClient { client, data: data.clone(), home: from, flow_failed };
        self.to_clients.start(branch.clone(), client.transport.is_reliable(), leg, now.instant);
        self.actions.push(Action::Send { flow: client, data, branch: Some(branch) });
    }

    /// A request for a user (or for a Home Server named in the Request-URI). `retried`: the second
    /// try of a request whose user's Home Server said the user moved away; the route is read
    /// from the directory afresh.
    fn relay_to_home_server(
        &mut self,
        now: Now,
        flow: Flow,
        req: Message,
        method: &str,
        incoming_via: Via,
        retried: bool,
    ) {
        let uri = match SipUri::parse(req.request_uri().unwrap_or_default()) {
            Ok(u) => u,
            Err(e) => return self.reply(flow, &req, 400, &format!("Bad Request-URI: {e}"), false),
        };
        // In-dialog: the Request-URI is a Home Server's own Contact.
        if let Some(i) = self.homes.iter().position(|h| names_home(&uri, &h.address)) {
            return self.forward(now, flow, req, i, &incoming_via, retried);
        }
        if method != "REGISTER" && uri.user().is_none() && self.is_own(&uri) {
            // For this instance itself: load balancers and monitors ask OPTIONS; once shutting
            // down, this instance says so (503), so they send new traffic elsewhere.
            if method == "OPTIONS" && self.metrics.phase() >= crate::ops::metrics::phase::NOT_READY {
                self.metrics.shutdown_refused.fetch_add(1, Relaxed);
                return self.reply(flow, &req, 503, "Shutting Down", true);
            }
            let code = if method == "OPTIONS" { 200 } else { 404 };
            return self.reply(flow, &req, code, reason_phrase(code), false);
        }
        let target = if method == "REGISTER" {
            NameAddr::parse(req.headers.get("To").unwrap_or_default()).map(|n| n.uri)
        } else {
            Ok(uri)
        };
        let aor = match target {
            Ok(t) => match self.domains.aor(&t) {
                Some(aor) => aor,
                None => return self.reply(flow, &req, 404, "Domain Not Served Here", false),
            },
            Err(e) => return self.reply(flow, &req, 400, &format!("Bad To header: {e}"), false),
        };
        // A contact list (`sip:alice+contacts@domain`, RFC 4662) lives with its owner.
        let aor = match aor.split_once('@') {
            Some((user, domain)) => match user.strip_suffix(crate::home::presence::LIST_SUFFIX) {
                Some(owner) if !owner.is_empty() => format!("{owner}@{domain}"),
                _ => aor,
            },
            None => aor,
        };
        match self.cache.get(&aor) {
            Some((home, at)) if !retried && now.instant.duration_since(*at) < self.settings.route_cache => {
                let home = *home;
                self.routed(now, flow, req, home, &incoming_via, false)
            }
            _ => {
                if retried {
                    self.cache.remove(&aor);
                    self.actions.push(Action::Forget { user: aor.clone() });
                }
                let task = self.task(Task::Route { flow, req: Box::new(req), incoming_via, aor: aor.clone(), retried });
                self.actions.push(Action::Fetch { task, users: vec![aor], resolve: None });
            }
        }
    }

    fn on_fetched(&mut self, now: Now, id: TaskId, facts: Facts) {
        match self.tasks.remove(&id) {
            Some(Task::Route { flow, req, incoming_via, aor, retried }) => {
                let home = match facts.user(&aor) {
                    Ok(None) => None,
                    Ok(Some(user)) => match &user.home_server {
                        Some(name) => self.homes.iter().position(|h| h.name == *name),
                        // Not assigned: with a single Home Server there is only one place to be.
                        None if self.homes.len() == 1 => Some(0),
                        None => None,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "directory lookup failed");
                        return self.reply(flow, &req, 503, "Directory Unavailable", true);
                    }
                };
                self.cache.insert(aor, (home, now.instant));
                self.routed(now, flow, *req, home, &incoming_via, retried);
            }
            Some(Task::Resolve(i)) => {
                self.homes[i].resolving = false;
                match facts.route {
                    Some(addr) => {
                        self.homes[i].resolved = Some(addr);
                        self.probe(now, i);
                    }
                    None => self.mark(i, false),
                }
            }
            None => {}
        }
    }

    fn routed(&mut self, now: Now, flow: Flow, req: Message, home: Option<usize>, incoming_via: &Via, retried: bool) {
        match home {
            Some(i) => self.forward(now, flow, req, i, incoming_via, retried),
            None => self.reply(flow, &req, 404, "Not Found", false),
        }
    }

    /// Forwards a request to Home Server `home`, with Path or Record-Route when the request comes
    /// from a client and needs them, and a Via whose flow token leads the response back.
    fn forward(&mut self, now: Now, flow: Flow, mut req: Message, home: usize, incoming_via: &Via, retried: bool) {
        let addr = match self.homes[home].resolved {
            Some(addr) if self.homes[home].up && self.homes[home].ready => addr,
            _ => return self.reply(flow, &req, 503, "Home Server Unavailable", true),
        };
        let internal = self.advertised(Transport::Internal);
        let token = self.tokens.encode(&flow);
        let own = OwnHeaders::of(flow, &req);
        if own.path {
            // RFC 3327: requests for this binding come back through this instance and flow.
            req.headers.push_front("Path", format!("<sip:{token}@{internal};transport=tls;lr;ob>"));
        }
        if own.record_route {
            // Two entries (RFC 5658): the Home Server reaches this instance on the internal side,
            // the client on the side it connected to.
            let public = self.advertised(flow.transport);
            let public = match flow.transport {
                Transport::Udp => format!("<sip:{public};lr>"),
                t => format!("<sip:{public};transport={};lr>", t.uri_param()),
            };
            req.headers.push_front("Record-Route", public);
            req.headers.push_front("Record-Route", format!("<sip:{token}@{internal};transport=tls;lr>"));
        }
        let branch = stateless_branch(incoming_via, req.request_uri().unwrap_or_default(), "h");
        let mut unavailable = from_headers(&req.headers, 503, "Home Server Unavailable", &self.tag);
        unavailable.headers.push("Retry-After", crate::ops::metrics::phase::retry_after().to_string());
        req.headers.push_front("Via", format!("SIP/2.0/TLS {internal};branch={branch};{FLOW_PARAM}={token}"));
        let client = crate::sip::routing::response_flow(flow, incoming_via);
        let request = req.to_bytes();
        let pending = Pending {
            home,
            client,
            unavailable: unavailable.to_bytes(),
            since: now.instant,
            flow,
            request: request.clone(),
            retried,
        };
        self.pending.insert(branch.clone(), pending);
        let to = Flow::datagram(Transport::Internal, addr);
        self.actions.push(Action::Send { flow: to, data: request, branch: Some(branch) });
        let mut stats = self.metrics.home_servers.lock().expect("home server stats");
        stats.entry(self.homes[home].name.clone()).or_default().forwarded += 1;
    }

    // ---- responses ----

    /// Responses follow the Via this instance added: its flow token says where they go.
    fn on_response(&mut self, now: Now, flow: Flow, mut resp: Message) {
        let Some(top) = resp.headers.pop_first_value("Via") else {
            self.metrics.count_malformed_response();
            return;
        };
        let via = Via::parse(&top).ok();
        let code = resp.status().unwrap_or(500);
        if let Some(branch) = via.as_ref().and_then(|v| v.branch()) {
            if let Some(i) = self.probes.remove(branch) {
                self.homes[i].probe = None;
                self.mark_ready(i, code != 503);
                return self.mark(i, true);
            }
            if code >= 200
                && let Some(p) = self.pending.remove(branch)
                && code == 503
                && resp.headers.get(REHOME_HEADER).is_some()
            {
                if !p.retried {
                    return self.rehome(now, p);
                }
                // Moved away from where the directory just said: the client tries again later.
                resp.headers.remove(REHOME_HEADER);
            }
            self.to_clients.on_response(branch, code, now.instant);
        }
        let decoded = via.as_ref().and_then(|v| v.param(FLOW_PARAM).and_then(|t| self.tokens.decode(t)));
        let Some(Decoded::Flow(target)) = decoded else {
            // Not a response to anything this instance sent.
            self.metrics.stray_responses.fetch_add(1, Relaxed);
            return;
        };
        if flow.transport == Transport::Internal
            && let Some(i) = self.homes.iter().position(|h| h.resolved == Some(flow.remote))
        {
            let mut stats = self.metrics.home_servers.lock().expect("home server stats");
            if let Some(c) = stats
                .entry(self.homes[i].name.clone())
                .or_default()
                .responses
                .get_mut(usize::from(code / 100).saturating_sub(1))
            {
                *c += 1;
            }
        }
        let target = match target.transport {
            // To a UDP client: where its Via says (rport), as for any response.
            Transport::Udp => match resp.headers.get("Via").and_then(|v| Via::parse(v).ok()) {
                Some(via) => Flow::datagram(Transport::Udp, via.response_target(target.remote)),
                None => target,
            },
            _ => target,
        };
        self.send(target, resp.to_bytes());
    }

    /// A Home Server said the request's user now lives elsewhere: the request goes once more,
    /// at once, where the directory says now (its cached route and answer are dropped). What this
    /// instance added on the way there (Via, Path, Record-Route) is taken off first.
    fn rehome(&mut self, now: Now, p: Pending) {
        let limits = crate::sip::message::Limits { max_headers: usize::MAX, max_message_bytes: usize::MAX };
        let Ok(mut req) = crate::sip::message::parse_datagram(&p.request, &limits) else {
            return self.send(p.client, p.unavailable);
        };
        req.headers.pop_first_value("Via");
        let Some(incoming_via) = req.headers.get("Via").and_then(|v| Via::parse(v).ok()) else {
            return self.send(p.client, p.unavailable);
        };
        let method = req.method().unwrap_or_default().to_string();
        let own = OwnHeaders::of(p.flow, &req);
        if own.path {
            req.headers.pop_first_value("Path");
        }
        if own.record_route {
            req.headers.pop_first_value("Record-Route");
            req.headers.pop_first_value("Record-Route");
        }
        tracing::debug!(method = %method, "user moved to another Home Server: routing again");
        self.relay_to_home_server(now, p.flow, req, &method, incoming_via, true);
    }

    fn on_malformed(&mut self, flow: Flow, e: ParseError) {
        if let Some((answer, to)) = crate::service::answer_malformed(&self.metrics, flow, &e, &self.tag) {
            self.send(to, answer.to_bytes());
        }
    }
}

/// Whether a Request-URI is a Home Server's own Contact: `sip:parley@<its internal address>`.
fn names_home(uri: &SipUri, address: &str) -> bool {
    let Ok((host, Some(port))) = split_host_port(address) else { return false };
    uri.user() == Some("parley") && uri.host() == host.to_ascii_lowercase() && uri.port() == Some(port)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod names {
    use super::*;

    #[test]
    fn home_server_contacts_are_recognised_by_address() {
        let uri = SipUri::parse("sip:parley@Home-1.ns.svc:5062;transport=tls").unwrap();
        assert!(names_home(&uri, "home-1.ns.svc:5062"));
        assert!(!names_home(&uri, "home-1.ns.svc:5061"));
        assert!(!names_home(&SipUri::parse("sip:alice@home-1.ns.svc:5062").unwrap(), "home-1.ns.svc:5062"));
    }
}
