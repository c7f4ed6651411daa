//! The NOTIFYs: one round per change, composed here and sent by the core in client
//! transactions; expiry of subscriptions and publications; the state restored after a restart.

use super::state::{Package, PresenceState, Publication, Rules, Subscription};
use super::{LIST_SUFFIX, documents, log_end, publications_write};
use crate::home::core::{After, Core, Now};
use crate::home::registrar::Registrar;
use crate::sip::Message;
use crate::store::{Table, Write};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

impl Core {
    /// Sends a NOTIFY on each subscription (in order, one change at a time), ending them with
    /// `terminate` as the reason if given. `full` sends full state for lists.
    pub(in crate::home) fn notify(&mut self, now: Now, ids: Vec<String>, full: bool, terminate: Option<&str>) {
        if ids.is_empty() {
            return;
        }
        let mut outgoing = Vec::with_capacity(ids.len());
        let mut writes = Vec::with_capacity(ids.len());
        // Each presentity's document is composed once per round, however many watch it.
        let mut documents = HashMap::new();
        for id in &ids {
            let Some(mut sub) = self.presence.subscription(id).cloned() else { continue };
            let full = full || terminate.is_some();
            let (p, registrar, domain) = (&self.presence, &self.registrar, self.settings.domain.as_str());
            let Some((content_type, body)) =
                notify_body(p, registrar, domain, &mut documents, &mut sub, full, now.wall)
            else {
                continue;
            };
            sub.local_cseq += 1;
            let state = match terminate {
                Some(reason) => format!("terminated;reason={reason}"),
                None => format!("active;expires={}", sub.remaining(now.wall)),
            };
            outgoing.push((sub.id.to_string(), sub.flow, self.notify_request(&sub, &state, &content_type, body)));
            if terminate.is_some() {
                self.presence.remove_subscription(id);
                writes.push(Write::delete(Table::Subscriptions, id));
            } else {
                writes.push(Write::put(Table::Subscriptions, id, &sub));
                *self.presence.subscription_mut(id).expect("present") = sub;
            }
        }
        self.metrics.subscriptions.store(self.presence.subscription_count() as u64, Relaxed);
        // Written as they are sent, not before: a restored subscription skips ahead in CSeq (see
        // `restore_presence`), so a NOTIFY sent before its write lands is never repeated.
        self.store(None, writes);
        for (id, flow, request) in outgoing {
            self.send_notify(now, flow, request, id);
        }
    }

    /// Forgets a subscription whose subscriber is gone.
    pub(in crate::home) fn drop_subscription(&mut self, id: &str) {
        if let Some(sub) = self.presence.remove_subscription(id) {
            log_end(&sub, sub.flow, "subscriber unreachable");
            self.metrics.subscriptions.store(self.presence.subscription_count() as u64, Relaxed);
            self.store(None, vec![Write::delete(Table::Subscriptions, id)]);
        }
    }

    /// Winfo subscriptions of `aor` (its watchers changed).
    pub(in crate::home) fn winfo_subscriptions(&self, aor: &str) -> Vec<String> {
        self.presence.subscriptions_to(aor, Package::Winfo).into_iter().map(|s| s.id.to_string()).collect()
    }

    fn notify_request(&self, sub: &Subscription, state: &str, content_type: &str, body: String) -> Message {
        let mut m = Message {
            start: crate::sip::StartLine::Request { method: "NOTIFY".into(), uri: sub.remote_target.to_string() },
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
    pub(in crate::home) fn presence_sweep(&mut self, now: Now) {
        let expired = self.presence.expired_subscriptions(now.wall);
        for sub in expired.iter().filter_map(|id| self.presence.subscription(id)) {
            log_end(sub, sub.flow, "expired");
        }
        let changed = self.presence.expire_publications(now.wall);
        self.notify(now, expired, true, Some("timeout"));
        for aor in changed {
            let write = publications_write(&self.presence, &aor);
            self.store(None, vec![write]);
            self.run_after(now, After::PresenceChanged(aor));
        }
    }

    /// Takes back durable presence state (after a restart, even `kill -9`); says how many
    /// subscriptions are still live.
    pub fn restore_presence(&mut self, now: SystemTime, durable: DurablePresence) -> usize {
        let p = &mut self.presence;
        for (aor, pubs) in durable.publications {
            p.restore_publications(aor, pubs.into_iter().filter(|x| x.expires_at > now).collect());
        }
        for (aor, rules) in durable.rules {
            p.set_rules(&aor, rules);
        }
        for (aor, contacts) in durable.contacts {
            p.set_contacts(&aor, contacts);
        }
        let mut restored = 0;
        for (_, mut sub) in durable.subscriptions {
            if sub.expires_at > now {
                // NOTIFYs sent after the last durable write may have used CSeq numbers: skip past them.
                sub.local_cseq += 100;
                p.add_subscription(sub);
                restored += 1;
            }
        }
        self.metrics.subscriptions.store(restored as u64, Relaxed);
        restored
    }

    /// Ends every subscription with `reason` (graceful shutdown: subscribers re-subscribe).
    pub fn terminate_all_subscriptions(&mut self, now: Now, reason: &'static str) {
        let ids = self.presence.all_subscription_ids();
        if !ids.is_empty() {
            tracing::info!(count = ids.len(), reason, "ending every subscription");
        }
        self.notify(now, ids, true, Some(reason));
    }
}

/// The presence state kept in the store, as read at start.
#[derive(Default)]
pub struct DurablePresence {
    pub publications: Vec<(String, Vec<Publication>)>,
    pub rules: Vec<(String, Rules)>,
    pub contacts: Vec<(String, Vec<String>)>,
    pub subscriptions: Vec<(String, Subscription)>,
}

/// The NOTIFY body of a subscription, or None when a partial list update has nothing new.
fn notify_body(
    p: &PresenceState,
    registrar: &Registrar,
    domain: &str,
    docs: &mut HashMap<String, String>,
    sub: &mut Subscription,
    full: bool,
    now: SystemTime,
) -> Option<(String, String)> {
    let mut view = |aor: &str, watcher: &str| {
        p.view(aor, watcher, domain, || {
            let doc = || p.document(aor, !registrar.lookup(aor, now).is_empty(), now);
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
