//! The Home Server's SIP core: turns each received message into transaction-layer events,
//! dispatches new requests by method, and sends responses and forwarded requests along flows.

use super::auth::DigestAuth;
use super::presence::state::PresenceState;
use super::registrar::Registrar;
use crate::directory::{Directory, DirectoryError, User};
use crate::ops::metrics::Metrics;
use crate::sip::message::{Limits, parse_datagram};
use crate::sip::response::{self, from_headers};
use crate::sip::uri::NameAddr;
use crate::sip::via::Via;
use crate::sip::{Message, ParseError};
use crate::store::{Store, Table, Write};
use crate::transaction::{ClientAction, ClientTransactions, ResponseEvent, ServerEvent, ServerTransactions, Timers};
use crate::transport::{Flow, Handler, Transport, Transports};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

/// Methods this server implements, for Allow headers.
pub const ALLOW: &str = "REGISTER, MESSAGE, OPTIONS, SUBSCRIBE, PUBLISH";
/// Methods rsip knows and we do not implement: 405. Anything else: 501.
const KNOWN_METHODS: [&str; 14] = [
    "ACK",
    "BYE",
    "CANCEL",
    "INFO",
    "INVITE",
    "MESSAGE",
    "NOTIFY",
    "OPTIONS",
    "PRACK",
    "PUBLISH",
    "REFER",
    "REGISTER",
    "SUBSCRIBE",
    "UPDATE",
];

#[derive(Clone, Debug)]
pub struct CoreSettings {
    pub domain: String,
    /// Hosts that stand for `domain` in addresses (lower-case).
    pub domain_aliases: Vec<String>,
    /// This server's name: users whose directory entry names another are homed elsewhere.
    pub server_name: String,
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub timers: Timers,
    /// Bounds of subscription and publication intervals (the registrar's, by default).
    pub min_expires: u32,
    pub max_expires: u32,
    /// Token that lets an administrator use the HTTP API for any user.
    pub admin_token: Option<String>,
    /// When failed authentications lock an address or a user out.
    pub guard: super::guard::Policy,
}

/// Work that follows a response, once it is sent (so a subscriber sees 200 before NOTIFY).
pub(super) enum After {
    /// Notify these subscriptions; `true` sends full state.
    Notify(Vec<String>, bool),
    /// End these subscriptions with a final NOTIFY giving the reason.
    Terminate(Vec<String>, &'static str),
    /// A user's presence changed: notify its watchers and lists that contain it.
    PresenceChanged(String),
    /// A user's watchers changed: notify its watcher-info subscriptions.
    WatchersChanged(String),
}

/// A forwarded request waiting for its final response.
pub(super) struct Pending {
    flow: Flow,
    data: Bytes,
    reply: Option<oneshot::Sender<Option<Message>>>,
}

pub struct Core {
    pub(super) settings: CoreSettings,
    pub(super) transports: Arc<Transports>,
    pub(super) directory: Arc<dyn Directory>,
    pub(super) auth: DigestAuth,
    /// Failed authentications per address and user, and lockouts.
    guard: Mutex<super::guard::Guard>,
    pub(super) registrar: Mutex<Registrar>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) store: Store,
    pub(super) presence: Mutex<PresenceState>,
    /// The SIP domains served here.
    pub(super) domains: crate::domains::Domains,
    /// Serialises notification rounds so each subscriber sees NOTIFYs in the order of changes.
    pub(super) notify_lock: tokio::sync::Mutex<()>,
    server_txns: Mutex<ServerTransactions>,
    client_txns: Mutex<ClientTransactions<Pending>>,
    /// Sent-by of our own Via, per transport.
    via_hosts: Mutex<HashMap<Transport, String>>,
    /// To tag of responses this server generates.
    pub(super) tag: String,
}

