//! Messages for a user with no registered device (store and forward). A MESSAGE to a known,
//! enabled user of this server who has no binding is kept in the store (table `Offline`, key
//! `<aor>\0<sequence>`) and answered `202 Accepted` once it is durable; when the user next
//! registers, the kept messages are sent to the new bindings one at a time, oldest first, each
//! with its original From, To, Content-Type and body and a `Date` header saying when it was sent.
//! A message is deleted (durably) when a device answers it 2xx, and only then is the next one
//! sent; a message no device takes stays for the next registration. Bounded per user and in
//! total (over either bound: the old `480`), dropped at its expiry.

use super::core::{Core, Now, Outcome, Waiter};
use crate::sip::Message;
use crate::store::{Table, Write};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

/// A kept message, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub aor: String,
    pub seq: u64,
    /// The From and To headers as the sender wrote them (tags included).
    pub from: String,
    pub to: String,
    pub sent_at: SystemTime,
    pub content_type: Option<String>,
    /// The body (a MESSAGE body that is not UTF-8 is not kept: 480 as before).
    pub body: String,
}

impl Kept {
    pub fn key(aor: &str, seq: u64) -> String {
        format!("{aor}\u{0}{seq:020}")
    }
}

/// Messages kept per user, and the delivery under way per user (one at a time, in order).
#[derive(Debug, Default)]
pub struct OfflineQueue {
    queues: HashMap<String, VecDeque<Kept>>,
    total: usize,
    next_seq: u64,
    /// The message being delivered to a user: its sequence number, branches not yet answered.
    in_flight: HashMap<String, (u64, usize)>,
}

impl OfflineQueue {
    /// The queue the store kept (entries in key order, so each user's oldest first).
    pub fn restore(kept: Vec<(String, Kept)>) -> OfflineQueue {
        let mut q = OfflineQueue::default();
        let mut sorted: BTreeMap<(String, u64), Kept> = BTreeMap::new();
        for (_, k) in kept {
            sorted.insert((k.aor.clone(), k.seq), k);
        }
        for ((aor, seq), k) in sorted {
            q.next_seq = q.next_seq.max(seq + 1);
            q.queues.entry(aor).or_default().push_back(k);
            q.total += 1;
        }
        q
    }

    pub fn total(&self) -> usize {
        self.total
    }

    #[cfg(test)]
    pub fn queues_for_tests(&self, aor: &str) -> Vec<Kept> {
        self.queues.get(aor).map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }

    pub fn pending(&self, aor: &str) -> usize {
        self.queues.get(aor).map_or(0, VecDeque::len)
    }

    fn push(&mut self, k: Kept) {
        self.queues.entry(k.aor.clone()).or_default().push_back(k);
        self.total += 1;
    }

    /// Removes a user's message by sequence number; whether it was there.
    fn remove(&mut self, aor: &str, seq: u64) -> bool {
        let Some(q) = self.queues.get_mut(aor) else { return false };
        let Some(i) = q.iter().position(|k| k.seq == seq) else { return false };
        q.remove(i);
        self.total -= 1;
        if q.is_empty() {
            self.queues.remove(aor);
        }
        true
    }

    /// Takes every message kept for `aor` (moved to another Home Server, or replaced).
    pub(super) fn take_user(&mut self, aor: &str) -> Vec<Kept> {
        self.in_flight.remove(aor);
        let gone: Vec<Kept> = self.queues.remove(aor).map(Vec::from).unwrap_or_default();
        self.total -= gone.len();
        gone
    }

    /// Holds a moved user's messages (oldest first) instead of any they had here.
    pub(super) fn install_user(&mut self, aor: &str, kept: Vec<Kept>) {
        self.take_user(aor);
        for k in kept {
            self.next_seq = self.next_seq.max(k.seq + 1);
            self.push(Kept { aor: aor.to_string(), ..k });
        }
    }

    /// Removes every message kept before `cutoff`; returns them.
    fn expire(&mut self, cutoff: SystemTime) -> Vec<Kept> {
        let mut gone = Vec::new();
        self.queues.retain(|_, q| {
            while q.front().is_some_and(|k| k.sent_at < cutoff) {
                gone.extend(q.pop_front());
            }
            !q.is_empty()
        });
        self.total -= gone.len();
        gone
    }
}

impl Core {
    /// A MESSAGE for `aor`, who has no binding: keep it (202) or, over a bound, 480.
    pub(super) fn keep_for_later(&mut self, now: Now, req: &Message, aor: &str) -> Outcome {
        let policy = &self.settings.offline;
        let full = self.offline.pending(aor) >= policy.max_per_user || self.offline.total() >= policy.max_total;
        let body = String::from_utf8(req.body.to_vec());
        let (Ok(body), false, true) = (body, full, policy.enabled) else {
            return self.respond(req, 480).into();
        };
        let seq = self.offline.next_seq;
        self.offline.next_seq += 1;
        let kept = Kept {
            aor: aor.to_string(),
            seq,
            from: req.headers.get("From").unwrap_or_default().to_string(),
            to: req.headers.get("To").unwrap_or_default().to_string(),
            sent_at: now.wall,
            content_type: req.headers.get("Content-Type").map(str::to_string),
            body,
        };
        let write = Write::put(Table::Offline, Kept::key(aor, seq), &kept);
        self.offline.push(kept);
        self.metrics.offline_stored.fetch_add(1, Relaxed);
        self.metrics.offline_held.store(self.offline.total() as u64, Relaxed);
        tracing::debug!(user = aor, seq, "message kept for a user with no device");
        Outcome::Respond { response: self.respond(req, 202), writes: vec![write], after: vec![] }
    }

