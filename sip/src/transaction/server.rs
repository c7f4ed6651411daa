//! Server non-INVITE transactions (RFC 3261 17.2.2): a retransmitted request is absorbed while the
//! request is being handled and answered with the stored final response afterwards (timer J).

use super::Timers;
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

#[derive(Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// A new transaction: hand the request to the core.
    New,
    /// A retransmission while the request is still being handled: nothing to send.
    Absorbed,
    /// A retransmission after the final response: send it again.
    Resend(Bytes),
}

#[derive(Debug)]
struct Txn {
    final_response: Option<Bytes>,
    /// When this entry may be forgotten: timer J after completion, a safety bound before it.
    expires: Instant,
}

#[derive(Debug, Default)]
pub struct ServerTransactions {
    timers: Timers,
    txns: HashMap<String, Txn>,
    wakeups: BinaryHeap<Reverse<(Instant, String)>>,
}

impl ServerTransactions {
    pub fn new(timers: Timers) -> Self {
        ServerTransactions { timers, ..Default::default() }
    }

    pub fn on_request(&mut self, key: &str, now: Instant) -> ServerEvent {
        if let Some(txn) = self.txns.get(key) {
            return match &txn.final_response {
                Some(r) => ServerEvent::Resend(r.clone()),
                None => ServerEvent::Absorbed,
            };
        }
        // Bound the life of a transaction whose handler never answers (it should not happen).
        let expires = now + self.timers.transaction_timeout() * 2;
        self.txns.insert(key.to_string(), Txn { final_response: None, expires });
        self.wakeups.push(Reverse((expires, key.to_string())));
        ServerEvent::New
    }

    /// Records the final response. Over a reliable transport the transaction ends now (timer J is
    /// zero); otherwise it is kept to answer retransmissions for 64*T1.
    pub fn on_final(&mut self, key: &str, response: Bytes, reliable: bool, now: Instant) {
        if reliable {
            self.txns.remove(key);
            return;
        }
        if let Some(txn) = self.txns.get_mut(key) {
            txn.final_response = Some(response);
            txn.expires = now + self.timers.transaction_timeout();
            self.wakeups.push(Reverse((txn.expires, key.to_string())));
        }
    }

    /// Forgets transactions whose time is up; returns how many.
    pub fn on_timer(&mut self, now: Instant) -> usize {
        let mut removed = 0;
        while let Some(Reverse((at, _))) = self.wakeups.peek() {
            if *at > now {
                break;
            }
            let Reverse((at, key)) = self.wakeups.pop().expect("peeked");
            if self.txns.get(&key).is_some_and(|t| t.expires == at) {
                self.txns.remove(&key);
                removed += 1;
            }
        }
        removed
    }

    /// Transactions still being handled (no final response yet).
    pub fn in_progress(&self) -> usize {
        self.txns.values().filter(|t| t.final_response.is_none()).count()
    }

    pub fn len(&self) -> usize {
        self.txns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retransmissions_are_absorbed_then_answered_until_timer_j() {
        let mut s = ServerTransactions::new(Timers::default());
        let t0 = Instant::now();
        assert_eq!(s.on_request("k", t0), ServerEvent::New);
        assert_eq!(s.on_request("k", t0), ServerEvent::Absorbed);
        assert_eq!(s.in_progress(), 1);
        s.on_final("k", Bytes::from_static(b"200"), false, t0);
        assert_eq!(s.on_request("k", t0 + Duration::from_secs(1)), ServerEvent::Resend(Bytes::from_static(b"200")));
        assert_eq!(s.on_timer(t0 + Duration::from_secs(31)), 0);
        assert_eq!(s.on_timer(t0 + Duration::from_secs(33)), 1);
        assert_eq!(s.on_request("k", t0 + Duration::from_secs(33)), ServerEvent::New);
    }

    #[test]
    fn reliable_transactions_end_with_the_final_response() {
        let mut s = ServerTransactions::new(Timers::default());
        let t0 = Instant::now();
        s.on_request("k", t0);
        s.on_final("k", Bytes::new(), true, t0);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn unanswered_transactions_do_not_live_forever() {
        let mut s = ServerTransactions::new(Timers::default());
        let t0 = Instant::now();
        s.on_request("k", t0);
        assert_eq!(s.on_timer(t0 + Duration::from_secs(65)), 1);
    }
}
