//! The Home Server on the shared IO layer (`crate::driver`): its start from the store's state,
//! its shutdown, and the presence-rules and contact-list API of the operations port.

use super::core::Core;
use super::presence::DurablePresence;
use super::presence::state::Rules;
use crate::directory::Directory;
use crate::driver::Driver;
use crate::service::{Now, Service};
use crate::sip::message::Limits;
use crate::store::{Store, Table, Write};
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
    pub async fn set_presence_rules(self: &Arc<Self>, aor: &str, rules: Rules) -> anyhow::Result<()> {
        let _one_at_a_time = USER_DATA_WRITES.lock().await;
        self.durably(Write::put(Table::Rules, aor, &rules)).await?;
        self.with(|core, now| core.set_presence_rules(now, aor, rules));
        Ok(())
    }

    /// Replaces a user's contact list, durably first; list subscriptions get full state.
    pub async fn set_contact_list(self: &Arc<Self>, aor: &str, contacts: Vec<String>) -> anyhow::Result<()> {
        let _one_at_a_time = USER_DATA_WRITES.lock().await;
        self.durably(Write::put(Table::Contacts, aor, &contacts)).await?;
        self.with(|core, now| core.set_contact_list(now, aor, contacts));
        Ok(())
    }

    async fn durably(&self, write: Write) -> anyhow::Result<()> {
        self.store().expect("a Home Server has a store").apply(vec![write]).await
    }
}
