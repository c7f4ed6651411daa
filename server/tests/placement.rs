//! Scaling users across Home Servers, on real processes: a real slapd, three Home Servers and a
//! Front-End whose users live in it. `user add` without a Home Server places users by free
//! capacity; `/status` reports each server's share, counted in the directory; `user drain` moves
//! every user of one server to the others with their contact lists, presence rules and
//! registrations, and every user then signs in through the Front-End and messages another.

#[path = "support/slapd.rs"]
mod slapd;
mod support;

use slapd::{ADMIN_DN, BASE, Slapd};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use support::cluster::{Ca, Node};
use support::ua::{Ua, header, status};
// slapd.rs reaches `free_port` and `require_tool` through the crate root.
use support::{Out, free_port, require_tool, run_parley, tool_available, try_http};

const SERVICE_DN: &str = "cn=ParleyService,ou=Parley,dc=example,dc=test";
const TOKEN: &str = "placement-admin-token";
const USERS: usize = 300;

fn parley(slapd: &Slapd, args: &[&str], extra_env: &[(&str, &std::ffi::OsStr)]) -> Out {
    let pw = slapd.admin_password_file();
    let mut env: Vec<(&str, &std::ffi::OsStr)> = vec![
        ("PARLEY_LDAP_URL", slapd.url.as_ref()),
        ("PARLEY_LDAP_BASE_DN", BASE.as_ref()),
        ("PARLEY_LDAP_BIND_DN", ADMIN_DN.as_ref()),
        ("PARLEY_LDAP_BIND_PASSWORD_FILE", pw.as_os_str()),
    ];
    env.extend_from_slice(extra_env);
    run_parley(args, &env, "")
}

fn must(out: Out, what: &str) -> String {
    assert!(out.ok, "{what} failed:\n{}{}", out.stdout, out.stderr);
    out.stdout
}

struct Deployment {
    dir: tempfile::TempDir,
    slapd: Slapd,
    homes: Vec<Node>,
    fe: Node,
    token_file: PathBuf,
}

impl Deployment {
    fn home(&self, name: &str) -> &Node {
        self.homes.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no {name}"))
    }

    /// `prep enterprise` naming the three Home Servers with `capacity` each and their API.
    fn register_homes(&self, capacities: [u64; 3]) -> String {
        let mut args = vec!["prep".to_string(), "enterprise".into(), "--sip-domain".into(), "example.test".into()];
        for (h, c) in self.homes.iter().zip(capacities) {
            args.push("--home-server".into());
            args.push(format!("{}={},capacity={c},api=http://{}", h.name, h.internal, h.ops));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        must(parley(&self.slapd, &args, &[]), "prep enterprise")
    }

    fn admin(&self, args: &[&str]) -> Out {
        parley(&self.slapd, args, &[("PARLEY_ADMIN_TOKEN_FILE", self.token_file.as_os_str())])
    }

    /// `GET /status?fresh=1` of a Home Server, as JSON.
    fn status(&self, home: &str) -> serde_json::Value {
        let (code, body) = try_http(self.home(home).ops, "GET", "/status?fresh=1", None, "").expect("status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn homed(&self) -> Vec<u64> {
        self.homes.iter().map(|h| self.status(&h.name)["homedUsers"].as_u64().unwrap()).collect()
    }

    /// Every user's Home Server, from the directory.
    fn homes_of_users(&self) -> BTreeMap<String, String> {
        let listed = must(self.admin(&["user", "list"]), "user list");
        listed
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0].to_string(), f[2].to_string())
            })
            .collect()
    }

    /// Every user's home, contact list and presence rules (read from their home).
    fn dump(&self) -> BTreeMap<String, (String, String, String)> {
        let mut out = BTreeMap::new();
        for (user, home) in self.homes_of_users() {
            let ops = self.home(&home).ops;
            let get = |what: &str| {
                let (code, body) = try_http(ops, "GET", &format!("/users/{user}/{what}"), Some(TOKEN), "").unwrap();
                assert_eq!(code, 200, "{user} {what}: {body}");
                body
            };
            out.insert(user.clone(), (home, get("contacts"), get("presence-rules")));
        }
        out
    }
}

fn deploy() -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let slapd = Slapd::start();
    let service_pw = slapd.password_file("service", "service-secret");
    must(parley(&slapd, &["prep", "schema"], &[]), "prep schema");
    must(
        parley(
            &slapd,
            &["prep", "enterprise", "--sip-domain", "example.test", "--home-server", "home-1=127.0.0.1:1"],
            &[],
        ),
        "prep enterprise",
    );
    must(
        parley(&slapd, &["prep", "domain", "--service-account-password-file", service_pw.to_str().unwrap()], &[]),
        "prep domain",
    );
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let ca = Ca::new(dir.path(), "deployment-ca");
    // The servers' directory answers are cached for the default 30 s: a move must not depend on
    // them running out.
    let directory = format!(
        "[directory]\nbackend = \"ldap\"\nurl = \"{}\"\nbase_dn = \"{BASE}\"\nbind_dn = \"{SERVICE_DN}\"\n\
         bind_password_file = {service_pw:?}\ntimeout_ms = 5000\n",
        slapd.url
    );
    let api = format!("[api]\nadmin_token_file = {token_file:?}\n");
    let homes: Vec<Node> =
        (1..=3).map(|i| Node::start_with(dir.path(), &format!("home-{i}"), &ca, &directory, None, "", &api)).collect();
    let table: Vec<(String, SocketAddr)> = homes.iter().map(|h| (h.name.clone(), h.internal)).collect();
    // Every client of these tests sends from 127.0.0.1, several of them without pause: the
    // per-address limit would take them for one flooder and drop what they send (a load
    // generator's case in the README), and a test client does not retransmit.
    let unlimited = "[limits]\nmax_messages_per_source = 0\n";
    let fe = Node::start_with(dir.path(), "fe-1", &ca, &directory, Some(&table), "", unlimited);
    let d = Deployment { dir, slapd, homes, fe, token_file };
    let out = d.register_homes([200, 200, 200]);
    assert!(out.contains("home-1: address set to") && out.contains("capacity set to 200"), "{out}");
    assert!(out.contains("registered Home Server home-2 at") && out.contains("capacity 200, API http://"), "{out}");
    d
}

