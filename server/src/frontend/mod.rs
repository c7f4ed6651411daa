//! The Front-End role: a stateless proxy (RFC 3261 section 16.11) in front of the Home Servers.
//! It keeps no user state. Each request goes to its destination's Home Server (REGISTER: the
//! address of record; others: the Request-URI user; in-dialog: the Home Server the Request-URI
//! names), found in the directory with a short cache, over the internal mutual-TLS link.
//!
//! What comes back finds its way without state here: the Via, Path and Record-Route this proxy
//! adds carry a flow token naming the connection the request came from, so responses, and
//! requests from a Home Server to a client, leave through the very connection the client holds
//! (with several Front-End replicas, the replica holding it). Tokens are honoured only from the
//! internal link, where every peer presented a certificate from the deployment CA.
//!
//! Authentication: the Home Server that receives a request authenticates its sender, against the
//! same directory (the Front-End relays its challenge). No identity is asserted across the
//! internal link, so a `P-Asserted-Identity` from a client is removed, never believed.

use crate::config::HomeServerRoute;
use crate::directory::{Directory, DirectoryError};
use crate::domains::Domains;
use crate::ops::metrics::Metrics;
use crate::sip::message::{Limits, parse_datagram};
use crate::sip::response::{from_headers, reason_phrase};
use crate::sip::routing::{FlowTokens, stamp_top_via, stateless_branch};
use crate::sip::uri::{NameAddr, SipUri};
use crate::sip::via::{Via, split_host_port};
use crate::sip::{Message, ParseError};
use crate::transport::{Flow, Handler, Transport, Transports};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Via parameter holding the flow token of the hop a request came from.
const FLOW_PARAM: &str = "pft";
/// Seconds a client is asked to wait when its Home Server is down or the directory is.
const RETRY_AFTER: &str = "5";

#[derive(Clone, Debug)]
pub struct Settings {
    pub domain: String,
    /// Hosts that stand for `domain` in addresses (lower-case).
    pub domain_aliases: Vec<String>,
    pub limits: Limits,
    pub home_servers: Vec<HomeServerRoute>,
    pub route_cache: Duration,
    pub probe_interval: Duration,
}

/// A Home Server as the routing table names it, and whether it answers.
struct HomeServer {
    name: String,
    /// `host:port` of its internal listener, as configured.
    address: String,
    /// The address resolved, until it fails.
    resolved: Mutex<Option<SocketAddr>>,
    up: AtomicBool,
}

pub struct FrontEnd {
    settings: Settings,
    transports: Arc<Transports>,
    directory: Arc<dyn Directory>,
    metrics: Arc<Metrics>,
    tokens: FlowTokens,
    /// The SIP domains whose users the Home Servers serve.
    domains: Domains,
    homes: Vec<HomeServer>,
    /// A user's Home Server (index into `homes`, `None`: no such user) and when that was read.
    cache: Mutex<HashMap<String, (Option<usize>, Instant)>>,
    /// `host:port` this instance is known by, per transport (Internal: the internal listener).
    advertised: Mutex<HashMap<Transport, (String, u16)>>,
    /// Requests forwarded to a Home Server and not yet answered, by the branch of our Via. The
    /// only state kept: when a Home Server's connection drops, its requests would otherwise wait
    /// for the client's timeout (a TCP client never retransmits); they get 503 at once instead.
    pending: Mutex<HashMap<String, Pending>>,
    tag: String,
}

struct Pending {
    home: usize,
    client: Flow,
    /// The 503 to send if the Home Server goes away.
    unavailable: Bytes,
    since: Instant,
}

/// How long an unanswered forward is remembered (RFC 3261 timer F).
const PENDING_LIFETIME: Duration = Duration::from_secs(32);
/// A forward younger than this may still be waiting for its connection to be set up.
const CONNECT_GRACE: Duration = Duration::from_millis(200);

