//! `kill -9` of a Home Server under load: every registration, publication, subscription (and
//! unsubscription) and contact-list write a client was told succeeded is there after the restart
//! on the same data (redb commits before the answer), judged by what the clients were told, not by
//! what they sent; and the clients carry on without any manual step. `kill -9` of a Front-End in
//! the middle of a conversation: its clients sign in through the other one and go on, the Home
//! Servers lose nothing, and the Front-End serves again once restarted. (A directory outage:
//! `tests/ldap.rs`.)

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::cluster::{Ca, Node, users_file};
use support::ua::{Ua, body, header, status};
use support::{Server, free_port, tool_available, try_http};

const USERS: usize = 200;
const THREADS: usize = 4;

#[test]
fn every_acknowledged_registration_survives_kill_9_under_load() {
    let mut server = Server::start_with_users(USERS, "");
    let acked = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let (acked, stop, sent, target) = (acked.clone(), stop.clone(), sent.clone(), server.sip);
            std::thread::spawn(move || {
                let mut uas: Vec<(usize, Ua)> = (t..USERS)
                    .step_by(THREADS)
                    .map(|i| (i, Ua::new(&format!("u{i}"), target).retransmitting()))
                    .collect();
                for (i, ua) in uas.iter_mut() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    // Retransmitting, as real clients do: a request lost with the old process reaches
                    // the new one. Only a 200 counts as told.
                    if ua
                        .try_send_authenticated(
                            "REGISTER",
                            "sip:example.test",
                            &format!("sip:u{i}@example.test"),
                            "Expires: 600\r\n",
                            "",
                        )
                        .is_some_and(|r| status(&r) == 200)
                    {
                        acked.lock().unwrap().push((*i, format!("<sip:u{i}@{}>", ua.local())));
                    }
                }
                uas
            })
        })
        .collect();
    // Kill it once a third of the users are told they are registered, with more on their way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < USERS / 3 {
        assert!(Instant::now() < deadline, "registrations did not get going");
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    // Each of those 200s waited for a sync of the journal, and /metrics timed it (group commit:
    // one sync may cover several).
    let syncs = server.metric("parley_store_journal_sync_seconds_count");
    assert!(syncs >= 1.0, "{syncs} journal syncs timed");
    server.kill_and_restart();
    let uas: Vec<(usize, Ua)> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let acked = acked.lock().unwrap().clone();
    let bindings = server.metric("parley_registrations");
    println!(
        "{} REGISTERs sent, {} answered 200 before kill -9, {bindings} bindings after the restart",
        sent.load(Ordering::Relaxed),
        acked.len()
    );

    // Every client told 200 finds its binding; every client can sign in again without help.
    let mut uas: std::collections::HashMap<usize, Ua> = uas.into_iter().collect();
    for (i, contact) in &acked {
        let ua = uas.get_mut(i).unwrap();
        let answer = ua.query_bindings().expect("an answer after the restart");
        assert_eq!(status(&answer), 200, "{answer}");
        let contacts: Vec<&str> = answer.lines().filter(|l| l.to_ascii_lowercase().starts_with("contact:")).collect();
        assert!(
            contacts.iter().any(|c| c.contains(contact.as_str())),
            "u{i} was told 200 but its binding {contact} is gone: {contacts:?}"
        );
    }
    assert!(bindings >= acked.len() as f64);
    for ua in uas.values_mut().take(20) {
        assert_eq!(status(&ua.register(600)), 200);
    }
}

// ---- kill -9 with every kind of acknowledged state, under sipp's load ----

/// u0..u23 keep state: each registers, publishes, rewrites its contact list and opens (and ends)
/// presence subscriptions, round after round.
const STATEFUL: usize = 24;
const WORKERS: usize = 3;
/// u24..u63 are sipp's: each call registers one of them and sends a MESSAGE to `RECIPIENT`.
const LOAD_USERS: std::ops::Range<usize> = 24..64;
const RECIPIENT: usize = 64;
/// sipp calls per second (each four requests, one of them relayed).
const LOAD_RATE: u32 = 20;
const TOKEN: &str = "crash-admin-token";
const WAIT: Duration = Duration::from_secs(10);

/// sipp running `tests/sipp/load_register_message.xml` for as long as it lives, in its own
/// directory, with its statistics written every second.
struct SippLoad {
    child: Child,
    dir: tempfile::TempDir,
}

