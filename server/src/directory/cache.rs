//! A time-bounded answer cache: remembers lookups (including "no such user") for a short time so
//! that a burst of requests for one user costs one directory round trip.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TtlCache<V> {
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        TtlCache { ttl, max_entries, entries: Mutex::new(HashMap::new()) }
    }

    pub fn get(&self, key: &str) -> Option<V> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().expect("cache");
        entries.get(key).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, v)| v.clone())
    }

    pub fn forget(&self, key: &str) {
        self.entries.lock().expect("cache").remove(key);
    }

    pub fn put(&self, key: &str, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("cache");
        if entries.len() >= self.max_entries {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if entries.len() >= self.max_entries {
                entries.clear();
            }
        }
        entries.insert(key.to_string(), (Instant::now(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_size_is_bounded() {
        let c = TtlCache::new(Duration::from_millis(50), 2);
        c.put("a", 1);
        assert_eq!(c.get("a"), Some(1));
        c.put("b", 2);
        c.put("c", 3); // full: nothing expired, so it starts over
        assert_eq!((c.get("a"), c.get("c")), (None, Some(3)));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get("c"), None);
        let off = TtlCache::new(Duration::ZERO, 2);
        off.put("a", 1);
        assert_eq!(off.get("a"), None);
    }
}