impl Core {
    pub fn new(
        settings: CoreSettings,
        transports: Arc<Transports>,
        directory: Arc<dyn Directory>,
        auth: DigestAuth,
        registrar: Registrar,
        metrics: Arc<Metrics>,
        store: Store,
    ) -> Arc<Core> {
        let timers = settings.timers;
        let guard = settings.guard;
        let domains = crate::domains::Domains::new(&settings.domain, &settings.domain_aliases);
        Arc::new(Core {
            settings,
            transports,
            directory,
            auth,
            guard: Mutex::new(super::guard::Guard::new(guard)),
            registrar: Mutex::new(registrar),
            metrics,
            store,
            presence: Mutex::new(PresenceState::default()),
            domains,
            notify_lock: tokio::sync::Mutex::new(()),
            server_txns: Mutex::new(ServerTransactions::new(timers)),
            client_txns: Mutex::new(ClientTransactions::new(timers)),
            via_hosts: Mutex::new(HashMap::new()),
            tag: format!("{:016x}", rand::random::<u64>()),
        })
    }

    /// Reads the domains the directory admits (then again every second; the directory caches).
    pub async fn load_domains(&self) {
        self.domains.refresh(self.directory.as_ref()).await;
    }

    pub fn set_via_host(&self, transport: Transport, host: String) {
        self.via_hosts.lock().expect("via hosts").insert(transport, host);
    }