impl FrontEnd {
    pub fn new(
        settings: Settings,
        transports: Arc<Transports>,
        directory: Arc<dyn Directory>,
        metrics: Arc<Metrics>,
    ) -> Arc<FrontEnd> {
        let homes = settings
            .home_servers
            .iter()
            .map(|h| HomeServer {
                name: h.name.clone(),
                address: h.address.clone(),
                resolved: Mutex::new(None),
                // Unknown until probed (`probe_all` at start): not assumed reachable.
                up: AtomicBool::new(false),
            })
            .collect::<Vec<_>>();
        {
            let mut stats = metrics.home_servers.lock().expect("home server stats");
            for h in &homes {
                stats.entry(h.name.clone()).or_default().up = false;
            }
        }
        let domains = Domains::new(&settings.domain, &settings.domain_aliases);
        Arc::new(FrontEnd {
            settings,
            transports,
            directory,
            metrics,
            tokens: FlowTokens::new(),
            domains,
            homes,
            cache: Mutex::new(HashMap::new()),
            advertised: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            tag: format!("{:016x}", rand::random::<u64>()),
        })
    }

    /// Records the `host:port` this instance is reached at over a transport.
    pub fn set_advertised(&self, transport: Transport, host_port: &str) {
        if let Ok((host, Some(port))) = split_host_port(host_port) {
            self.advertised.lock().expect("advertised").insert(transport, (host.to_ascii_lowercase(), port));
        }
    }

    fn advertised(&self, transport: Transport) -> String {
        let a = self.advertised.lock().expect("advertised");
        match a.get(&transport).or_else(|| a.values().next()) {
            Some((host, port)) => format!("{host}:{port}"),
            None => self.domains.primary().to_string(),
        }
    }

    /// Whether a URI names this instance (any transport it advertises).
    fn is_own(&self, uri: &SipUri) -> bool {
        let host = uri.host();
        let port = uri.port();
        self.advertised.lock().expect("advertised").values().any(|(h, p)| *h == host && port.is_none_or(|q| q == *p))
    }

    /// Reads the domains the directory admits (then again on every probe round; the directory
    /// caches).
    pub async fn load_domains(&self) {
        self.domains.refresh(self.directory.as_ref()).await;
    }

    /// Probes every Home Server once, all at a time (at start, before taking traffic).
    pub async fn probe_all(&self) {
        futures::future::join_all((0..self.homes.len()).map(|i| self.probe(i))).await;
    }

