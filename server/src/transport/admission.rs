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

struct Bucket {
    tokens: f64,
    at: Instant,
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
        let bucket = buckets.entry(ip).or_insert(Bucket { tokens: self.burst, at: now });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
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
