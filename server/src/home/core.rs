//! The Home Server's SIP core, without IO, in the manner of `quinn-proto`: it is handed what
//! arrived and the time, changes its state, and queues actions for the IO layer (`driver`) to
//! perform: send bytes along a flow, fetch users from the directory (and resolve a route's host),
//! write to the store. Their answers come back in as inputs. Nothing here awaits, sleeps, opens
//! a socket or reads a clock, so every flow runs in unit tests with simulated time (`tests`).
//!
//! A request that needs the directory becomes a task: its users are fetched first, then its
//! method's handler runs once, synchronously, and either answers (after its writes are durable)
//! or forks the request to the user's devices and answers when they have.

use super::auth::DigestAuth;
use super::guard::Guard;
use super::presence::state::PresenceState;
use super::registrar::Registrar;
use super::request::Request;
use crate::directory::DirectoryError;
use crate::domains::Domains;
use crate::ops::metrics::Metrics;
pub use crate::service::{Action, Facts, Input, Now, Service, TaskId};
use crate::sip::hashing::TrustedKeyMap;
use crate::sip::response::{self, from_headers};
use crate::sip::uri::{NameAddr, SipUri};
use crate::sip::via::Via;
use crate::sip::{Message, ParseError};
use crate::store::{Table, Write};
use crate::transaction::{
    ClientAction, ClientTransactions, ResponseEvent, ServerEvent, ServerTransactions, Timers, TxnKey,
};
use crate::transport::{Flow, Transport};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Methods this server implements, for Allow headers.
pub const ALLOW: &str = "REGISTER, MESSAGE, OPTIONS, SUBSCRIBE, PUBLISH";
/// Methods of the SIP standards this server does not implement: 405. Anything else: 501.
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
/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER: &str = "5";
/// How often bindings, subscriptions, publications and nonces are checked for expiry.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct CoreSettings {
    pub domain: String,
    /// Hosts that stand for `domain` in addresses (lower-case).
    pub domain_aliases: Vec<String>,
    /// This server's name: users whose directory entry names another are homed elsewhere.
    pub server_name: String,
    pub max_body_bytes: usize,
    pub timers: Timers,
    /// Bounds of subscription and publication intervals (the registrar's, by default).
    pub min_expires: u32,
    pub max_expires: u32,
    /// Token that lets an administrator use the HTTP API for any user.
    pub admin_token: Option<String>,
    /// When failed authentications lock an address or a user out.
    pub guard: super::guard::Policy,
    /// Requests in progress above which new ones get 503 at once.
    pub max_pending_requests: usize,
    /// Messages kept for users with no device: on or off, bounds, expiry.
    pub offline: crate::config::Offline,
    /// New requests a second above which they get 503 with a random Retry-After (0: no limit).
    pub max_requests_per_second: u32,
}

