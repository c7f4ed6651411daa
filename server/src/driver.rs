//! The one IO layer under both roles: hands a role's state machine (`Service`) what the
//! transports receive, performs the actions it queues (sends, directory lookups, name resolution,
//! store writes) with tokio, and feeds their answers back. No protocol decision is made here.

use crate::directory::Directory;
use crate::service::{Action, Facts, Input, Now, Service, TaskId};
use crate::sip::message::{Limits, parse_datagram};
use crate::store::Store;
use crate::transport::{Flow, Handler, Transport, Transports};
use bytes::Bytes;
use futures::FutureExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How often the service's timers run.
const TICK: Duration = Duration::from_millis(50);
/// How often the directory's list of admitted domains is read again.
const DOMAINS_REFRESH: Duration = Duration::from_secs(1);

pub struct Driver<S> {
    service: Mutex<S>,
    transports: Arc<Transports>,
    directory: Arc<dyn Directory>,
    /// Where `Store` actions go (the Home Server's; a Front-End has none and queues none).
    store: Option<Store>,
    limits: Limits,
}

impl<S: Service> Driver<S> {
    pub fn new(
        service: S,
        transports: Arc<Transports>,
        directory: Arc<dyn Directory>,
        store: Option<Store>,
        limits: Limits,
    ) -> Arc<Driver<S>> {
        Arc::new(Driver { service: Mutex::new(service), transports, directory, store, limits })
    }

    pub fn directory(&self) -> &Arc<dyn Directory> {
        &self.directory
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    pub fn service(&self) -> MutexGuard<'_, S> {
        self.service.lock().expect("service")
    }

    /// Runs `f` on the service, then performs what it queued.
    pub fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut S, Now) -> R) -> R {
        let (result, actions) = {
            let mut service = self.service();
            let result = f(&mut service, Now::real());
            (result, service.take_actions())
        };
        self.perform(actions);
        result
    }

    /// Runs the service on one input and performs what it asks.
    fn input(self: &Arc<Self>, input: Input) {
        self.with(|service, now| service.handle(now, input));
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
                    let Some(store) = &self.store else {
                        tracing::error!("a store write without a store: dropped");
                        continue;
                    };
                    let written = store.submit(writes);
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

    /// Performs actions in order, waiting for each send and write (for shutdown).
    pub async fn perform_and_wait(self: &Arc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { flow, data, branch } => self.send(flow, data, branch).await,
                Action::Store { writes, .. } => {
                    if let Some(store) = &self.store
                        && let Err(e) = store.submit(writes).await
                    {
                        tracing::error!(error = %e, "store write failed");
                    }
                }
                fetch @ Action::Fetch { .. } => self.perform(vec![fetch]),
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
    /// and resolves a host.
    fn fetch(self: &Arc<Self>, task: TaskId, users: Vec<String>, resolve: Option<(String, u16)>) {
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

    /// Drives the service's timers, and re-reads the admitted domains now and then.
    pub fn start_timers(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                this.with(|service, now| service.on_tick(now));
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(DOMAINS_REFRESH);
            loop {
                tick.tick().await;
                this.refresh_domains().await;
            }
        });
    }

    pub async fn refresh_domains(&self) {
        match self.directory.domains().await {
            Ok(domains) => self.service().admit_domains(domains),
            Err(e) => tracing::debug!(error = %e, "admitted domains not re-read"),
        }
    }

    pub fn set_advertised(&self, transport: Transport, host_port: String) {
        self.service().set_advertised(transport, host_port);
    }
}

/// The transports hand every message here; it is parsed before the service is locked.
pub struct DriverHandler<S>(pub Arc<Driver<S>>);

impl<S: Service> Handler for DriverHandler<S> {
    fn on_message(&self, flow: Flow, data: Bytes) {
        let message = parse_datagram(&data, &self.0.limits);
        self.0.input(Input::Received { flow, message });
    }
}
