//! Moving a user to another Home Server, as the core sees it (`user move`, `user drain`).
//!
//! The old home locks the user (`begin_move_out`): from then on every SIP request for the user
//! (as registrar target, request target or presentity) gets 503 with Retry-After, never 404, and
//! the API refuses writes of their rules and contact list the same way. The IO layer exports the
//! user's durable state once every write already decided is on disk; the new home takes it
//! (`receive_user`), the directory is flipped, and the old home lets the user go
//! (`finish_move_out`): their state is deleted and every subscription dialog it was notifier of for
//! them (their watchers, their watcher info, their own contact-list subscriptions) is ended with
//! `terminated;reason=deactivated`, so subscribers subscribe again at once and reach the new home.
//! A lock left by a mover that died expires by itself (`MOVE_LOCK`).
//!
//! After the move, requests still routed here (a Front-End's route cache, or a client pointed at
//! this server) get 503 with Retry-After and `Parley-Rehome: 1`: a Front-End then drops its cached
//! route and sends the request once more, at once, where the directory now says.

use super::core::{After, Core, Now};
use super::presence::state::{Package, Publication, Rules};
use super::registrar::Binding;
use super::request::Request;
use crate::sip::Message;
use crate::store::{Table, UserState, Write};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

/// How long a user stays locked when the mover neither finishes nor aborts.
pub const MOVE_LOCK: Duration = Duration::from_secs(60);
/// How long a Home Server remembers users it gave away or received: longer than any route or
/// directory cache that may still send their requests to the wrong server.
pub const REHOME_MEMORY: Duration = Duration::from_secs(600);
/// Header of a 503 telling a Front-End that the user is homed elsewhere now.
pub const REHOME_HEADER: &str = "Parley-Rehome";
/// Seconds a client is asked to wait while its user is being moved.
const RETRY_AFTER: &str = "1";

#[derive(Debug, Default)]
pub struct Moves {
    /// Users being moved away, until when the lock holds.
    locked: HashMap<String, SystemTime>,
    /// Users moved away, remembered until then.
    gone: HashMap<String, SystemTime>,
    /// Users moved here, homed here until then whatever a cached directory answer says.
    arrived: HashMap<String, SystemTime>,
}

impl Moves {
    fn expire(&mut self, now: SystemTime) {
        for (aor, until) in &self.locked {
            if *until <= now {
                tracing::warn!(user = %aor, "move lock expired: the user is served here again");
            }
        }
        self.locked.retain(|_, until| *until > now);
        self.gone.retain(|_, until| *until > now);
        self.arrived.retain(|_, until| *until > now);
    }
}

/// A user's durable state, parsed: every per-user table's value (or none).
#[derive(Debug, Default)]
pub struct Loaded {
    bindings: Vec<Binding>,
    publications: Vec<Publication>,
    rules: Option<Rules>,
    contacts: Option<Vec<String>>,
    /// Messages kept for the user, oldest first.
    offline: Vec<super::offline::Kept>,
}

impl Loaded {
    /// Reads each per-user table's value; a value this version cannot read is an error (nothing
    /// is taken then).
    pub fn parse(state: &UserState) -> anyhow::Result<Loaded> {
        fn value<T: serde::de::DeserializeOwned>(state: &UserState, t: Table) -> anyhow::Result<Option<T>> {
            state
                .get(t.name())
                .map(|v| serde_json::from_value(v.clone()))
                .transpose()
                .map_err(|e| anyhow::anyhow!("{}: {e}", t.name()))
        }
        let mut loaded = Loaded::default();
        // The tables the core keeps in memory (`home::open` loads them at start). Every per-user
        // table travels with the user whatever it is (`Store::export_user`, `import_writes`): one
        // read from the store when needed needs nothing here.
        for table in Table::PER_USER {
            match table {
                Table::Registrations => loaded.bindings = value(state, table)?.unwrap_or_default(),
                Table::Publications => loaded.publications = value(state, table)?.unwrap_or_default(),
                Table::Rules => loaded.rules = value(state, table)?,
                Table::Contacts => loaded.contacts = value(state, table)?,
                _ => {}
            }
        }
        // Tables holding several entries per user: by key suffix, in key order.
        let by_suffix: std::collections::BTreeMap<String, super::offline::Kept> =
            value(state, Table::Offline)?.unwrap_or_default();
        loaded.offline = by_suffix.into_values().collect();
        Ok(loaded)
    }
}

impl Core {
    /// The user a request is for, as a Front-End routes it: REGISTER's address of record, or the
    /// Request-URI's user (a contact list's owner). In-dialog requests are for their dialog.
    pub(super) fn request_target(&self, req: &Request) -> Option<String> {
        let aor = match req.method()? {
            "REGISTER" => self.local_aor(&req.parsed_to().ok()?.uri)?,
            _ if req.parsed_to().ok()?.param("tag").is_some() => return None,
            _ => self.local_aor(req.parsed_uri().ok()?)?,
        };
        let (user, domain) = aor.split_once('@')?;
        Some(match user.strip_suffix(super::presence::LIST_SUFFIX) {
            Some(owner) => format!("{owner}@{domain}"),
            None => aor,
        })
    }

    /// The 503 for a request whose user is being moved away or has been: None when it is not.
    pub(super) fn moving_answer(&self, req: &Request, now: Now) -> Option<Message> {
        if self.moves.locked.is_empty() && self.moves.gone.is_empty() {
            return None;
        }
        let target = self.request_target(req)?;
        if self.moves.locked.get(&target).is_some_and(|until| *until > now.wall) {
            let mut r = self.respond_with(req, 503, "User Being Moved");
            r.headers.push("Retry-After", RETRY_AFTER);
            return Some(r);
        }
        if self.moves.gone.contains_key(&target) {
            let mut r = self.respond_with(req, 503, "User Homed Elsewhere");
            r.headers.push("Retry-After", RETRY_AFTER);
            r.headers.push(REHOME_HEADER, "1");
            return Some(r);
        }
        None
    }

