//! Password guessing is throttled: failed authentications are counted per source address and per
//! user within a window; past a threshold the address (or, with a much higher bar, the user) is
//! locked out for a while. Locked-out attempts are not checked at all and are answered exactly as
//! a wrong password is, so a guesser learns nothing. Pure data: the caller passes the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub max_failures_per_source: u32,
    pub max_failures_per_user: u32,
    pub window: Duration,
    pub lockout: Duration,
}

#[derive(Clone, Copy, Debug, Default)]
struct Record {
    failures: u32,
    window_start: Option<SystemTime>,
    locked_until: Option<SystemTime>,
}

impl Record {
    fn locked(&self, now: SystemTime) -> bool {
        self.locked_until.is_some_and(|t| now < t)
    }

    /// Counts a failure; true when this one starts a lockout.
    fn fail(&mut self, max: u32, policy: &Policy, now: SystemTime) -> bool {
        if self.window_start.is_none_or(|s| now.duration_since(s).unwrap_or_default() >= policy.window) {
            self.window_start = Some(now);
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures >= max && !self.locked(now) {
            self.locked_until = Some(now + policy.lockout);
            self.failures = 0;
            self.window_start = None;
            return true;
        }
        false
    }

    fn stale(&self, policy: &Policy, now: SystemTime) -> bool {
        !self.locked(now)
            && self.window_start.is_none_or(|s| now.duration_since(s).unwrap_or_default() >= policy.window)
    }
}

/// What a failure led to, for the log and the metrics.
#[derive(Debug, PartialEq, Eq)]
pub enum Lockout {
    None,
    Source,
    User,
}

/// At most this many addresses and users are tracked; past it the oldest records go first.
const MAX_TRACKED: usize = 200_000;

#[derive(Debug)]
pub struct Guard {
    policy: Policy,
    sources: HashMap<IpAddr, Record>,
    users: HashMap<String, Record>,
}

impl Guard {
    pub fn new(policy: Policy) -> Guard {
        Guard { policy, sources: HashMap::new(), users: HashMap::new() }
    }

    /// Whether attempts from `source` for `user` are refused unchecked.
    pub fn locked(&self, source: IpAddr, user: &str, now: SystemTime) -> bool {
        self.sources.get(&source).is_some_and(|r| r.locked(now)) || self.users.get(user).is_some_and(|r| r.locked(now))
    }

    /// Counts a failed authentication; says whether it started a lockout.
    pub fn failed(&mut self, source: IpAddr, user: &str, now: SystemTime) -> Lockout {
        if self.sources.len() >= MAX_TRACKED || self.users.len() >= MAX_TRACKED {
            self.purge(now);
        }
        let p = self.policy;
        if self.sources.entry(source).or_default().fail(p.max_failures_per_source, &p, now) {
            return Lockout::Source;
        }
        if self.users.entry(user.to_string()).or_default().fail(p.max_failures_per_user, &p, now) {
            return Lockout::User;
        }
        Lockout::None
    }

    /// A success from `source` clears that address's count (a mistyped password is forgiven).
    pub fn succeeded(&mut self, source: IpAddr) {
        if self.sources.get(&source).is_some_and(|r| r.locked_until.is_none()) {
            self.sources.remove(&source);
        }
    }

    /// Drops records whose window and lockout are over.
    pub fn purge(&mut self, now: SystemTime) {
        let p = self.policy;
        self.sources.retain(|_, r| !r.stale(&p, now));
        self.users.retain(|_, r| !r.stale(&p, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(Policy {
            max_failures_per_source: 3,
            max_failures_per_user: 6,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
        })
    }

    const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 66));
    const ALICE_PHONE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10));

    #[test]
    fn a_guessing_address_is_locked_out_and_the_user_elsewhere_is_not() {
        let mut g = guard();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(g.failed(ATTACKER, "alice@example.test", t0), Lockout::None);
        assert_eq!(g.failed(ATTACKER, "alice@example.test", t0), Lockout::None);
        assert_eq!(g.failed(ATTACKER, "alice@example.test", t0), Lockout::Source);
        assert!(g.locked(ATTACKER, "alice@example.test", t0));
        assert!(g.locked(ATTACKER, "bob@example.test", t0), "the address, for every user");
        assert!(!g.locked(ALICE_PHONE, "alice@example.test", t0), "alice elsewhere is not locked out");
        let later = t0 + Duration::from_secs(301);
        assert!(!g.locked(ATTACKER, "alice@example.test", later), "the lockout ends");
    }

    #[test]
    fn many_addresses_guessing_one_user_lock_the_user_at_a_higher_bar() {
        let mut g = guard();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let outcomes: Vec<Lockout> = (1..=6u8)
            .map(|i| g.failed(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, i)), "alice@example.test", t0))
            .collect();
        assert_eq!(outcomes.last(), Some(&Lockout::User));
        assert!(outcomes[..5].iter().all(|o| *o == Lockout::None));
        assert!(g.locked(ALICE_PHONE, "alice@example.test", t0));
        assert!(!g.locked(ALICE_PHONE, "bob@example.test", t0));
    }

    #[test]
    fn failures_outside_the_window_and_after_a_success_do_not_add_up() {
        let mut g = guard();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        g.failed(ALICE_PHONE, "alice@example.test", t0);
        g.failed(ALICE_PHONE, "alice@example.test", t0);
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(g.failed(ALICE_PHONE, "alice@example.test", t1), Lockout::None, "a new window");
        g.succeeded(ALICE_PHONE);
        assert_eq!(g.failed(ALICE_PHONE, "alice@example.test", t1), Lockout::None);
        assert_eq!(g.failed(ALICE_PHONE, "alice@example.test", t1), Lockout::None);
        g.purge(t1 + Duration::from_secs(61));
        assert!(g.sources.is_empty(), "stale records are dropped");
    }
}