    /// Drives timers: transaction retransmissions and timeouts, binding expiry, nonce purge.
    pub fn start_timers(self: &Arc<Self>) {
        let core = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut last_sweep = Instant::now();
            loop {
                tick.tick().await;
                core.on_tick(Instant::now());
                if last_sweep.elapsed() >= Duration::from_secs(1) {
                    last_sweep = Instant::now();
                    let now = SystemTime::now();
                    let (emptied, expired) = {
                        let mut reg = core.registrar.lock().expect("registrar");
                        let expired = reg.expire(now);
                        core.metrics.registrations.store(reg.binding_count() as u64, Relaxed);
                        expired
                    };
                    for (aor, b) in expired {
                        let (source, transport) = (b.flow.remote, b.flow.transport.via_token());
                        tracing::info!(user = %aor, %source, %transport, contact = %b.uri, "signed out: registration expired");
                    }
                    core.auth.purge(now);
                    core.guard.lock().expect("guard").purge(now);
                    let sweeper = core.clone();
                    tokio::spawn(async move {
                        let writes = emptied.iter().map(|aor| Write::delete(Table::Registrations, aor)).collect();
                        let _ = sweeper.store.apply(writes).await;
                        for aor in emptied {
                            sweeper.run_after(After::PresenceChanged(aor)).await;
                        }
                        sweeper.presence_sweep(now).await;
                        sweeper.domains.refresh(sweeper.directory.as_ref()).await;
                    });
                }
            }
        });
    }

    fn on_tick(self: &Arc<Self>, now: Instant) {
        let mut sends = Vec::new();
        {
            let mut st = self.server_txns.lock().expect("server txns");
            st.on_timer(now);
            self.metrics.server_transactions.store(st.len() as u64, Relaxed);
        }
        {
            let mut ct = self.client_txns.lock().expect("client txns");
            ct.on_timer(now, |action, p| match action {
                ClientAction::Retransmit => sends.push((p.flow, p.data.clone())),
                ClientAction::Timeout => {
                    if let Some(reply) = p.reply.take() {
                        let _ = reply.send(None);
                    }
                }
            });
            self.metrics.client_transactions.store(ct.len() as u64, Relaxed);
        }
        for (flow, data) in sends {
            let core = self.clone();
            tokio::spawn(async move {
                let _ = core.transports.send(&flow, data).await;
            });
        }
    }

    pub fn binding_count(&self) -> usize {
        self.registrar.lock().expect("registrar").binding_count()
    }

    /// Requests still being processed (for draining on shutdown).
    pub fn requests_in_progress(&self) -> usize {
        self.server_txns.lock().expect("server txns").in_progress()
    }

    fn transaction_key(msg: &Message, via: &Via) -> String {
        let method = msg.method().unwrap_or_default();
        match via.branch() {
            Some(b) if b.starts_with("z9hG4bK") => {
                format!("{b}|{}:{:?}|{method}", via.host, via.port)
            }
            // RFC 2543 peers: match on the request's identity instead of a branch.
            _ => format!(
                "{}|{}|{}|{}",
                msg.call_id(),
                msg.headers.get("CSeq").unwrap_or(""),
                msg.headers.get("From").unwrap_or(""),
                via
            ),
        }
    }

    fn on_request(self: &Arc<Self>, flow: Flow, mut msg: Message) {
        let method = msg.method().unwrap_or_default().to_string();
        self.metrics.count_request(&method);
        let Some(via) = crate::sip::routing::stamp_top_via(&mut msg, flow.remote) else {
            return;
        };
        if method == "ACK" {
            return; // no INVITE transactions here: nothing to acknowledge
        }
        let key = Self::transaction_key(&msg, &via);
        let reply_flow = crate::sip::routing::response_flow(flow, &via);
        let event = self.server_txns.lock().expect("server txns").on_request(&key, Instant::now());
        match event {
            ServerEvent::New => {
                let core = self.clone();
                let received = Instant::now();
                tokio::spawn(async move {
                    let (response, after) = core.dispatch(flow, &msg).await;
                    core.finish(&key, reply_flow, response).await;
                    core.metrics.observe_latency(&method, received.elapsed());
                    for a in after {
                        core.run_after(a).await;
                    }
                });
            }
            ServerEvent::Absorbed => {
                self.metrics.retransmissions_absorbed.fetch_add(1, Relaxed);
            }
            ServerEvent::Resend(bytes) => {
                self.metrics.retransmissions_absorbed.fetch_add(1, Relaxed);
                let core = self.clone();
                tokio::spawn(async move {
                    let _ = core.transports.send(&reply_flow, bytes).await;
                });
            }
        }
    }

    async fn finish(&self, key: &str, flow: Flow, response: Message) {
        let bytes = response.to_bytes();
        self.metrics.count_response(response.status().unwrap_or(500));
        self.server_txns.lock().expect("server txns").on_final(
            key,
            bytes.clone(),
            flow.transport.is_reliable(),
            Instant::now(),
        );
        if let Err(e) = self.transports.send(&flow, bytes).await {
            tracing::debug!(error = %e, remote = %flow.remote, "response not sent");
        }
    }

    pub(super) async fn run_after(self: &Arc<Self>, after: After) {
        match after {
            After::Notify(ids, full) => self.notify(ids, full, None).await,
            After::Terminate(ids, reason) => self.notify(ids, true, Some(reason)).await,
            After::PresenceChanged(aor) => {
                let ids = self.affected_by_presence(&aor);
                self.notify(ids, false, None).await
            }
            After::WatchersChanged(aor) => {
                let ids = self.winfo_subscriptions(&aor);
                self.notify(ids, true, None).await
            }
        }
    }

    async fn dispatch(self: &Arc<Self>, flow: Flow, req: &Message) -> (Message, Vec<After>) {
        let method = req.method().unwrap_or_default();
        if let Some(r) = self.check_common(req) {
            return (r, vec![]);
        }
        let response = match method {
            "REGISTER" => return self.register(flow, req).await,
            "MESSAGE" => self.message(flow, req).await,
            "SUBSCRIBE" => return self.subscribe(flow, req).await,
            "PUBLISH" => return self.publish(flow, req).await,
            "OPTIONS" => {
                let mut r = self.respond(req, 200);
                r.headers.push("Allow", ALLOW);
                r.headers.push("Accept", "text/plain, message/cpim, application/pidf+xml, */*");
                r.headers.push("Allow-Events", super::presence::ALLOW_EVENTS);
                r.headers.push("Supported", "path, eventlist");
                r
            }
            m if KNOWN_METHODS.contains(&m) => {
                let mut r = self.respond(req, 405);
                r.headers.push("Allow", ALLOW);
                r
            }
            _ => {
                let mut r = self.respond(req, 501);
                r.headers.push("Allow", ALLOW);
                r
            }
        };
        (response, vec![])
    }

    /// Checks every request shares: URI scheme, Require, body size.
    fn check_common(&self, req: &Message) -> Option<Message> {
        let uri = req.request_uri().unwrap_or_default();
        let scheme = uri.split(':').next().unwrap_or_default();
        if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
            return Some(self.respond(req, 416));
        }
        let required: Vec<&str> = req.headers.get_all("Require").flat_map(crate::sip::params::split_list).collect();
        if !required.is_empty() {
            let mut r = self.respond(req, 420);
            r.headers.push("Unsupported", required.join(", "));
            return Some(r);
        }
        if req.body.len() > self.settings.max_body_bytes {
            return Some(self.respond_with(
                req,
                413,
                &format!("Body larger than {} bytes", self.settings.max_body_bytes),
            ));
        }
        None
    }

    /// Whether a URI host is a SIP domain served here (or an alias of it).
    pub(super) fn is_local_host(&self, host: &str) -> bool {
        self.domains.is_local(host)
    }

    /// The address of record (`user@domain`) a URI names, if its domain is served here.
    pub(super) fn local_aor(&self, uri: &crate::sip::uri::SipUri) -> Option<String> {
        self.domains.aor(uri)
    }

    /// Where requests along a Route set go: over the internal link, the connection the request
    /// came in on, or failing that the address of the first route (the Front-End instance that
    /// holds the client's connection). Elsewhere the flow itself.
    pub(super) async fn next_hop(&self, flow: Flow, first_route: Option<&String>) -> Flow {
        if flow.transport != Transport::Internal {
            return flow;
        }
        let Some(uri) = first_route.and_then(|r| NameAddr::parse(r).ok()).map(|n| n.uri) else {
            return flow;
        };
        let host = uri.host();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port().unwrap_or(5061);
        match tokio::net::lookup_host((host, port)).await.ok().and_then(|mut a| a.next()) {
            Some(remote) => Flow { transport: Transport::Internal, remote, conn: flow.conn },
            None => flow,
        }
    }

    /// The Contact this server puts in dialogs it is part of.
    pub(super) fn own_contact(&self, flow: Flow) -> String {
        let host = self.via_host(flow.transport);
        match flow.transport {
            Transport::Udp => format!("<sip:parley@{host}>"),
            Transport::Tcp => format!("<sip:parley@{host};transport=tcp>"),
            Transport::Tls => format!("<sips:parley@{host}>"),
            // The Front-End finds this server by this address in its routing table.
            Transport::Internal => format!("<sip:parley@{host};transport=tls>"),
        }
    }

    fn via_host(&self, transport: Transport) -> String {
        let hosts = self.via_hosts.lock().expect("via hosts");
        hosts.get(&transport).cloned().unwrap_or_else(|| self.settings.domain.clone())
    }

    /// Authenticates the sender of a request as a local user (407 challenge), by its From.
    pub(super) async fn authenticated_sender(&self, flow: Flow, req: &Message) -> Result<User, Message> {
        let from = match NameAddr::parse(req.headers.get("From").unwrap_or_default()) {
            Ok(f) => match self.local_aor(&f.uri) {
                Some(aor) => aor,
                None => return Err(self.respond_with(req, 403, "Relaying Denied")),
            },
            Err(e) => return Err(self.respond_with(req, 400, &format!("Bad From header: {e}"))),
        };
        self.authenticate(flow, req, &from, true).await
    }

    pub(super) fn respond(&self, req: &Message, code: u16) -> Message {
        response::respond(req, code, &self.tag)
    }

    pub(super) fn respond_with(&self, req: &Message, code: u16, reason: &str) -> Message {
        from_headers(&req.headers, code, reason, &self.tag)
    }

    /// 503 with Retry-After when the directory cannot answer.
    pub(super) fn unavailable(&self, req: &Message, e: &DirectoryError) -> Message {
        tracing::warn!(error = %e, "directory lookup failed");
        let mut r = self.respond_with(req, 503, "Directory Unavailable");
        r.headers.push("Retry-After", "5");
        r
    }

    /// Authenticates the sender as `aor`. Unknown users and wrong passwords get the same challenge.
    /// Failures are logged at WARN with the user and the source address (never the credentials),
    /// for a person reading the log and for fail2ban-style tools.
    pub(super) async fn authenticate(
        &self,
        flow: Flow,
        req: &Message,
        aor: &str,
        proxy: bool,
    ) -> Result<User, Message> {
        let (code, header, challenge) = if proxy {
            (407, "Proxy-Authorization", "Proxy-Authenticate")
        } else {
            (401, "Authorization", "WWW-Authenticate")
        };
        let user = match self.directory.find_user(aor).await {
            Ok(u) => u,
            Err(e) => return Err(self.unavailable(req, &e)),
        };
        let realm = realm_of(aor);
        let quoted = format!("realm=\"{realm}\"");
        let creds = req.headers.get_all(header).find(|v| v.contains(&quoted));
        if creds.is_none() {
            self.log_unsupported_auth(flow, req, aor, header);
        }
        let now = SystemTime::now();
        let client = client_address(flow, req);
        let mut stale = false;
        let locked = creds.is_some() && self.guard.lock().expect("guard").locked(client.ip(), aor, now);
        if locked {
            // Not checked at all, and answered as a wrong password is: the guesser learns nothing.
            self.metrics.auth_refused_locked.fetch_add(1, Relaxed);
            tracing::debug!(user = %aor, source = %client, "attempt while locked out");
        } else if let Some(creds) = creds {
            match self.auth.verify(creds, realm, req.method().unwrap_or_default(), user.as_ref(), now) {
                super::auth::Verdict::Ok => {
                    self.guard.lock().expect("guard").succeeded(client.ip());
                    let user = user.expect("verified users exist");
                    if !user.enabled {
                        return Err(self.respond_with(req, 403, "Account Disabled"));
                    }
                    return Ok(user);
                }
                super::auth::Verdict::Stale => stale = true,
                super::auth::Verdict::Fail(why) => {
                    self.metrics.auth_failures.fetch_add(1, Relaxed);
                    let (source, transport) = (client, flow.transport.via_token());
                    if why == super::auth::FOREIGN_NONCE {
                        // The password was right: a client reusing a nonce from before a restart.
                        tracing::info!(user = %aor, %source, %transport, why, "credentials for an unknown nonce: challenged again");
                    } else {
                        tracing::warn!(user = %aor, %source, %transport, why, "authentication failed");
                        match self.guard.lock().expect("guard").failed(client.ip(), aor, now) {
                            super::guard::Lockout::None => {}
                            super::guard::Lockout::Source => {
                                self.metrics.auth_lockouts.fetch_add(1, Relaxed);
                                let address = source.ip();
                                tracing::warn!(%address, "too many failed authentications: address locked out");
                            }
                            super::guard::Lockout::User => {
                                self.metrics.auth_lockouts.fetch_add(1, Relaxed);
                                tracing::warn!(user = %aor, "too many failed authentications: user locked out");
                            }
                        }
                    }
                }
            }
        }
        let mut r = self.respond(req, code);
        for c in self.auth.challenges(realm, stale, now) {
            r.headers.push(challenge, c);
        }
        Err(r)
    }

    /// A client that asks for an authentication scheme other than Digest gets a Digest challenge
    /// it cannot answer, and usually gives up without another word: say so in the log. Microsoft's
    /// dialect (pidgin-sipe, Lync, Skype for Business) speaks NTLM, Kerberos or TLS-DSK only; its
    /// first REGISTER carries no credentials but its extensions give it away.
    fn log_unsupported_auth(&self, flow: Flow, req: &Message, aor: &str, header: &str) {
        let (source, transport) = (client_address(flow, req), flow.transport.via_token());
        for value in req.headers.get_all(header) {
            let scheme = value.split_whitespace().next().unwrap_or_default();
            if !scheme.eq_ignore_ascii_case("Digest") {
                tracing::warn!(
                    user = %aor,
                    %source,
                    %transport,
                    %scheme,
                    "client offered an authentication scheme this server does not support (Digest only)"
                );
                return;
            }
        }
        let microsoft = req.method() == Some("REGISTER")
            && (req.headers.get("ms-keep-alive").is_some()
                || req
                    .headers
                    .get_all("Supported")
                    .flat_map(crate::sip::params::split_list)
                    .any(|s| s.eq_ignore_ascii_case("msrtc-event-categories")));
        if microsoft {
            let user_agent = req.headers.get("User-Agent").unwrap_or_default();
            tracing::warn!(
                user = %aor,
                %source,
                %transport,
                user_agent,
                "client speaks Microsoft's SIP dialect (NTLM, Kerberos or TLS-DSK authentication); \
                 this server offers Digest only, so it will give up"
            );
        }
    }

    /// Sends a request along a flow with a fresh Via and waits for its final response
    /// (`None` on timeout or when it cannot be sent).
    pub(super) async fn forward(self: &Arc<Self>, flow: Flow, req: Message) -> Option<Message> {
        self.start_request(flow, req).await?.await.ok().flatten()
    }

    /// Sends a request along a flow with a fresh Via in a new client transaction; the receiver
    /// yields its final response (`None` on timeout). `None` here: it could not be sent.
    pub(super) async fn start_request(
        self: &Arc<Self>,
        flow: Flow,
        mut req: Message,
    ) -> Option<oneshot::Receiver<Option<Message>>> {
        let branch = format!("z9hG4bK{:016x}{:08x}", rand::random::<u64>(), rand::random::<u32>());
        let host = self.via_host(flow.transport);
        req.headers.push_front("Via", format!("SIP/2.0/{} {host};branch={branch};rport", flow.transport.via_token()));
        let data = req.to_bytes();
        let (tx, rx) = oneshot::channel();
        let pending = Pending { flow, data: data.clone(), reply: Some(tx) };
        self.client_txns.lock().expect("client txns").start(
            branch.clone(),
            flow.transport.is_reliable(),
            pending,
            Instant::now(),
        );
        if let Err(e) = self.transports.send(&flow, data).await {
            tracing::debug!(error = %e, remote = %flow.remote, "request not sent");
            if let Some(p) = self.client_txns.lock().expect("client txns").data_mut(&branch) {
                p.reply.take();
            }
            return None;
        }
        Some(rx)
    }

    fn on_response(&self, msg: Message) {
        let Some(branch) =
            msg.headers.get("Via").and_then(|v| Via::parse(v).ok()).and_then(|v| v.branch().map(str::to_string))
        else {
            self.metrics.malformed_responses.fetch_add(1, Relaxed);
            return;
        };
        let status = msg.status().unwrap_or(0);
        let mut ct = self.client_txns.lock().expect("client txns");
        match ct.on_response(&branch, status, Instant::now()) {
            ResponseEvent::Final => {
                if let Some(reply) = ct.data_mut(&branch).and_then(|p| p.reply.take()) {
                    let _ = reply.send(Some(msg));
                }
            }
            ResponseEvent::Provisional => {}
            ResponseEvent::Ignore => {
                self.metrics.stray_responses.fetch_add(1, Relaxed);
            }
        }
    }

    fn on_malformed(self: &Arc<Self>, flow: Flow, e: ParseError) {
        if !e.is_request {
            self.metrics.malformed_responses.fetch_add(1, Relaxed);
            return;
        }
        self.metrics.malformed_requests.fetch_add(1, Relaxed);
        tracing::debug!(remote = %flow.remote, reason = %e.reason, "malformed request");
        let Some((answer, to)) = crate::sip::routing::malformed_answer(&e, flow, &self.tag) else {
            return; // nowhere to send a response
        };
        self.metrics.count_response(answer.status().unwrap_or(400));
        let core = self.clone();
        tokio::spawn(async move {
            let _ = core.transports.send(&to, answer.to_bytes()).await;
        });
    }
}

