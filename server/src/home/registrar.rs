//! The registrar's bindings (RFC 3261 section 10.3) as plain data: several contacts per address
//! of record, expiry clamped to [min, max] (423 below min), `*` unregister, Call-ID/CSeq ordering.
//! No IO here; the core turns requests into `Update`s and results into responses.

use super::expiring::{Expires, Expiring};
use crate::transport::Flow;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// Contact URI as the client wrote it (the key of the binding within its address of record).
    pub uri: String,
    pub expires_at: SystemTime,
    pub call_id: String,
    pub cseq: u32,
    /// `q` parameter, kept to echo it back.
    pub q: Option<String>,
    /// The connection or address the REGISTER came over: requests for this contact go back there.
    pub flow: Flow,
    /// Path header values (RFC 3327) from the REGISTER: the Route set of requests to this contact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
}

impl Binding {
    pub fn remaining(&self, now: SystemTime) -> u64 {
        self.expires_at.duration_since(now).unwrap_or_default().as_secs()
    }
}

#[derive(Clone, Debug)]
pub enum Contacts {
    /// `Contact: *`
    Wildcard,
    /// Each contact URI with its `expires` and `q` parameters.
    List(Vec<(String, Option<u32>, Option<String>)>),
}

#[derive(Clone, Debug)]
pub struct Update {
    pub aor: String,
    pub contacts: Contacts,
    /// The Expires header, if any.
    pub expires: Option<u32>,
    pub call_id: String,
    pub cseq: u32,
    pub flow: Flow,
    pub path: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// 423 with Min-Expires.
    IntervalTooBrief(u32),
    /// 400: `*` with other contacts or a non-zero Expires.
    BadWildcard,
    /// 500: a CSeq not higher than the stored one for the same Call-ID (RFC 3261 10.3 step 7).
    OutOfOrder,
    /// 403: more contacts than an address of record may hold.
    TooManyContacts(usize),
}

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub max_contacts: usize,
    /// Granted expiries are spread over the top this-many percent of what was asked.
    pub expires_jitter_percent: u32,
}

impl Default for Policy {
    fn default() -> Self {
        let r = crate::config::Registrar::default();
        Policy {
            min_expires: r.min_expires,
            max_expires: r.max_expires,
            default_expires: r.default_expires,
            max_contacts: r.max_contacts,
            // Exact expiries unless asked for: unit tests compare them.
            expires_jitter_percent: 0,
        }
    }
}

impl Policy {
    /// The interval granted for `asked` seconds (already within [min, max]): a random value between
    /// `asked` less the jitter and `asked`, never below `min_expires` (so clients that signed in
    /// together refresh at different times). 0 stays 0.
    pub fn grant(&self, asked: u32) -> u32 {
        if asked == 0 || self.expires_jitter_percent == 0 {
            return asked;
        }
        let spread = u64::from(asked) * u64::from(self.expires_jitter_percent.min(100)) / 100;
        let low = (u64::from(asked) - spread).max(u64::from(self.min_expires.min(asked)));
        rand::random_range(low..=u64::from(asked)) as u32
    }
}

#[derive(Debug, Default)]
pub struct Registrar {
    policy: Policy,
    /// Each address of record's bindings with their soonest expiry, which the sweep every second
    /// reads first: reading every binding took 55 ms a sweep over a million of them (release
    /// build), the core held meanwhile.
    bindings: HashMap<String, Expiring<Binding>>,
    /// Bindings held, kept as they change: counting on demand walks every binding.
    count: usize,
}

impl Expires for Binding {
    fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

impl Registrar {
    pub fn new(policy: Policy) -> Registrar {
        Registrar { policy, bindings: HashMap::new(), count: 0 }
    }

