//! The subscriptions a Home Server holds, stored compactly: with a million users each watching
//! someone, this is the server's largest holding. Each subscription is boxed in a slot of a slab;
//! the two indexes hold slot numbers (4 bytes), not copies of ids and addresses:
//! - by id, a hash table of slots (the id is read from the slot);
//! - by resource and package, an ordered set of (hash of resource and package, slot), so that a
//!   resource's subscriptions are one range and a resource with one watcher costs one entry,
//!   not a set of its own. Hashes that collide are told apart by reading the slots.
//!
//! A hash map of ids to subscriptions held inline cost about three times as much per
//! subscription (its table doubles past 7/8 load, and the value is a few hundred bytes).

use super::state::{Package, Subscription};
use hashbrown::HashTable;
use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::time::SystemTime;

type Slot = u32;

#[derive(Default)]
pub struct Subscriptions {
    slots: Vec<Option<Box<Subscription>>>,
    /// By slot, the soonest its subscription can expire: its expiry when inserted, the epoch
    /// once it was handed out to be changed (the next sweep reads it again). The sweep every
    /// second reads this array and follows a slot's pointer only where it is due: reading every
    /// subscription took a cache miss each, with the core held.
    due: Vec<SystemTime>,
    free: Vec<Slot>,
    by_id: HashTable<Slot>,
    by_resource: BTreeSet<(u64, Slot)>,
    hasher: RandomState,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions").field("len", &self.len()).finish()
    }
}

impl Subscriptions {
    fn id_hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    fn resource_hash(&self, resource: &str, package: Package) -> u64 {
        self.hasher.hash_one((resource, package))
    }

    fn at(&self, slot: Slot) -> &Subscription {
        self.slots[slot as usize].as_deref().expect("indexed slots are occupied")
    }

    fn slot_of(&self, id: &str) -> Option<Slot> {
        self.by_id.find(self.id_hash(id), |&s| *self.at(s).id == *id).copied()
    }

    /// Adds a subscription, replacing one with the same id.
    pub fn insert(&mut self, sub: Subscription) {
        if let Some(slot) = self.slot_of(&sub.id) {
            let old = self.at(slot);
            let old_key = self.resource_hash(&old.resource, old.package);
            self.by_resource.remove(&(old_key, slot));
            self.by_resource.insert((self.resource_hash(&sub.resource, sub.package), slot));
            self.due[slot as usize] = sub.expires_at;
            self.slots[slot as usize] = Some(Box::new(sub));
            return;
        }
        let (id_hash, key) = (self.id_hash(&sub.id), self.resource_hash(&sub.resource, sub.package));
        let slot = match self.free.pop() {
            Some(slot) => {
                self.due[slot as usize] = sub.expires_at;
                self.slots[slot as usize] = Some(Box::new(sub));
                slot
            }
            None => {
                self.due.push(sub.expires_at);
                self.slots.push(Some(Box::new(sub)));
                Slot::try_from(self.slots.len() - 1).expect("fewer than 4 billion subscriptions")
            }
        };
        let Self { slots, by_id, hasher, .. } = self;
        let rehash = |&s: &Slot| hasher.hash_one(&*slots[s as usize].as_ref().expect("occupied").id);
        by_id.insert_unique(id_hash, slot, rehash);
        self.by_resource.insert((key, slot));
    }

    pub fn get(&self, id: &str) -> Option<&Subscription> {
        self.slot_of(id).map(|s| self.at(s))
    }

