//! Server non-INVITE transactions (RFC 3261 17.2.2): a retransmitted request is absorbed while the
//! request is being handled and answered with the stored final response afterwards (timer J).

use super::Timers;
use crate::hashing::TrustedKeyMap;
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Instant;

/// A transaction's identity: 128 bits of keyed hash over what identifies it (branch, sent-by,
/// method), not the text itself. A completed transaction is kept 32 s, so at a few thousand
/// requests a second hundreds of thousands are held; three owned copies of a 70-byte key each
/// (map, two timer entries) were a third of their memory. The hash keys are random per process,
/// so no peer can aim two requests at one entry; an accidental collision among a million entries
/// has a chance of about 2^-88.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxnKey(u128);

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
    txns: TrustedKeyMap<TxnKey, Txn>,
    wakeups: BinaryHeap<Reverse<(Instant, TxnKey)>>,
    /// Two independently keyed hashers: 64 bits each.
    hashers: [RandomState; 2],
}

impl ServerTransactions {
    pub fn new(timers: Timers) -> Self {
        ServerTransactions { timers, ..Default::default() }
    }

    /// The key of the transaction identified by `parts` (order matters, boundaries count).
    pub fn key(&self, parts: &[&[u8]]) -> TxnKey {
        // The parts joined, each followed by 0xff (never in UTF-8 text: "ab","c" and "a","bc"
        // differ), and hashed in one write: fed piece by piece, SipHash's bookkeeping for each
        // write cost more than its rounds (callgrind). On the stack when they fit, as they do.
        let len: usize = parts.iter().map(|p| p.len() + 1).sum();
        let (mut stack, mut heap) = ([0u8; 256], Vec::new());
        let joined = if len <= stack.len() {
            &mut stack[..len]
        } else {
            heap.resize(len, 0);
            &mut heap[..]
        };
        let mut at = 0;
        for p in parts {
            joined[at..at + p.len()].copy_from_slice(p);
            joined[at + p.len()] = 0xff;
            at += p.len() + 1;
        }
        let [a, b] = self.hashers.each_ref().map(|h| {
            let mut h = h.build_hasher();
            h.write(joined);
            h.finish()
        });
        TxnKey((a as u128) << 64 | b as u128)
    }

    pub fn on_request(&mut self, key: TxnKey, now: Instant) -> ServerEvent {
        if let Some(txn) = self.txns.get(&key) {
            return match &txn.final_response {
                Some(r) => ServerEvent::Resend(r.clone()),
                None => ServerEvent::Absorbed,
            };
        }
        // Bound the life of a transaction whose handler never answers (it should not happen).
        let expires = now + self.timers.transaction_timeout() * 2;
        self.txns.insert(key, Txn { final_response: None, expires });
        self.wakeups.push(Reverse((expires, key)));
        ServerEvent::New
    }

    /// Records the final response. With `keep` it is kept to answer retransmissions for 64*T1;
    /// without (a reliable transport, where timer J is zero, or an answer the caller would rather
    /// give again than hold) the transaction ends now.
    pub fn on_final(&mut self, key: TxnKey, response: Bytes, keep: bool, now: Instant) {
        if !keep {
            self.txns.remove(&key);
            return;
        }
        if let Some(txn) = self.txns.get_mut(&key) {
            txn.final_response = Some(response);
            txn.expires = now + self.timers.transaction_timeout();
            self.wakeups.push(Reverse((txn.expires, key)));
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
        let k = s.key(&[b"z9hG4bK1", b"10.0.0.1"]);
        assert_eq!(s.on_request(k, t0), ServerEvent::New);
        assert_eq!(s.on_request(k, t0), ServerEvent::Absorbed);
        assert_eq!(s.on_request(s.key(&[b"z9hG4bK1", b"10.0.0.2"]), t0), ServerEvent::New);
        assert_eq!(s.in_progress(), 2);
        s.on_final(k, Bytes::from_static(b"200"), true, t0);
        assert_eq!(s.on_request(k, t0 + Duration::from_secs(1)), ServerEvent::Resend(Bytes::from_static(b"200")));
        assert_eq!(s.on_timer(t0 + Duration::from_secs(31)), 0);
        assert_eq!(s.on_timer(t0 + Duration::from_secs(33)), 1);
        assert_eq!(s.on_request(k, t0 + Duration::from_secs(33)), ServerEvent::New);
    }

    #[test]
    fn transactions_not_kept_end_with_the_final_response() {
        let mut s = ServerTransactions::new(Timers::default());
        let t0 = Instant::now();
        let k = s.key(&[b"k"]);
        s.on_request(k, t0);
        s.on_final(k, Bytes::new(), false, t0);
        assert_eq!(s.len(), 0);
        assert_eq!(s.on_request(k, t0), ServerEvent::New);
    }

    #[test]
    fn keys_depend_on_every_part_and_where_parts_end() {
        let s = ServerTransactions::new(Timers::default());
        assert_eq!(s.key(&[b"ab", b"c"]), s.key(&[b"ab", b"c"]));
        assert_ne!(s.key(&[b"ab", b"c"]), s.key(&[b"a", b"bc"]));
        assert_ne!(s.key(&[b"ab", b"c"]), s.key(&[b"ab", b"d"]));
        let long = [b"x".repeat(300), b"y".repeat(10)];
        let long: Vec<&[u8]> = long.iter().map(Vec::as_slice).collect();
        assert_eq!(s.key(&long), s.key(&long), "parts too long for the stack are keyed alike");
        assert_ne!(s.key(&long), s.key(&long[..1]));
        let other = ServerTransactions::new(Timers::default());
        assert_ne!(s.key(&[b"ab"]), other.key(&[b"ab"]), "keyed per process");
    }

    #[test]
    fn unanswered_transactions_do_not_live_forever() {
        let mut s = ServerTransactions::new(Timers::default());
        let t0 = Instant::now();
        s.on_request(s.key(&[b"k"]), t0);
        assert_eq!(s.on_timer(t0 + Duration::from_secs(65)), 1);
    }
}