    /// Probes Home Servers marked down, so they are used again as soon as they answer.
    pub fn start_probes(self: &Arc<Self>) {
        let fe = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(fe.settings.probe_interval);
            loop {
                tick.tick().await;
                fe.fail_orphaned_forwards().await;
                fe.domains.refresh(fe.directory.as_ref()).await;
                for i in 0..fe.homes.len() {
                    if !fe.homes[i].up.load(Relaxed) {
                        fe.probe(i).await;
                    }
                }
            }
        });
    }

    /// Answers 503 to forwards whose Home Server connection has gone (and forgets old ones).
    async fn fail_orphaned_forwards(&self) {
        let now = Instant::now();
        let connected: Vec<bool> = (0..self.homes.len())
            .map(|i| {
                let addr = *self.homes[i].resolved.lock().expect("resolved");
                addr.is_some_and(|a| self.transports.has_connection(Transport::Internal, a))
            })
            .collect();
        let mut failed = Vec::new();
        self.pending.lock().expect("pending").retain(|_, p| {
            let orphaned = !connected[p.home] && now.duration_since(p.since) > CONNECT_GRACE;
            if orphaned {
                failed.push((p.home, p.client, p.unavailable.clone()));
            }
            !orphaned && now.duration_since(p.since) < PENDING_LIFETIME
        });
        for (home, client, response) in failed {
            self.mark(home, false);
            self.metrics.count_response(503);
            self.emit(client, response);
        }
    }

    /// Sends an OPTIONS to a Home Server; reaching it (a connection with a verified certificate)
    /// marks it up. Its answer has no flow token and ends here.
    async fn probe(&self, i: usize) {
        let internal = self.advertised(Transport::Internal);
        let home = &self.homes[i];
        let branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
        let options = format!(
            "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/TLS {internal};branch={branch}\r\nMax-Forwards: 1\r\n\
             From: <sip:frontend@{internal}>;tag={tag}\r\nTo: <sip:{addr}>\r\nCall-ID: {branch}\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            addr = home.address,
            tag = self.tag,
        );
        let _ = self.send_to_home(i, Bytes::from(options)).await;
    }

    fn mark(&self, i: usize, up: bool) {
        let home = &self.homes[i];
        if home.up.swap(up, Relaxed) != up {
            if up {
                tracing::info!(home_server = %home.name, address = %home.address, "home server reachable");
            } else {
                tracing::warn!(home_server = %home.name, address = %home.address, "home server unreachable: marked down");
            }
            self.metrics.home_servers.lock().expect("home server stats").entry(home.name.clone()).or_default().up = up;
        }
    }

    async fn resolve(&self, i: usize) -> Option<SocketAddr> {
        let home = &self.homes[i];
        if let Some(a) = *home.resolved.lock().expect("resolved") {
            return Some(a);
        }
        let addr = tokio::net::lookup_host(home.address.as_str()).await.ok()?.next()?;
        *home.resolved.lock().expect("resolved") = Some(addr);
        Some(addr)
    }

    /// Sends to a Home Server over the internal link (reusing the open connection), marking it up
    /// or down by the outcome.
    async fn send_to_home(&self, i: usize, data: Bytes) -> Result<(), ()> {
        let Some(addr) = self.resolve(i).await else {
            self.mark(i, false);
            return Err(());
        };
        match self.transports.send(&Flow::datagram(Transport::Internal, addr), data).await {
            Ok(()) => {
                self.mark(i, true);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(home_server = %self.homes[i].name, error = %e, "send failed");
                // Resolve again next time: a restarted pod may have a new address.
                *self.homes[i].resolved.lock().expect("resolved") = None;
                self.mark(i, false);
                Err(())
            }
        }
    }

    fn home_at(&self, addr: SocketAddr) -> Option<usize> {
        self.homes.iter().position(|h| *h.resolved.lock().expect("resolved") == Some(addr))
    }

    /// Which Home Server a user is homed on: `Ok(None)` when the directory does not know them.
    async fn home_of(&self, aor: &str) -> Result<Option<usize>, DirectoryError> {
        if let Some((home, at)) = self.cache.lock().expect("route cache").get(aor)
            && at.elapsed() < self.settings.route_cache
        {
            return Ok(*home);
        }
        let home = match self.directory.find_user(aor).await? {
            None => None,
            Some(user) => match &user.home_server {
                Some(name) => self.homes.iter().position(|h| h.name == *name),
                // Not assigned: with a single Home Server there is only one place to be.
                None if self.homes.len() == 1 => Some(0),
                None => None,
            },
        };
        self.cache.lock().expect("route cache").insert(aor.to_string(), (home, Instant::now()));
        Ok(home)
    }

    /// Sends without waiting, so that what this instance relays leaves in the order it was read
    /// (a subscriber's NOTIFYs, say); only when that cannot be done at once (no open connection, a
    /// full queue) does a task wait for it.
    fn emit(&self, flow: Flow, data: Bytes) {
        if self.transports.send_now(&flow, data.clone()).is_err() {
            let transports = self.transports.clone();
            tokio::spawn(async move {
                if let Err(e) = transports.send(&flow, data).await {
                    tracing::debug!(error = %e, remote = %flow.remote, "not sent");
                }
            });
        }
    }

    /// A response generated here, sent back along the request's flow.
    fn reply(&self, flow: Flow, req: &Message, code: u16, reason: &str, retry_after: bool) {
        let mut r = from_headers(&req.headers, code, reason, &self.tag);
        if retry_after {
            r.headers.push("Retry-After", RETRY_AFTER);
        }
        self.metrics.count_response(code);
        let target = match req.headers.get("Via").and_then(|v| Via::parse(v).ok()) {
            Some(via) => crate::sip::routing::response_flow(flow, &via),
            None => flow,
        };
        self.emit(target, r.to_bytes());
    }

    /// Everything but a request for a user is handled here, in the order messages arrive; a
    /// request that needs the directory or a new connection continues on a task of its own.
    fn on_request(self: &Arc<Self>, flow: Flow, mut req: Message) {
        let method = req.method().unwrap_or_default().to_string();
        self.metrics.count_request(&method);
        let Some(incoming_via) = stamp_top_via(&mut req, flow.remote) else {
            return; // nowhere to answer
        };
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
        // Route entries naming this instance are used up here; a flow token in one of them (from
        // a Home Server only) names the client connection the request is for.
        let mut client = None;
        while let Some(top) = req.headers.get("Route").and_then(|r| crate::sip::params::split_list(r).first().copied())
        {
            let Ok(route) = NameAddr::parse(top) else {
                return self.reply(flow, &req, 400, "Bad Route header", false);
            };
            if !self.is_own(&route.uri) {
                break;
            }
            req.headers.pop_first_value("Route");
            if flow.transport == Transport::Internal
                && let Some(f) = route.uri.user().and_then(|t| self.tokens.decode(t))
            {
                client = Some(f);
            }
        }
        match client {
            Some(client) => self.to_client(flow, req, client, &incoming_via),
            None => {
                let fe = self.clone();
                tokio::spawn(async move { fe.to_home_server(flow, req, &method, &incoming_via).await });
            }
        }
    }

    /// A request from a Home Server to a client whose connection this instance holds.
    fn to_client(&self, from: Flow, mut req: Message, client: Flow, incoming_via: &Via) {
        let host = self.advertised(client.transport);
        let branch = stateless_branch(incoming_via, req.request_uri().unwrap_or_default(), "c");
        let token = self.tokens.encode(&from);
        req.headers.push_front(
            "Via",
            format!("SIP/2.0/{} {host};branch={branch};{FLOW_PARAM}={token}", client.transport.via_token()),
        );
        if self.transports.send_now(&client, req.to_bytes()).is_err() {
            // RFC 5626 section 5.3: the flow is gone; the Home Server may try another contact.
            req.headers.pop_first_value("Via");
            self.reply(from, &req, 430, "Flow Failed", false);
        }
    }

    /// A request for a user (or for a Home Server named in the Request-URI).
    async fn to_home_server(&self, flow: Flow, mut req: Message, method: &str, incoming_via: &Via) {
        let uri = match SipUri::parse(req.request_uri().unwrap_or_default()) {
            Ok(u) => u,
            Err(e) => return self.reply(flow, &req, 400, &format!("Bad Request-URI: {e}"), false),
        };
        let home = match self.homes.iter().position(|h| names_home(&uri, &h.address)) {
            // In-dialog: the Request-URI is a Home Server's own Contact.
            Some(i) => i,
            None => {
                if method != "REGISTER" && uri.user().is_none() && self.is_own(&uri) {
                    // For this instance itself: load balancers and monitors ask OPTIONS.
                    let code = if method == "OPTIONS" { 200 } else { 404 };
                    return self.reply(flow, &req, code, reason_phrase(code), false);
                }
                let target = if method == "REGISTER" {
                    NameAddr::parse(req.headers.get("To").unwrap_or_default()).map(|n| n.uri)
                } else {
                    Ok(uri.clone())
                };
                let aor = match target {
                    Ok(t) => match self.domains.aor(&t) {
                        Some(aor) => aor,
                        None => return self.reply(flow, &req, 404, "Domain Not Served Here", false),
                    },
                    Err(e) => return self.reply(flow, &req, 400, &format!("Bad To header: {e}"), false),
                };
                match self.home_of(&aor).await {
                    Ok(Some(i)) => i,
                    Ok(None) => return self.reply(flow, &req, 404, "Not Found", false),
                    Err(e) => {
                        tracing::warn!(error = %e, "directory lookup failed");
                        return self.reply(flow, &req, 503, "Directory Unavailable", true);
                    }
                }
            }
        };
        if !self.homes[home].up.load(Relaxed) {
            return self.reply(flow, &req, 503, "Home Server Unavailable", true);
        }
        let internal = self.advertised(Transport::Internal);
        let token = self.tokens.encode(&flow);
        let from_client = flow.transport != Transport::Internal;
        if from_client && method == "REGISTER" {
            // RFC 3327: requests for this binding come back through this instance and flow.
            req.headers.push_front("Path", format!("<sip:{token}@{internal};transport=tls;lr;ob>"));
        }
        let dialog_creating = method == "SUBSCRIBE"
            && NameAddr::parse(req.headers.get("To").unwrap_or_default()).is_ok_and(|to| to.param("tag").is_none());
        if from_client && dialog_creating {
            // Two entries (RFC 5658): the Home Server reaches this instance on the internal side,
            // the client on the side it connected to.
            let public = self.advertised(flow.transport);
            let public = match flow.transport {
                Transport::Udp => format!("<sip:{public};lr>"),
                Transport::Tcp => format!("<sip:{public};transport=tcp;lr>"),
                Transport::Tls | Transport::Internal => format!("<sip:{public};transport=tls;lr>"),
            };
            req.headers.push_front("Record-Route", public);
            req.headers.push_front("Record-Route", format!("<sip:{token}@{internal};transport=tls;lr>"));
        }
        let branch = stateless_branch(incoming_via, &uri.to_string(), "h");
        let mut unavailable = from_headers(&req.headers, 503, "Home Server Unavailable", &self.tag);
        unavailable.headers.push("Retry-After", RETRY_AFTER);
        req.headers.push_front("Via", format!("SIP/2.0/TLS {internal};branch={branch};{FLOW_PARAM}={token}"));
        let client = crate::sip::routing::response_flow(flow, incoming_via);
        self.pending.lock().expect("pending").insert(
            branch.clone(),
            Pending { home, client, unavailable: unavailable.to_bytes(), since: Instant::now() },
        );
        if self.send_to_home(home, req.to_bytes()).await.is_err() {
            self.pending.lock().expect("pending").remove(&branch);
            req.headers.pop_first_value("Via");
            return self.reply(flow, &req, 503, "Home Server Unavailable", true);
        }
        let mut stats = self.metrics.home_servers.lock().expect("home server stats");
        stats.entry(self.homes[home].name.clone()).or_default().forwarded += 1;
    }

    /// Responses follow the Via this instance added: its flow token says where they go.
    fn on_response(&self, flow: Flow, mut resp: Message) {
        let Some(top) = resp.headers.pop_first_value("Via") else {
            self.metrics.malformed_responses.fetch_add(1, Relaxed);
            return;
        };
        let via = Via::parse(&top).ok();
        if resp.status().is_some_and(|c| c >= 200)
            && let Some(branch) = via.as_ref().and_then(|v| v.branch())
        {
            self.pending.lock().expect("pending").remove(branch);
        }
        let Some(target) = via.as_ref().and_then(|v| v.param(FLOW_PARAM).and_then(|t| self.tokens.decode(t))) else {
            // A probe's answer, or a response that is not ours.
            if flow.transport != Transport::Internal {
                self.metrics.stray_responses.fetch_add(1, Relaxed);
            }
            return;
        };
        if flow.transport == Transport::Internal
            && let Some(i) = self.home_at(flow.remote)
        {
            let code = resp.status().unwrap_or(500);
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
        self.emit(target, resp.to_bytes());
    }

    fn on_malformed(&self, flow: Flow, e: ParseError) {
        if !e.is_request {
            self.metrics.malformed_responses.fetch_add(1, Relaxed);
            return;
        }
        self.metrics.malformed_requests.fetch_add(1, Relaxed);
        if let Some((answer, to)) = crate::sip::routing::malformed_answer(&e, flow, &self.tag) {
            self.metrics.count_response(answer.status().unwrap_or(400));
            self.emit(to, answer.to_bytes());
        }
    }
}