fn user(i: usize) -> String {
    format!("u{i}@example.test")
}

/// Receives the next request of `method` within `wait`, answering 200.
fn expect(ua: &Ua, method: &str, wait: Duration) -> String {
    let m = ua.recv_request(method, wait).unwrap_or_else(|| panic!("{}: no {method}", ua.user));
    ua.answer(&m, 200);
    m
}

/// `from` messages `to`, who answers: the final response.
fn message(from: &mut Ua, to: &Ua, text: &str) -> String {
    let uri = format!("sip:{}@example.test", to.user);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| expect(to, "MESSAGE", Duration::from_secs(10)));
        let r = from.send_authenticated("MESSAGE", &uri, &uri, "Content-Type: text/plain\r\n", text);
        let m = waiter.join().unwrap();
        assert!(m.ends_with(text), "{m}");
        r
    })
}

#[test]
fn users_are_placed_by_capacity_and_a_drain_moves_them_with_their_state() {
    let d = deploy();
    let pw = d.dir.path().join("user.pw");

    // Placement: 300 users added without a Home Server spread 100/100/100.
    for i in 0..USERS {
        let name = format!("u{i}");
        std::fs::write(&pw, format!("{name}-password")).unwrap();
        must(d.admin(&["user", "add", &user(i), "--password-file", pw.to_str().unwrap()]), "user add");
    }
    assert_eq!(d.homed(), [100, 100, 100], "placed by free capacity");
    let s = d.status("home-1");
    assert_eq!(s["server"], "home-1");
    assert_eq!(
        (s["capacity"].as_u64(), s["registeredUsers"].as_u64(), s["movesInProgress"].as_u64()),
        (Some(200), Some(0), Some(0))
    );
    let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5, "{s}");
    let metrics = d.home("home-2").metrics();
    assert!(metrics.contains("parley_homed_users 100") && metrics.contains("parley_capacity_users 200"), "{metrics}");

    // Each user's contact list and rules, over the HTTP API of their home.
    let homes = d.homes_of_users();
    for i in 0..USERS {
        let (u, ops) = (user(i), d.home(&homes[&user(i)]).ops);
        let contacts = format!("{{\"contacts\": [\"{}\", \"{}\"]}}", user((i + 1) % USERS), user((i + 7) % USERS));
        let (code, body) = try_http(ops, "PUT", &format!("/users/{u}/contacts"), Some(TOKEN), &contacts).unwrap();
        assert_eq!(code, 200, "{body}");
        let rules = format!("{{\"allow\": [\"x{i}@other.test\"], \"block\": [\"{}\"]}}", user((i + 3) % USERS));
        let (code, body) = try_http(ops, "PUT", &format!("/users/{u}/presence-rules"), Some(TOKEN), &rules).unwrap();
        assert_eq!(code, 200, "{body}");
    }

    // Some of home-1's users sign in before the drain (their registrations must travel), and a
    // user of home-2 watches one of them (that dialog must end, deactivated, and come back).
    let on_home_1: Vec<usize> = (0..USERS).filter(|i| homes[&user(*i)] == "home-1").collect();
    let early: Vec<usize> = on_home_1.iter().take(5).copied().collect();
    let mut early_uas: Vec<Ua> = early.iter().map(|i| Ua::new(&format!("u{i}"), d.fe.sip)).collect();
    for ua in &mut early_uas {
        let r = ua.register(600);
        assert_eq!(status(&r), 200, "{r}");
    }
    let watcher_i = (0..USERS).find(|i| homes[&user(*i)] == "home-2").unwrap();
    let mut watcher = Ua::new(&format!("u{watcher_i}"), d.fe.sip);
    assert_eq!(status(&watcher.register(600)), 200);
    watcher.new_call("watch");
    let watched = format!("sip:u{}@example.test", early[0]);
    let ok = watcher.send_authenticated("SUBSCRIBE", &watched, &watched, "Event: presence\r\nExpires: 600\r\n", "");
    assert_eq!(status(&ok), 200, "{ok}");
    let n = expect(&watcher, "NOTIFY", Duration::from_secs(10));
    assert!(n.contains("<basic>open</basic>"), "the watched user is registered: {n}");
    assert_eq!(d.status("home-1")["registeredUsers"].as_u64(), Some(5));
    let before = d.dump();

    // Not enough room on the others: refused, and nothing moves.
    d.register_homes([200, 120, 120]);
    let refused = d.admin(&["user", "drain", "--home-server", "home-1"]);
    assert!(!refused.ok, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("not enough capacity: 100 users to move, 40 free on the other Home Servers (home-2: 100 of 120 used, home-3: 100 of 120 used)"),
        "{}",
        refused.stderr
    );
    assert_eq!(d.homed(), [100, 100, 100]);

    // The drain: every user of home-1 to the others, 50 each, with their state.
    d.register_homes([200, 200, 200]);
    let started = Instant::now();
    let drained = must(d.admin(&["user", "drain", "--home-server", "home-1"]), "user drain");
    eprintln!("drained 100 users in {:?}", started.elapsed());
    assert!(drained.contains("drain home-1: 100/100 done (100 moved, 0 failed)"), "{drained}");
    assert!(drained.contains("drained home-1: 100 of 100 users moved (home-2 50, home-3 50), 0 failed"), "{drained}");
    assert_eq!(d.homed(), [0, 150, 150]);
    let again = must(d.admin(&["user", "drain", "--home-server", "home-1"]), "user drain again");
    assert!(again.contains("no users homed there"), "{again}");

    // Same contacts and rules for everyone; only home-1's users changed home.
    let after = d.dump();
    assert_eq!(before.len(), USERS);
    for (u, (home, contacts, rules)) in &before {
        let (new_home, new_contacts, new_rules) = &after[u];
        assert_eq!((contacts, rules), (new_contacts, new_rules), "{u}'s state travelled");
        if home == "home-1" {
            assert_ne!(new_home, "home-1", "{u} moved");
        } else {
            assert_eq!(home, new_home, "{u} stayed");
        }
    }
    assert!(d.home("home-1").log_text().contains("move out done"), "audit lines on the old home");
    // The old home no longer answers for them: its API sends callers to the new home.
    let moved = format!("/users/u{}@example.test/contacts", on_home_1[0]);
    let (code, head, _) = http_full(d.home("home-1").ops, "GET", &moved, "");
    assert_eq!(code, 503, "{head}");
    assert!(head.contains("retry-after: 1") && head.contains("parley-rehome: 1"), "{head}");

    // The watcher's dialog ended (deactivated); subscribing again reaches the new home.
    let n = expect(&watcher, "NOTIFY", Duration::from_secs(10));
    assert!(
        header(&n, "Subscription-State").is_some_and(|s| s.contains("terminated") && s.contains("reason=deactivated")),
        "{n}"
    );
    watcher.new_call("watch-again");
    let ok = watcher.send_authenticated("SUBSCRIBE", &watched, &watched, "Event: presence\r\nExpires: 600\r\n", "");
    assert_eq!(status(&ok), 200, "{ok}");
    let n = expect(&watcher, "NOTIFY", Duration::from_secs(10));
    assert!(n.contains("<basic>open</basic>"), "the registration travelled: the user is online on the new home: {n}");

    // The early users did not sign in again: messages reach them on their new homes all the same.
    let mut sender = Ua::new(&format!("u{watcher_i}"), d.fe.sip);
    for ua in &early_uas {
        sender.new_call(&format!("to-{}", ua.user));
        let r = message(&mut sender, ua, &format!("hello {} on your new home", ua.user));
        assert_eq!(status(&r), 200, "{r}");
    }

    // Every user signs in through the Front-End and messages the next one.
    let mut uas: Vec<Ua> = (0..USERS).map(|i| Ua::new(&format!("u{i}"), d.fe.sip)).collect();
    for ua in &mut uas {
        let r = ua.register(600);
        assert_eq!(status(&r), 200, "{}: {r}", ua.user);
    }
    for i in 0..USERS {
        let (left, right) = uas.split_at_mut(i.max((i + 1) % USERS));
        let (from, to) = if i + 1 < USERS { (&mut left[i], &right[0]) } else { (&mut right[0], &left[0]) };
        from.new_call("hello");
        let r = message(from, to, &format!("hello from u{i}"));
        assert_eq!(status(&r), 200, "u{i}: {r}");
    }
    // Moved users see their contact list over SIP too (RFC 4662 list subscription, new home).
    for &i in on_home_1.iter().skip(10).take(5) {
        let ua = &mut uas[i];
        ua.new_call("list");
        let list = format!("sip:u{i}+contacts@example.test");
        let extra = "Event: presence\r\nSupported: eventlist\r\nExpires: 300\r\n";
        let r = ua.send_authenticated("SUBSCRIBE", &list, &list, extra, "");
        assert_eq!(status(&r), 200, "{r}");
        let n = expect(ua, "NOTIFY", Duration::from_secs(10));
        for c in [(i + 1) % USERS, (i + 7) % USERS] {
            assert!(n.contains(&format!("<resource uri=\"sip:u{c}@example.test\">")), "u{i}'s list has u{c}: {n}");
        }
    }
    let total: u64 = d.homes.iter().map(|h| d.status(&h.name)["registeredUsers"].as_u64().unwrap()).sum();
    assert_eq!(total, USERS as u64);
    assert_eq!(d.status("home-1")["registeredUsers"].as_u64(), Some(0));
    drop(d.fe);
}

