//! Presence state without IO: publications per presentity (RFC 3903), subscriptions as dialogs
//! (RFC 6665), watcher rules and contact lists; and the documents each watcher is shown.
//!
//! Composition rule: when a user publishes from several devices, watchers see the document of
//! the most available device (open > away > busy > closed; the newest publication breaks ties).
//! A registered user who published nothing is online; a user with neither is offline.

use super::pidf;
use super::subscriptions::Subscriptions;
use crate::home::expiring::{Expires, Expiring};
use crate::transport::Flow;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    pub etag: String,
    pub body: String,
    pub expires_at: SystemTime,
    pub published_at: SystemTime,
}

/// Who may watch a user. Same-domain watchers are allowed unless blocked (as in the seed's
/// enterprise); `allow` admits watchers of other domains.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub block: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Package {
    /// `presence` for one presentity.
    Presence,
    /// `presence.winfo`: who watches the subscriber.
    Winfo,
    /// `presence` with `eventlist` for the subscriber's contact list (RFC 4662).
    List,
}

impl Package {
    pub fn event(self) -> &'static str {
        match self {
            Package::Presence | Package::List => "presence",
            Package::Winfo => "presence.winfo",
        }
    }
}

/// A subscription and the dialog it lives in. Strings are boxed (no spare capacity, 16 bytes
/// each): a Home Server holds one of these per watcher, a million of them at its largest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Subscription {
    pub id: Box<str>,
    pub package: Package,
    /// Address of record of the subscriber.
    pub watcher: Box<str>,
    /// The presentity watched, or the owner of the watched list / watcher info.
    pub resource: Box<str>,
    pub call_id: Box<str>,
    /// The subscriber's From header (our NOTIFY's To) and our To with our tag (NOTIFY's From).
    pub remote_party: Box<str>,
    pub local_party: Box<str>,
    /// `id` parameter of the Event header, echoed back.
    pub event_id: Option<Box<str>>,
    pub remote_target: Box<str>,
    pub route_set: Box<[String]>,
    pub flow: Flow,
    pub local_cseq: u32,
    pub remote_cseq: u32,
    pub expires_at: SystemTime,
    /// Version counter of winfo and RLMI documents.
    pub version: u32,
    /// For lists: the body last sent per resource, to send only what changed.
    #[serde(default)]
    pub last_sent: BTreeMap<String, String>,
}