    /// Sends a user's oldest kept message to its bindings, unless one is already on its way.
    pub(super) fn deliver_kept(&mut self, now: Now, aor: &str) {
        if self.offline.in_flight.contains_key(aor) {
            return;
        }
        let Some(kept) = self.offline.queues.get(aor).and_then(|q| q.front()).cloned() else { return };
        let bindings = self.registrar.lookup(aor, now.wall);
        if bindings.is_empty() {
            return;
        }
        self.offline.in_flight.insert(aor.to_string(), (kept.seq, bindings.len()));
        for b in bindings {
            let mut req = Message {
                start: crate::sip::StartLine::Request { method: "MESSAGE".into(), uri: b.uri.clone() },
                headers: Default::default(),
                body: kept.body.clone().into(),
            };
            for p in &b.path {
                req.headers.push("Route", p.clone());
            }
            req.headers.push("From", kept.from.clone());
            req.headers.push("To", kept.to.clone());
            // The same for every attempt at this message: a device that got it before a restart
            // can tell it again.
            let sent = kept.sent_at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis();
            req.headers.push("Call-ID", format!("kept-{}-{sent}@parley", kept.seq));
            req.headers.push("CSeq", "1 MESSAGE");
            req.headers.push("Max-Forwards", "70");
            req.headers.push("Date", http_date(kept.sent_at));
            if let Some(ct) = &kept.content_type {
                req.headers.push("Content-Type", ct.clone());
            }
            self.start_request(now, b.flow, req, Waiter::Kept(aor.to_string(), kept.seq));
        }
    }

    /// A device's answer (or none) to a kept message: the first 2xx deletes it and sends the next;
    /// when every device has failed, the rest wait for the next registration.
    pub(super) fn kept_answered(&mut self, now: Now, aor: String, seq: u64, answer: Option<&Message>) {
        let Some((current, outstanding)) = self.offline.in_flight.get_mut(&aor) else { return };
        if *current != seq {
            return; // a late branch of a message already delivered
        }
        *outstanding -= 1;
        let ok = answer.and_then(Message::status).is_some_and(|c| (200..300).contains(&c));
        if ok {
            self.offline.in_flight.remove(&aor);
            if self.offline.remove(&aor, seq) {
                self.metrics.offline_delivered.fetch_add(1, Relaxed);
                self.metrics.offline_held.store(self.offline.total() as u64, Relaxed);
                tracing::debug!(user = %aor, seq, "kept message delivered");
                // Deleted before the next is sent: the store commits in order, so a restart never
                // finds a later message gone and an earlier one still there.
                self.store(None, vec![Write::delete(Table::Offline, Kept::key(&aor, seq))]);
            }
            self.deliver_kept(now, &aor);
        } else if *outstanding == 0 {
            self.offline.in_flight.remove(&aor);
        }
    }

    /// Drops kept messages older than the expiry.
    pub(super) fn expire_kept(&mut self, now: Now) {
        let expiry = Duration::from_secs(self.settings.offline.expiry_secs);
        let Some(cutoff) = now.wall.checked_sub(expiry) else { return };
        let gone = self.offline.expire(cutoff);
        if gone.is_empty() {
            return;
        }
        for k in &gone {
            tracing::info!(user = %k.aor, seq = k.seq, "kept message expired undelivered");
            if self.offline.in_flight.get(&k.aor).is_some_and(|(s, _)| *s == k.seq) {
                self.offline.in_flight.remove(&k.aor);
            }
        }
        self.metrics.offline_expired.fetch_add(gone.len() as u64, Relaxed);
        self.metrics.offline_held.store(self.offline.total() as u64, Relaxed);
        let writes = gone.iter().map(|k| Write::delete(Table::Offline, Kept::key(&k.aor, k.seq))).collect();
        self.store(None, writes);
    }

    /// Users with kept messages and a binding now (after a restart, for instance).
    pub(super) fn deliver_all_kept(&mut self, now: Now) {
        let users: Vec<String> = self.offline.queues.keys().cloned().collect();
        for aor in users {
            self.deliver_kept(now, &aor);
        }
    }
}

/// An HTTP-date (RFC 7231 7.1.1.1), as SIP's Date header wants (RFC 3261 20.17).
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][month as usize - 1];
    format!("{weekday}, {day:02} {name} {year} {:02}:{:02}:{:02} GMT", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(http_date(SystemTime::UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(http_date(t), "Thu, 29 Feb 2024 12:34:56 GMT");
    }

    #[test]
    fn restore_orders_each_users_messages_and_continues_the_sequence() {
        let k = |aor: &str, seq| Kept {
            aor: aor.into(),
            seq,
            from: String::new(),
            to: String::new(),
            sent_at: SystemTime::UNIX_EPOCH,
            content_type: None,
            body: format!("{seq}"),
        };
        let q = OfflineQueue::restore(vec![
            (Kept::key("b@x", 3), k("b@x", 3)),
            (Kept::key("a@x", 10), k("a@x", 10)),
            (Kept::key("a@x", 2), k("a@x", 2)),
        ]);
        assert_eq!(q.total(), 3);
        assert_eq!(q.next_seq, 11);
        assert_eq!(q.queues["a@x"].iter().map(|k| k.seq).collect::<Vec<_>>(), vec![2, 10]);
        assert!(Kept::key("a@x", 2) < Kept::key("a@x", 10), "keys sort in sequence order");
    }
}