    /// Whether the API must refuse writes for a user: `Some(true)` moved away (rehome),
    /// `Some(false)` being moved, None when it may write.
    pub fn write_refusal(&self, aor: &str, now: SystemTime) -> Option<bool> {
        if self.moves.locked.get(aor).is_some_and(|until| *until > now) {
            return Some(false);
        }
        self.moves.gone.contains_key(aor).then_some(true)
    }

    /// Whether a user moved here lately (homed here whatever a cached directory answer says).
    pub(super) fn arrived_here(&self, aor: &str) -> bool {
        self.moves.arrived.contains_key(aor)
    }

    pub fn moves_in_progress(&self, now: SystemTime) -> u64 {
        self.moves.locked.values().filter(|until| **until > now).count() as u64
    }

    /// Addresses of record with at least one binding.
    pub fn registered_users(&self) -> u64 {
        self.registrar.user_count() as u64
    }

    pub(super) fn expire_moves(&mut self, now: SystemTime) {
        self.moves.expire(now);
    }

    /// Locks a user for a move away; refused while another move of the user holds the lock.
    pub fn begin_move_out(&mut self, now: Now, aor: &str) -> Result<(), String> {
        if self.moves.locked.get(aor).is_some_and(|until| *until > now.wall) {
            return Err(format!("a move of {aor} is already in progress"));
        }
        self.moves.locked.insert(aor.to_string(), now.wall + MOVE_LOCK);
        self.moves.arrived.remove(aor);
        Ok(())
    }

    /// Lifts a move's lock: the user is served here again. Whether there was one.
    pub fn abort_move_out(&mut self, aor: &str) -> bool {
        self.moves.locked.remove(aor).is_some()
    }

    /// The user now lives elsewhere: their subscription dialogs end (deactivated), their state
    /// leaves memory; returns the writes that delete it from the store.
    pub fn finish_move_out(&mut self, now: Now, aor: &str) -> Vec<Write> {
        self.moves.locked.remove(aor);
        self.moves.gone.insert(aor.to_string(), now.wall + REHOME_MEMORY);
        let mut ids: Vec<String> = [Package::Presence, Package::Winfo, Package::List]
            .into_iter()
            .flat_map(|p| self.presence.subscriptions_to(aor, p))
            .map(|s| s.id.to_string())
            .collect();
        ids.sort();
        if !ids.is_empty() {
            tracing::info!(user = %aor, count = ids.len(), "ending the moved user's subscriptions (deactivated)");
        }
        // Their final NOTIFYs show the state as it was; then it goes.
        self.notify(now, ids, true, Some("deactivated"));
        self.registrar.remove(aor);
        self.presence.forget_user(aor);
        self.metrics.registrations.store(self.registrar.binding_count() as u64, Relaxed);
        self.run_after(now, After::PresenceChanged(aor.to_string()));
        self.user_state_deletes(aor)
    }

    /// The writes deleting what is stored for `aor`, whose kept messages this core lets go.
    fn user_state_deletes(&mut self, aor: &str) -> Vec<Write> {
        let mut writes = crate::store::Store::delete_user_writes(aor);
        let kept = self.offline.take_user(aor);
        writes.extend(kept.iter().map(|k| Write::delete(Table::Offline, super::offline::Kept::key(aor, k.seq))));
        self.metrics.offline_held.store(self.offline.total() as u64, Relaxed);
        writes
    }

    /// Takes a user moved here (their state is on disk already).
    pub fn receive_user(&mut self, now: Now, aor: &str, mut loaded: Loaded) {
        // Connection ids are the old home's: here they could name some other connection. Id 0
        // names none, so requests go to the binding's address (the Front-End its Path names).
        for b in &mut loaded.bindings {
            b.flow.conn = 0;
        }
        self.moves.gone.remove(aor);
        self.moves.locked.remove(aor);
        self.moves.arrived.insert(aor.to_string(), now.wall + REHOME_MEMORY);
        self.install_user(now, aor, loaded);
    }

    /// Drops a user received for a move that was given up (the old home keeps them).
    pub fn drop_received_user(&mut self, now: Now, aor: &str) -> Vec<Write> {
        self.moves.arrived.remove(aor);
        self.install_user(now, aor, Loaded::default());
        self.user_state_deletes(aor)
    }

    fn install_user(&mut self, now: Now, aor: &str, loaded: Loaded) {
        let Loaded { bindings, publications, rules, contacts, offline } = loaded;
        self.offline.install_user(aor, offline);
        self.metrics.offline_held.store(self.offline.total() as u64, Relaxed);
        self.registrar.remove(aor);
        self.registrar.restore(aor.to_string(), bindings, now.wall);
        self.presence.forget_user(aor);
        let live: Vec<Publication> = publications.into_iter().filter(|p| p.expires_at > now.wall).collect();
        if !live.is_empty() {
            self.presence.restore_publications(aor.to_string(), live);
        }
        if let Some(rules) = rules {
            self.presence.set_rules(aor, rules);
        }
        if let Some(contacts) = contacts {
            self.presence.set_contacts(aor, contacts);
        }
        self.metrics.registrations.store(self.registrar.binding_count() as u64, Relaxed);
        self.run_after(now, After::PresenceChanged(aor.to_string()));
    }
}