    /// Applies a REGISTER; returns the address of record's bindings afterwards. All or nothing.
    pub fn register(&mut self, u: Update, now: SystemTime) -> Result<Vec<Binding>, RegisterError> {
        let p = self.policy;
        let current = self.bindings.get(&u.aor).map(|h| h.items.clone()).unwrap_or_default();
        let stale = |b: &Binding| b.call_id == u.call_id && u.cseq <= b.cseq;
        let next: Vec<Binding> = match &u.contacts {
            Contacts::Wildcard => {
                if u.expires != Some(0) {
                    return Err(RegisterError::BadWildcard);
                }
                if current.iter().any(stale) {
                    return Err(RegisterError::OutOfOrder);
                }
                Vec::new()
            }
            Contacts::List(list) => {
                let mut next: Vec<Binding> = current.into_iter().filter(|b| b.expires_at > now).collect();
                for (uri, param, q) in list {
                    let expires = param.or(u.expires).unwrap_or(p.default_expires);
                    if expires != 0 && expires < p.min_expires {
                        return Err(RegisterError::IntervalTooBrief(p.min_expires));
                    }
                    let expires = p.grant(expires.min(p.max_expires));
                    let existing = next.iter().position(|b| b.uri == *uri);
                    if existing.is_some_and(|i| stale(&next[i])) {
                        return Err(RegisterError::OutOfOrder);
                    }
                    let binding = Binding {
                        uri: uri.clone(),
                        expires_at: now + Duration::from_secs(expires.into()),
                        call_id: u.call_id.clone(),
                        cseq: u.cseq,
                        q: q.clone(),
                        flow: u.flow,
                        path: u.path.clone(),
                    };
                    match (existing, expires) {
                        (Some(i), 0) => {
                            next.remove(i);
                        }
                        (Some(i), _) => next[i] = binding,
                        (None, 0) => {}
                        (None, _) => next.push(binding),
                    }
                }
                if next.len() > p.max_contacts {
                    return Err(RegisterError::TooManyContacts(p.max_contacts));
                }
                next
            }
        };
        let before = if next.is_empty() {
            self.bindings.remove(&u.aor)
        } else {
            self.bindings.insert(u.aor, Expiring::new(next.clone()))
        };
        self.count = self.count + next.len() - before.map_or(0, |h| h.items.len());
        Ok(next)
    }

    /// Puts back bindings loaded from the store (expired ones are dropped).
    pub fn restore(&mut self, aor: String, bindings: Vec<Binding>, now: SystemTime) {
        let live: Vec<Binding> = bindings.into_iter().filter(|b| b.expires_at > now).collect();
        if !live.is_empty() {
            self.count += live.len();
            if let Some(old) = self.bindings.insert(aor, Expiring::new(live)) {
                self.count -= old.items.len();
            }
        }
    }

    /// Forgets every binding of an address of record (the user moved to another server).
    pub fn remove(&mut self, aor: &str) {
        if let Some(old) = self.bindings.remove(aor) {
            self.count -= old.items.len();
        }
    }

    /// Addresses of record with at least one binding.
    pub fn user_count(&self) -> usize {
        self.bindings.len()
    }

    /// Current (unexpired) bindings of an address of record.
    pub fn lookup(&self, aor: &str, now: SystemTime) -> Vec<Binding> {
        let held = self.bindings.get(aor);
        held.map(|h| h.items.iter().filter(|b| b.expires_at > now).cloned().collect()).unwrap_or_default()
    }

    /// Removes expired bindings; returns the addresses of record that lost their last binding,
    /// and each removed binding with its address of record.
    pub fn expire(&mut self, now: SystemTime) -> (Vec<String>, Vec<(String, Binding)>) {
        let mut emptied = Vec::new();
        let mut removed = Vec::new();
        let count = &mut self.count;
        self.bindings.retain(|aor, held| {
            let expired = held.take_expired(now);
            *count -= expired.len();
            removed.extend(expired.into_iter().map(|b| (aor.clone(), b)));
            if held.items.is_empty() {
                emptied.push(aor.clone());
            }
            !held.items.is_empty()
        });
        (emptied, removed)
    }

    /// Number of bindings held.
    pub fn binding_count(&self) -> usize {
        debug_assert_eq!(self.count, self.bindings.values().map(|h| h.items.len()).sum::<usize>());
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Flow, Transport};

    fn flow() -> Flow {
        Flow::datagram(Transport::Udp, "127.0.0.1:5070".parse().unwrap())
    }

    fn update(contacts: Contacts, expires: Option<u32>, call_id: &str, cseq: u32) -> Update {
        Update {
            aor: "alice@example.test".into(),
            contacts,
            expires,
            call_id: call_id.into(),
            cseq,
            flow: flow(),
            path: vec![],
        }
    }

    fn list(uris: &[(&str, Option<u32>)]) -> Contacts {
        Contacts::List(uris.iter().map(|(u, e)| (u.to_string(), *e, None)).collect())
    }

    /// The sweep skips an address of record whose soonest expiry is still ahead: that soonest
    /// must follow every change, down as well as up, or a due binding would outlive its expiry.
    #[test]
    fn the_sweep_finds_each_binding_when_it_is_due() {
        let mut r = Registrar::new(Policy::default());
        let now = SystemTime::now();
        let at = |s: u64| now + Duration::from_secs(s);
        let uris = |(_, removed): (Vec<String>, Vec<(String, Binding)>)| {
            removed.into_iter().map(|(_, b)| b.uri).collect::<Vec<_>>()
        };
        r.register(update(list(&[("sip:a@1", Some(3600))]), None, "c", 1), now).unwrap();
        r.register(update(list(&[("sip:a@2", Some(100))]), None, "c", 2), now).unwrap();
        assert_eq!(uris(r.expire(at(101))), ["sip:a@2"], "a later contact with a sooner expiry");
        r.register(update(list(&[("sip:a@1", Some(120))]), None, "c", 3), at(101)).unwrap();
        assert_eq!(uris(r.expire(at(222))), ["sip:a@1"], "a refresh that shortened the expiry");
        r.restore("bob@example.test".into(), vec![r_binding("sip:b@1", at(300)), r_binding("sip:b@2", at(60))], now);
        assert_eq!(uris(r.expire(at(61))), ["sip:b@2"], "restored bindings");
        assert_eq!(uris(r.expire(at(301))), ["sip:b@1"]);
        assert_eq!(r.binding_count(), 0);
    }

