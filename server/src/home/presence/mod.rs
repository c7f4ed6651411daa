//! The presence agent (RFC 3856) on the RFC 6665 event framework: SUBSCRIBE dialogs for
//! `presence`, `presence.winfo` and contact lists (RFC 4662), PUBLISH (RFC 3903), and the NOTIFYs
//! that follow every change. State is kept in `state` (no IO) and made durable in the store.

pub mod documents;
pub mod pidf;
pub mod state;

use super::core::{After, Core};
use crate::sip::Message;
use crate::sip::params::{find_param, split_list};
use crate::sip::response::from_headers;
use crate::sip::uri::{NameAddr, SipUri};
use crate::store::{Table, Write};
use crate::transport::Flow;
use state::{Package, PresenceState, PublishError, Subscription};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const ALLOW_EVENTS: &str = "presence, presence.winfo";
/// The user part suffix of a user's contact-list URI: `sip:alice+contacts@domain`.
pub const LIST_SUFFIX: &str = "+contacts";
const DEFAULT_EXPIRES: u32 = 3600;

impl Core {
    /// The Expires of a SUBSCRIBE or PUBLISH, clamped to the maximum; 400 if unreadable, 423 with
    /// Min-Expires if shorter than the minimum (0 stays 0: it ends the subscription/publication).
    fn interval(&self, req: &Message) -> Result<u32, Message> {
        let expires = match req.headers.get("Expires") {
            None => DEFAULT_EXPIRES,
            Some(v) => v.trim().parse::<u32>().map_err(|_| self.respond_with(req, 400, "Bad Expires header"))?,
        };
        if expires != 0 && expires < self.settings.min_expires {
            let mut r = self.respond(req, 423);
            r.headers.push("Min-Expires", self.settings.min_expires.to_string());
            return Err(r);
        }
        Ok(expires.min(self.settings.max_expires))
    }

    /// Whether the user has at least one registered contact (online without a publication).
    fn is_registered(&self, aor: &str, now: SystemTime) -> bool {
        !self.registrar.lock().expect("registrar").lookup(aor, now).is_empty()
    }

    pub(in crate::home) async fn publish(self: &Arc<Self>, flow: Flow, req: &Message) -> (Message, Vec<After>) {
        let event = req.headers.get("Event").map(|e| e.split(';').next().unwrap_or("").trim().to_string());
        if event.as_deref() != Some("presence") {
            let mut r = self.respond(req, 489);
            r.headers.push("Allow-Events", "presence");
            return (r, vec![]);
        }
        let user = match self.authenticated_sender(flow, req).await {
            Ok(u) => u,
            Err(r) => return (r, vec![]),
        };
        let target = SipUri::parse(req.request_uri().unwrap_or_default()).ok().and_then(|u| self.local_aor(&u));
        if target.as_deref() != Some(user.address.as_str()) {
            return (self.respond_with(req, 403, "Publish Only Your Own Presence"), vec![]);
        }
        let expires = match self.interval(req) {
            Ok(e) => e,
            Err(r) => return (r, vec![]),
        };
        let body = if req.body.is_empty() {
            None
        } else {
            let ct = req.headers.get("Content-Type").unwrap_or("").to_ascii_lowercase();
            if !ct.starts_with(documents::PIDF) {
                let mut r = self.respond(req, 415);
                r.headers.push("Accept", documents::PIDF);
                return (r, vec![]);
            }
            let text = String::from_utf8_lossy(&req.body).into_owned();
            if let Err(e) = pidf::validate(&text) {
                return (self.respond_with(req, 400, &format!("Bad PIDF: {e}")), vec![]);
            }
            Some(text)
        };
        let now = SystemTime::now();
        let (result, pubs) = {
            let mut p = self.presence.lock().expect("presence");
            let r = p.publish(&user.address, req.headers.get("SIP-If-Match").map(str::trim), body, expires, now);
            (r, p.publications_of(&user.address).to_vec())
        };
        match result {
            Err(PublishError::UnknownEtag) => (self.respond(req, 412), vec![]),
            Err(PublishError::MissingBody) => (self.respond_with(req, 400, "Initial PUBLISH Needs A Body"), vec![]),
            Ok(etag) => {
                let write = if pubs.is_empty() {
                    Write::delete(Table::Publications, &user.address)
                } else {
                    Write::put(Table::Publications, &user.address, &pubs)
                };
                if let Err(e) = self.store.apply(vec![write]).await {
                    tracing::error!(error = %e, "store write failed");
                    return (self.respond_with(req, 500, "Storage Failure"), vec![]);
                }
                let mut r = self.respond(req, 200);
                if let Some(etag) = etag {
                    r.headers.push("SIP-ETag", etag);
                }
                r.headers.push("Expires", expires.to_string());
                (r, vec![After::PresenceChanged(user.address)])
            }
        }
    }