/// Directory entries prepared by an earlier version: `prep schema` adds the capacity and API
/// attributes and widens parleyServer, and `prep verify` passes.
#[test]
fn prep_schema_upgrades_a_directory_prepared_by_the_previous_version() {
    let slapd = Slapd::start();
    let ldif = must(parley(&slapd, &["prep", "schema", "--print"], &[]), "prep schema --print");
    let old: String = ldif
        .lines()
        .filter(|l| !l.contains("parleyCapacity'") && !l.contains("parleyServerApi'"))
        .map(|l| l.replace(" $ parleyCapacity $ parleyServerApi", ""))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(old.contains("NAME 'parleyServer'") && !old.contains("parleyCapacity"), "{old}");
    slapd.admin_modify(&format!(
        "{}\n",
        old.replacen("dn: cn=parley,cn=schema,cn=config", "dn: cn=parley,cn=schema,cn=config\nchangetype: add", 1)
    ));
    let outdated = parley(&slapd, &["prep", "verify"], &[]);
    assert!(
        outdated.stdout.contains("parleyCapacity") && outdated.stdout.contains("parleyServer (outdated"),
        "{}",
        outdated.stdout
    );
    let upgraded = must(parley(&slapd, &["prep", "schema"], &[]), "prep schema");
    assert!(upgraded.contains("added attribute type parleyCapacity (1.3.6.1.4.1.61626.1.1.9)"), "{upgraded}");
    assert!(upgraded.contains("added attribute type parleyServerApi (1.3.6.1.4.1.61626.1.1.10)"), "{upgraded}");
    assert!(upgraded.contains("updated object class parleyServer"), "{upgraded}");
    let pw = slapd.password_file("service", "service-secret");
    must(
        parley(&slapd, &["prep", "enterprise", "--sip-domain", "example.test", "--home-server", "home-1=h:1"], &[]),
        "enterprise",
    );
    must(parley(&slapd, &["prep", "domain", "--service-account-password-file", pw.to_str().unwrap()], &[]), "domain");
    let changed = must(
        parley(&slapd, &["prep", "enterprise", "--home-server", "home-1=h:1,capacity=50,api=http://h:8080"], &[]),
        "enterprise with capacity",
    );
    assert!(
        changed.contains("home-1: capacity set to 50 (was unset)")
            && changed.contains("home-1: API set to http://h:8080"),
        "{changed}"
    );
    let verified = must(parley(&slapd, &["prep", "verify"], &[]), "prep verify");
    assert!(verified.contains("schema: prepared"), "{verified}");
    let bad = parley(&slapd, &["prep", "enterprise", "--home-server", "home-1=h:1,capacity=many"], &[]);
    assert!(!bad.ok && bad.stderr.contains("capacity \"many\" is not a whole number"), "{}", bad.stderr);
}

