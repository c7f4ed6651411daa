//! The presence agent (RFC 3856) on the RFC 6665 event framework: SUBSCRIBE dialogs for
//! `presence`, `presence.winfo` and contact lists (RFC 4662), PUBLISH (RFC 3903), and the NOTIFYs
//! that follow every change (`notify`). State is kept in `state`; the core makes it durable
//! through the store actions it queues.

pub mod documents;
mod notify;
pub mod pidf;
pub mod state;
mod subscriptions;

pub use notify::DurablePresence;

use super::core::{After, Core, Facts, Now, Outcome};
use crate::home::request::Request;
use crate::sip::Message;
use crate::sip::params::{find_param, split_list};
use crate::sip::response::from_headers;
use crate::sip::uri::NameAddr;
use crate::store::{Table, Write};
use crate::transport::Flow;
use state::{Package, PresenceState, PublishError, Subscription};
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

    pub(in crate::home) fn publish(&mut self, now: Now, flow: Flow, req: &Request, facts: &Facts) -> Outcome {
        let event = req.headers.get("Event").map(|e| e.split(';').next().unwrap_or("").trim().to_string());
        if event.as_deref() != Some("presence") {
            let mut r = self.respond(req, 489);
            r.headers.push("Allow-Events", "presence");
            return r.into();
        }
        let user = match self.authenticated_sender(now, flow, req, facts) {
            Ok(u) => u,
            Err(r) => return r.into(),
        };
        let target = req.parsed_uri().ok().and_then(|u| self.local_aor(u));
        if target.as_deref() != Some(user.address.as_str()) {
            return self.respond_with(req, 403, "Publish Only Your Own Presence").into();
        }
        let expires = match self.interval(req) {
            Ok(e) => e,
            Err(r) => return r.into(),
        };
        let body = if req.body.is_empty() {
            None
        } else {
            let ct = req.headers.get("Content-Type").unwrap_or("").to_ascii_lowercase();
            if !ct.starts_with(documents::PIDF) {
                let mut r = self.respond(req, 415);
                r.headers.push("Accept", documents::PIDF);
                return r.into();
            }
            let text = String::from_utf8_lossy(&req.body).into_owned();
            if let Err(e) = pidf::validate(&text) {
                return self.respond_with(req, 400, &format!("Bad PIDF: {e}")).into();
            }
            Some(text)
        };
        let etag = req.headers.get("SIP-If-Match").map(str::trim);
        match self.presence.publish(&user.address, etag, body, expires, now.wall) {
            Err(PublishError::UnknownEtag) => self.respond(req, 412).into(),
            Err(PublishError::MissingBody) => self.respond_with(req, 400, "Initial PUBLISH Needs A Body").into(),
            Ok(etag) => {
                let write = publications_write(&self.presence, &user.address);
                let mut r = self.respond(req, 200);
                if let Some(etag) = etag {
                    r.headers.push("SIP-ETag", etag);
                }
                r.headers.push("Expires", expires.to_string());
                let after = vec![After::PresenceChanged(user.address)];
                Outcome::Respond { response: r, writes: vec![write], after }
            }
        }
    }

    pub(in crate::home) fn subscribe(&mut self, now: Now, flow: Flow, req: &Request, facts: &Facts) -> Outcome {
        let event_header = req.headers.get("Event").unwrap_or("");
        let event = event_header.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let event_id = find_param(event_header, "id").map(str::to_string);
        if event != "presence" && event != "presence.winfo" {
            let mut r = self.respond(req, 489);
            r.headers.push("Allow-Events", ALLOW_EVENTS);
            return r.into();
        }
        let user = match self.authenticated_sender(now, flow, req, facts) {
            Ok(u) => u,
            Err(r) => return r.into(),
        };
        let expires = match self.interval(req) {
            Ok(e) => e,
            Err(r) => return r.into(),
        };
        let (Ok(to), Ok(from)) = (req.parsed_to(), req.parsed_from()) else {
            return self.respond_with(req, 400, "Bad From or To").into();
        };
        let Some(from_tag) = from.param("tag").map(str::to_string) else {
            return self.respond_with(req, 400, "From Has No Tag").into();
        };
        let cseq = req.cseq().map_or(0, |(n, _)| n);
        if let Some(to_tag) = to.param("tag") {
            let id = subscription_id(req.call_id(), &from_tag, to_tag);
            return self.resubscribe(flow, req, &id, cseq, expires, now.wall);
        }
        // A new subscription: what does it watch?
        let target = match req.parsed_uri() {
            Ok(u) => u,
            Err(e) => return self.respond_with(req, 400, &format!("Bad Request-URI: {e}")).into(),
        };
        let Some(target_aor) = self.local_aor(target) else { return self.respond(req, 404).into() };
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
            return self.respond_with(req, 403, "Only Your Own List Or Watcher Info").into();
        }
        if package == Package::List {
            let supported: Vec<&str> = req.headers.get_all("Supported").flat_map(split_list).collect();
            if !supported.iter().any(|s| s.eq_ignore_ascii_case("eventlist")) {
                let mut r = self.respond(req, 421);
                r.headers.push("Require", "eventlist");
                return r.into();
            }
        }
        if package == Package::Presence {
            match facts.user(&resource) {
                Ok(Some(_)) => {}
                Ok(None) => return self.respond(req, 404).into(),
                Err(e) => return self.unavailable(req, e).into(),
            }
        }
        let Some(contact) = req.headers.get("Contact").and_then(|c| NameAddr::parse(c).ok()) else {
            return self.respond_with(req, 400, "SUBSCRIBE Needs A Contact").into();
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
        let flow = self.next_hop(flow, route_set.first(), facts);
        let sub = Subscription {
            id: subscription_id(req.call_id(), &from_tag, &local_tag).into(),
            package,
            watcher: user.address.as_str().into(),
            resource: resource.as_str().into(),
            call_id: req.call_id().into(),
            remote_party: req.headers.get("From").unwrap_or_default().into(),
            local_party: response.headers.get("To").unwrap_or_default().into(),
            event_id: event_id.map(String::into_boxed_str),
            remote_target: contact.raw_uri().into(),
            route_set: route_set.into_boxed_slice(),
            flow,
            local_cseq: 0,
            remote_cseq: cseq,
            expires_at: now.wall + Duration::from_secs(expires.into()),
            version: 0,
            last_sent: Default::default(),
        };
        response.headers.push("Expires", expires.to_string());
        response.headers.push("Contact", self.own_contact(flow));
        let id = sub.id.to_string();
        let (source, transport, event) =
            (super::identity::client_address(flow, req), flow.transport.via_token(), package.event());
        let mut writes = Vec::new();
        let mut after = Vec::new();
        if expires == 0 {
            tracing::debug!(user = %user.address, %source, %transport, %event, %resource, "state fetched");
            // A fetch: one NOTIFY with the current state, then the subscription is over.
            after.push(After::Terminate(vec![id], "timeout"));
        } else {
            writes.push(Write::put(Table::Subscriptions, &id, &sub));
            tracing::info!(user = %user.address, %source, %transport, %event, %resource, expires, "subscription started");
            after.push(After::Notify(vec![id], true));
        }
        // Known at once, so a NOTIFY round that runs while the write lands includes it (its
        // NOTIFYs leave after the 200 all the same). Should the write fail, the subscriber gets a
        // 500, answers our NOTIFYs with 481 and the subscription is dropped.
        self.presence.add_subscription(sub);
        if package == Package::Presence {
            after.push(After::WatchersChanged(resource));
        }
        Outcome::Respond { response, writes, after }
    }

    fn resubscribe(
        &mut self,
        flow: Flow,
        req: &Message,
        id: &str,
        cseq: u32,
        expires: u32,
        now: SystemTime,
    ) -> Outcome {
        let Some(sub) = self.presence.subscription_mut(id) else { return self.respond(req, 481).into() };
        if cseq <= sub.remote_cseq {
            return self.respond_with(req, 500, "CSeq Out Of Order").into();
        }
        sub.remote_cseq = cseq;
        sub.expires_at = now + Duration::from_secs(expires.into());
        let sub = sub.clone();
        let mut response = from_headers(&req.headers, 200, "OK", "");
        response.headers.set("To", sub.local_party.clone());
        response.headers.push("Expires", expires.to_string());
        response.headers.push("Contact", self.own_contact(sub.flow));
        if expires == 0 {
            log_end(&sub, flow, "unsubscribed");
            // Ended now, and on disk before the 200: a crash cannot bring back a subscription its
            // subscriber was told has ended, and no NOTIFY round can write it back meanwhile.
            // (Should the write fail, the subscriber gets a 500, and a 481 when it tries again.)
            let sub = self.presence.remove_subscription(id).expect("found above");
            let writes = vec![Write::delete(Table::Subscriptions, id)];
            let watched = (sub.package == Package::Presence).then(|| sub.resource.to_string());
            let mut after = vec![After::Ended(Box::new(sub), "timeout")];
            after.extend(watched.map(After::WatchersChanged));
            return Outcome::Respond { response, writes, after };
        }
        let writes = vec![Write::put(Table::Subscriptions, id, &sub)];
        Outcome::Respond { response, writes, after: vec![After::Notify(vec![id.to_string()], true)] }
    }
}

