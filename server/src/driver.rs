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
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How often the service's timers run.
const TICK: Duration = Duration::from_millis(50);
/// How often the directory's list of admitted domains is read again.
const DOMAINS_REFRESH: Duration = Duration::from_secs(1);

/// An action whose store writes, if any, are queued already.
pub enum Queued {
    Action(Action),
    /// Writes in the store's queue; with a task, the service hears once they are durable.
    Written {
        task: Option<TaskId>,
        written: BoxFuture<'static, anyhow::Result<()>>,
    },
}

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
            (result, self.queue_writes(service.take_actions()))
        };
        self.perform(actions);
        result
    }

    /// Puts the writes of `actions` in the store's queue at once. Called with the service held,
    /// so writes commit in the order the service made them: were they queued after it is let go,
    /// a thread busy sending first could queue an older decision after a newer one made on
    /// another thread (a sweep's deletion of a binding after its re-registration, answered 200),
    /// and the disk would keep the older. Queueing does not wait for the disk.
    pub fn queue_writes(&self, actions: Vec<Action>) -> Vec<Queued> {
        actions
            .into_iter()
            .filter_map(|action| match action {
                Action::Store { task, writes } => match &self.store {
                    Some(store) => Some(Queued::Written { task, written: store.submit(writes).boxed() }),
                    None => {
                        tracing::error!("a store write without a store: dropped");
                        None
                    }
                },
                action => Some(Queued::Action(action)),
            })
            .collect()
    }

    /// Runs the service on one input and performs what it asks.
    fn input(self: &Arc<Self>, input: Input) {
        self.with(|service, now| service.handle(now, input));
    }

    /// Performs actions in order. Sends leave in that order when their connection is open (or on
    /// UDP); one that must wait for a connection or buffer space goes on a task of its own.
    fn perform(self: &Arc<Self>, actions: Vec<Queued>) {
        for action in actions {
            match action {
                Queued::Action(Action::Send { flow, data, branch }) => {
                    if self.transports.send_now(&flow, data.clone()).is_err() {
                        let this = self.clone();
                        tokio::spawn(async move { this.send(flow, data, branch).await });
                    }
                }
                Queued::Action(Action::Fetch { task, users, resolve }) => self.fetch(task, users, resolve),
                Queued::Action(Action::Forget { user }) => self.directory.forget(&user),
                // `queue_writes` turns every write into `Written`; should one come here anyway, it
                // is still written, though no longer in order with what another thread decided.
                Queued::Action(store @ Action::Store { .. }) => self.perform(self.queue_writes(vec![store])),
                Queued::Written { task, written } => {
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
    pub async fn perform_and_wait(self: &Arc<Self>, actions: Vec<Queued>) {
        for action in actions {
            match action {
                Queued::Action(Action::Send { flow, data, branch }) => self.send(flow, data, branch).await,
                Queued::Written { written, .. } => {
                    if let Err(e) = written.await {
                        tracing::error!(error = %e, "store write failed");
                    }
                }
                other => self.perform(vec![other]),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Table, Write};
    use crate::transport::Flow;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A service that does what each test closure tells it, and counts the writes made durable.
    #[derive(Default)]
    struct Scripted {
        actions: Vec<Action>,
        stored: usize,
    }

    impl Service for Scripted {
        fn handle(&mut self, _: Now, input: Input) {
            if let Input::Stored { result, .. } = input {
                result.expect("written");
                self.stored += 1;
            }
        }
        fn on_tick(&mut self, _: Now) {}
        fn take_actions(&mut self) -> Vec<Action> {
            std::mem::take(&mut self.actions)
        }
        fn admit_domains(&mut self, _: Vec<String>) {}
        fn set_advertised(&mut self, _: Transport, _: String) {}
    }

    /// Two decisions about one key, the first after much sending (a tick's retransmissions before
    /// its sweep deletes a binding): the store must end with the second, as the service does.
    /// Were writes queued after the service is let go, the second could commit first, and a
    /// restart would find the older (an acknowledged re-registration gone).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_commit_in_the_order_the_service_made_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let limits = crate::transport::Limits {
            message: Limits::default(),
            max_connections_per_ip: 1,
            max_connections: 1,
            idle_timeout: Duration::from_secs(1),
            message_timeout: Duration::from_secs(1),
            max_messages_per_source: 0,
        };
        let transports = Transports::new(limits, Arc::new(crate::ops::metrics::Metrics::default()));
        let directory = Arc::new(crate::directory::file::FileDirectory::parse("").unwrap());
        let driver = Driver::new(Scripted::default(), transports, directory, Some(store.clone()), Limits::default());
        let put =
            |task, value: u32| Action::Store { task: Some(task), writes: vec![Write::put(Table::Rules, "k", &value)] };

        let decided = Arc::new(AtomicBool::new(false));
        let first = {
            let (driver, decided, runtime) = (driver.clone(), decided.clone(), tokio::runtime::Handle::current());
            std::thread::spawn(move || {
                let _entered = runtime.enter();
                driver.with(|s, _| {
                    let flow = Flow::datagram(Transport::Udp, "127.0.0.1:9".parse().unwrap());
                    for _ in 0..20_000 {
                        s.actions.push(Action::Send { flow, data: Bytes::from_static(b"x"), branch: None });
                    }
                    s.actions.push(put(1, 1));
                    decided.store(true, Ordering::SeqCst);
                });
            })
        };
        while !decided.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        // Decided after the first (the service's lock orders them), while its sends go out.
        driver.with(|s, _| s.actions.push(put(2, 2)));
        first.join().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while driver.service().stored < 2 {
            assert!(std::time::Instant::now() < deadline, "writes not made durable");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let on_disk: Vec<(String, u32)> = store.load(Table::Rules).unwrap();
        assert_eq!(on_disk, [("k".to_string(), 2)], "the older decision overwrote the newer one");
    }
}
