//! Admission per source address: a token bucket per IP, refilled at `rate` messages a second up
//! to twice that. A UDP datagram over its sender's bucket is dropped before it is parsed: a flood
//! costs a receive and a hash lookup, and only the flooder's datagrams are lost (when the socket's
//! buffer overflows instead, everyone's are). A stream connection over it is read more slowly:
//! TCP's flow control pushes back on the sender and nothing queues here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many tracked addresses, those whose bucket is full again (idle) are forgotten.
const PURGE_ABOVE: usize = 65_536;

pub struct Admission {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// One token bucket: `rate` tokens a second up to `burst`. Per address here; for the whole server
/// in the Home Server's `limits.max_requests_per_second`.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(burst: f64, now: Instant) -> Bucket {
        Bucket { tokens: burst, at: now }
    }

    /// Takes a token; `Err` says how long until one is there.
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        self.take_above(0.0, rate, burst, now)
    }

    /// Takes a token only if `reserve` tokens are left after it; `Err` says how long until then.
    fn take_above(&mut self, reserve: f64, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(burst);
        self.at = now;
        if self.tokens >= 1.0 + reserve {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 + reserve - self.tokens) / rate))
        }
    }
}

impl Admission {
    /// `None` when `rate` is 0 (no limit).
    pub fn new(rate: u32) -> Option<Admission> {
        (rate > 0).then(|| Admission {
            rate: f64::from(rate),
            burst: 2.0 * f64::from(rate),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a token for a message from `ip`; `Err` says how long until one is there.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("admission");
        if buckets.len() > PURGE_ABOVE {
            let full = Duration::from_secs_f64(self.burst / self.rate);
            buckets.retain(|_, b| now.duration_since(b.at) < full);
        }
        buckets.entry(ip).or_insert(Bucket::full(self.burst, now)).take(self.rate, self.burst, now)
    }
}

/// The whole server's rate of new requests (`limits.max_requests_per_second`), for the cores: over
/// it a request is refused, and told to come back after a random number of seconds whose range
/// grows with the refusals of the last second, so a crowd coming back at once (after a restart)
/// is spread over about `crowd / rate` seconds instead of returning together. Memory is one
/// bucket: nothing queues (the queue in front of it is `max_pending_requests`).
///
/// Half the bucket is kept for requests that carry credentials: they finish a registration the
/// server already took on (its challenge), and refusing them would waste that work and send the
/// client back to the start, so a crowd would sign in at a fraction of the rate. A forged
/// Authorization header buys nothing more than a place in that half.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    bucket: Bucket,
    /// Refusals in the current second and in the one before it.
    refused: u64,
    refused_before: u64,
    second: Instant,
}

/// The longest Retry-After a rate-limited request is given.
pub const MAX_RETRY_AFTER: u64 = 60;

impl RateLimit {
    /// `None` when `rate` is 0 (no limit). The burst is one second's worth.
    pub fn new(rate: u32, now: Instant) -> Option<RateLimit> {
        (rate > 0).then(|| RateLimit {
            rate: f64::from(rate),
            bucket: Bucket::full(f64::from(rate), now),
            refused: 0,
            refused_before: 0,
            second: now,
        })
    }

    /// Admits a request, or says after how many seconds (at random, from 1 to about
    /// `refused / rate + 1`) it should come back. `finishing`: the request carries credentials.
    pub fn admit(&mut self, finishing: bool, now: Instant) -> Result<(), u64> {
        if now.saturating_duration_since(self.second) >= Duration::from_secs(1) {
            let idle = now.saturating_duration_since(self.second) >= Duration::from_secs(2);
            self.refused_before = if idle { 0 } else { self.refused };
            self.refused = 0;
            self.second = now;
        }
        let reserve = if finishing { 0.0 } else { self.rate / 2.0 };
        match self.bucket.take_above(reserve, self.rate, self.rate, now) {
            Ok(()) => Ok(()),
            Err(_) => {
                self.refused += 1;
                let crowd = self.refused.max(self.refused_before) as f64;
                let spread = ((crowd / self.rate).ceil() as u64 + 1).clamp(2, MAX_RETRY_AFTER);
                Err(rand::random_range(1..=spread))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let a = Admission::new(100).unwrap();
        let (flooder, other): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        let admitted = (0..1000).filter(|_| a.admit(flooder, t0).is_ok()).count();
        assert_eq!(admitted, 200, "the burst is twice the rate");
        let wait = a.admit(flooder, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(10), "{wait:?}");
        assert!(a.admit(other, t0).is_ok());
        // One second later: one second's worth more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..1000).filter(|_| a.admit(flooder, t1).is_ok()).count(), 100);
        assert!(Admission::new(0).is_none());
    }

    #[test]
    fn the_server_rate_admits_a_second_worth_then_spreads_the_rest() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(100, t0).unwrap();
        let fresh = (0..100).filter(|_| limit.admit(false, t0).is_ok()).count();
        assert_eq!(fresh, 50, "new requests take the half of the burst not kept for credentials");
        let finishing = (0..100).filter(|_| limit.admit(true, t0).is_ok()).count();
        assert_eq!(finishing, 50, "requests with credentials take the rest: one second's worth in all");
        // 1,000 more at once: refused, told to come back within about (50 + 1,000) / 100 + 1
        // seconds, spread rather than all after the same delay.
        let waits: Vec<u64> = (0..1000).map(|_| limit.admit(false, t0).unwrap_err()).collect();
        assert!(waits.iter().all(|w| (1..=12).contains(w)), "{waits:?}");
        assert!(waits.iter().filter(|w| **w > 5).count() > 150, "the later ones are spread wide (about 230 expected)");
        // Half a second later, half a second's worth, and new requests still only above the reserve.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..1000).filter(|_| limit.admit(false, t1).is_ok()).count(), 0);
        assert_eq!((0..1000).filter(|_| limit.admit(true, t1).is_ok()).count(), 50);
        assert!(RateLimit::new(0, t0).is_none());
    }

    #[test]
    fn a_crowd_of_new_requests_leaves_room_for_those_finishing_a_registration() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(100, t0).unwrap();
        // Every 10 ms for 10 s: 50 new requests (far over the rate) and the answers to the
        // challenges given 10 ms earlier. Every answer is taken on; the total stays at the rate.
        let (mut challenged, mut taken, mut finished, mut refused_answers) = (0, 0, 0, 0);
        for step in 1..=1000u32 {
            let now = t0 + Duration::from_millis(10 * u64::from(step));
            for _ in 0..challenged {
                match limit.admit(true, now) {
                    Ok(()) => finished += 1,
                    Err(_) => refused_answers += 1,
                }
            }
            challenged = (0..50).filter(|_| limit.admit(false, now).is_ok()).count();
            taken += challenged;
        }
        assert_eq!(refused_answers, 0);
        assert!((450..=560).contains(&finished), "about half the rate completes: {finished} in 10 s at 100/s");
        assert!(taken + finished <= 10 * 100 + 100, "at most the rate and one burst: {taken} + {finished}");
    }

    #[test]
    fn idle_addresses_are_forgotten_when_many_are_tracked() {
        let a = Admission::new(10).unwrap();
        let t0 = Instant::now();
        for i in 0..=PURGE_ABOVE as u32 {
            let _ = a.admit(IpAddr::from(i.to_be_bytes()), t0);
        }
        let _ = a.admit("192.0.2.1".parse().unwrap(), t0 + Duration::from_secs(3));
        assert!(a.buckets.lock().unwrap().len() < 10);
    }
}