/// The presence-rules and contact-list API (served on the operations port). The IO layer makes
/// the change durable first, then tells the core.
impl Core {
    pub fn presence_rules(&self, aor: &str) -> state::Rules {
        self.presence.rules(aor)
    }

    pub fn contact_list(&self, aor: &str) -> Vec<String> {
        self.presence.contacts(aor)
    }

    /// Replaces a user's rules; watchers see the effect at once.
    pub fn set_presence_rules(&mut self, now: Now, aor: &str, rules: state::Rules) {
        self.presence.set_rules(aor, rules);
        let ids =
            self.presence.subscriptions_to(aor, Package::Presence).into_iter().map(|s| s.id.to_string()).collect();
        self.notify(now, ids, true, None);
        self.run_after(now, After::WatchersChanged(aor.to_string()));
    }

    /// Replaces a user's contact list; its list subscriptions get a full-state NOTIFY.
    pub fn set_contact_list(&mut self, now: Now, aor: &str, contacts: Vec<String>) {
        self.presence.set_contacts(aor, contacts);
        let ids = self.presence.subscriptions_to(aor, Package::List).into_iter().map(|s| s.id.to_string()).collect();
        self.notify(now, ids, true, None);
    }
}

/// The write that makes a user's publications durable (or deletes them when none are left).
fn publications_write(p: &PresenceState, aor: &str) -> Write {
    match p.publications_of(aor) {
        [] => Write::delete(Table::Publications, aor),
        pubs => Write::put(Table::Publications, aor, &pubs),
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
