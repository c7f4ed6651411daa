//! Things that expire, held with the soonest of their expiries beside them.

use std::time::SystemTime;

pub trait Expires {
    fn expires_at(&self) -> SystemTime;
}

/// Items with the soonest of their expiries beside them, never later than it (a change that only
/// removes items may leave it earlier). In a table of these, a sweep (`take_expired`) reads the
/// soonest in the table and follows the pointer to the items only where one may be due.
#[derive(Debug)]
pub struct Expiring<T> {
    soonest: SystemTime,
    pub items: Vec<T>,
}

impl<T: Expires> Expiring<T> {
    pub fn new(items: Vec<T>) -> Expiring<T> {
        let mut held = Expiring { soonest: SystemTime::UNIX_EPOCH, items };
        held.reckon();
        held
    }

    /// Computes the soonest again, after items were added or changed.
    pub fn reckon(&mut self) {
        self.soonest = self.items.iter().map(T::expires_at).min().unwrap_or(SystemTime::UNIX_EPOCH);
    }

    /// Takes out the items expired at `now`, in order: none, without reading them, while the
    /// soonest is still ahead.
    pub fn take_expired(&mut self, now: SystemTime) -> Vec<T> {
        if self.soonest > now {
            return Vec::new();
        }
        let expired = self.items.extract_if(.., |t| t.expires_at() <= now).collect();
        self.reckon();
        expired
    }
}