    pub(in crate::home) async fn subscribe(self: &Arc<Self>, flow: Flow, req: &Message) -> (Message, Vec<After>) {
        let event_header = req.headers.get("Event").unwrap_or("");
        let event = event_header.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let event_id = find_param(event_header, "id").map(str::to_string);
        if event != "presence" && event != "presence.winfo" {
            let mut r = self.respond(req, 489);
            r.headers.push("Allow-Events", ALLOW_EVENTS);
            return (r, vec![]);
        }
        let user = match self.authenticated_sender(flow, req).await {
            Ok(u) => u,
            Err(r) => return (r, vec![]),
        };
        let expires = match self.interval(req) {
            Ok(e) => e,
            Err(r) => return (r, vec![]),
        };
        let to = NameAddr::parse(req.headers.get("To").unwrap_or_default());
        let from = NameAddr::parse(req.headers.get("From").unwrap_or_default());
        let (Ok(to), Ok(from)) = (to, from) else { return (self.respond_with(req, 400, "Bad From or To"), vec![]) };
        let Some(from_tag) = from.param("tag").map(str::to_string) else {
            return (self.respond_with(req, 400, "From Has No Tag"), vec![]);
        };
        let cseq = req.cseq().map_or(0, |(n, _)| n);
        let now = SystemTime::now();
        if let Some(to_tag) = to.param("tag") {
            let id = subscription_id(req.call_id(), &from_tag, to_tag);
            return self.resubscribe(flow, req, &id, cseq, expires, now).await;
        }
        // A new subscription: what does it watch?
        let target = match SipUri::parse(req.request_uri().unwrap_or_default()) {
            Ok(u) => u,
            Err(e) => return (self.respond_with(req, 400, &format!("Bad Request-URI: {e}")), vec![]),
        };
        let Some(target_aor) = self.local_aor(&target) else { return (self.respond(req, 404), vec![]) };
        let list_owner =
            target_aor.split_once('@').and_then(|(u, d)| u.strip_suffix(LIST_SUFFIX).map(|u| format!("{u}@{d}")));
        let package = match (event.as_str(), &list_owner) {
            ("presence.winfo", _) => Package::Winfo,
            ("presence", Some(_)) => Package::List,
            _ => Package::Presence,
        };
        let resource = match package {
            Package::List => list_owner.expect("list"),
            _ => target_aor,
        };
        if package != Package::Presence && resource != user.address {
            return (self.respond_with(req, 403, "Only Your Own List Or Watcher Info"), vec![]);
        }
        if package == Package::List {
            let supported: Vec<&str> = req.headers.get_all("Supported").flat_map(split_list).collect();
            if !supported.iter().any(|s| s.eq_ignore_ascii_case("eventlist")) {
                let mut r = self.respond(req, 421);
                r.headers.push("Require", "eventlist");
                return (r, vec![]);
            }
        }
        if package == Package::Presence {
            match self.directory.find_user(&resource).await {
                Ok(Some(_)) => {}
                Ok(None) => return (self.respond(req, 404), vec![]),
                Err(e) => return (self.unavailable(req, &e), vec![]),
            }
        }
        let Some(contact) = req.headers.get("Contact").and_then(|c| NameAddr::parse(c).ok()) else {
            return (self.respond_with(req, 400, "SUBSCRIBE Needs A Contact"), vec![]);
        };
        let local_tag = format!("{:016x}", rand::random::<u64>());
        let mut response = from_headers(&req.headers, 200, "OK", &local_tag);
        let route_set: Vec<String> =
            req.headers.get_all("Record-Route").flat_map(split_list).map(str::to_string).collect();
        // RFC 3261 12.1.1: the 200 carries the Record-Route set, so the subscriber's route set
        // matches ours.
        for r in &route_set {
            response.headers.push("Record-Route", r.clone());
        }
        let flow = self.next_hop(flow, route_set.first()).await;
        let sub = Subscription {
            id: subscription_id(req.call_id(), &from_tag, &local_tag),
            package,
            watcher: user.address.clone(),
            resource: resource.clone(),
            call_id: req.call_id().to_string(),
            remote_party: req.headers.get("From").unwrap_or_default().to_string(),
            local_party: response.headers.get("To").unwrap_or_default().to_string(),
            event_id,
            remote_target: contact.raw_uri.clone(),
            route_set,
            flow,
            local_cseq: 0,
            remote_cseq: cseq,
            expires_at: now + Duration::from_secs(expires.into()),
            version: 0,
            last_sent: Default::default(),
        };
        response.headers.push("Expires", expires.to_string());
        response.headers.push("Contact", self.own_contact(flow));
        let id = sub.id.clone();
        let (source, transport, event) =
            (super::core::client_address(flow, req), flow.transport.via_token(), package.event());
        let mut after = Vec::new();
        if expires == 0 {
            tracing::debug!(user = %user.address, %source, %transport, %event, %resource, "state fetched");
            // A fetch: one NOTIFY with the current state, then the subscription is over.
            self.presence.lock().expect("presence").add_subscription(sub);
            after.push(After::Terminate(vec![id], "timeout"));
        } else {
            if let Err(e) = self.store.apply(vec![Write::put(Table::Subscriptions, &id, &sub)]).await {
                tracing::error!(error = %e, "store write failed");
                return (self.respond_with(req, 500, "Storage Failure"), vec![]);
            }
            self.presence.lock().expect("presence").add_subscription(sub);
            tracing::info!(user = %user.address, %source, %transport, %event, %resource, expires, "subscription started");
            after.push(After::Notify(vec![id], true));
        }
        if package == Package::Presence {
            after.push(After::WatchersChanged(resource));
        }
        (response, after)
    }