/// The address a request really comes from: over the internal link, the client's as the
/// Front-End stamped it on the client's Via (a Front-End is trusted: it authenticated with a
/// certificate); otherwise the peer's.
pub(super) fn client_address(flow: Flow, req: &Message) -> std::net::SocketAddr {
    if flow.transport == Transport::Internal
        && let Some(via) =
            req.headers.get_all("Via").flat_map(crate::sip::params::split_list).nth(1).and_then(|v| Via::parse(v).ok())
        && let Some(ip) = via
            .param("received")
            .and_then(|r| r.parse().ok())
            .or_else(|| via.host.trim_matches(['[', ']']).parse().ok())
    {
        let port = via.param("rport").and_then(|p| p.parse().ok()).or(via.port).unwrap_or(5060);
        return std::net::SocketAddr::new(ip, port);
    }
    flow.remote
}

/// The digest realm of a user: the domain of their address (what `user add` hashes with).
pub(super) fn realm_of(aor: &str) -> &str {
    aor.rsplit_once('@').map_or(aor, |(_, d)| d)
}

/// The transports hand every message here.
pub struct CoreHandler(pub Arc<Core>);

impl Handler for CoreHandler {
    fn on_message(&self, flow: Flow, data: Bytes) {
        let core = &self.0;
        match parse_datagram(&data, &core.settings.limits) {
            Ok(msg) if msg.is_request() => core.on_request(flow, msg),
            Ok(msg) => core.on_response(msg),
            Err(e) => core.on_malformed(flow, e),
        }
    }
}