/// Whether a Request-URI is a Home Server's own Contact: `sip:parley@<its internal address>`.
fn names_home(uri: &SipUri, address: &str) -> bool {
    let Ok((host, Some(port))) = split_host_port(address) else { return false };
    uri.user() == Some("parley") && uri.host() == host.to_ascii_lowercase() && uri.port() == Some(port)
}

/// The transports hand every message here, in the order each connection delivers them.
pub struct FrontEndHandler(pub Arc<FrontEnd>);

impl Handler for FrontEndHandler {
    fn on_message(&self, flow: Flow, data: Bytes) {
        let fe = &self.0;
        match parse_datagram(&data, &fe.settings.limits) {
            Ok(msg) if msg.is_request() => fe.on_request(flow, msg),
            Ok(msg) => fe.on_response(flow, msg),
            Err(e) => fe.on_malformed(flow, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_server_contacts_are_recognised_by_address() {
        let uri = SipUri::parse("sip:parley@Home-1.ns.svc:5062;transport=tls").unwrap();
        assert!(names_home(&uri, "home-1.ns.svc:5062"));
        assert!(!names_home(&uri, "home-1.ns.svc:5061"));
        assert!(!names_home(&SipUri::parse("sip:alice@home-1.ns.svc:5062").unwrap(), "home-1.ns.svc:5062"));
    }
}