    async fn resubscribe(
        self: &Arc<Self>,
        flow: Flow,
        req: &Message,
        id: &str,
        cseq: u32,
        expires: u32,
        now: SystemTime,
    ) -> (Message, Vec<After>) {
        let (sub, local_party) = {
            let mut p = self.presence.lock().expect("presence");
            let Some(sub) = p.subscription_mut(id) else { return (self.respond(req, 481), vec![]) };
            if cseq <= sub.remote_cseq {
                return (self.respond_with(req, 500, "CSeq Out Of Order"), vec![]);
            }
            sub.remote_cseq = cseq;
            sub.expires_at = now + Duration::from_secs(expires.into());
            (sub.clone(), sub.local_party.clone())
        };
        let mut response = from_headers(&req.headers, 200, "OK", "");
        response.headers.set("To", local_party);
        response.headers.push("Expires", expires.to_string());
        response.headers.push("Contact", self.own_contact(sub.flow));
        if expires == 0 {
            log_end(&sub, flow, "unsubscribed");
            let mut after = vec![After::Terminate(vec![id.to_string()], "timeout")];
            if sub.package == Package::Presence {
                after.push(After::WatchersChanged(sub.resource));
            }
            return (response, after);
        }
        if let Err(e) = self.store.apply(vec![Write::put(Table::Subscriptions, id, &sub)]).await {
            tracing::error!(error = %e, "store write failed");
            return (self.respond_with(req, 500, "Storage Failure"), vec![]);
        }
        (response, vec![After::Notify(vec![id.to_string()], true)])
    }

    /// Subscriptions to notify when `aor`'s presence changed.
    pub(in crate::home) fn affected_by_presence(&self, aor: &str) -> Vec<String> {
        self.presence.lock().expect("presence").affected_by_presence(aor)
    }

