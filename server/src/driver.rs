//! The one IO layer under both roles: hands a role's state machine (`Service`) what the
//! transports receive, performs the actions it queues (sends, directory lookups, name resolution,
//! store writes) with tokio, or on the thread that read a burst of UDP datagrams, and feeds their
//! answers back. No protocol decision is made here.

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

/// Who makes the writes of a step durable, and hears when they are.
enum Commit<'a> {
    /// The store's writer thread, woken for them; a task of their own waits for them.
    ByWriter,
    /// The thread handling a burst (`Driver::burst`), after it: they are staged and wait here.
    Staged(&'a mut Vec<Staged>),
}

impl Commit<'_> {
    fn stages(&self) -> bool {
        matches!(self, Commit::Staged(_))
    }
}

/// Writes staged during a burst: the task to tell, and the answer to wait for.
type Staged = (Option<TaskId>, BoxFuture<'static, anyhow::Result<()>>);

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
        self.step(f, &mut Commit::ByWriter)
    }

    /// Runs `f` on the service and performs what it queued, its writes committed as `commit`
    /// says (and those of the steps its actions lead to at once, such as a directory's answer).
    fn step<R>(self: &Arc<Self>, f: impl FnOnce(&mut S, Now) -> R, commit: &mut Commit) -> R {
        let (result, actions) = {
            let mut service = self.service();
            let result = f(&mut service, Now::real());
            (result, self.queue(service.take_actions(), commit.stages()))
        };
        self.perform(actions, commit);
        result
    }

    /// Puts the writes of `actions` in the store's queue at once. Called with the service held,
    /// so writes commit in the order the service made them: were they queued after it is let go,
    /// a thread busy sending first could queue an older decision after a newer one made on
    /// another thread (a sweep's deletion of a binding after its re-registration, answered 200),
    /// and the disk would keep the older. Queueing does not wait for the disk.
    pub fn queue_writes(&self, actions: Vec<Action>) -> Vec<Queued> {
        self.queue(actions, false)
    }

    /// Like `queue_writes`; `stage`: without waking the writer thread (see `Store::stage`).
    fn queue(&self, actions: Vec<Action>, stage: bool) -> Vec<Queued> {
        actions
            .into_iter()
            .filter_map(|action| match action {
                Action::Store { task, writes } => match &self.store {
                    Some(store) => {
                        let written = if stage { store.stage(writes).boxed() } else { store.submit(writes).boxed() };
                        Some(Queued::Written { task, written })
                    }
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
    fn input(self: &Arc<Self>, input: Input, commit: &mut Commit) {
        self.step(|service, now| service.handle(now, input), commit);
    }

    /// Performs actions in order. Sends leave in that order when their connection is open (or on
    /// UDP); one that must wait for a connection or buffer space goes on a task of its own.
    fn perform(self: &Arc<Self>, actions: Vec<Queued>, commit: &mut Commit) {
        for action in actions {
            match action {
                Queued::Action(Action::Send { flow, data, branch }) => {
                    if self.transports.send_now(&flow, data.clone()).is_err() {
                        let this = self.clone();
                        tokio::spawn(async move { this.send(flow, data, branch).await });
                    }
                }
                Queued::Action(Action::Fetch { task, users, resolve }) => self.fetch(task, users, resolve, commit),
                Queued::Action(Action::Forget { user }) => self.directory.forget(&user),
                // `queue` turns every write into `Written`; should one come here anyway, it is
                // still written, though no longer in order with what another thread decided.
                Queued::Action(store @ Action::Store { .. }) => {
                    let queued = self.queue(vec![store], commit.stages());
                    self.perform(queued, commit)
                }
                Queued::Written { task, written } => match commit {
                    Commit::Staged(staged) => staged.push((task, written)),
                    Commit::ByWriter => {
                        let this = self.clone();
                        tokio::spawn(async move { this.stored(task, written.await) });
                    }
                },
            }
        }
    }

    /// Tells the service its writes are durable (or failed).
    fn stored(self: &Arc<Self>, task: Option<TaskId>, result: anyhow::Result<()>) {
        let result = result.map_err(|e| format!("{e:#}"));
        match task {
            Some(task) => self.input(Input::Stored { task, result }, &mut Commit::ByWriter),
            None => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "store write failed");
                }
            }
        }
    }

    /// Handles a burst of datagrams on the calling thread: their sends go at once, their writes
    /// are staged and committed together here, then what waited for them (the answers) goes.
    /// The writer thread is not woken, nor any task: at a light load those wake-ups cost more
    /// than the work.
    fn burst(self: &Arc<Self>, next: &mut dyn FnMut() -> Option<(Flow, Bytes)>) {
        let mut staged = Vec::new();
        while let Some((flow, data)) = next() {
            let message = parse_datagram(&data, &self.limits);
            self.input(Input::Received { flow, message }, &mut Commit::Staged(&mut staged));
        }
        if staged.is_empty() {
            return;
        }
        if let Some(store) = &self.store {
            store.commit_staged();
        }
        for (task, mut written) in staged {
            match (&mut written).now_or_never() {
                Some(result) => self.stored(task, result),
                // Not expected: `commit_staged` returns once all queued before it is answered.
                None => self.perform(vec![Queued::Written { task, written }], &mut Commit::ByWriter),
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
                other => self.perform(vec![other], &mut Commit::ByWriter),
            }
        }
    }

    async fn send(self: &Arc<Self>, flow: Flow, data: Bytes, branch: Option<String>) {
        if let Err(e) = self.transports.send(&flow, data).await {
            tracing::debug!(error = %e, remote = %flow.remote, "not sent");
            if let Some(branch) = branch {
                self.input(Input::NotSent { branch }, &mut Commit::ByWriter);
            }
        }
    }

    /// Looks users up (the file directory and the LDAP cache answer at once, without a task)
    /// and resolves a host.
    fn fetch(self: &Arc<Self>, task: TaskId, users: Vec<String>, resolve: Option<(String, u16)>, commit: &mut Commit) {
        let mut facts = Facts::default();
        let mut waiting = Vec::new();
        for aor in users {
            match self.directory.user_at_hand(&aor) {
                Some(found) => {
                    facts.users.insert(aor, found);
                }
                None => waiting.push(aor),
            }
        }
        if waiting.is_empty() && resolve.is_none() {
            return self.input(Input::Fetched { task, facts }, commit);
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
            this.input(Input::Fetched { task, facts }, &mut Commit::ByWriter);
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
        self.0.input(Input::Received { flow, message }, &mut Commit::ByWriter);
    }

    fn on_burst(&self, next: &mut dyn FnMut() -> Option<(Flow, Bytes)>) {
        self.0.burst(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{DirectoryError, Load, User};
    use crate::store::{Table, Write};
    use crate::transport::Flow;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A service that does what each test closure tells it, and counts the writes made durable.
    #[derive(Default)]
    struct Scripted {
        actions: Vec<Action>,
        stored: usize,
        received: u64,
        /// Whether a message received asks for a user instead of writing.
        fetch: bool,
        fetched: usize,
    }

    impl Service for Scripted {
        /// A message received is written down (key `r<n>`); a write made durable is counted.
        fn handle(&mut self, _: Now, input: Input) {
            match input {
                Input::Received { .. } if self.fetch => {
                    self.received += 1;
                    let users = vec!["a@x.test".to_string()];
                    self.actions.push(Action::Fetch { task: self.received, users, resolve: None });
                }
                Input::Fetched { .. } => self.fetched += 1,
                Input::Received { .. } => {
                    let n = self.received;
                    self.received += 1;
                    let writes = vec![Write::put(Table::Rules, format!("r{n}"), &n)];
                    self.actions.push(Action::Store { task: Some(n), writes });
                }
                Input::Stored { result, .. } => {
                    result.expect("written");
                    self.stored += 1;
                }
                _ => {}
            }
        }
        fn on_tick(&mut self, _: Now) {}
        fn take_actions(&mut self) -> Vec<Action> {
            std::mem::take(&mut self.actions)
        }
        fn admit_domains(&mut self, _: Vec<String>) {}
        fn set_advertised(&mut self, _: Transport, _: String) {}
    }

    fn scripted(store: &Store) -> Arc<Driver<Scripted>> {
        let directory = Arc::new(crate::directory::file::FileDirectory::parse("").unwrap());
        driver(Scripted::default(), directory, Some(store.clone()))
    }

    fn driver(service: Scripted, directory: Arc<dyn Directory>, store: Option<Store>) -> Arc<Driver<Scripted>> {
        let limits = crate::transport::Limits {
            message: Limits::default(),
            max_connections_per_ip: 1,
            max_connections: 1,
            idle_timeout: Duration::from_secs(1),
            message_timeout: Duration::from_secs(1),
            max_messages_per_source: 0,
        };
        let transports = Transports::new(limits, Arc::new(crate::ops::metrics::Metrics::default()));
        Driver::new(service, transports, directory, store, Limits::default())
    }

    /// A directory that must ask a server, as LDAP does: a lookup is counted when it begins (its
    /// request sent) and answers on a later poll.
    #[derive(Default)]
    struct Remote {
        begun: AtomicUsize,
    }

    impl Directory for Remote {
        fn find_user<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<User>, DirectoryError>> {
            Box::pin(async move {
                self.begun.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                Ok(None)
            })
        }
        fn domains(&self) -> BoxFuture<'_, Result<Vec<String>, DirectoryError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn is_ready(&self) -> BoxFuture<'_, bool> {
            Box::pin(async { true })
        }
        fn load<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Load, DirectoryError>> {
            Box::pin(async { Ok(Load::default()) })
        }
    }

    /// A user who is not at hand is looked up once. Polling the lookup once to see whether it
    /// answers at once, then beginning it again on a task, sent every LDAP search twice, the
    /// first one's answer arriving for no one (a warning from the LDAP client each time).
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_user_not_at_hand_is_looked_up_once() {
        let directory = Arc::new(Remote::default());
        let driver = driver(Scripted { fetch: true, ..Scripted::default() }, directory.clone(), None);
        let flow = Flow::datagram(Transport::Udp, "127.0.0.1:9".parse().unwrap());
        DriverHandler(driver.clone()).on_message(flow, Bytes::from_static(b"OPTIONS sip:x SIP/2.0\r\n\r\n"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while driver.service().fetched < 1 {
            assert!(std::time::Instant::now() < deadline, "the lookup was not answered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(directory.begun.load(Ordering::SeqCst), 1, "lookups begun for one user");
    }

    /// A burst of datagrams is handled on the thread reading them: when it returns, each one's
    /// write is committed and the service told so, with no task or writer thread to wait for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_burst_s_writes_are_committed_and_answered_on_the_thread_handling_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let driver = scripted(&store);
        let flow = Flow::datagram(Transport::Udp, "127.0.0.1:9".parse().unwrap());
        let mut datagrams = (0..3).map(|_| (flow, Bytes::from_static(b"OPTIONS sip:x SIP/2.0\r\n\r\n")));
        DriverHandler(driver.clone()).on_burst(&mut || datagrams.next());
        assert_eq!(driver.service().stored, 3, "a write not yet answered when the burst returned");
        let on_disk: Vec<(String, u64)> = store.load(Table::Rules).unwrap();
        assert_eq!(on_disk, [("r0".to_string(), 0), ("r1".to_string(), 1), ("r2".to_string(), 2)]);
    }

    /// Two decisions about one key, the first after much sending (a tick's retransmissions before
    /// its sweep deletes a binding): the store must end with the second, as the service does.
    /// Were writes queued after the service is let go, the second could commit first, and a
    /// restart would find the older (an acknowledged re-registration gone).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_commit_in_the_order_the_service_made_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let driver = scripted(&store);
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