/// `user enable --from` a CSV and an LDIF: existing entries become Parley users, placed; bad
/// lines are reported with their number and the rest is done.
#[test]
fn users_are_enabled_in_bulk_from_csv_and_ldif() {
    let slapd = Slapd::start();
    must(parley(&slapd, &["prep", "schema"], &[]), "prep schema");
    must(
        parley(
            &slapd,
            &[
                "prep",
                "enterprise",
                "--sip-domain",
                "example.test",
                "--home-server",
                "home-a=a:1,capacity=3",
                "--home-server",
                "home-b=b:1,capacity=3",
            ],
            &[],
        ),
        "prep enterprise",
    );
    let service_pw = slapd.password_file("service", "service-secret");
    must(
        parley(&slapd, &["prep", "domain", "--service-account-password-file", service_pw.to_str().unwrap()], &[]),
        "prep domain",
    );
    // A member of the user administrators, not the directory's administrator, enables them.
    let ua_dn = format!("cn=ua,{BASE}");
    let mut people = format!(
        "dn: {ua_dn}\nchangetype: add\nobjectClass: person\ncn: ua\nsn: ua\nuserPassword: ua-secret\n\n\
         dn: cn=ParleyUserAdmins,ou=Parley,{BASE}\nchangetype: modify\nadd: member\nmember: {ua_dn}\n-\n\n"
    );
    for n in ["p1", "p2", "p3", "p4", "p5"] {
        people += &format!(
            "dn: uid={n},ou=People,{BASE}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: {n}\ncn: {n}\nsn: {n}\nmail: {n}@example.test\n\n"
        );
    }
    slapd.admin_modify(&people);
    let ua_pw = slapd.password_file("ua", "ua-secret");
    let as_ua: [(&str, &std::ffi::OsStr); 2] =
        [("PARLEY_LDAP_BIND_DN", ua_dn.as_ref()), ("PARLEY_LDAP_BIND_PASSWORD_FILE", ua_pw.as_os_str())];
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("users.csv");
    std::fs::write(&csv, "address,home_server\np1@example.test,\np2@example.test,home-b\nnobody@example.test,\n,home-a\np3@example.test,home-z\n").unwrap();
    let out = parley(&slapd, &["user", "enable", "--from", csv.to_str().unwrap()], &as_ua);
    assert!(!out.ok, "some lines failed: {}", out.stdout);
    assert!(out.stdout.contains("enable: 2 enabled, 0 already enabled, 3 failed"), "{}", out.stdout);
    for want in [
        "line 4: no directory entry has the address nobody@example.test",
        "line 5: no address",
        "line 6: no Home Server named \"home-z\"",
    ] {
        assert!(out.stderr.contains(want), "{want} in:\n{}", out.stderr);
    }
    let ldif = dir.path().join("users.ldif");
    std::fs::write(
        &ldif,
        format!("dn: uid=p3,ou=People,{BASE}\n\ndn: uid=p4,ou=People,{BASE}\nparleySipAddress: p4@example.test\n\ndn: uid=p5,ou=People,{BASE}\nmail: p5@example.test\n"),
    )
    .unwrap();
    let out = must(parley(&slapd, &["user", "enable", "--from", ldif.to_str().unwrap()], &as_ua), "enable --from ldif");
    assert!(
        out.contains("enable: 3 enabled, 0 already enabled, 0 failed (home-a: 3 of 3 used, home-b: 2 of 3 used)"),
        "{out}"
    );
    let listed = must(parley(&slapd, &["user", "list"], &[]), "user list");
    assert!(
        listed.contains("p2@example.test enabled home-b") && listed.contains("p1@example.test enabled home-a"),
        "{listed}"
    );
    let again = must(parley(&slapd, &["user", "enable", "--from", ldif.to_str().unwrap()], &[]), "again");
    assert!(again.contains("enable: 0 enabled, 3 already enabled, 0 failed"), "{again}");
    // Full: a sixth user has nowhere to go.
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret").unwrap();
    let out = parley(&slapd, &["user", "add", "p6@example.test", "--password-file", pw.to_str().unwrap()], &[]);
    assert!(out.ok, "{}", out.stderr);
    let out = parley(&slapd, &["user", "add", "p7@example.test", "--password-file", pw.to_str().unwrap()], &[]);
    assert!(
        !out.ok && out.stderr.contains("every Home Server is full: home-a: 3 of 3 used, home-b: 3 of 3 used"),
        "{}",
        out.stderr
    );
    let _: &Path = dir.path();
}

