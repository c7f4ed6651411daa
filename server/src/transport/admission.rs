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
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
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
    /// `refused / rate + 1`) it should come back.
    pub fn admit(&mut self, now: Instant) -> Result<(), u64> {
        if now.saturating_duration_since(self.second) >= Duration::from_secs(1) {
            let idle = now.saturating_duration_since(self.second) >= Duration::from_secs(2);
            self.refused_before = if idle { 0 } else { self.refused };
            self.refused = 0;
            self.second = now;
        }
        match self.bucket.take(self.rate, self.rate, now) {
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
        let admitted = (0..100).filter(|_| limit.admit(t0).is_ok()).count();
        assert_eq!(admitted, 100, "a burst of one second's worth");
        // 1,000 more at once: refused, told to come back within about 1,000 / 100 + 1 seconds,
        // spread rather than all after the same delay.
        let waits: Vec<u64> = (0..1000).map(|_| limit.admit(t0).unwrap_err()).collect();
        assert!(waits.iter().all(|w| (1..=11).contains(w)), "{waits:?}");
        assert!(waits.iter().filter(|w| **w > 5).count() > 150, "the later ones are spread wide (about 230 expected)");
        // Half a second later, half a second's worth.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..1000).filter(|_| limit.admit(t1).is_ok()).count(), 50);
        assert!(RateLimit::new(0, t0).is_none());
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