    /// The subscription to change; its id, resource and package must stay as they are (they are
    /// indexed).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Subscription> {
        let slot = self.slot_of(id)?;
        self.due[slot as usize] = SystemTime::UNIX_EPOCH;
        self.slots[slot as usize].as_deref_mut()
    }

    pub fn remove(&mut self, id: &str) -> Option<Subscription> {
        let hash = self.id_hash(id);
        let Self { slots, by_id, .. } = self;
        let entry = by_id.find_entry(hash, |&s| *slots[s as usize].as_ref().expect("occupied").id == *id).ok()?;
        let (slot, _) = entry.remove();
        let sub = self.slots[slot as usize].take().expect("indexed slots are occupied");
        self.by_resource.remove(&(self.resource_hash(&sub.resource, sub.package), slot));
        self.free.push(slot);
        Some(*sub)
    }

    /// Subscriptions of a package to a resource.
    pub fn to(&self, resource: &str, package: Package) -> impl Iterator<Item = &Subscription> {
        let key = self.resource_hash(resource, package);
        self.by_resource
            .range((key, 0)..=(key, Slot::MAX))
            .map(|&(_, slot)| self.at(slot))
            .filter(move |s| s.package == package && *s.resource == *resource)
    }

    /// Ids of the subscriptions expired at `now`.
    pub fn expired(&mut self, now: SystemTime) -> Vec<String> {
        let mut expired = Vec::new();
        for (due, slot) in self.due.iter_mut().zip(&self.slots) {
            if *due > now {
                continue;
            }
            if let Some(sub) = slot {
                if sub.expires_at <= now {
                    expired.push(sub.id.to_string());
                } else {
                    *due = sub.expires_at;
                }
            }
        }
        expired
    }

    pub fn iter(&self) -> impl Iterator<Item = &Subscription> {
        self.slots.iter().filter_map(|s| s.as_deref())
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Flow, Transport};

    fn sub(id: &str, resource: &str, package: Package) -> Subscription {
        Subscription {
            id: id.into(),
            package,
            watcher: "w@x".into(),
            resource: resource.into(),
            call_id: id.into(),
            remote_party: "".into(),
            local_party: "".into(),
            event_id: None,
            remote_target: "".into(),
            route_set: Box::default(),
            flow: Flow::datagram(Transport::Udp, "127.0.0.1:5060".parse().unwrap()),
            local_cseq: 0,
            remote_cseq: 0,
            expires_at: SystemTime::UNIX_EPOCH,
            version: 0,
            last_sent: Default::default(),
        }
    }

    fn ids<'a>(it: impl Iterator<Item = &'a Subscription>) -> Vec<&'a str> {
        let mut v: Vec<&str> = it.map(|s| &*s.id).collect();
        v.sort();
        v
    }

    #[test]
    fn finds_by_id_and_by_resource_through_removals_and_reused_slots() {
        let mut s = Subscriptions::default();
        s.insert(sub("1", "a@x", Package::Presence));
        s.insert(sub("2", "a@x", Package::Presence));
        s.insert(sub("3", "a@x", Package::Winfo));
        s.insert(sub("4", "b@x", Package::Presence));
        assert_eq!(ids(s.to("a@x", Package::Presence)), ["1", "2"]);
        assert_eq!(ids(s.to("a@x", Package::Winfo)), ["3"]);
        assert_eq!(s.remove("1").map(|s| s.id), Some("1".into()));
        assert!(s.remove("1").is_none() && s.get("1").is_none());
        s.insert(sub("5", "b@x", Package::Presence));
        assert_eq!(s.slots.len(), 4, "the freed slot is reused");
        assert_eq!(ids(s.to("a@x", Package::Presence)), ["2"]);
        assert_eq!(ids(s.to("b@x", Package::Presence)), ["4", "5"]);
        // Replacing keeps one entry and moves its index entry to the new resource.
        s.insert(sub("2", "b@x", Package::Presence));
        assert_eq!(s.len(), 4);
        assert_eq!(ids(s.to("a@x", Package::Presence)), Vec::<&str>::new());
        assert_eq!(ids(s.to("b@x", Package::Presence)), ["2", "4", "5"]);
        s.get_mut("4").unwrap().local_cseq = 7;
        assert_eq!(s.get("4").unwrap().local_cseq, 7);
        assert_eq!(ids(s.iter()), ["2", "3", "4", "5"]);
    }

    /// The sweep reads a subscription only when its slot may be due: a change through `get_mut`
    /// (a refresh, shorter or longer) must be seen, or a subscription would outlive its expiry.
    #[test]
    fn the_sweep_finds_each_subscription_when_it_is_due() {
        let at = |s: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + s);
        let with_expiry = |id: &str, s: u64| Subscription { expires_at: at(s), ..sub(id, "a@x", Package::Presence) };
        let mut s = Subscriptions::default();
        s.insert(with_expiry("1", 100));
        s.insert(with_expiry("2", 200));
        s.insert(with_expiry("3", 300));
        assert_eq!(s.expired(at(50)), Vec::<String>::new());
        s.get_mut("3").unwrap().expires_at = at(60);
        s.get_mut("1").unwrap().expires_at = at(400);
        assert_eq!(s.expired(at(150)), ["3"], "a refresh that shortened one and lengthened another");
        s.remove("3");
        assert_eq!(s.expired(at(250)), ["2"]);
        s.remove("2");
        s.insert(with_expiry("4", 10));
        assert_eq!(s.expired(at(250)), ["4"], "a reused slot");
        assert_eq!(s.expired(at(400)), ["1", "4"]);
    }

    #[test]
    fn many_subscriptions_stay_indexed_as_the_table_grows() {
        let mut s = Subscriptions::default();
        for i in 0..5000 {
            s.insert(sub(&i.to_string(), &format!("u{}@x", i % 100), Package::Presence));
        }
        for i in (0..5000).step_by(2) {
            s.remove(&i.to_string()).unwrap();
        }
        assert_eq!(s.len(), 2500);
        assert_eq!(s.to("u1@x", Package::Presence).count(), 50);
        assert_eq!(s.to("u2@x", Package::Presence).count(), 0);
        assert!((1..5000).step_by(2).all(|i| s.get(&i.to_string()).is_some()));
    }
}