/// A sipp process (Debian's sip-tester 3.6, UDP) loading the moved user through the Front-End,
/// in its own directory: its error and message logs, its statistics (`stats.csv`) and its
/// scenario counters (`*_counts.csv`), the last two dumped every second.
struct Sipp {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    what: &'static str,
}

impl Sipp {
    /// Starts sipp against `target` with `args` (after the scenario's own) and waits until
    /// `ready` holds. Its port is picked free, but another process may take it first: then sipp
    /// exits at once, and it starts again on another.
    fn start(
        what: &'static str,
        target: SocketAddr,
        scenario: &[&str],
        args: &[&str],
        files: &[(&str, &str)],
        ready: fn(&Sipp) -> bool,
    ) -> Sipp {
        for attempt in 1..=3 {
            let dir = tempfile::tempdir().unwrap();
            for (name, text) in files {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
            let port = free_port();
            let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp");
            let child = support::spawn_in(
                Command::new("sipp")
                    .arg(target.to_string())
                    .args(scenario.iter().map(|a| a.strip_prefix("sipp/").map_or((*a).into(), |f| scenarios.join(f))))
                    .args(args)
                    .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-t", "u1", "-nostdin"])
                    .args([
                        "-trace_err",
                        "-trace_msg",
                        "-trace_counts",
                        "-trace_stat",
                        "-stf",
                        "stats.csv",
                        "-fd",
                        "1",
                    ]),
                dir.path(),
            )
            .expect("start sipp");
            let mut sipp = Sipp { child, dir, port, what };
            let deadline = Instant::now() + Duration::from_secs(20);
            while !ready(&sipp) {
                if let Some(status) = sipp.child.try_wait().unwrap() {
                    assert!(attempt < 3, "{what}: sipp exited with {status}:\n{}", sipp.logs());
                    break;
                }
                assert!(Instant::now() < deadline, "{what}: sipp is not under way:\n{}", sipp.logs());
                std::thread::sleep(Duration::from_millis(50));
            }
            if ready(&sipp) {
                return sipp;
            }
        }
        unreachable!()
    }

    /// The last complete line of one of sipp's CSV files (the one whose name ends with
    /// `suffix`), by column: the counters, or nothing before its first dump.
    fn row(&self, suffix: &str) -> BTreeMap<String, u64> {
        let Some(path) = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(suffix))
        else {
            return BTreeMap::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut lines = text.lines();
        let Some(names) = lines.next() else { return BTreeMap::new() };
        let names: Vec<&str> = names.split(';').collect();
        // The line being written may be cut short.
        let Some(last) = lines.map(|l| l.split(';').collect::<Vec<_>>()).rfind(|l| l.len() == names.len()) else {
            return BTreeMap::new();
        };
        names.iter().zip(last).filter_map(|(n, v)| Some((n.to_string(), v.trim().parse().ok()?))).collect()
    }

    /// A statistic of `stats.csv` (`SuccessfulCall(C)`, say), 0 before the first dump.
    fn stat(&self, name: &str) -> u64 {
        self.row("stats.csv").get(name).copied().unwrap_or(0)
    }

    /// How many times the scenario's `<recv response="code">` elements matched, in all.
    fn received(&self, code: u16) -> u64 {
        let suffix = format!("_{code}_Recv");
        self.row("_counts.csv").iter().filter(|(n, _)| n.ends_with(&suffix)).map(|(_, v)| v).sum()
    }

    /// Every message sipp received, from its message log (`-trace_msg`).
    fn messages(&self) -> Vec<String> {
        let Some(path) = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with("_messages.log"))
        else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(path).unwrap();
        text.split("\n----------------------------------------------- ")
            .filter(|entry| entry.lines().nth(1).is_some_and(|l| l.contains("message received")))
            .filter_map(|entry| entry.split_once("\n\n").map(|(_, m)| m.trim().to_string()))
            .collect()
    }