/// Work that follows a response, once it is sent (so a subscriber sees 200 before NOTIFY).
#[derive(Debug)]
pub(super) enum After {
    /// Notify these subscriptions; `true` sends full state.
    Notify(Vec<String>, bool),
    /// End these subscriptions with a final NOTIFY giving the reason.
    Terminate(Vec<String>, &'static str),
    /// Send the final NOTIFY, giving the reason, of a subscription already ended and forgotten.
    Ended(Box<super::presence::state::Subscription>, &'static str),
    /// A user's presence changed: notify its watchers and lists that contain it.
    PresenceChanged(String),
    /// A user's watchers changed: notify its watcher-info subscriptions.
    WatchersChanged(String),
    /// A user registered a device: send it the messages kept meanwhile.
    DeliverKept(String),
}

/// What a method's handler decided.
pub(super) enum Outcome {
    /// Answer once `writes` are durable (at once if there are none), then do `after`.
    Respond { response: Message, writes: Vec<Write>, after: Vec<After> },
    /// Send these requests (one per device) and answer with the best of their answers.
    Fork(Vec<(Flow, Message)>),
}

impl From<Message> for Outcome {
    fn from(response: Message) -> Outcome {
        Outcome::Respond { response, writes: Vec::new(), after: Vec::new() }
    }
}

/// A request being served.
struct Task {
    /// Its server transaction.
    key: TxnKey,
    /// Where its response goes.
    reply_flow: Flow,
    flow: Flow,
    req: Request,
    received: Instant,
    stage: Stage,
}

enum Stage {
    Fetching,
    Storing { response: Message, after: Vec<After> },
    Forking { outstanding: usize, best: Option<Message> },
}

/// Who waits for the answer to a request this server sent.
#[derive(Debug)]
pub(super) enum Waiter {
    /// A branch of a forked request.
    Fork(TaskId),
    /// A kept message (user, sequence number) sent to one of the user's devices.
    Kept(String, u64),
    /// A NOTIFY of this subscription, and its ticket in the window of NOTIFYs.
    Notify(String, u64),
    /// Nobody (its request could not be sent and that was dealt with).
    Gone,
}

/// A request this server sent, kept for retransmission.
#[derive(Debug)]
struct Outgoing {
    flow: Flow,
    data: Bytes,
    waiter: Waiter,
}

pub struct Core {
    pub(super) settings: CoreSettings,
    pub(super) auth: DigestAuth,
    /// Failed authentications per address and user, and lockouts.
    pub(super) guard: Guard,
    pub(super) registrar: Registrar,
    pub(super) presence: PresenceState,
    /// Messages kept for users with no device.
    pub(super) offline: super::offline::OfflineQueue,
    /// The SIP domains served here.
    pub(super) domains: Domains,
    pub(super) metrics: Arc<Metrics>,
    /// Users being moved to another Home Server, moved away, or moved here.
    pub(super) moves: super::moves::Moves,
    server_txns: ServerTransactions,
    client_txns: ClientTransactions<Outgoing>,
    /// Sent-by of our own Via, per transport.
    via_hosts: HashMap<Transport, String>,
    /// To tag of responses this server generates.
    pub(super) tag: String,
    tasks: TrustedKeyMap<TaskId, Task>,
    next_task: TaskId,
    last_sweep: Option<Instant>,
    actions: Vec<Action>,
    /// `max_requests_per_second`, made at the first request (the core reads no clock).
    rate_limit: Option<crate::transport::admission::RateLimit>,
    /// The Front-End replicas' links, for clients whose replica is gone.
    front_ends: super::front_ends::FrontEndLinks,
    /// NOTIFYs waiting to be sent (flow, request, subscription), and those unanswered.
    notifies: super::notify_window::NotifyWindow<(Flow, Message, String)>,
}

impl Service for Core {
    fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    fn handle(&mut self, now: Now, input: Input) {
        match input {
            Input::Received { flow, message: Ok(msg) } if msg.is_request() => self.on_request(now, flow, msg),
            Input::Received { message: Ok(msg), .. } => self.on_response(now, msg),
            Input::Received { flow, message: Err(e) } => self.on_malformed(flow, e),
            Input::Fetched { task, facts } => self.on_fetched(now, task, facts),
            Input::Stored { task, result } => self.on_stored(now, task, result),
            Input::NotSent { branch } => {
                // A Front-End replica that is gone: through another one, if one is live.
                if let Some(o) = self.client_txns.data_mut(&branch)
                    && let Some(other) = self.front_ends.failed(o.flow, now.instant)
                {
                    tracing::info!(gone = %o.flow.remote, through = %other.remote, "Front-End gone: sent through another");
                    o.flow = other;
                    let data = o.data.clone();
                    return self.actions.push(Action::Send { flow: other, data, branch: Some(branch) });
                }
                let waiter = self.client_txns.data_mut(&branch).map(|o| std::mem::replace(&mut o.waiter, Waiter::Gone));
                if let Some(waiter) = waiter {
                    self.answered(now, waiter, None);
                }
            }
        }
    }

    /// Drives time: transaction retransmissions and timeouts, and once a second the expiry of
    /// bindings, subscriptions, publications, nonces and lockouts.
    fn on_tick(&mut self, now: Now) {
        self.server_txns.on_timer(now.instant);
        self.metrics.server_transactions.store(self.server_txns.len() as u64, Relaxed);
        let mut timed_out = Vec::new();
        let mut resend = Vec::new();
        self.client_txns.on_timer(now.instant, |action, o| match action {
            ClientAction::Retransmit => resend.push((o.flow, o.data.clone())),
            ClientAction::Timeout => timed_out.push(std::mem::replace(&mut o.waiter, Waiter::Gone)),
        });
        self.metrics.client_transactions.store(self.client_txns.len() as u64, Relaxed);
        self.metrics.retransmissions_sent.fetch_add(resend.len() as u64, Relaxed);
        for (flow, data) in resend {
            self.send(flow, data);
        }
        for waiter in timed_out {
            self.answered(now, waiter, None);
        }
        self.send_notifies(now);
        if self.last_sweep.is_none_or(|last| now.instant.duration_since(last) >= SWEEP_INTERVAL) {
            let first = self.last_sweep.is_none();
            self.last_sweep = Some(now.instant);
            self.sweep(now);
            if first {
                // After a restart: users still registered get what was kept for them.
                self.deliver_all_kept(now);
            }
        }
    }

    fn admit_domains(&mut self, domains: Vec<String>) {
        self.domains.admit(domains);
    }

    fn set_advertised(&mut self, transport: Transport, host_port: String) {
        self.via_hosts.insert(transport, host_port);
    }
}

impl Core {
    /// The core a config describes (the admin token is the content of `api.admin_token_file`).
    pub fn from_config(config: &crate::config::Config, admin_token: Option<String>, metrics: Arc<Metrics>) -> Core {
        let (r, a) = (&config.registrar, &config.auth);
        let settings = CoreSettings {
            domain: config.sip_domain.clone(),
            domain_aliases: config.domain_aliases.iter().map(|a| a.to_ascii_lowercase()).collect(),
            server_name: config.server_name.clone(),
            max_body_bytes: config.limits.max_body_bytes,
            timers: Timers::default(),
            min_expires: r.min_expires,
            max_expires: r.max_expires,
            admin_token,
            max_pending_requests: config.limits.max_pending_requests,
            offline: config.offline.clone(),
            max_requests_per_second: config.limits.max_requests_per_second,
            guard: super::guard::Policy {
                max_failures_per_source: a.max_failures_per_source,
                max_failures_per_user: a.max_failures_per_user,
                window: Duration::from_secs(a.failure_window_secs),
                lockout: Duration::from_secs(a.lockout_secs),
            },
        };
        let registrar = Registrar::new(super::registrar::Policy {
            min_expires: r.min_expires,
            max_expires: r.max_expires,
            default_expires: r.default_expires,
            max_contacts: r.max_contacts,
            expires_jitter_percent: r.expires_jitter_percent,
        });
        let auth = DigestAuth::new(a.algorithms.clone(), Duration::from_secs(a.nonce_ttl_secs));
        Core::new(settings, auth, registrar, metrics)
    }

    pub fn new(settings: CoreSettings, auth: DigestAuth, registrar: Registrar, metrics: Arc<Metrics>) -> Core {
        let timers = settings.timers;
        Core {
            domains: Domains::new(&settings.domain, &settings.domain_aliases),
            guard: Guard::new(settings.guard),
            settings,
            auth,
            registrar,
            presence: PresenceState::default(),
            offline: Default::default(),
            metrics,
            moves: Default::default(),
            server_txns: ServerTransactions::new(timers),
            client_txns: ClientTransactions::new(timers),
            via_hosts: HashMap::new(),
            tag: format!("{:016x}", rand::random::<u64>()),
            tasks: TrustedKeyMap::default(),
            next_task: 0,
            last_sweep: None,
            actions: Vec::new(),
            rate_limit: None,
            front_ends: Default::default(),
            notifies: Default::default(),
        }
    }

    fn sweep(&mut self, now: Now) {
        let (emptied, expired) = self.registrar.expire(now.wall);
        self.metrics.registrations.store(self.registrar.binding_count() as u64, Relaxed);
        for (aor, b) in expired {
            let (source, transport) = (b.flow.remote, b.flow.transport.via_token());
            tracing::info!(user = %aor, %source, %transport, contact = %b.uri, "signed out: registration expired");
        }
        self.auth.purge(now.wall);
        self.guard.purge(now.wall);
        self.expire_moves(now.wall);
        self.front_ends.purge(now.instant);
        if !emptied.is_empty() {
            let writes = emptied.iter().map(|aor| Write::delete(Table::Registrations, aor)).collect();
            self.store(None, writes);
        }
        for aor in emptied {
            self.run_after(now, After::PresenceChanged(aor));
        }
        self.presence_sweep(now);
        self.expire_kept(now);
    }

    pub fn binding_count(&self) -> usize {
        self.registrar.binding_count()
    }

    #[cfg(test)]
    pub(super) fn server_transactions(&self) -> usize {
        self.server_txns.len()
    }

    /// Requests still being processed, and NOTIFYs still to send (for draining on shutdown).
    pub fn requests_in_progress(&self) -> usize {
        self.server_txns.in_progress() + self.notifies.waiting()
    }

    pub fn domain(&self) -> &str {
        &self.settings.domain
    }

    // ---- actions ----

    pub(super) fn send(&mut self, flow: Flow, data: Bytes) {
        self.actions.push(Action::Send { flow, data, branch: None });
    }

    pub(super) fn store(&mut self, task: Option<TaskId>, writes: Vec<Write>) {
        if task.is_some() || !writes.is_empty() {
            self.actions.push(Action::Store { task, writes });
        }
    }

    /// Sends a request along a flow with a fresh Via in a new client transaction; its answer
    /// (or its absence) goes to `waiter`.
    pub(super) fn start_request(&mut self, now: Now, flow: Flow, mut req: Message, waiter: Waiter) {
        let flow = self.front_ends.route(flow, now.instant);
        let branch = crate::sip::routing::new_branch();
        let host = self.via_host(flow.transport);
        let via = ["SIP/2.0/", flow.transport.via_token(), " ", &host, ";branch=", &branch, ";rport"].concat();
        req.headers.push_front("Via", via);
        let data = req.to_bytes();
        let outgoing = Outgoing { flow, data: data.clone(), waiter };
        self.client_txns.start(branch.clone(), flow.transport.is_reliable(), outgoing, now.instant);
        self.actions.push(Action::Send { flow, data, branch: Some(branch) });
    }

    // ---- requests ----

    fn transaction_key(&self, msg: &Message, via: &Via) -> TxnKey {
        let method = msg.method().unwrap_or_default();
        match via.branch() {
            Some(b) if b.starts_with("z9hG4bK") => {
                let port = via.port().unwrap_or(0).to_be_bytes();
                self.server_txns.key(&[b.as_bytes(), via.host().as_bytes(), &port, method.as_bytes()])
            }
            // RFC 2543 peers: match on the request's identity instead of a branch.
            _ => self.server_txns.key(&[
                msg.call_id().as_bytes(),
                msg.headers.get("CSeq").unwrap_or("").as_bytes(),
                msg.headers.get("From").unwrap_or("").as_bytes(),
                via.as_str().as_bytes(),
            ]),
        }
    }

    fn on_request(&mut self, now: Now, flow: Flow, mut req: Message) {
        let via = match crate::sip::routing::stamp_top_via(&mut req, flow.remote) {
            Ok(via) => via,
            Err(reason) => return self.metrics.count_malformed_request(flow.remote, &reason), // nowhere to answer
        };
        self.metrics.count_request(req.method().unwrap_or_default());
        if req.method() == Some("OPTIONS") {
            self.front_ends.heard(flow, now.instant); // a Front-End's probe (twice a second)
        }
        if req.method() == Some("ACK") {
            return; // no INVITE transactions here: nothing to acknowledge
        }
        let key = self.transaction_key(&req, &via);
        let reply_flow = crate::sip::routing::response_flow(flow, &via);
        match self.server_txns.on_request(key, now.instant) {
            ServerEvent::New => {}
            ServerEvent::Absorbed => {
                self.metrics.retransmissions_absorbed.fetch_add(1, Relaxed);
                return;
            }
            ServerEvent::Resend(bytes) => {
                self.metrics.retransmissions_absorbed.fetch_add(1, Relaxed);
                self.send(reply_flow, bytes);
                return;
            }
        }
        let task =
            Task { key, reply_flow, flow, req: Request::new(req), received: now.instant, stage: Stage::Fetching };
        if let Some(r) = self.gate(now, &task.req) {
            return self.finish(now, task, r);
        }
        if self.tasks.len() >= self.settings.max_pending_requests {
            // Shed load before any work: no lookup, no digest, no write.
            self.metrics.overload_refused.fetch_add(1, Relaxed);
            let mut r = self.respond_with(&task.req, 503, "Overloaded");
            r.headers.push("Retry-After", RETRY_AFTER);
            return self.finish(now, task, r);
        }
        let id = self.next_task;
        self.next_task += 1;
        let (users, resolve) = self.needs(flow, &task.req);
        self.tasks.insert(id, task);
        if users.is_empty() && resolve.is_none() {
            self.on_fetched(now, id, Facts::default());
        } else {
            self.actions.push(Action::Fetch { task: id, users, resolve });
        }
    }

    /// What a request's handler will ask of the directory and the resolver: the users it names
    /// that live here, and the host of the route back to a client behind a Front-End when that
    /// is a name rather than an address.
    fn needs(&self, flow: Flow, req: &Request) -> (Vec<String>, Option<(String, u16)>) {
        let from_aor = || req.parsed_from().ok().and_then(|a| self.local_aor(&a.uri));
        let to_aor = || req.parsed_to().ok().and_then(|a| self.local_aor(&a.uri));
        let target_aor = || req.parsed_uri().ok().and_then(|u| self.local_aor(u));
        let mut users = Vec::new();
        let route_header = match req.method().unwrap_or_default() {
            "REGISTER" => {
                users.extend(to_aor());
                Some("Path")
            }
            "MESSAGE" => {
                users.extend(from_aor());
                users.extend(target_aor());
                None
            }
            "PUBLISH" => {
                users.extend(from_aor());
                None
            }
            "SUBSCRIBE" => {
                users.extend(from_aor());
                let list =
                    |aor: &String| aor.split('@').next().is_some_and(|u| u.ends_with(super::presence::LIST_SUFFIX));
                users.extend(target_aor().filter(|aor| !list(aor)));
                Some("Record-Route")
            }
            _ => None,
        };
        users.dedup();
        let resolve = match route_header {
            Some(h) if flow.transport == Transport::Internal => {
                let first = req.headers.get_all(h).flat_map(crate::sip::params::split_list).next().map(str::to_string);
                route_host(first.as_ref()).filter(|(host, _)| host.parse::<IpAddr>().is_err())
            }
            _ => None,
        };
        (users, resolve)
    }

    fn on_fetched(&mut self, now: Now, id: TaskId, facts: Facts) {
        let Some(task) = self.tasks.remove(&id) else { return };
        // Checked when the request is handled, not when it arrived: a move may have begun while
        // its users were being fetched.
        if let Some(r) = self.moving_answer(&task.req, now) {
            return self.finish(now, task, r);
        }
        let outcome = self.dispatch(now, task.flow, &task.req, &facts);
        self.advance(now, id, task, outcome);
    }

    fn dispatch(&mut self, now: Now, flow: Flow, req: &Request, facts: &Facts) -> Outcome {
        if let Some(r) = self.check_common(req) {
            return r.into();
        }
        match req.method().unwrap_or_default() {
            "REGISTER" => self.register(now, flow, req, facts),
            "MESSAGE" => self.message(now, flow, req, facts),
            "SUBSCRIBE" => self.subscribe(now, flow, req, facts),
            "PUBLISH" => self.publish(now, flow, req, facts),
            "OPTIONS" => {
                let mut r = self.respond(req, 200);
                r.headers.push("Allow", ALLOW);
                r.headers.push("Accept", "text/plain, message/cpim, application/pidf+xml, */*");
                r.headers.push("Allow-Events", super::presence::ALLOW_EVENTS);
                r.headers.push("Supported", "path, eventlist");
                r.into()
            }
            m => {
                let mut r = self.respond(req, if KNOWN_METHODS.contains(&m) { 405 } else { 501 });
                r.headers.push("Allow", ALLOW);
                r.into()
            }
        }
    }

    /// Carries out a handler's decision for a task.
    fn advance(&mut self, now: Now, id: TaskId, mut task: Task, outcome: Outcome) {
        match outcome {
            Outcome::Respond { response, writes, after } if writes.is_empty() => {
                self.finish(now, task, response);
                for a in after {
                    self.run_after(now, a);
                }
            }
            Outcome::Respond { response, writes, after } => {
                task.stage = Stage::Storing { response, after };
                self.tasks.insert(id, task);
                self.store(Some(id), writes);
            }
            Outcome::Fork(branches) => {
                task.stage = Stage::Forking { outstanding: branches.len(), best: None };
                self.tasks.insert(id, task);
                for (flow, req) in branches {
                    self.start_request(now, flow, req, Waiter::Fork(id));
                }
            }
        }
    }

    fn on_stored(&mut self, now: Now, id: TaskId, result: Result<(), String>) {
        let Some(task) = self.tasks.remove(&id) else { return };
        let Stage::Storing { response, after } = task.stage else { return };
        match result {
            Ok(()) => {
                let task = Task { stage: Stage::Fetching, ..task };
                self.finish(now, task, response);
                for a in after {
                    self.run_after(now, a);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store write failed");
                let r = self.respond_with(&task.req, 500, "Storage Failure");
                let task = Task { stage: Stage::Fetching, ..task };
                self.finish(now, task, r);
            }
        }
    }

    /// Sends a task's final response; the task is over.
    fn finish(&mut self, now: Now, task: Task, response: Message) {
        let bytes = response.to_bytes();
        let status = response.status().unwrap_or(500);
        self.metrics.count_response(status);
        // Kept for retransmissions over UDP, but a challenge to a request that carried no
        // credentials: answering a retransmission with a fresh challenge costs no more than
        // looking the old one up and changes nothing (as Kamailio challenges statelessly), and
        // every client's first REGISTER and SUBSCRIBE is such a request.
        let challenge = matches!(status, 401 | 407) && !carries_credentials(&task.req);
        let keep = !task.reply_flow.transport.is_reliable() && !challenge;
        self.server_txns.on_final(task.key, bytes.clone(), keep, now.instant);
        self.send(task.reply_flow, bytes);
        let method = task.req.method().unwrap_or_default();
        self.metrics.observe_latency(method, now.instant.duration_since(task.received));
    }

    /// An answer to a request this server sent (`None`: none came, or it could not be sent).
    fn answered(&mut self, now: Now, waiter: Waiter, answer: Option<Message>) {
        match waiter {
            Waiter::Fork(id) => self.fork_answered(now, id, answer),
            Waiter::Notify(sub, ticket) => {
                // A subscriber that no longer knows the dialog, or never answers, is gone; so is
                // one whose flow through a Front-End failed (430, RFC 5626): the dialog's route
                // set leads nowhere now, and the subscriber subscribes again.
                if matches!(answer.and_then(|r| r.status()), None | Some(481) | Some(408) | Some(430)) {
                    self.drop_subscription(&sub);
                }
                self.notifies.answered(ticket);
                self.send_notifies(now);
            }
            Waiter::Kept(aor, seq) => self.kept_answered(now, aor, seq, answer.as_ref()),
            Waiter::Gone => {}
        }
    }

    /// RFC 3261 16.7: the first 2xx answers the sender; otherwise, once every branch has
    /// answered, the best failure (480 when none is worth passing on).
    fn fork_answered(&mut self, now: Now, id: TaskId, answer: Option<Message>) {
        let Some(task) = self.tasks.get_mut(&id) else { return }; // answered already
        let Stage::Forking { outstanding, best } = &mut task.stage else { return };
        *outstanding -= 1;
        let mut delivered = None;
        if let Some(mut resp) = answer {
            let code = resp.status().unwrap_or(500);
            resp.headers.pop_first_value("Via");
            if (200..300).contains(&code) {
                delivered = Some(resp);
            } else if best.as_ref().is_none_or(|b| better_failure(code, b.status().unwrap_or(500))) {
                *best = Some(resp);
            }
        }
        if delivered.is_none() && *outstanding > 0 {
            return;
        }
        let best = best.take();
        let task = self.tasks.remove(&id).expect("present");
        let response = match (delivered, best) {
            (Some(ok), _) => {
                self.metrics.messages_delivered.fetch_add(1, Relaxed);
                ok
            }
            // 408, 503 and 430 (a device's flow failed: RFC 5626 keeps it from endpoints) say
            // nothing to the sender but that the user is not reachable now.
            (None, Some(r)) if !matches!(r.status(), Some(408 | 503 | 430)) => r,
            (None, _) => self.respond(&task.req, 480),
        };
        self.finish(now, task, response);
    }

    pub(super) fn run_after(&mut self, now: Now, after: After) {
        match after {
            After::Notify(ids, full) => self.notify(now, ids, full, None),
            After::Terminate(ids, reason) => self.notify(now, ids, true, Some(reason)),
            After::Ended(sub, reason) => {
                // Back for the time it takes to compose and send its final NOTIFY, which forgets
                // it again (deleting it from the store once more, which does no harm).
                let id = sub.id.to_string();
                self.presence.add_subscription(*sub);
                self.notify(now, vec![id], true, Some(reason))
            }
            After::PresenceChanged(aor) => {
                let ids = self.presence.affected_by_presence(&aor);
                self.notify(now, ids, false, None)
            }
            After::WatchersChanged(aor) => {
                let ids = self.winfo_subscriptions(&aor);
                self.notify(now, ids, true, None)
            }
            After::DeliverKept(aor) => self.deliver_kept(now, &aor),
        }
    }

    /// Sends a NOTIFY (in a client transaction, on behalf of `subscription`) now if the window has
    /// room, else when earlier ones are answered or give up their places (in order).
    pub(super) fn send_notify(&mut self, now: Now, flow: Flow, req: Message, subscription: String) {
        self.notifies.push((flow, req, subscription));
        self.send_notifies(now);
    }

    /// Sends the NOTIFYs the window has room for.
    fn send_notifies(&mut self, now: Now) {
        for (ticket, (flow, req, subscription)) in self.notifies.ready(now.instant) {
            self.start_request(now, flow, req, Waiter::Notify(subscription, ticket));
        }
        self.metrics.notifies_queued.store(self.notifies.waiting() as u64, Relaxed);
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

    // ---- responses ----

    fn on_response(&mut self, now: Now, msg: Message) {
        let Some(branch) =
            msg.headers.get("Via").and_then(|v| Via::parse(v).ok()).and_then(|v| v.branch().map(str::to_string))
        else {
            self.metrics.count_malformed_response();
            return;
        };
        match self.client_txns.on_response(&branch, msg.status().unwrap_or(0), now.instant) {
            ResponseEvent::Final => {
                let waiter = self.client_txns.data_mut(&branch).map(|o| std::mem::replace(&mut o.waiter, Waiter::Gone));
                if let Some(waiter) = waiter {
                    self.answered(now, waiter, Some(msg));
                }
            }
            ResponseEvent::Provisional => {}
            ResponseEvent::Ignore => {
                self.metrics.stray_responses.fetch_add(1, Relaxed);
            }
        }
    }

    fn on_malformed(&mut self, flow: Flow, e: ParseError) {
        if let Some((answer, to)) = crate::service::answer_malformed(&self.metrics, flow, &e, &self.tag) {
            self.send(to, answer.to_bytes());
        }
    }

    // ---- helpers for the method handlers ----

    /// Whether a URI host is a SIP domain served here (or an alias of it).
    pub(super) fn is_local_host(&self, host: &str) -> bool {
        self.domains.is_local(host)
    }

    /// The address of record (`user@domain`) a URI names, if its domain is served here.
    pub(super) fn local_aor(&self, uri: &SipUri) -> Option<String> {
        self.domains.aor(uri)
    }

    /// Where requests along a Route set go: over the internal link, the connection the request
    /// came in on, or failing that the address of the first route (the Front-End instance that
    /// holds the client's connection). Elsewhere the flow itself. That instance has just passed
    /// the request on, so it is live, even if a send to its address failed before.
    pub(super) fn next_hop(&mut self, flow: Flow, first_route: Option<&String>, facts: &Facts) -> Flow {
        if flow.transport != Transport::Internal {
            return flow;
        }
        let Some((host, port)) = route_host(first_route) else { return flow };
        match host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, port)).or(facts.route) {
            Some(remote) => {
                self.front_ends.came_through(remote);
                Flow { transport: Transport::Internal, remote, conn: flow.conn }
            }
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
            Transport::Ws => format!("<sip:parley@{host};transport=ws>"),
            Transport::Wss => format!("<sips:parley@{host};transport=ws>"),
        }
    }

    fn via_host(&self, transport: Transport) -> String {
        self.via_hosts.get(&transport).cloned().unwrap_or_else(|| self.settings.domain.clone())
    }

    pub(super) fn respond(&self, req: &Message, code: u16) -> Message {
        response::respond(req, code, &self.tag)
    }

    pub(super) fn respond_with(&self, req: &Message, code: u16, reason: &str) -> Message {
        from_headers(&req.headers, code, reason, &self.tag)
    }

    /// The answer to a new request that is not taken on: 503 with Retry-After during a shutdown
    /// (OPTIONS from the first step, so probes and load balancers look elsewhere; everything from
    /// the second), or over `max_requests_per_second` (OPTIONS exempt: a probe answered 503 would
    /// take the whole server out of a Front-End's rotation; requests with credentials have half
    /// the rate kept for them, see `RateLimit`).
    fn gate(&mut self, now: Now, req: &Message) -> Option<Message> {
        use crate::ops::metrics::phase;
        let options = req.method() == Some("OPTIONS");
        let phase = self.metrics.phase();
        if phase >= phase::REFUSING || (options && phase >= phase::NOT_READY) {
            self.metrics.shutdown_refused.fetch_add(1, Relaxed);
            let mut r = self.respond_with(req, 503, "Shutting Down");
            r.headers.push("Retry-After", crate::ops::metrics::phase::retry_after().to_string());
            return Some(r);
        }
        if options || self.settings.max_requests_per_second == 0 {
            return None;
        }
        let rate = self.settings.max_requests_per_second;
        let limit = self
            .rate_limit
            .get_or_insert_with(|| crate::transport::admission::RateLimit::new(rate, now.instant).expect("rate > 0"));
        let finishing = carries_credentials(req);
        let wait = limit.admit(finishing, now.instant).err()?;
        self.metrics.rate_limited.fetch_add(1, Relaxed);
        let mut r = self.respond_with(req, 503, "Rate Limited");
        r.headers.push("Retry-After", wait.to_string());
        Some(r)
    }

    /// 503 with Retry-After when the directory cannot answer.
    pub(super) fn unavailable(&self, req: &Message, e: &DirectoryError) -> Message {
        tracing::warn!(error = %e, "directory lookup failed");
        let mut r = self.respond_with(req, 503, "Directory Unavailable");
        r.headers.push("Retry-After", RETRY_AFTER);
        r
    }
}

/// The host and port of a route header value (port 5061: the internal link's TLS default).
fn route_host(route: Option<&String>) -> Option<(String, u16)> {
    let uri = NameAddr::parse(route?).ok()?.uri;
    let host = uri.host().trim_start_matches('[').trim_end_matches(']').to_string();
    Some((host, uri.port().unwrap_or(5061)))
}

/// RFC 3261 16.7: a 6xx wins, otherwise the lowest class.
fn better_failure(new: u16, old: u16) -> bool {
    match (new / 100, old / 100) {
        (6, 6) => false,
        (6, _) => true,
        (_, 6) => false,
        (n, o) => n < o || (n == o && new < old),
    }
}

/// Whether a request answers a digest challenge (as a user agent or through a proxy).
fn carries_credentials(req: &Message) -> bool {
    req.headers.get("Authorization").or(req.headers.get("Proxy-Authorization")).is_some()
}

#[cfg(test)]
mod tests {
    use super::better_failure;

    #[test]
    fn best_failure_prefers_6xx_then_lowest_class() {
        assert!(better_failure(603, 404));
        assert!(!better_failure(404, 603));
        assert!(better_failure(404, 503));
        assert!(!better_failure(486, 404));
    }
}