    /// Winfo subscriptions of `aor` (its watchers changed).
    pub(in crate::home) fn winfo_subscriptions(&self, aor: &str) -> Vec<String> {
        let p = self.presence.lock().expect("presence");
        p.subscriptions_to(aor, Package::Winfo).into_iter().map(|s| s.id.clone()).collect()
    }

    /// Sends a NOTIFY on each subscription (in order, one change at a time), ending them with
    /// `terminate` as the reason if given. `full` sends full state for lists.
    pub(in crate::home) async fn notify(self: &Arc<Self>, ids: Vec<String>, full: bool, terminate: Option<&str>) {
        if ids.is_empty() {
            return;
        }
        let _order = self.notify_lock.lock().await;
        let now = SystemTime::now();
        let mut outgoing = Vec::with_capacity(ids.len());
        let mut writes = Vec::with_capacity(ids.len());
        {
            let mut p = self.presence.lock().expect("presence");
            // Each presentity's document is composed once per round, however many watch it.
            let mut documents = HashMap::new();
            for id in &ids {
                let Some(mut sub) = p.subscription(id).cloned() else { continue };
                let full = full || terminate.is_some();
                let Some((content_type, body)) = self.notify_body(&p, &mut documents, &mut sub, full, now) else {
                    continue;
                };
                sub.local_cseq += 1;
                let state = match terminate {
                    Some(reason) => format!("terminated;reason={reason}"),
                    None => format!("active;expires={}", sub.remaining(now)),
                };
                outgoing.push((sub.id.clone(), sub.flow, self.notify_request(&sub, &state, &content_type, body)));
                if terminate.is_some() {
                    p.remove_subscription(id);
                    writes.push(Write::delete(Table::Subscriptions, id));
                } else {
                    writes.push(Write::put(Table::Subscriptions, id, &sub));
                    *p.subscription_mut(id).expect("present") = sub;
                }
            }
            self.metrics.subscriptions.store(p.subscription_count() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        if let Err(e) = self.store.apply(writes).await {
            tracing::error!(error = %e, "store write failed");
        }
        for (id, flow, request) in outgoing {
            let Some(answer) = self.start_request(flow, request).await else {
                self.drop_subscription(&id).await;
                continue;
            };
            let core = self.clone();
            tokio::spawn(async move {
                // A subscriber that no longer knows the dialog, or never answers, is gone.
                let status = answer.await.ok().flatten().and_then(|r| r.status());
                if matches!(status, None | Some(481) | Some(408)) {
                    core.drop_subscription(&id).await;
                }
            });
        }
    }

    async fn drop_subscription(&self, id: &str) {
        let removed = self.presence.lock().expect("presence").remove_subscription(id);
        if let Some(sub) = removed {
            log_end(&sub, sub.flow, "subscriber unreachable");
            let _ = self.store.apply(vec![Write::delete(Table::Subscriptions, id)]).await;
        }
    }

    /// The NOTIFY body of a subscription, or None when a partial list update has nothing new.
    fn notify_body(
        &self,
        p: &PresenceState,
        docs: &mut HashMap<String, String>,
        sub: &mut Subscription,
        full: bool,
        now: SystemTime,
    ) -> Option<(String, String)> {
        let domain = &self.settings.domain;
        let mut view = |aor: &str, watcher: &str| {
            p.view(aor, watcher, domain, || {
                let doc = || p.document(aor, self.is_registered(aor, now), now);
                docs.entry(aor.to_string()).or_insert_with(doc).clone()
            })
        };
        match sub.package {
            Package::Presence => Some((documents::PIDF.to_string(), view(&sub.resource, &sub.watcher))),
            Package::Winfo => {
                sub.version += 1;
                let watchers: Vec<(&Subscription, bool)> = p
                    .subscriptions_to(&sub.resource, Package::Presence)
                    .into_iter()
                    .map(|w| (w, p.may_watch(&sub.resource, &w.watcher, domain)))
                    .collect();
                Some((documents::WINFO.to_string(), documents::winfo(&sub.resource, sub.version, &watchers)))
            }
            Package::List => {
                let contacts = p.contacts(&sub.resource);
                let mut resources = Vec::new();
                for c in &contacts {
                    let body = view(c, &sub.watcher);
                    if full || sub.last_sent.get(c) != Some(&body) {
                        sub.last_sent.insert(c.clone(), body.clone());
                        resources.push((c.clone(), body));
                    }
                }
                sub.last_sent.retain(|k, _| contacts.contains(k));
                if resources.is_empty() && !full {
                    return None;
                }
                sub.version += 1;
                let (user, host) = sub.resource.split_once('@').unwrap_or((&sub.resource, ""));
                let list_uri = format!("sip:{user}{LIST_SUFFIX}@{host}");
                Some(documents::rlmi(&list_uri, sub.version, full, &resources))
            }
        }
    }

    fn notify_request(&self, sub: &Subscription, state: &str, content_type: &str, body: String) -> Message {
        let mut m = Message {
            start: crate::sip::StartLine::Request { method: "NOTIFY".into(), uri: sub.remote_target.clone() },
            headers: Default::default(),
            body: body.into(),
        };
        for r in &sub.route_set {
            m.headers.push("Route", r.clone());
        }
        m.headers.push("Max-Forwards", "70");
        m.headers.push("From", sub.local_party.clone());
        m.headers.push("To", sub.remote_party.clone());
        m.headers.push("Call-ID", sub.call_id.clone());
        m.headers.push("CSeq", format!("{} NOTIFY", sub.local_cseq));
        m.headers.push("Contact", self.own_contact(sub.flow));
        match &sub.event_id {
            Some(id) => m.headers.push("Event", format!("{};id={id}", sub.package.event())),
            None => m.headers.push("Event", sub.package.event()),
        }
        m.headers.push("Subscription-State", state);
        if sub.package == Package::List {
            m.headers.push("Require", "eventlist");
        }
        m.headers.push("Content-Type", content_type);
        m
    }

    /// Expires subscriptions and publications whose time is up (called every second).
    pub(in crate::home) async fn presence_sweep(self: &Arc<Self>, now: SystemTime) {
        let (expired, changed) = {
            let mut p = self.presence.lock().expect("presence");
            let expired = p.expired_subscriptions(now);
            for sub in expired.iter().filter_map(|id| p.subscription(id)) {
                log_end(sub, sub.flow, "expired");
            }
            (expired, p.expire_publications(now))
        };
        if !expired.is_empty() {
            self.notify(expired, true, Some("timeout")).await;
        }
        for aor in changed {
            let pubs = self.presence.lock().expect("presence").publications_of(&aor).to_vec();
            let write = if pubs.is_empty() {
                Write::delete(Table::Publications, &aor)
            } else {
                Write::put(Table::Publications, &aor, &pubs)
            };
            let _ = self.store.apply(vec![write]).await;
            self.run_after(After::PresenceChanged(aor)).await;
        }
    }

    /// Loads durable presence state (after a restart, even `kill -9`).
    pub fn restore_presence(&self) -> anyhow::Result<usize> {
        let now = SystemTime::now();
        let mut p = self.presence.lock().expect("presence");
        for (aor, pubs) in self.store.load::<Vec<state::Publication>>(Table::Publications)? {
            p.restore_publications(aor, pubs.into_iter().filter(|x| x.expires_at > now).collect());
        }
        for (aor, rules) in self.store.load::<state::Rules>(Table::Rules)? {
            p.set_rules(&aor, rules);
        }
        for (aor, contacts) in self.store.load::<Vec<String>>(Table::Contacts)? {
            p.set_contacts(&aor, contacts);
        }
        let mut restored = 0;
        for (_, mut sub) in self.store.load::<Subscription>(Table::Subscriptions)? {
            if sub.expires_at > now {
                // NOTIFYs sent after the last durable write may have used CSeq numbers: skip past them.
                sub.local_cseq += 100;
                p.add_subscription(sub);
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// Ends every subscription with `reason` (graceful shutdown: subscribers re-subscribe).
    pub async fn terminate_all_subscriptions(self: &Arc<Self>, reason: &'static str) {
        let ids = self.presence.lock().expect("presence").all_subscription_ids();
        if !ids.is_empty() {
            tracing::info!(count = ids.len(), reason, "ending every subscription");
        }
        self.notify(ids, true, Some(reason)).await;
    }
}

/// One INFO line when a subscription ends (the subscriber's address: where the request came from,
/// or where it was made from when it ends by itself).
fn log_end(sub: &Subscription, flow: Flow, why: &str) {
    let (source, transport, event) = (flow.remote, flow.transport.via_token(), sub.package.event());
    tracing::info!(user = %sub.watcher, %source, %transport, %event, resource = %sub.resource, why, "subscription ended");
}

fn subscription_id(call_id: &str, remote_tag: &str, local_tag: &str) -> String {
    format!("{call_id};{remote_tag};{local_tag}")
}

/// The presence-rules and contact-list API (served on the operations port).
impl Core {
    pub fn presence_rules(&self, aor: &str) -> state::Rules {
        self.presence.lock().expect("presence").rules(aor)
    }

    pub fn contact_list(&self, aor: &str) -> Vec<String> {
        self.presence.lock().expect("presence").contacts(aor)
    }

    /// Replaces a user's rules; watchers see the effect at once.
    pub async fn set_presence_rules(self: &Arc<Self>, aor: &str, rules: state::Rules) -> anyhow::Result<()> {
        self.store.apply(vec![Write::put(Table::Rules, aor, &rules)]).await?;
        self.presence.lock().expect("presence").set_rules(aor, rules);
        let ids = self
            .presence
            .lock()
            .expect("presence")
            .subscriptions_to(aor, Package::Presence)
            .into_iter()
            .map(|s| s.id.clone())
            .collect();
        self.notify(ids, true, None).await;
        self.run_after(After::WatchersChanged(aor.to_string())).await;
        Ok(())
    }

    /// Replaces a user's contact list; its list subscriptions get a full-state NOTIFY.
    pub async fn set_contact_list(self: &Arc<Self>, aor: &str, contacts: Vec<String>) -> anyhow::Result<()> {
        self.store.apply(vec![Write::put(Table::Contacts, aor, &contacts)]).await?;
        let ids = {
            let mut p = self.presence.lock().expect("presence");
            p.set_contacts(aor, contacts);
            p.subscriptions_to(aor, Package::List).into_iter().map(|s| s.id.clone()).collect()
        };
        self.notify(ids, true, None).await;
        Ok(())
    }

    /// Checks HTTP credentials for `aor`: digest with the user's own password (the SIP realm), or
    /// the admin token. `Err` carries the WWW-Authenticate challenges to send with a 401.
    /// Checks an HTTP API caller (the user with digest, or an administrator with the token);
    /// says who it is, for the audit log, or gives the challenges to answer.
    pub async fn authorize_http(
        &self,
        aor: &str,
        method: &str,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<String, Vec<String>> {
        let now = SystemTime::now();
        if let Some(value) = authorization {
            if let (Some(token), Some(expected)) = (value.strip_prefix("Bearer "), &self.settings.admin_token) {
                use subtle::ConstantTimeEq;
                if bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes())) {
                    return Ok("administrator (API token)".into());
                }
            } else if let Some(params) = value.strip_prefix("Digest") {
                // The credentials must be for this very resource, not replayed from another path.
                let uri = crate::sip::params::parse_auth_params(params).into_iter().find(|(k, _)| k == "uri");
                let user = match uri {
                    Some((_, u)) if u == path => self.directory.find_user(aor).await.ok().flatten(),
                    _ => None,
                };
                let realm = super::core::realm_of(aor);
                if matches!(self.auth.verify(value, realm, method, user.as_ref(), now), super::auth::Verdict::Ok)
                    && user.is_some_and(|u| u.enabled)
                {
                    return Ok(aor.to_string());
                }
                self.metrics.auth_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Err(self.auth.challenges(super::core::realm_of(aor), false, now))
    }

    pub fn domain(&self) -> &str {
        &self.settings.domain
    }
}