    /// Stops the device (moved_user_register.xml): the MESSAGE "parley-sipp: stop", straight to
    /// its socket, until it is answered; its registering call then ends, and so does sipp.
    fn stop(&self) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let (me, body) = (socket.local_addr().unwrap(), "parley-sipp: stop");
        let request = format!(
            "MESSAGE sip:mover@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-stop\r\n\
             From: <sip:placement-test@example.test>;tag=stop\r\nTo: <sip:mover@example.test>\r\n\
             Call-ID: parley-sipp-stop@{me}\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len(),
            port = self.port
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0; 4096];
        loop {
            socket.send_to(request.as_bytes(), ("127.0.0.1", self.port)).unwrap();
            if let Ok(n) = socket.recv(&mut buf)
                && buf[..n].starts_with(b"SIP/2.0 200")
            {
                return;
            }
            assert!(Instant::now() < deadline, "{}: the stop MESSAGE is not answered:\n{}", self.what, self.logs());
        }
    }

    /// Waits for sipp to exit by itself, at most 20 s; its exit status must be 0 (every call
    /// succeeded).
    fn wait_for_clean_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{}: sipp did not exit when stopped:\n{}", self.what, self.logs());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "{}: sipp exited with {status}; the answers its scenario does not take: {:#?}\n{}",
            self.what,
            self.unexpected(),
            self.logs()
        );
    }

    /// The answers sipp received that its scenarios do not take: any but 200, a challenge, and
    /// a 503 with Retry-After.
    fn unexpected(&self) -> Vec<String> {
        let taken = |m: &&String| match response_facts(m) {
            Some((200 | 401 | 407, _, _)) | Some((503, _, true)) => true,
            Some(_) => false,
            None => true, // a request
        };
        self.messages().into_iter().filter(|m| !taken(&m)).collect()
    }

    /// The end of each of sipp's logs and outputs.
    fn logs(&self) -> String {
        support::tails_of(self.dir.path(), &["log", "txt", "csv"])
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        // Only when the test failed: a stopped sipp has exited and been waited for already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The status code of a response, its CSeq method and whether it has a Retry-After.
fn response_facts(m: &str) -> Option<(u16, String, bool)> {
    let code = m.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()?;
    let method = header(m, "CSeq").and_then(|c| c.split_whitespace().nth(1).map(str::to_string)).unwrap_or_default();
    Some((code, method, header(m, "Retry-After").is_some()))
}

/// What a client saw: one answer.
#[derive(Debug, Clone)]
struct Seen {
    what: &'static str,
    code: u16,
    retry_after: bool,
    /// `Parley-Rehome`: meant for the Front-End, never for a SIP client.
    rehome: bool,
}

/// A user moved back and forth between two Home Servers while a device of theirs keeps
/// registering, another answers the messages a second user keeps sending them (all through the
/// Front-End), and an API client keeps rewriting their contact list (honouring 503's
/// Retry-After, and following Parley-Rehome to the other server). Real sipp (UDP) loads the user
/// through the Front-End for the whole of the moves too: one sipp is a third device of the user's,
/// registering again and again and answering every MESSAGE (`tests/sipp/moved_user_register.xml`
/// with `moved_user_answer.xml` for the MESSAGEs), another keeps messaging the user as the second
/// user (`moved_user_message.xml`); both take a 503 only with Retry-After, and retry after it.
/// No client sees a 404 or a 5xx without Retry-After (for sipp: from its own message logs, and its
/// exit status, 0 only if every call succeeded), messages reach the user and sipp registers and
/// messages again after every move, and the contact list ends as the last acknowledged write
/// left it.
#[test]
fn a_user_moved_back_and_forth_under_load_sees_no_error_without_retry_after() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let d = deploy();
    let pw = d.dir.path().join("user.pw");
    for (name, home) in [("mover", "home-1"), ("talker", "home-2")] {
        std::fs::write(&pw, format!("{name}-password")).unwrap();
        let args = [
            "user",
            "add",
            &format!("{name}@example.test"),
            "--home-server",
            home,
            "--password-file",
            pw.to_str().unwrap(),
        ];
        must(d.admin(&args), "user add");
    }
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(None::<u64>));
    let record = |seen: &Arc<Mutex<Vec<Seen>>>, what, r: &str| {
        let s = Seen {
            what,
            code: status(r),
            retry_after: header(r, "Retry-After").is_some(),
            rehome: header(r, "Parley-Rehome").is_some(),
        };
        seen.lock().unwrap().push(s);
    };
    let fe = d.fe.sip;
    // The device that answers messages registers once; its binding must travel with each move.
    let mut device = Ua::new("mover", fe);
    assert_eq!(status(&device.register(600)), 200);
    let homes: Vec<(String, SocketAddr)> = d.homes.iter().map(|h| (h.name.clone(), h.ops)).collect();
    // Real sipp too, for the whole of the moves: a device of the mover's that keeps registering
    // and answers every MESSAGE, and a sender that keeps messaging the mover as the talker.
    let mut sipp = tool_available("sipp", "the moved user's sipp device and sipp's messages to them").then(|| {
        let device = Sipp::start(
            "the mover's sipp device",
            fe,
            &["-sf", "sipp/moved_user_register.xml", "-oocsf", "sipp/moved_user_answer.xml"],
            &["-s", "mover", "-ap", "mover-password", "-m", "1"],
            &[],
            |s| s.received(200) >= 1,
        );
        let talker = Sipp::start(
            "sipp messaging the mover",
            fe,
            &["-sf", "sipp/moved_user_message.xml", "-inf", "talker.csv", "-s", "mover"],
            &["-r", "10", "-l", "10", "-m", "1000000"],
            &[("talker.csv", "SEQUENTIAL\ntalker;[authentication username=talker password=talker-password]\n")],
            |s| s.stat("SuccessfulCall(C)") >= 1,
        );
        (device, talker)
    });
    // (REGISTERs of sipp's device answered 200, MESSAGEs of sipp's sender answered 200.)
    let sipp_done = |sipp: &Option<(Sipp, Sipp)>| {
        sipp.as_ref().map_or((0, 0), |(device, talker)| (device.received(200), talker.stat("SuccessfulCall(C)")))
    };
    std::thread::scope(|s| {
        // The clients stop when the moves are over, or when a check fails (and would otherwise
        // wait for them forever).
        let _stop = StopOnDrop(&stop);
        // A second device of the mover's keeps registering.
        s.spawn(|| {
            let mut ua = Ua::new("mover", fe).giving_up_after(Duration::from_secs(10));
            ua.new_call("registering");
            while !stop.load(Ordering::Relaxed) {
                let r = ua.try_send_authenticated(
                    "REGISTER",
                    "sip:example.test",
                    "sip:mover@example.test",
                    "Expires: 60\r\n",
                    "",
                );
                let r = r.expect("every REGISTER is answered");
                record(&seen, "REGISTER", &r);
            }
        });
        // The device answers every MESSAGE.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Some(m) = device.recv_request("MESSAGE", Duration::from_millis(200)) {
                    device.answer(&m, 200);
                }
            }
        });
        // The talker keeps messaging the mover.
        s.spawn(|| {
            let mut ua = Ua::new("talker", fe).giving_up_after(Duration::from_secs(10));
            let uri = "sip:mover@example.test";
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                ua.new_call(&format!("m{n}"));
                let r = ua.try_send_authenticated("MESSAGE", uri, uri, "Content-Type: text/plain\r\n", "hi");
                let r = r.expect("every MESSAGE is answered");
                if status(&r) == 200 {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                record(&seen, "MESSAGE", &r);
            }
        });
        // The API client keeps rewriting the contact list, following the user.
        s.spawn(|| {
            let mut at = 0;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let body = format!("{{\"contacts\": [\"c{i}@example.test\"]}}");
                let (code, head, _) = http_full(homes[at].1, "PUT", "/users/mover@example.test/contacts", &body);
                let (retry_after, rehome) = (head.contains("retry-after:"), head.contains("parley-rehome: 1"));
                seen.lock().unwrap().push(Seen { what: "PUT contacts", code, retry_after, rehome });
                match code {
                    200 => *acked.lock().unwrap() = Some(i),
                    503 if rehome => at = 1 - at,
                    // Retry-After says 1 second: the client honours it.
                    503 => std::thread::sleep(Duration::from_secs(1)),
                    _ => {}
                }
            }
        });

        let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !cond() {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait_for("messages are delivered before any move", &|| delivered.load(Ordering::Relaxed) >= 3);
        for (from, to) in [("home-1", "home-2"), ("home-2", "home-1"), ("home-1", "home-2"), ("home-2", "home-1")] {
            let moved = must(d.admin(&["user", "move", "mover@example.test", "--home-server", to]), "user move");
            assert!(moved.contains(&format!("moved mover@example.test from {from} to {to}")), "{moved}");
            let before = (delivered.load(Ordering::Relaxed), acked.lock().unwrap().unwrap_or(0), sipp_done(&sipp));
            wait_for("messages reach the mover after the move", &|| delivered.load(Ordering::Relaxed) >= before.0 + 3);
            wait_for("contact-list writes are acknowledged after the move", &|| {
                acked.lock().unwrap().unwrap_or(0) > before.1
            });
            if let Some((device, talker)) = &sipp {
                wait_for("sipp's device registers again after the move", &|| device.received(200) > before.2.0);
                wait_for("sipp's messages reach the mover after the move", &|| {
                    talker.stat("SuccessfulCall(C)") > before.2.1
                });
            }
        }
        if let Some((device, talker)) = &mut sipp {
            // SIGUSR1: sipp starts no more calls and exits once the running ones have ended.
            assert!(talker.child.try_wait().unwrap().is_none(), "sipp exited under load:\n{}", talker.logs());
            let pid = talker.child.id().to_string();
            assert!(Command::new("kill").args(["-USR1", &pid]).status().unwrap().success(), "kill -USR1 {pid}");
            talker.wait_for_clean_exit();
            device.stop();
            device.wait_for_clean_exit();
        }
        stop.store(true, Ordering::Relaxed);
    });

    let seen = seen.lock().unwrap();
    let bad: Vec<&Seen> = seen.iter().filter(|s| s.code == 404 || (s.code >= 500 && !s.retry_after)).collect();
    assert!(bad.is_empty(), "no 404 and no 5xx without Retry-After: {bad:?}");
    let leaked: Vec<&Seen> = seen.iter().filter(|s| s.rehome && s.what != "PUT contacts").collect();
    assert!(leaked.is_empty(), "the Front-End follows Parley-Rehome itself: {leaked:?}");
    let count = |what: &str, code: u16| seen.iter().filter(|s| s.what == what && s.code == code).count();
    eprintln!(
        "REGISTER 200: {}, 503: {}; MESSAGE 200: {}, 503: {}; PUT 200: {}, 503: {}",
        count("REGISTER", 200),
        count("REGISTER", 503),
        count("MESSAGE", 200),
        count("MESSAGE", 503),
        count("PUT contacts", 200),
        count("PUT contacts", 503)
    );
    if let Some((device, talker)) = &sipp {
        // Every answer sipp received, from its own message logs.
        let (mut counts, mut bad) = (BTreeMap::<(String, u16), usize>::new(), Vec::new());
        for m in device.messages().iter().chain(&talker.messages()) {
            let Some((code, method, retry_after)) = response_facts(m) else { continue };
            if code == 404 || (code >= 500 && !retry_after) {
                bad.push(m.clone());
            }
            *counts.entry((method, code)).or_default() += 1;
        }
        assert!(bad.is_empty(), "sipp received a 404 or a 5xx without Retry-After: {bad:#?}");
        let count = |method: &str, code: u16| counts.get(&(method.to_string(), code)).copied().unwrap_or(0);
        let answered =
            device.messages().iter().filter(|m| m.starts_with("MESSAGE ") && !m.ends_with("parley-sipp: stop")).count();
        eprintln!(
            "sipp: REGISTER 200: {}, 503: {}; MESSAGE 200: {}, 503: {}; MESSAGEs answered by sipp's device: {answered}",
            count("REGISTER", 200),
            count("REGISTER", 503),
            count("MESSAGE", 200),
            count("MESSAGE", 503),
        );
        assert!(count("REGISTER", 200) >= 10, "sipp's device registered {} times", count("REGISTER", 200));
        assert!(count("MESSAGE", 200) >= 20, "sipp's MESSAGEs delivered: {}", count("MESSAGE", 200));
        assert!(answered >= 10, "sipp's device answered {answered} MESSAGEs");
    }
    let last = acked.lock().unwrap().expect("writes were acknowledged");
    let (code, body) =
        try_http(d.home("home-1").ops, "GET", "/users/mover@example.test/contacts", Some(TOKEN), "").unwrap();
    assert_eq!(code, 200);
    assert_eq!(body, format!("{{\"contacts\":[\"c{last}@example.test\"]}}"), "the last acknowledged write");
    assert!(
        d.fe.log_text().contains("user moved to another Home Server: routing again"),
        "the Front-End followed Parley-Rehome at least once"
    );

    // A move the new home cannot take is undone: the user stays, served at once, unlocked.
    let closed = free_port();
    must(
        parley(
            &d.slapd,
            &[
                "prep",
                "enterprise",
                "--home-server",
                &format!("home-x=127.0.0.1:{closed},api=http://127.0.0.1:{closed}"),
            ],
            &[],
        ),
        "register home-x",
    );
    let failed = d.admin(&["user", "move", "mover@example.test", "--home-server", "home-x"]);
    assert!(!failed.ok, "{}", failed.stdout);
    assert!(failed.stderr.contains("mover@example.test: giving the user's state to home-x"), "{}", failed.stderr);
    assert_eq!(d.status("home-1")["movesInProgress"].as_u64(), Some(0));
    let mut again = Ua::new("mover", fe);
    let r = again.register(60);
    assert_eq!(status(&r), 200, "served on home-1 at once: {r}");
    assert!(must(d.admin(&["user", "show", "mover@example.test"]), "show").contains("home server: home-1"));
}

/// An HTTP request with the admin token: status, the header section (lower-case) and the body.
fn http_full(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let (code, head, body) = support::http_request(addr, method, path, Some(&format!("Bearer {TOKEN}")), body);
    (code, head.to_ascii_lowercase(), body)
}

/// A standalone server with a users file reports the file's users and the default capacity.
#[test]
fn a_server_with_a_users_file_reports_its_users_and_the_default_capacity() {
    let server = support::Server::start();
    let (code, body) = server.http_get("/status").expect("status");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        "{\"server\":\"home-1\",\"homedUsers\":3,\"capacity\":10000,\"registeredUsers\":0,\"movesInProgress\":0}"
    );
    let mut alice = Ua::new("alice", server.sip);
    assert_eq!(status(&alice.register(300)), 200);
    let (_, body) = server.http_get("/status?fresh=1").expect("status");
    assert!(body.contains("\"registeredUsers\":1"), "{body}");
    assert_eq!(server.metric("parley_capacity_users"), 10000.0);
    // The administrators' API takes the bearer token only.
    let (code, _) = server.http("POST", "/admin/users/alice/move-out", None, "");
    assert_eq!(code, 401);
}