impl Subscription {
    pub fn remaining(&self, now: SystemTime) -> u64 {
        self.expires_at.duration_since(now).unwrap_or_default().as_secs()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum PublishError {
    /// 412: SIP-If-Match names no current publication.
    UnknownEtag,
    /// 400: an initial publication without a body.
    MissingBody,
}

impl Expires for Publication {
    fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

#[derive(Debug, Default)]
pub struct PresenceState {
    /// Each presentity's publications with their soonest expiry, which the sweep reads first.
    publications: HashMap<String, Expiring<Publication>>,
    /// By id, and by the resource they watch (presence and winfo by user, lists by owner) and
    /// their package: finding a user's few winfo subscriptions among ten thousand presence
    /// subscriptions to the same user costs one lookup.
    subscriptions: Subscriptions,
    rules: HashMap<String, Rules>,
    contacts: HashMap<String, Vec<String>>,
}

impl PresenceState {
    /// Adds, refreshes, modifies or removes (expires 0) a publication; returns its entity tag.
    pub fn publish(
        &mut self,
        aor: &str,
        if_match: Option<&str>,
        body: Option<String>,
        expires: u32,
        now: SystemTime,
    ) -> Result<Option<String>, PublishError> {
        let published = self.publications.entry(aor.to_string()).or_insert_with(|| Expiring::new(Vec::new()));
        let pubs = &mut published.items;
        pubs.retain(|p| p.expires_at > now);
        let etag = format!("{:016x}", rand::random::<u64>());
        let expires_at = now + Duration::from_secs(expires.into());
        let result = match if_match {
            Some(tag) => {
                let i = pubs.iter().position(|p| p.etag == tag).ok_or(PublishError::UnknownEtag)?;
                if expires == 0 {
                    pubs.remove(i);
                    None
                } else {
                    let p = &mut pubs[i];
                    if let Some(body) = body {
                        p.body = body;
                        p.published_at = now;
                    }
                    p.etag = etag.clone();
                    p.expires_at = expires_at;
                    Some(etag)
                }
            }
            None => {
                let body = body.ok_or(PublishError::MissingBody)?;
                if expires > 0 {
                    pubs.push(Publication { etag: etag.clone(), body, expires_at, published_at: now });
                }
                Some(etag)
            }
        };
        if pubs.is_empty() {
            self.publications.remove(aor);
        } else {
            published.reckon();
        }
        Ok(result)
    }

    pub fn publications_of(&self, aor: &str) -> &[Publication] {
        self.publications.get(aor).map(|p| p.items.as_slice()).unwrap_or_default()
    }

    pub fn restore_publications(&mut self, aor: String, pubs: Vec<Publication>) {
        self.publications.insert(aor, Expiring::new(pubs));
    }

    /// Drops expired publications; returns the presentities whose state changed.
    pub fn expire_publications(&mut self, now: SystemTime) -> Vec<String> {
        let mut changed = Vec::new();
        self.publications.retain(|aor, published| {
            if !published.take_expired(now).is_empty() {
                changed.push(aor.clone());
            }
            !published.items.is_empty()
        });
        changed
    }

    /// The presentity's own composed document.
    pub fn document(&self, aor: &str, registered: bool, now: SystemTime) -> String {
        let best = self
            .publications_of(aor)
            .iter()
            .filter(|p| p.expires_at > now)
            .max_by_key(|p| (pidf::availability(&p.body), p.published_at));
        match best {
            Some(p) => p.body.clone(),
            None if registered => pidf::registered(aor),
            None => pidf::offline(aor),
        }
    }

    /// Whether `watcher` sees the real state of `aor` (else it is shown offline: polite blocking).
    pub fn may_watch(&self, aor: &str, watcher: &str, domain: &str) -> bool {
        let rules = self.rules.get(aor);
        if watcher == aor {
            return true;
        }
        if rules.is_some_and(|r| r.block.iter().any(|b| b == watcher)) {
            return false;
        }
        watcher.ends_with(&format!("@{domain}")) || rules.is_some_and(|r| r.allow.iter().any(|a| a == watcher))
    }

    /// What `watcher` is shown of `aor`: its composed `document` (computed only when needed, so a
    /// fan-out composes it once) or, for a politely blocked watcher, offline.
    pub fn view(&self, aor: &str, watcher: &str, domain: &str, document: impl FnOnce() -> String) -> String {
        if self.may_watch(aor, watcher, domain) { document() } else { pidf::offline(aor) }
    }

    pub fn rules(&self, aor: &str) -> Rules {
        self.rules.get(aor).cloned().unwrap_or_default()
    }

    pub fn set_rules(&mut self, aor: &str, rules: Rules) {
        self.rules.insert(aor.to_string(), rules);
    }

    pub fn contacts(&self, aor: &str) -> Vec<String> {
        self.contacts.get(aor).cloned().unwrap_or_default()
    }

    pub fn set_contacts(&mut self, aor: &str, contacts: Vec<String>) {
        self.contacts.insert(aor.to_string(), contacts);
    }

    /// Forgets a user's publications, rules and contact list (the user moved to another server).
    pub fn forget_user(&mut self, aor: &str) {
        self.publications.remove(aor);
        self.rules.remove(aor);
        self.contacts.remove(aor);
    }

    pub fn add_subscription(&mut self, sub: Subscription) {
        self.subscriptions.insert(sub);
    }

    pub fn subscription(&self, id: &str) -> Option<&Subscription> {
        self.subscriptions.get(id)
    }

    pub fn subscription_mut(&mut self, id: &str) -> Option<&mut Subscription> {
        self.subscriptions.get_mut(id)
    }

    pub fn remove_subscription(&mut self, id: &str) -> Option<Subscription> {
        self.subscriptions.remove(id)
    }

    /// Subscriptions whose documents change when `aor`'s presence changes: presence
    /// subscriptions to it and the lists that contain it.
    pub fn affected_by_presence(&self, aor: &str) -> Vec<String> {
        let mut ids: Vec<String> = self.subscriptions.to(aor, Package::Presence).map(|s| s.id.to_string()).collect();
        for (owner, contacts) in &self.contacts {
            if contacts.iter().any(|c| c == aor) {
                ids.extend(self.subscriptions.to(owner, Package::List).map(|s| s.id.to_string()));
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }

    /// Subscriptions of a package to a resource.
    pub fn subscriptions_to(&self, resource: &str, package: Package) -> Vec<&Subscription> {
        self.subscriptions.to(resource, package).collect()
    }

    pub fn expired_subscriptions(&mut self, now: SystemTime) -> Vec<String> {
        self.subscriptions.expired(now)
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    pub fn all_subscription_ids(&self) -> Vec<String> {
        self.subscriptions.iter().map(|s| s.id.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_compose_refresh_and_remove() {
        let mut s = PresenceState::default();
        let now = SystemTime::now();
        assert_eq!(pidf::availability(&s.document("a@x", false, now)), 0);
        assert_eq!(pidf::availability(&s.document("a@x", true, now)), 3);
        let away = "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"><basic>open</basic><rpid:away/></presence>";
        let busy = away.replace("away", "busy");
        let e1 = s.publish("a@x", None, Some(away.into()), 60, now).unwrap().unwrap();
        let e2 = s.publish("a@x", None, Some(busy.clone()), 60, now).unwrap().unwrap();
        assert_eq!(s.document("a@x", true, now), away, "the most available device wins");
        assert_eq!(s.publish("a@x", Some("nope"), None, 60, now), Err(PublishError::UnknownEtag));
        assert_eq!(s.publish("a@x", None, None, 60, now), Err(PublishError::MissingBody));
        let e1b = s.publish("a@x", Some(&e1), None, 60, now).unwrap().unwrap();
        assert_ne!(e1, e1b, "a refresh gets a new entity tag");
        assert_eq!(s.publish("a@x", Some(&e1b), None, 0, now), Ok(None));
        assert_eq!(s.document("a@x", true, now), busy);
        assert_eq!(s.expire_publications(now + Duration::from_secs(61)), vec!["a@x".to_string()]);
        let _ = e2;
        assert_eq!(s.publications_of("a@x").len(), 0);
    }

    /// The sweep skips a presentity whose soonest expiry is ahead: that soonest must follow a
    /// refresh that shortens one, a new one due sooner, and publications restored.
    #[test]
    fn the_sweep_finds_each_publication_when_it_is_due() {
        let mut s = PresenceState::default();
        let now = SystemTime::now();
        let at = |secs: u64| now + Duration::from_secs(secs);
        let doc = "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"><basic>open</basic></presence>";
        let e1 = s.publish("a@x", None, Some(doc.into()), 3600, now).unwrap().unwrap();
        s.publish("a@x", None, Some(doc.into()), 100, now).unwrap();
        assert_eq!(s.expire_publications(at(101)), ["a@x"], "a second one due sooner");
        assert_eq!(s.publications_of("a@x").len(), 1);
        s.publish("a@x", Some(&e1), None, 120, at(101)).unwrap();
        assert_eq!(s.expire_publications(at(222)), ["a@x"], "a refresh that shortened it");
        assert_eq!(s.publications_of("a@x").len(), 0);
        let restored = Publication { etag: "r".into(), body: doc.into(), expires_at: at(60), published_at: now };
        s.restore_publications("b@x".into(), vec![restored]);
        assert_eq!(s.expire_publications(at(61)), ["b@x"], "restored");
    }

    #[test]
    fn rules_allow_the_domain_and_block_politely() {
        let mut s = PresenceState::default();
        assert!(s.may_watch("a@x", "b@x", "x"));
        assert!(!s.may_watch("a@x", "m@y", "x"));
        s.set_rules("a@x", Rules { allow: vec!["m@y".into()], block: vec!["b@x".into()] });
        assert!(s.may_watch("a@x", "m@y", "x"));
        assert!(!s.may_watch("a@x", "b@x", "x"));
        let now = SystemTime::now();
        let doc = || s.document("a@x", true, now);
        assert_eq!(pidf::availability(&s.view("a@x", "b@x", "x", doc)), 0);
        assert_eq!(pidf::availability(&s.view("a@x", "c@x", "x", doc)), 3);
    }
}