    fn r_binding(uri: &str, expires_at: SystemTime) -> Binding {
        Binding { uri: uri.into(), expires_at, call_id: "r".into(), cseq: 1, q: None, flow: flow(), path: vec![] }
    }

    #[test]
    fn several_contacts_expiry_and_clamping() {
        let mut r = Registrar::new(Policy::default());
        let now = SystemTime::now();
        let b = r.register(update(list(&[("sip:a@1", None), ("sip:a@2", Some(99_999))]), None, "c", 1), now).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].remaining(now), 3600);
        assert_eq!(b[1].remaining(now), 7200);
        assert_eq!(
            r.register(update(list(&[("sip:a@3", Some(10))]), None, "c", 2), now),
            Err(RegisterError::IntervalTooBrief(60))
        );
        assert_eq!(r.lookup("alice@example.test", now).len(), 2, "a refused request changes nothing");
        let later = now + Duration::from_secs(3601);
        assert_eq!(r.lookup("alice@example.test", later).len(), 1);
        let uris = |removed: Vec<(String, Binding)>| removed.into_iter().map(|(a, b)| (a, b.uri)).collect::<Vec<_>>();
        let (emptied, removed) = r.expire(later);
        assert!(emptied.is_empty());
        assert_eq!(uris(removed), vec![("alice@example.test".to_string(), "sip:a@1".to_string())]);
        let (emptied, removed) = r.expire(now + Duration::from_secs(7201));
        assert_eq!(emptied, vec!["alice@example.test".to_string()]);
        assert_eq!(uris(removed), vec![("alice@example.test".to_string(), "sip:a@2".to_string())]);
        assert_eq!(r.binding_count(), 0);
    }

    #[test]
    fn ordering_refresh_and_removal() {
        let mut r = Registrar::new(Policy::default());
        let now = SystemTime::now();
        r.register(update(list(&[("sip:a@1", None)]), Some(120), "c", 5), now).unwrap();
        assert_eq!(
            r.register(update(list(&[("sip:a@1", None)]), Some(120), "c", 5), now),
            Err(RegisterError::OutOfOrder)
        );
        let b = r.register(update(list(&[("sip:a@1", None)]), Some(300), "c", 6), now).unwrap();
        assert_eq!(b[0].remaining(now), 300);
        let b = r.register(update(list(&[("sip:a@1", Some(0))]), None, "c", 7), now).unwrap();
        assert!(b.is_empty());
    }

    #[test]
    fn wildcard_needs_expires_zero() {
        let mut r = Registrar::new(Policy::default());
        let now = SystemTime::now();
        r.register(update(list(&[("sip:a@1", None), ("sip:a@2", None)]), None, "c", 1), now).unwrap();
        assert_eq!(r.register(update(Contacts::Wildcard, None, "d", 1), now), Err(RegisterError::BadWildcard));
        assert_eq!(r.register(update(Contacts::Wildcard, Some(0), "d", 1), now), Ok(vec![]));
        assert!(r.lookup("alice@example.test", now).is_empty());
    }

    #[test]
    fn contact_limit() {
        let mut r = Registrar::new(Policy { max_contacts: 1, ..Policy::default() });
        let now = SystemTime::now();
        assert_eq!(
            r.register(update(list(&[("sip:a@1", None), ("sip:a@2", None)]), None, "c", 1), now),
            Err(RegisterError::TooManyContacts(1))
        );
    }

    #[test]
    fn granted_expiries_are_spread_within_the_jitter_and_never_below_min_expires() {
        let p = Policy { expires_jitter_percent: 20, ..Policy::default() };
        let grants: Vec<u32> = (0..2000).map(|_| p.grant(3600)).collect();
        assert!(grants.iter().all(|g| (2880..=3600).contains(g)), "between 80% and 100%");
        let distinct: std::collections::HashSet<_> = grants.iter().collect();
        assert!(distinct.len() > 500, "spread, not a few values: {}", distinct.len());
        assert!((0..200).all(|_| p.grant(60) == 60), "min_expires is never undercut");
        assert!((0..200).all(|_| (60..=70).contains(&p.grant(70))));
        assert_eq!(p.grant(0), 0);
        assert_eq!(Policy::default().grant(3600), 3600);
    }
}
