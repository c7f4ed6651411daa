//! The Home Server on the shared IO layer (`crate::driver`): its start from the store's state,
//! its shutdown, and the presence-rules and contact-list API of the operations port.

use super::core::Core;
use super::moves::Loaded;
use super::presence::DurablePresence;
use super::presence::state::Rules;
use crate::directory::Directory;
use crate::driver::Driver;
use crate::service::{Now, Service};
use crate::sip::message::Limits;
use crate::store::{Store, Table, UserState, Write};
use crate::transport::Transports;
use std::sync::Arc;
use std::time::SystemTime;

/// The API's writes of rules and contact lists, one at a time: each is made durable, then put in
/// memory, and two at once for the same user could land on disk in one order and in memory in the
/// other (the disk, which a restart reads, would then disagree with what watchers were told).
/// They are rare (a person editing a list), so one lock for all users is enough.
static USER_DATA_WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub type HomeServer = Driver<Core>;

/// A Home Server with the state the store kept (bindings, publications, subscriptions, presence
/// rules and contact lists), and the domains the directory admits.
pub async fn open(
    mut core: Core,
    transports: Arc<Transports>,
    directory: Arc<dyn Directory>,
    store: Store,
    limits: Limits,
) -> anyhow::Result<Arc<HomeServer>> {
    let now = SystemTime::now();
    for (aor, bindings) in store.load(Table::Registrations)? {
        core.registrar.restore(aor, bindings, now);
    }
    let durable = DurablePresence {
        publications: store.load(Table::Publications)?,
        rules: store.load(Table::Rules)?,
        contacts: store.load(Table::Contacts)?,
        subscriptions: store.load(Table::Subscriptions)?,
    };
    let subscriptions = core.restore_presence(now, durable);
    core.offline = super::offline::OfflineQueue::restore(store.load(Table::Offline)?);
    let kept = core.offline.total();
    core.metrics.offline_held.store(kept as u64, std::sync::atomic::Ordering::Relaxed);
    let bindings = core.binding_count();
    core.metrics.registrations.store(bindings as u64, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(bindings, subscriptions, kept, "restored state from the store");
    if let Ok(domains) = directory.domains().await {
        core.admit_domains(domains);
    }
    Ok(Driver::new(core, transports, directory, Some(store), limits))
}

impl Driver<Core> {
    /// Requests still being processed (for draining on shutdown).
    pub fn requests_in_progress(&self) -> usize {
        self.service().requests_in_progress()
    }

    /// Ends every subscription with `reason` and waits until the NOTIFYs are sent.
    pub async fn terminate_all_subscriptions(self: &Arc<Self>, reason: &'static str) {
        let actions = {
            let mut core = self.service();
            core.terminate_all_subscriptions(Now::real(), reason);
            self.queue_writes(core.take_actions())
        };
        self.perform_and_wait(actions).await;
    }

    pub fn domain(&self) -> String {
        self.service().domain().to_string()
    }

    /// Checks an HTTP API caller; see `Core::authorize_http`.
    pub async fn authorize_http(
        &self,
        aor: &str,
        method: &str,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<String, Vec<String>> {
        let user = match authorization {
            Some(a) if a.starts_with("Digest") => self.directory().find_user(aor).await.ok().flatten(),
            _ => None,
        };
        self.service().authorize_http(Now::real(), aor, method, path, authorization, user.as_ref())
    }

    pub fn presence_rules(&self, aor: &str) -> Rules {
        self.service().presence_rules(aor)
    }

    pub fn contact_list(&self, aor: &str) -> Vec<String> {
        self.service().contact_list(aor)
    }

    /// Replaces a user's presence rules, durably first; watchers see the effect at once.
    pub async fn set_presence_rules(self: &Arc<Self>, aor: &str, rules: Rules) -> Result<(), WriteError> {
        let _one_at_a_time = USER_DATA_WRITES.lock().await;
        self.check_not_moving(aor)?;
        self.durably(Write::put(Table::Rules, aor, &rules)).await?;
        self.with(|core, now| core.set_presence_rules(now, aor, rules));
        Ok(())
    }

    /// Replaces a user's contact list, durably first; list subscriptions get full state.
    pub async fn set_contact_list(self: &Arc<Self>, aor: &str, contacts: Vec<String>) -> Result<(), WriteError> {
        let _one_at_a_time = USER_DATA_WRITES.lock().await;
        self.check_not_moving(aor)?;
        self.durably(Write::put(Table::Contacts, aor, &contacts)).await?;
        self.with(|core, now| core.set_contact_list(now, aor, contacts));
        Ok(())
    }

    async fn durably(&self, write: Write) -> anyhow::Result<()> {
        self.store().expect("a Home Server has a store").apply(vec![write]).await
    }

    /// Whether the user was moved to another Home Server lately (their state is there now).
    pub fn moved_away(&self, aor: &str) -> bool {
        self.service().write_refusal(aor, SystemTime::now()) == Some(true)
    }

    fn check_not_moving(&self, aor: &str) -> Result<(), WriteError> {
        match self.service().write_refusal(aor, SystemTime::now()) {
            None => Ok(()),
            Some(rehome) => Err(WriteError::Moving { rehome }),
        }
    }

    /// What `/status` reports: users homed here and the capacity, as last counted in the
    /// directory, and the live figures.
    pub fn status_counts(&self) -> (u64, u64) {
        let core = self.service();
        (core.registered_users(), core.moves_in_progress(SystemTime::now()))
    }

    // ---- moving users (the admin API of the operations port) ----

    /// Step (a) of a move, on the old home: locks the user, waits until every write already
    /// decided for them is on disk, and returns their durable state.
    pub async fn move_out(self: &Arc<Self>, aor: &str) -> Result<UserState, MoveError> {
        {
            // An API write of their rules or list is either done before the lock or refused.
            let _writes = USER_DATA_WRITES.lock().await;
            self.with(|core, now| core.begin_move_out(now, aor)).map_err(MoveError::Conflict)?;
        }
        tracing::info!(target: "audit", user = %aor, "move out: user locked");
        let store = self.store().expect("a Home Server has a store");
        // Decisions queue their writes while the core is held, so all of the user's are queued.
        let exported = match store.flush().await {
            Ok(()) => store.export_user(aor),
            Err(e) => Err(e),
        };
        match exported {
            Ok(state) => Ok(state),
            Err(e) => {
                self.service().abort_move_out(aor);
                Err(MoveError::Failed(format!("{e:#}")))
            }
        }
    }

    /// Step (b), on the new home: stores the user's state durably, then serves it.
    pub async fn take_user(self: &Arc<Self>, aor: &str, state: &UserState) -> Result<(), MoveError> {
        let writes = Store::import_writes(aor, state).map_err(|e| MoveError::Bad(format!("{e:#}")))?;
        let loaded = Loaded::parse(state).map_err(|e| MoveError::Bad(format!("{e:#}")))?;
        let _writes = USER_DATA_WRITES.lock().await;
        self.durably_all(writes).await.map_err(|e| MoveError::Failed(format!("{e:#}")))?;
        self.directory().forget(aor);
        self.with(|core, now| core.receive_user(now, aor, loaded));
        tracing::info!(target: "audit", user = %aor, tables = state.len(), "move in: user state taken");
        Ok(())
    }

    /// Undoes step (b) on the new home when the move is given up.
    pub async fn drop_user(self: &Arc<Self>, aor: &str) -> Result<(), MoveError> {
        let _writes = USER_DATA_WRITES.lock().await;
        let writes = self.with(|core, now| core.drop_received_user(now, aor));
        self.durably_all(writes).await.map_err(|e| MoveError::Failed(format!("{e:#}")))?;
        tracing::info!(target: "audit", user = %aor, "move abandoned: received state dropped");
        Ok(())
    }

    /// Step (d), on the old home once the directory names the new one: ends the user's dialogs
    /// here and deletes their state.
    pub async fn move_done(self: &Arc<Self>, aor: &str) -> Result<(), MoveError> {
        let _writes = USER_DATA_WRITES.lock().await;
        let actions = {
            let mut core = self.service();
            let writes = core.finish_move_out(Now::real(), aor);
            core.store(None, writes);
            self.queue_writes(core.take_actions())
        };
        self.perform_and_wait(actions).await;
        self.directory().forget(aor);
        tracing::info!(target: "audit", user = %aor, "move out done: state deleted, dialogs ended");
        Ok(())
    }

    /// Gives up a move on the old home before the directory changed: the user is served here
    /// again, with the state they had.
    pub fn move_abort(self: &Arc<Self>, aor: &str) -> bool {
        let was = self.service().abort_move_out(aor);
        tracing::info!(target: "audit", user = %aor, locked = was, "move aborted: user served here again");
        was
    }

    async fn durably_all(&self, writes: Vec<Write>) -> anyhow::Result<()> {
        self.store().expect("a Home Server has a store").apply(writes).await
    }
}

/// Why an API write of rules or a contact list was not made.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The user is being moved (`rehome`: has been moved) to another Home Server.
    #[error("the user is being moved to another Home Server")]
    Moving { rehome: bool },
    #[error("{0:#}")]
    Store(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// 409: another move of the user holds the lock.
    #[error("{0}")]
    Conflict(String),
    /// 400: the state sent is not one this server can take.
    #[error("{0}")]
    Bad(String),
    /// 500: the store failed.
    #[error("{0}")]
    Failed(String),
}
