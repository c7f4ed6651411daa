//! The Home Server's IO layer: hands the core what the transports receive, performs the actions
//! the core queues (sends, directory lookups, name resolution, store writes) with tokio, and
//! feeds their answers back. No protocol decision is made here; see `core`.

use super::core::{Action, Core, Facts, Input, Now};
use super::presence::DurablePresence;
use super::presence::state::Rules;
use crate::directory::Directory;
use crate::sip::message::{Limits, parse_datagram};
use crate::store::{Store, Table, Write};
use crate::transport::{Flow, Handler, Transport, Transports};
use bytes::Bytes;
use futures::FutureExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// How often the core's timers run.
const TICK: Duration = Duration::from_millis(50);
/// How often the directory's list of admitted domains is read again.
const DOMAINS_REFRESH: Duration = Duration::from_secs(1);

pub struct HomeServer {
    core: Mutex<Core>,
    transports: Arc<Transports>,
    directory: Arc<dyn Directory>,
    store: Store,
    limits: Limits,
}

impl HomeServer {
    /// A Home Server with the state the store kept (bindings, publications, subscriptions,
    /// presence rules and contact lists), and the domains the directory admits.
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
        let bindings = core.binding_count();
        core.metrics.registrations.store(bindings as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(bindings, subscriptions, "restored state from the store");
        if let Ok(domains) = directory.domains().await {
            core.admit_domains(domains);
        }
        Ok(Arc::new(HomeServer { core: Mutex::new(core), transports, directory, store, limits }))
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().expect("core")
    }

    /// Runs the core on one input and performs what it asks.
    fn input(self: &Arc<Self>, input: Input) {
        let actions = {
            let mut core = self.core();
            core.handle(Now::real(), input);
            core.take_actions()
        };
        self.perform(actions);
    }

    /// Performs actions in order. Sends leave in that order when their connection is open (or on
    /// UDP); one that must wait for a connection or buffer space goes on a task of its own.
    fn perform(self: &Arc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { flow, data, branch } => {
                    if self.transports.send_now(&flow, data.clone()).is_err() {
                        let this = self.clone();
                        tokio::spawn(async move { this.send(flow, data, branch).await });
                    }
                }
                Action::Fetch { task, users, resolve } => self.fetch(task, users, resolve),
                Action::Store { task, writes } => {
                    let written = self.store.submit(writes);
                    let this = self.clone();
                    tokio::spawn(async move {
                        let result = written.await.map_err(|e| format!("{e:#}"));
                        match task {
                            Some(task) => this.input(Input::Stored { task, result }),
                            None => {
                                if let Err(e) = result {
                                    tracing::error!(error = %e, "store write failed");
                                }
                            }
                        }
                    });
                }
            }
        }
    }

    async fn send(self: &Arc<Self>, flow: Flow, data: Bytes, branch: Option<String>) {
        if let Err(e) = self.transports.send(&flow, data).await {
            tracing::debug!(error = %e, remote = %flow.remote, "not sent");
            if let Some(branch) = branch {
                self.input(Input::NotSent { branch });
            }
        }
    }

    /// Looks users up (the file directory and the LDAP cache answer at once, without a task)
    /// and resolves a route's host.
    fn fetch(self: &Arc<Self>, task: u64, users: Vec<String>, resolve: Option<(String, u16)>) {
        let mut facts = Facts::default();
        let mut waiting = Vec::new();
        for aor in users {
            match self.directory.find_user(&aor).now_or_never() {
                Some(found) => {
                    facts.users.insert(aor, found);
                }
                None => waiting.push(aor),
            }
        }
        if waiting.is_empty() && resolve.is_none() {
            return self.input(Input::Fetched { task, facts });
        }
        let this = self.clone();
        tokio::spawn(async move {
            for aor in waiting {
                let found = this.directory.find_user(&aor).await;
                facts.users.insert(aor, found);
            }
            if let Some((host, port)) = resolve {
                facts.route = tokio::net::lookup_host((host.as_str(), port)).await.ok().and_then(|mut a| a.next());
            }
            this.input(Input::Fetched { task, facts });
        });
    }

    /// Drives the core's timers, and re-reads the admitted domains now and then.
    pub fn start_timers(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                let actions = {
                    let mut core = this.core();
                    core.on_tick(Now::real());
                    core.take_actions()
                };
                this.perform(actions);
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(DOMAINS_REFRESH);
            loop {
                tick.tick().await;
                match this.directory.domains().await {
                    Ok(domains) => this.core().admit_domains(domains),
                    Err(e) => tracing::debug!(error = %e, "admitted domains not re-read"),
                }
            }
        });
    }

    pub fn set_via_host(&self, transport: Transport, host: String) {
        self.core().set_via_host(transport, host);
    }

    /// Requests still being processed (for draining on shutdown).
    pub fn requests_in_progress(&self) -> usize {
        self.core().requests_in_progress()
    }

    /// Ends every subscription with `reason` and waits until the NOTIFYs are sent.
    pub async fn terminate_all_subscriptions(self: &Arc<Self>, reason: &'static str) {
        let actions = {
            let mut core = self.core();
            core.terminate_all_subscriptions(Now::real(), reason);
            core.take_actions()
        };
        for action in actions {
            match action {
                Action::Send { flow, data, branch } => self.send(flow, data, branch).await,
                Action::Store { writes, .. } => {
                    if let Err(e) = self.store.submit(writes).await {
                        tracing::error!(error = %e, "store write failed");
                    }
                }
                fetch @ Action::Fetch { .. } => self.perform(vec![fetch]),
            }
        }
    }

    // ---- the presence-rules and contact-list API ----

    pub fn domain(&self) -> String {
        self.core().domain().to_string()
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
            Some(a) if a.starts_with("Digest") => self.directory.find_user(aor).await.ok().flatten(),
            _ => None,
        };
        self.core().authorize_http(Now::real(), aor, method, path, authorization, user.as_ref())
    }

    pub fn presence_rules(&self, aor: &str) -> Rules {
        self.core().presence_rules(aor)
    }

    pub fn contact_list(&self, aor: &str) -> Vec<String> {
        self.core().contact_list(aor)
    }

    /// Replaces a user's presence rules, durably first; watchers see the effect at once.
    pub async fn set_presence_rules(self: &Arc<Self>, aor: &str, rules: Rules) -> anyhow::Result<()> {
        self.store.apply(vec![Write::put(Table::Rules, aor, &rules)]).await?;
        let actions = {
            let mut core = self.core();
            core.set_presence_rules(Now::real(), aor, rules);
            core.take_actions()
        };
        self.perform(actions);
        Ok(())
    }

    /// Replaces a user's contact list, durably first; list subscriptions get full state.
    pub async fn set_contact_list(self: &Arc<Self>, aor: &str, contacts: Vec<String>) -> anyhow::Result<()> {
        self.store.apply(vec![Write::put(Table::Contacts, aor, &contacts)]).await?;
        let actions = {
            let mut core = self.core();
            core.set_contact_list(Now::real(), aor, contacts);
            core.take_actions()
        };
        self.perform(actions);
        Ok(())
    }
}

/// The transports hand every message here; it is parsed before the core is locked.
pub struct HomeHandler(pub Arc<HomeServer>);

impl Handler for HomeHandler {
    fn on_message(&self, flow: Flow, data: Bytes) {
        let message = parse_datagram(&data, &self.0.limits);
        self.0.input(Input::Received { flow, message });
    }
}