impl SippLoad {
    /// Starts sipp and waits for its first successful call. Its port is picked free, but another
    /// test may take it first: then sipp exits at once, and it gets another.
    fn start(server: SocketAddr) -> SippLoad {
        let mut dir = tempfile::tempdir().unwrap();
        let users: String =
            LOAD_USERS.map(|i| format!("u{i};[authentication username=u{i} password=u{i}-password]\n")).collect();
        std::fs::write(dir.path().join("users.csv"), format!("SEQUENTIAL\n{users}")).unwrap();
        let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/load_register_message.xml");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let child = support::spawn_in(
                Command::new("sipp")
                    .arg(server.to_string())
                    .arg("-sf")
                    .arg(&scenario)
                    .args(["-inf", "users.csv", "-s", &format!("u{RECIPIENT}")])
                    .args(["-i", "127.0.0.1", "-p", &free_port().to_string(), "-t", "u1"])
                    .args(["-r", &LOAD_RATE.to_string(), "-l", "40", "-m", "1000000"])
                    .args(["-nd", "-nostdin", "-trace_err", "-trace_stat", "-stf", "stats.csv", "-fd", "1"]),
                dir.path(),
            )
            .expect("start sipp");
            let mut sipp = SippLoad { child, dir };
            if sipp.wait_for_successes(1, "at its start", attempts == 3) {
                return sipp;
            }
            dir = std::mem::replace(&mut sipp.dir, tempfile::tempdir().unwrap());
            let _ = std::fs::remove_file(dir.path().join("stats.csv"));
        }
    }

    /// (successful, failed) calls so far, from the last complete line of sipp's statistics file.
    fn calls(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(self.dir.path().join("stats.csv")).unwrap_or_default();
        let mut lines = text.lines();
        let Some(names) = lines.next() else { return (0, 0) };
        let names: Vec<&str> = names.split(';').collect();
        // The line being written may be cut short.
        let Some(last) = lines.map(|l| l.split(';').collect::<Vec<_>>()).rfind(|l| l.len() == names.len()) else {
            return (0, 0);
        };
        let column = |name: &str| -> u64 {
            let i = names.iter().position(|n| *n == name).unwrap_or_else(|| panic!("no {name} in {names:?}"));
            last[i].trim().parse().unwrap_or_else(|_| panic!("{name}: {:?}", last[i]))
        };
        (column("SuccessfulCall(C)"), column("FailedCall(C)"))
    }

    /// Waits until sipp has had `n` successful calls in all; false if it exited first and
    /// `must` is not set.
    fn wait_for_successes(&mut self, n: u64, why: &str, must: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.calls().0 < n {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(!must, "sipp exited with {status}:\n{}", self.logs());
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "sipp: not {n} successful calls {why}: {:?}\n{}",
                self.calls(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// The end of each of sipp's logs and outputs.
    fn logs(&self) -> String {
        support::tails_of(self.dir.path(), &["log", "txt"])
    }
}

impl Drop for SippLoad {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// sipp's recipient: registered once, then a thread answers every MESSAGE 200 and counts them,
/// until dropped.
struct Recipient {
    answered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recipient {
    fn start(server: SocketAddr) -> Recipient {
        let mut ua = Ua::new(&format!("u{RECIPIENT}"), server).retransmitting();
        let r = ua.register(600);
        assert_eq!(status(&r), 200, "{r}");
        let (answered, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (count, done) = (answered.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(m) = ua.recv_request("MESSAGE", Duration::from_millis(100)) {
                    ua.answer(&m, 200);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Recipient { answered, stop, thread: Some(thread) }
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for Recipient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The note a user publishes in a round (`u7-r3`); `final` after the restart.
fn note(n: usize, round: &str) -> String {
    format!("u{n}-{round}")
}

fn pidf(user: &str, note: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:{user}@example.test\">\
         <tuple id=\"t\"><status><basic>open</basic></status><note>{note}</note></tuple></presence>"
    )
}

/// The rounds `u<n>-r<round>` named in a text.
fn rounds(text: &str, prefix: &str) -> Vec<u32> {
    text.match_indices(prefix)
        .filter_map(|(i, _)| {
            let digits: String = text[i + prefix.len()..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// A presence subscription a watcher opened, as it was told.
struct Dialog {
    round: u32,
    target: usize,
    call_id: String,
    /// The To of the 200, with the server's tag: requests inside the dialog carry it.
    to: String,
    ended: Ended,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ended {
    No,
    /// Unsubscribed, without an answer: ended or not, either is right.
    Asked,
    /// Unsubscribed, answered 200: must stay ended.
    Yes,
}

/// A user with state, and what it was told.
struct Client {
    n: usize,
    /// Registers and publishes.
    dev: Ua,
    /// Holds the user's subscriptions and answers their NOTIFYs.
    watch: Ua,
    registered: bool,
    /// The last round whose PUBLISH was answered 200, and the SIP-ETag to refresh it by.
    published: Option<u32>,
    etag: Option<String>,
    /// The last round whose PUBLISH was sent.
    publish_sent: Option<u32>,
    /// The same for the contact list (a PUT answered 200).
    listed: Option<u32>,
    list_sent: Option<u32>,
    dialogs: Vec<Dialog>,
}

impl Client {
    fn new(n: usize, server: SocketAddr) -> Client {
        let user = format!("u{n}");
        Client {
            n,
            dev: Ua::new(&user, server).retransmitting(),
            watch: Ua::new(&user, server).retransmitting().answering_notifies(),
            registered: false,
            published: None,
            etag: None,
            publish_sent: None,
            listed: None,
            list_sent: None,
            dialogs: Vec::new(),
        }
    }

    fn aor_uri(&self) -> String {
        format!("sip:u{}@example.test", self.n)
    }

    /// A PUBLISH of `note`, refreshing the last publication when there is one: its final status.
    fn publish(&mut self, note: &str) -> Option<u16> {
        let uri = self.aor_uri();
        let if_match = self.etag.as_ref().map(|e| format!("SIP-If-Match: {e}\r\n")).unwrap_or_default();
        let extra = format!("Event: presence\r\nExpires: 600\r\n{if_match}Content-Type: application/pidf+xml\r\n");
        let r = self.dev.try_send_authenticated("PUBLISH", &uri, &uri, &extra, &pidf(&format!("u{}", self.n), note))?;
        match status(&r) {
            200 => self.etag = Some(header(&r, "SIP-ETag").expect("SIP-ETag").to_string()),
            // The publication it refreshed is not there (its refresh landed, its answer was lost):
            // publish anew next time, as RFC 3903 says.
            412 => self.etag = None,
            _ => {}
        }
        Some(status(&r))
    }

    fn put_list(&self, ops: SocketAddr, round: &str) -> Option<u16> {
        let list =
            format!("{{\"contacts\":[\"u{}@example.test\",\"{}@example.test\"]}}", (self.n + 1) % STATEFUL, round);
        try_http(ops, "PUT", &format!("/users/u{}/contacts", self.n), Some(TOKEN), &list).map(|(code, _)| code)
    }

    /// A SUBSCRIBE inside `dialog` (refresh, or unsubscribe with `expires` 0): its final status.
    fn resubscribe(&mut self, dialog: usize, expires: u32) -> Option<u16> {
        let d = &self.dialogs[dialog];
        let (uri, to) = (format!("sip:u{}@example.test", d.target), d.to.clone());
        self.watch.new_call(&format!("r{}", d.round));
        let extra = format!("Event: presence\r\nExpires: {expires}\r\n");
        self.watch.try_send_authenticated("SUBSCRIBE", &uri, &to, &extra, "").map(|r| status(&r))
    }

    /// One round: REGISTER, PUBLISH, contact list, a new subscription, and the end of the oldest
    /// of more than two. Stops between steps once `stop` is set (the step under way goes on).
    fn round(&mut self, round: u32, ops: SocketAddr, stop: &AtomicBool) {
        let uri = self.aor_uri();
        if let Some(r) = self.dev.try_send_authenticated("REGISTER", "sip:example.test", &uri, "Expires: 600\r\n", "") {
            self.registered |= status(&r) == 200;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        self.publish_sent = Some(round);
        if self.publish(&note(self.n, &format!("r{round}"))) == Some(200) {
            self.published = Some(round);
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        self.list_sent = Some(round);
        if self.put_list(ops, &format!("rev{round}")) == Some(200) {
            self.listed = Some(round);
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let target = (self.n + 1 + round as usize % (STATEFUL - 1)) % STATEFUL;
        let target_uri = format!("sip:u{target}@example.test");
        self.watch.new_call(&format!("r{round}"));
        let answer = self.watch.try_send_authenticated(
            "SUBSCRIBE",
            &target_uri,
            &target_uri,
            "Event: presence\r\nExpires: 600\r\n",
            "",
        );
        if let Some(r) = answer.filter(|r| status(r) == 200) {
            let (call_id, to) = (self.watch.call_id().to_string(), header(&r, "To").expect("To").to_string());
            self.dialogs.push(Dialog { round, target, call_id, to, ended: Ended::No });
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let live: Vec<usize> = (0..self.dialogs.len()).filter(|&i| self.dialogs[i].ended == Ended::No).collect();
        if live.len() > 2 {
            self.dialogs[live[0]].ended = Ended::Asked;
            if self.resubscribe(live[0], 0) == Some(200) {
                self.dialogs[live[0]].ended = Ended::Yes;
            }
        }
    }
}

/// The presence document `u<n>` shows a watcher now: a fetch (SUBSCRIBE with Expires 0, RFC
/// 6665) and the body of its one NOTIFY.
fn fetch_presence(checker: &mut Ua, n: usize) -> String {
    let uri = format!("sip:u{n}@example.test");
    checker.new_call(&format!("fetch-u{n}"));
    let r = checker.send_authenticated("SUBSCRIBE", &uri, &uri, "Event: presence\r\nExpires: 0\r\n", "");
    assert_eq!(status(&r), 200, "fetch of u{n}: {r}");
    let call_id = checker.call_id().to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("no NOTIFY for the fetch of u{n}"));
        let Some(m) = checker.recv_request("NOTIFY", left) else { continue };
        checker.answer(&m, 200);
        if header(&m, "Call-ID") == Some(call_id.as_str()) {
            return body(&m).to_string();
        }
    }
}

#[test]
fn every_acknowledged_change_of_every_kind_survives_kill_9_under_sipp_load() {
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("admin-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let mut server = Server::start_with_users(RECIPIENT + 1, &format!("[api]\nadmin_token_file = {token_file:?}\n"));
    let (sip, ops) = (server.sip, server.ops);

    let recipient = Recipient::start(sip);
    let mut sipp = tool_available("sipp", "the REGISTER and MESSAGE load sipp adds").then(|| SippLoad::start(sip));

    let stop = Arc::new(AtomicBool::new(false));
    let rounds_done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (stop, rounds_done) = (stop.clone(), rounds_done.clone());
            std::thread::spawn(move || {
                let mut clients: Vec<Client> = (w..STATEFUL).step_by(WORKERS).map(|n| Client::new(n, sip)).collect();
                'rounds: for round in 0.. {
                    for c in clients.iter_mut() {
                        if stop.load(Ordering::Relaxed) {
                            break 'rounds;
                        }
                        c.round(round, ops, &stop);
                        rounds_done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                clients
            })
        })
        .collect();

    // kill -9 once every client has had about five rounds, with sipp's calls and the clients'
    // requests on their way.
    let deadline = Instant::now() + Duration::from_secs(90);
    while rounds_done.load(Ordering::Relaxed) < 5 * STATEFUL {
        assert!(
            Instant::now() < deadline,
            "the clients did not get going: {} rounds",
            rounds_done.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let sipp_before = sipp.as_ref().map(SippLoad::calls);
    stop.store(true, Ordering::Relaxed);
    let killed = Instant::now();
    server.kill_and_restart();
    let restarted = killed.elapsed();
    let delivered_before_restart = recipient.answered();
    // The steps under way when the server died end now, against the new process.
    let mut clients: Vec<Client> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    clients.sort_by_key(|c| c.n);

    let count = |f: &dyn Fn(&Client) -> usize| clients.iter().map(f).sum::<usize>();
    let dialogs = |e: Ended| count(&|c| c.dialogs.iter().filter(|d| d.ended == e).count());
    println!(
        "kill -9 after {} rounds; restarted in {restarted:?}. Acknowledged: {} registrations, {} publications, \
         {} contact lists, {} live subscriptions, {} ended ({} unsubscribes unanswered); sipp before the kill: {:?}",
        rounds_done.load(Ordering::Relaxed),
        count(&|c| c.registered as usize),
        count(&|c| c.published.is_some() as usize),
        count(&|c| c.listed.is_some() as usize),
        dialogs(Ended::No),
        dialogs(Ended::Yes),
        dialogs(Ended::Asked),
        sipp_before,
    );

    // Registrations: every client told 200 finds its binding.
    for c in clients.iter_mut().filter(|c| c.registered) {
        let answer = c.dev.query_bindings().expect("an answer after the restart");
        assert_eq!(status(&answer), 200, "{answer}");
        let contact = format!("<sip:u{}@{}>", c.n, c.dev.local());
        let contacts: Vec<&str> = answer.lines().filter(|l| l.to_ascii_lowercase().starts_with("contact:")).collect();
        assert!(
            contacts.iter().any(|l| l.contains(&contact)),
            "u{} was told 200, its binding {contact} is gone: {contacts:?}",
            c.n
        );
    }

    // Contact lists: the last write answered 200, or a later one that was sent.
    for c in clients.iter().filter(|c| c.list_sent.is_some()) {
        let (code, list) = try_http(ops, "GET", &format!("/users/u{}/contacts", c.n), Some(TOKEN), "").expect("GET");
        assert_eq!(code, 200, "{list}");
        let shown = rounds(&list, "\"rev").first().copied();
        if let Some(told) = c.listed {
            assert!(
                shown.is_some_and(|s| s >= told),
                "u{}'s list write of round {told} was answered 200; now {list}",
                c.n
            );
        }
        assert!(shown.is_none_or(|s| Some(s) <= c.list_sent), "u{}: {list} was never sent", c.n);
    }

    // Publications: what a watcher is shown is the last publication answered 200, or a later one.
    let mut checker = Ua::new("u0", sip);
    for c in clients.iter().filter(|c| c.publish_sent.is_some()) {
        let document = fetch_presence(&mut checker, c.n);
        let shown = rounds(&document, &format!("u{}-r", c.n));
        if let Some(told) = c.published {
            assert!(
                shown.iter().any(|&s| s >= told),
                "u{}'s PUBLISH of round {told} was answered 200; now shown:\n{document}",
                c.n
            );
        }
        assert!(shown.iter().all(|&s| Some(s) <= c.publish_sent), "u{}: never published:\n{document}", c.n);
    }

    // Subscriptions: each one answered 200 is still a dialog (a refresh is answered 200), each
    // unsubscribe answered 200 stays ended (481: no such dialog).
    for c in clients.iter_mut() {
        for i in 0..c.dialogs.len() {
            let (ended, round, target) = (c.dialogs[i].ended, c.dialogs[i].round, c.dialogs[i].target);
            let answer = c.resubscribe(i, 600).expect("an answer to the refresh");
            let what = format!("u{}'s subscription to u{target} of round {round} ({ended:?})", c.n);
            match ended {
                Ended::No => assert_eq!(answer, 200, "{what}: lost"),
                Ended::Yes => assert_eq!(answer, 481, "{what}: back from the dead"),
                Ended::Asked => assert!(answer == 200 || answer == 481, "{what}: {answer}"),
            }
            if answer == 200 {
                c.dialogs[i].ended = Ended::No; // refreshed: live again, whatever it was
            }
        }
    }

    // Clients recover without a manual step: each registers and publishes again (refreshing its
    // publication by its SIP-ETag, or anew after a 412), and rewrites its list.
    for c in clients.iter_mut() {
        assert_eq!(status(&c.dev.register(600)), 200, "u{} registers again", c.n);
        let mut code = c.publish(&note(c.n, "final"));
        if code == Some(412) {
            code = c.publish(&note(c.n, "final"));
        }
        assert_eq!(code, Some(200), "u{} publishes again", c.n);
        assert_eq!(c.put_list(ops, "final"), Some(200), "u{} rewrites its list", c.n);
    }
    // Every live subscription hears of the new publication of its presentity; no ended one does.
    for c in clients.iter() {
        let mut expected: Vec<(&str, String)> = c
            .dialogs
            .iter()
            .filter(|d| d.ended == Ended::No)
            .map(|d| (d.call_id.as_str(), note(d.target, "final")))
            .collect();
        let ended: Vec<&str> = c.dialogs.iter().filter(|d| d.ended != Ended::No).map(|d| d.call_id.as_str()).collect();
        let deadline = Instant::now() + WAIT;
        while !expected.is_empty() {
            let left = deadline.checked_duration_since(Instant::now());
            let m = left.and_then(|left| c.watch.recv_request("NOTIFY", left));
            let Some(m) = m else { panic!("u{} heard nothing more on {expected:?}", c.n) };
            c.watch.answer(&m, 200);
            let call_id = header(&m, "Call-ID").unwrap_or_default();
            assert!(
                !(ended.contains(&call_id) && body(&m).contains("-final")),
                "an ended subscription is notified:\n{m}"
            );
            expected.retain(|(id, note)| !(*id == call_id && body(&m).contains(note.as_str())));
        }
    }

    // sipp's load carries on by itself against the new process: calls succeed again (its
    // statistics lag by up to a second, hence the margin), and its MESSAGEs are delivered.
    if let (Some(sipp), Some((ok, _))) = (sipp.as_mut(), sipp_before) {
        sipp.wait_for_successes(ok + 2 * u64::from(LOAD_RATE) + 10, "after the restart", true);
        let deadline = Instant::now() + WAIT;
        while recipient.answered() < delivered_before_restart + 10 {
            assert!(Instant::now() < deadline, "sipp's MESSAGEs are not delivered after the restart");
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "sipp after the restart: {:?} (successful, failed calls); MESSAGEs delivered {delivered_before_restart} \
             before the restart, {} in all",
            sipp.calls(),
            recipient.answered()
        );
    }
}

// ---- kill -9 of a Front-End ----

/// A client on its own thread, as a phone runs: answers MESSAGEs (and NOTIFYs), sends one to
/// `peer` every 100 ms if it has one, and keeps its flow alive with an OPTIONS to its Front-End
/// every 500 ms. When its Front-End stops answering (a transaction times out), it signs in through
/// `backup`, once, and carries on there.
struct Device {
    stop: Arc<AtomicBool>,
    /// MESSAGEs answered 200 by the peer: in all, and since this device signed in through `backup`.
    delivered: Arc<AtomicUsize>,
    delivered_after_failover: Arc<AtomicUsize>,
    failed_over: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Ua>,
}

impl Device {
    fn start(mut ua: Ua, peer: Option<&'static str>, backup: SocketAddr) -> Device {
        let stop = Arc::new(AtomicBool::new(false));
        let (delivered, delivered_after_failover) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let failed_over = Arc::new(AtomicBool::new(false));
        let (done, total, after, moved) =
            (stop.clone(), delivered.clone(), delivered_after_failover.clone(), failed_over.clone());
        let thread = std::thread::spawn(move || {
            let (mut next_message, mut next_keepalive) = (Instant::now(), Instant::now());
            while !done.load(Ordering::Relaxed) {
                if let Some(m) = ua.recv_request("MESSAGE", Duration::from_millis(20)) {
                    ua.answer(&m, 200);
                }
                let mut answered = true;
                if let Some(peer) = peer.filter(|_| Instant::now() >= next_message) {
                    next_message = Instant::now() + Duration::from_millis(100);
                    let uri = format!("sip:{peer}@example.test");
                    match ua.try_send_authenticated("MESSAGE", &uri, &uri, "Content-Type: text/plain\r\n", "hi") {
                        Some(r) if status(&r) == 200 => {
                            total.fetch_add(1, Ordering::Relaxed);
                            if moved.load(Ordering::Relaxed) {
                                after.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(_) => {} // 480 while the peer's binding still leads through the dead one
                        None => answered = false,
                    }
                }
                if answered && Instant::now() >= next_keepalive {
                    next_keepalive = Instant::now() + Duration::from_millis(500);
                    let front_end = format!("sip:{}", ua.server);
                    answered = ua.try_send_authenticated("OPTIONS", &front_end, &front_end, "", "").is_some();
                }
                if !answered && !moved.load(Ordering::Relaxed) {
                    ua.server = backup;
                    register_until_served(&mut ua);
                    moved.store(true, Ordering::Relaxed);
                }
            }
            ua
        });
        Device { stop, delivered, delivered_after_failover, failed_over, thread }
    }

    /// Whether its thread is over (it only ends early by panicking).
    fn ended(&self) -> bool {
        self.thread.is_finished()
    }

    fn stop(self) -> Ua {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("device thread")
    }
}

/// Receives requests until one of `method` for which `wanted` holds, answering each 200; says
/// where it came from.
fn expect_request(ua: &Ua, method: &str, wanted: impl Fn(&str) -> bool) -> (String, SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some((m, from)) = ua.recv_from(left) else { break };
        if !m.starts_with("SIP/2.0 ") {
            ua.answer(&m, 200);
        }
        if m.starts_with(&format!("{method} ")) && wanted(&m) {
            return (m, from);
        }
    }
    panic!("{}: no such {method}", ua.user);
}

/// `from` sends `text` to `to`'s user, who waits for it: the final response, and where the
/// MESSAGE reached `to` from.
fn message(from: &mut Ua, to: &Ua, text: &str) -> (u16, SocketAddr) {
    let uri = format!("sip:{}@example.test", to.user);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| expect_request(to, "MESSAGE", |m| body(m) == text));
        let r = from.send_authenticated("MESSAGE", &uri, &uri, "Content-Type: text/plain\r\n", text);
        let (_, source) = waiter.join().unwrap();
        (status(&r), source)
    })
}

/// Subscribes `watcher` to `target`'s presence and waits for a NOTIFY of that dialog whose body
/// contains `shown`; returns the dialog's Call-ID.
fn subscribe(watcher: &mut Ua, target: &str, name: &str, shown: &str) -> String {
    watcher.new_call(name);
    let uri = format!("sip:{target}@example.test");
    let r = watcher.send_authenticated("SUBSCRIBE", &uri, &uri, "Event: presence\r\nExpires: 600\r\n", "");
    assert_eq!(status(&r), 200, "{} watches {target}: {r}", watcher.user);
    let call_id = watcher.call_id().to_string();
    expect_request(watcher, "NOTIFY", |m| header(m, "Call-ID") == Some(call_id.as_str()) && body(m).contains(shown));
    call_id
}

/// Registers through `ua.server` until it is served (a Front-End just started may not have
/// probed its Home Servers yet), 10 s at most.
fn register_until_served(ua: &mut Ua) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = ua.try_send_authenticated(
            "REGISTER",
            "sip:example.test",
            &format!("sip:{}@example.test", ua.user),
            "Expires: 600\r\n",
            "",
        );
        if r.as_deref().is_some_and(|r| status(r) == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "{} is not served through {}: {r:?}", ua.user, ua.server);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn gauge(node: &Node, name: &str) -> f64 {
    let metrics = node.metrics();
    metrics
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}: no {name} in\n{metrics}", node.name))
}

#[test]
fn a_front_end_killed_mid_conversation_costs_its_clients_one_sign_in_and_the_home_servers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "deployment-ca");
    let users = users_file(
        dir.path(),
        &[("alice", "home-1"), ("carol", "home-1"), ("bob", "home-2"), ("dave", "home-2"), ("erin", "home-2")],
    );
    let homes: Vec<Node> = (1..=2).map(|i| Node::start(dir.path(), &format!("home-{i}"), &ca, &users, None)).collect();
    let table: Vec<(String, SocketAddr)> = homes.iter().map(|h| (h.name.clone(), h.internal)).collect();
    let mut fe_a = Node::start(dir.path(), "fe-a", &ca, &users, Some(&table));
    let fe_b = Node::start(dir.path(), "fe-b", &ca, &users, Some(&table));
    let ua = |user: &str, fe: &Node| {
        Ua::new(user, fe.sip).retransmitting().giving_up_after(Duration::from_secs(3)).answering_notifies()
    };
    // alice and bob (on different Home Servers) and erin sign in through fe-a; carol and dave
    // through fe-b.
    let (mut alice, mut bob, mut erin) = (ua("alice", &fe_a), ua("bob", &fe_a), ua("erin", &fe_a));
    let (mut carol, mut dave) = (ua("carol", &fe_b), ua("dave", &fe_b));
    for u in [&mut alice, &mut bob, &mut erin, &mut carol, &mut dave] {
        assert_eq!(status(&u.register(600)), 200, "{} signs in", u.user);
    }
    // Presence dialogs through either Front-End: carol and bob watch alice, dave watches bob.
    subscribe(&mut carol, "alice", "watch-alice", "");
    let bob_old_dialog = subscribe(&mut bob, "alice", "watch-alice", "");
    subscribe(&mut dave, "bob", "watch-bob", "");
    let state = |h: &Node| (gauge(h, "parley_registrations"), gauge(h, "parley_subscriptions"));
    let before: Vec<(f64, f64)> = homes.iter().map(state).collect();
    assert_eq!(before, [(2.0, 2.0), (3.0, 1.0)]);

    // alice messages bob, both through fe-a; fe-a is killed in the middle.
    let alice_device = Device::start(alice, Some("bob"), fe_b.sip);
    let bob_device = Device::start(bob, None, fe_b.sip);
    let deadline = Instant::now() + Duration::from_secs(30);
    while alice_device.delivered.load(Ordering::Relaxed) < 10 && !alice_device.ended() && !bob_device.ended() {
        assert!(Instant::now() < deadline, "alice's messages do not reach bob through fe-a");
        std::thread::sleep(Duration::from_millis(10));
    }
    fe_a.kill();
    let killed = Instant::now();
    let delivered_through_fe_a = alice_device.delivered.load(Ordering::Relaxed);
    // The Home Servers lose nothing by it.
    assert_eq!(homes.iter().map(state).collect::<Vec<_>>(), before, "(bindings, subscriptions) per Home Server");

    // Each notices (a MESSAGE or a keep-alive unanswered), signs in through fe-b, and the
    // conversation goes on there.
    loop {
        let recovered = alice_device.failed_over.load(Ordering::Relaxed)
            && bob_device.failed_over.load(Ordering::Relaxed)
            && alice_device.delivered_after_failover.load(Ordering::Relaxed) >= 10;
        if recovered || alice_device.ended() || bob_device.ended() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no recovery through fe-b: alice moved {}, bob moved {}, {} delivered since",
            alice_device.failed_over.load(Ordering::Relaxed),
            bob_device.failed_over.load(Ordering::Relaxed),
            alice_device.delivered_after_failover.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let recovered = killed.elapsed();
    let (mut alice, mut bob) = (alice_device.stop(), bob_device.stop()); // a device's panic shows here
    println!(
        "fe-a killed after {delivered_through_fe_a} MESSAGEs; both clients through fe-b and messaging again in \
         {recovered:?}"
    );

    // Their bindings were replaced, not doubled: the Home Servers hold what they held.
    assert_eq!(homes.iter().map(state).collect::<Vec<_>>(), before);
    for u in [&mut alice, &mut bob] {
        let r = u.query_bindings().expect("bindings");
        let contacts: Vec<&str> = r.lines().filter(|l| l.to_ascii_lowercase().starts_with("contact:")).collect();
        assert_eq!(contacts.len(), 1, "{}: {r}", u.user);
    }
    // Messages for everyone, across both Home Servers, through fe-b.
    assert_eq!(message(&mut bob, &alice, "to alice from bob"), (200, fe_b.sip));
    assert_eq!(message(&mut carol, &bob, "to bob from carol"), (200, fe_b.sip));
    assert_eq!(message(&mut dave, &alice, "to alice from dave"), (200, fe_b.sip));

    // Presence: carol's dialog (through fe-b) hears alice's next publication. bob's went through
    // fe-a: home-1 cannot deliver its NOTIFY and drops it, and bob subscribes again, as a client
    // does when its dialog's Front-End is gone, and is shown alice's state.
    alice.new_call("publish");
    alice.publish(&pidf("alice", "after fe-a"), None, 600);
    let (n, from) = expect_request(&carol, "NOTIFY", |m| body(m).contains("after fe-a"));
    assert_eq!(from, fe_b.sip, "{n}");
    let deadline = Instant::now() + WAIT;
    while gauge(&homes[0], "parley_subscriptions") != 1.0 {
        assert!(Instant::now() < deadline, "home-1 keeps bob's unreachable dialog:\n{}", homes[0].log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let call_id = subscribe(&mut bob, "alice", "watch-alice-again", "after fe-a");
    assert_ne!(call_id, bob_old_dialog);
    // dave's dialog (through fe-b, to home-2) hears bob, who now signs in through fe-b.
    bob.new_call("publish");
    bob.publish(&pidf("bob", "bob moved"), None, 600);
    expect_request(&dave, "NOTIFY", |m| body(m).contains("bob moved"));

    // fe-a comes back on its ports and serves again: erin, signed in through it before the crash
    // and silent since, signs in again there, gets messages and watches alice through it.
    fe_a.restart();
    // Until she signs in again, erin's binding leads through a flow the new fe-a does not hold:
    // a MESSAGE to her fails at once (480), rather than going round or asking its sender to
    // authenticate again.
    let sent = Instant::now();
    let uri = "sip:erin@example.test";
    let r = alice.send_authenticated("MESSAGE", uri, uri, "Content-Type: text/plain\r\n", "are you there?");
    assert_eq!(status(&r), 480, "{r}");
    assert!(sent.elapsed() < Duration::from_secs(2), "answered after {:?}", sent.elapsed());
    register_until_served(&mut erin);
    assert_eq!(message(&mut alice, &erin, "to erin through the new fe-a"), (200, fe_a.sip));
    let erin_dialog = subscribe(&mut erin, "alice", "watch-alice", "after fe-a");
    alice.new_call("publish-2");
    alice.publish(&pidf("alice", "fe-a is back"), None, 600);
    let (_, from) = expect_request(&erin, "NOTIFY", |m| {
        header(m, "Call-ID") == Some(erin_dialog.as_str()) && body(m).contains("fe-a is back")
    });
    assert_eq!(from, fe_a.sip);
    assert_eq!(homes.iter().map(|h| gauge(h, "parley_registrations")).collect::<Vec<_>>(), [2.0, 3.0]);
}
