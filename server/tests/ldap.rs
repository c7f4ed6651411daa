//! The LDAP directory against a real OpenLDAP slapd started by the test: `prep` steps (idempotent,
//! verified, visible to ldapsearch), the access rules, `user` administration, and a Home Server
//! whose users live in slapd: digest REGISTER, MESSAGE, disabling, and a directory outage.

#[path = "support/slapd.rs"]
mod slapd;
mod support;

use slapd::{ADMIN_DN, BASE, PARTNER_BASE, Slapd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::ua::{Ua, header, status};
use support::{Out, Server, free_port, require_tool, run_parley};

const SERVICE_DN: &str = "cn=ParleyService,ou=Parley,dc=example,dc=test";
const SERVICE_PASSWORD: &str = "service-secret";

/// Runs `parley-server` against `slapd`, bound as `dn` with the password in `password_file`.
fn parley_as(slapd: &Slapd, dn: &str, password_file: &Path, args: &[&str], stdin: &str) -> Out {
    let env: [(&str, &std::ffi::OsStr); 5] = [
        ("PARLEY_LDAP_URL", slapd.url.as_ref()),
        ("PARLEY_LDAP_BASE_DN", BASE.as_ref()),
        ("PARLEY_LDAP_BIND_DN", dn.as_ref()),
        ("PARLEY_LDAP_BIND_PASSWORD_FILE", password_file.as_os_str()),
        ("PARLEY_LDAP_PASSWORD", "not-this-one".as_ref()),
    ];
    run_parley(args, &env, stdin)
}

fn admin(slapd: &Slapd, args: &[&str]) -> Out {
    parley_as(slapd, ADMIN_DN, &slapd.admin_password_file(), args, "")
}

fn must(out: Out, what: &str) -> String {
    assert!(out.ok, "{what} failed:\n{}{}", out.stdout, out.stderr);
    out.stdout
}

/// Runs the four prep steps; returns their outputs.
fn prepare(slapd: &Slapd) -> Vec<String> {
    let service_pw = slapd.password_file("service", SERVICE_PASSWORD);
    let service_pw = service_pw.to_str().unwrap();
    vec![
        must(admin(slapd, &["prep", "schema"]), "prep schema"),
        must(
            admin(
                slapd,
                &["prep", "enterprise", "--sip-domain", "example.test", "--home-server", "home-1=127.0.0.1:5060"],
            ),
            "prep enterprise",
        ),
        must(admin(slapd, &["prep", "domain", "--service-account-password-file", service_pw]), "prep domain"),
        must(
            admin(slapd, &["prep", "domainadd", "--domain", "partner.test", "--domain-base-dn", PARTNER_BASE]),
            "prep domainadd",
        ),
    ]
}

fn add_user(slapd: &Slapd, address: &str, password: &str) {
    let out = parley_as(
        slapd,
        ADMIN_DN,
        &slapd.admin_password_file(),
        &["user", "add", address, "--home-server", "home-1"],
        &format!("{password}\n"),
    );
    must(out, "user add");
}

#[test]
fn prep_steps_are_idempotent_and_verified() {
    let slapd = Slapd::start();
    let fresh = admin(&slapd, &["prep", "verify"]);
    assert!(!fresh.ok, "verify fails on a fresh directory:\n{}", fresh.stdout);
    for step in ["schema", "enterprise", "domain", "domainadd"] {
        assert!(
            fresh.stdout.lines().any(|l| l.starts_with(&format!("{step}: missing"))),
            "{step} reported missing:\n{}",
            fresh.stdout
        );
    }
    // An older Parley's schema: one attribute type and a narrower parleyUser. prep schema adds
    // only what is missing and widens the class.
    let ldif = must(admin(&slapd, &["prep", "schema", "--print"]), "prep schema --print");
    let first_type = ldif.lines().find(|l| l.starts_with("olcAttributeTypes:")).unwrap();
    let user_class = ldif.lines().find(|l| l.contains("NAME 'parleyUser'")).unwrap();
    let old_class = user_class.split(" MAY").next().unwrap().to_string() + " )";
    slapd.admin_modify(&format!(
        "dn: cn=parley,cn=schema,cn=config\nchangetype: add\nobjectClass: olcSchemaConfig\ncn: parley\n{first_type}\n{old_class}\n"
    ));
    let outdated = admin(&slapd, &["prep", "verify"]);
    assert!(outdated.stdout.contains("parleyUser (outdated: lacks parleyEnabled"), "{}", outdated.stdout);

    let first = prepare(&slapd);
    assert!(!first[0].contains("parleySipAddress"), "already there:\n{}", first[0]);
    assert!(first[0].contains("added attribute type parleyHA1MD5"), "{}", first[0]);
    assert!(first[0].contains("updated object class parleyUser"), "{}", first[0]);
    assert!(first[1].contains("created settings container cn=Parley Services,dc=example,dc=test"), "{}", first[1]);
    assert!(first[1].contains("registered Home Server home-1 at 127.0.0.1:5060"), "{}", first[1]);
    assert!(first[2].contains("created service account"), "{}", first[2]);
    assert!(first[2].contains("access rules"), "{}", first[2]);
    assert!(first[3].contains("admitted domain partner.test"), "{}", first[3]);
    let verified = must(admin(&slapd, &["prep", "verify"]), "prep verify");
    assert_eq!(verified.lines().filter(|l| l.contains(": prepared")).count(), 4, "{verified}");

    // Again: nothing changes.
    let schema_before = slapd.admin_search("cn=schema,cn=config", "sub", "(cn=*parley)", &["olcObjectClasses"]);
    let acl_before = slapd.admin_search("cn=config", "one", "(olcSuffix=*)", &["olcAccess"]);
    for (out, step) in prepare(&slapd).iter().zip(["schema", "enterprise", "domain", "domainadd"]) {
        assert_eq!(out.trim(), format!("{step}: already prepared"));
    }
    assert_eq!(schema_before, slapd.admin_search("cn=schema,cn=config", "sub", "(cn=*parley)", &["olcObjectClasses"]));
    assert_eq!(acl_before, slapd.admin_search("cn=config", "one", "(olcSuffix=*)", &["olcAccess"]));
    must(admin(&slapd, &["prep", "verify"]), "prep verify again");

    // What an administrator sees with ldapsearch, as the seed's MMC validation.
    let schema = slapd.admin_search("cn=Subschema", "base", "(objectClass=*)", &["attributeTypes", "objectClasses"]);
    for name in ["parleySipAddress", "parleyEnabled", "parleyHomeServer", "parleyHA1MD5", "parleyHA1SHA256"] {
        assert!(schema.contains(&format!("NAME '{name}'")), "{name} in the subschema");
    }
    let user_class = schema.lines().find(|l| l.contains("NAME 'parleyUser'")).expect("parleyUser in the subschema");
    assert!(user_class.contains("AUXILIARY") && user_class.contains("parleyHA1SHA256"), "{user_class}");
    let entries = slapd.admin_search(
        BASE,
        "sub",
        "(|(objectClass=parleyServices)(objectClass=groupOfNames)(cn=ParleyService))",
        &["dn"],
    );
    for dn in [
        "dn: cn=Parley Services,dc=example,dc=test",
        "dn: cn=ParleyService,ou=Parley,dc=example,dc=test",
        "dn: cn=ParleyServerAdmins,ou=Parley,dc=example,dc=test",
        "dn: cn=ParleyUserAdmins,ou=Parley,dc=example,dc=test",
        "dn: cn=ParleyReadOnlyAdmins,ou=Parley,dc=example,dc=test",
    ] {
        assert!(entries.contains(dn), "{dn} in:\n{entries}");
    }
    let settings = slapd.admin_search(&format!("cn=Parley Services,{BASE}"), "sub", "(objectClass=*)", &["*"]);
    assert!(settings.contains("parleySipDomain: example.test") && settings.contains("parleySipDomain: partner.test"));
    assert!(settings.contains("parleyServerAddress: 127.0.0.1:5060"), "{settings}");
    assert!(settings.contains(&format!("parleyUserBaseDN: {PARTNER_BASE}")), "{settings}");
}

#[test]
fn access_rules_separate_the_service_account_and_the_administrators() {
    let slapd = Slapd::start();
    prepare(&slapd);
    let ua_dn = "cn=ua,dc=example,dc=test";
    let ro_dn = "cn=ro,dc=example,dc=test";
    slapd.admin_modify(&format!(
        "dn: {ua_dn}\nchangetype: add\nobjectClass: person\ncn: ua\nsn: ua\nuserPassword: ua-secret\n\n\
         dn: {ro_dn}\nchangetype: add\nobjectClass: person\ncn: ro\nsn: ro\nuserPassword: ro-secret\n\n\
         dn: cn=ParleyUserAdmins,ou=Parley,{BASE}\nchangetype: modify\nadd: member\nmember: {ua_dn}\n-\n\n\
         dn: cn=ParleyReadOnlyAdmins,ou=Parley,{BASE}\nchangetype: modify\nadd: member\nmember: {ro_dn}\n-\n"
    ));
    let (ua_pw, ro_pw) = (slapd.password_file("ua", "ua-secret"), slapd.password_file("ro", "ro-secret"));
    let svc_pw = slapd.password_file("service", SERVICE_PASSWORD);

    // A user administrator adds users, in this domain and in the admitted one.
    let added = parley_as(
        &slapd,
        ua_dn,
        &ua_pw,
        &["user", "add", "carol@example.test", "--home-server", "home-1"],
        "carol-password\n",
    );
    let audit = added.stderr.clone();
    must(added, "user add as user admin");
    // The audit line: who (the DN bound as), what, whom; never the password.
    assert!(
        audit.contains("audit")
            && audit.contains("user added")
            && audit.contains(ua_dn)
            && audit.contains("carol@example.test"),
        "{audit}"
    );
    assert!(!audit.contains("carol-password"), "{audit}");
    let added =
        parley_as(&slapd, ua_dn, &ua_pw, &["user", "add", "dave@partner.test", "--home-server", "home-1"], "pw\n");
    assert!(must(added, "user add in partner.test").contains(&format!("ou=People,{PARTNER_BASE}")));
    let refused =
        parley_as(&slapd, ro_dn, &ro_pw, &["user", "add", "eve@example.test", "--home-server", "home-1"], "pw\n");
    assert!(!refused.ok && refused.stderr.contains(&format!("permission denied: {ro_dn}")), "{}", refused.stderr);

    // The service account reads HA1; read-only admins and anonymous clients see the user, not HA1.
    let carol = "(parleySipAddress=carol@example.test)";
    let ha1 =
        |bind: Option<(&str, &Path)>| slapd.search(bind, BASE, "sub", carol, &["parleySipAddress", "parleyHA1MD5"]).1;
    let seen = ha1(Some((SERVICE_DN, &svc_pw)));
    assert!(seen.contains("parleyHA1MD5: ") && seen.contains("parleySipAddress: carol@example.test"), "{seen}");
    for (who, seen) in [("read-only admin", ha1(Some((ro_dn, &ro_pw)))), ("anonymous", ha1(None))] {
        assert!(seen.contains("parleySipAddress: carol") && !seen.contains("parleyHA1MD5"), "{who}: {seen}");
    }
    let dave = slapd.search(
        Some((SERVICE_DN, &svc_pw)),
        PARTNER_BASE,
        "sub",
        "(parleySipAddress=dave@partner.test)",
        &["parleyHA1SHA256"],
    );
    assert!(dave.1.contains("parleyHA1SHA256: "), "service account reads the admitted domain: {}", dave.1);

    // Only the user administrator changes passwords.
    for (dn, pw) in [(SERVICE_DN, &svc_pw), (ro_dn, &ro_pw)] {
        let out = parley_as(&slapd, dn, pw, &["user", "set-password", "carol@example.test"], "new-password\n");
        assert!(
            !out.ok && out.stderr.contains(&format!("permission denied: {dn} may not change passwords")),
            "{}",
            out.stderr
        );
        let out = parley_as(&slapd, dn, pw, &["user", "disable", "carol@example.test"], "");
        assert!(!out.ok && out.stderr.contains("permission denied"), "{}", out.stderr);
    }
    let (ok, out) = slapd.modify(
        Some((SERVICE_DN, &svc_pw)),
        &format!("dn: uid=carol,ou=People,{BASE}\nchangetype: modify\nreplace: parleyHA1MD5\nparleyHA1MD5: 00\n-\n"),
    );
    assert!(!ok && out.contains("Insufficient access"), "{out}");
    let before = ha1(Some((SERVICE_DN, &svc_pw)));
    must(
        parley_as(&slapd, ua_dn, &ua_pw, &["user", "set-password", "carol@example.test"], "new-password\n"),
        "set-password",
    );
    assert_ne!(before, ha1(Some((SERVICE_DN, &svc_pw))), "HA1 changed");

    // Administration commands: show, move, list (paged), and clear errors.
    let shown = must(parley_as(&slapd, ro_dn, &ro_pw, &["user", "show", "carol@example.test"], ""), "show");
    assert!(shown.contains("enabled: yes") && shown.contains("home server: home-1"), "{shown}");
    let moved =
        parley_as(&slapd, ua_dn, &ua_pw, &["user", "move", "carol@example.test", "--home-server", "home-9"], "");
    assert!(!moved.ok && moved.stderr.contains("no Home Server named \"home-9\""), "{}", moved.stderr);
    let missing = parley_as(&slapd, ua_dn, &ua_pw, &["user", "show", "nobody@example.test"], "");
    assert!(!missing.ok && missing.stderr.contains("no such user: nobody@example.test"), "{}", missing.stderr);
    let listed = must(parley_as(&slapd, ua_dn, &ua_pw, &["user", "list", "--page-size", "1"], ""), "list");
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        ["carol@example.test enabled home-1", "dave@partner.test enabled home-1"]
    );
    let wrong = parley_as(&slapd, ua_dn, &ro_pw, &["user", "list"], "");
    assert!(!wrong.ok && wrong.stderr.contains(&format!("binding as {ua_dn} was refused")), "{}", wrong.stderr);
}

/// A Home Server whose directory is `slapd` at `url`, bound as the service account; `extra` adds
/// keys to `[directory]`.
fn start_server(url: &str, extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (sip, tls, ops) = (free_port(), free_port(), free_port());
    std::fs::write(dir.path().join("service.pw"), format!("{SERVICE_PASSWORD}\n")).unwrap();
    let config = format!(
        "sip_domain = \"example.test\"\ndomain_aliases = [\"127.0.0.1\"]\n\
         [listen]\nudp = \"127.0.0.1:{sip}\"\ntcp = \"127.0.0.1:{sip}\"\nops = \"127.0.0.1:{ops}\"\n\
         [storage]\ndata_dir = \"data\"\nlogs_dir = \"logs\"\n\
         [directory]\nbackend = \"ldap\"\nurl = \"{}\"\nbase_dn = \"{BASE}\"\nbind_dn = \"{SERVICE_DN}\"\n\
         bind_password_file = \"service.pw\"\ntimeout_ms = 1000\ncache_ttl_secs = 1\npool_size = 2\n{extra}",
        url
    );
    std::fs::write(dir.path().join("parley.toml"), config).unwrap();
    Server::start_from(dir, sip, tls, ops)
}

fn sipsak_message(server: &Server, bob: &Ua) {
    require_tool("sipsak");
    let port = server.sip.port();
    let file = server.dir.path().join("message.sip");
    let body = "hello bob from the directory";
    std::fs::write(
        &file,
        format!(
            "MESSAGE sip:bob@127.0.0.1 SIP/2.0\nFrom: <sip:alice@127.0.0.1>;tag=sipsak{port}\nTo: <sip:bob@127.0.0.1>\n\
             Call-ID: sipsak-ldap-{port}\nCSeq: 1 MESSAGE\nMax-Forwards: 70\nContent-Type: text/plain\n\
             Content-Length: {}\n\n{body}",
            body.len()
        ),
    )
    .unwrap();
    let args: Vec<String> = ["-vv", "-u", "alice", "-a", "alice-password", "-f", file.to_str().unwrap(), "-s"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("sip:bob@127.0.0.1:{port}")])
        .collect();
    let sipsak = std::thread::spawn(move || {
        Command::new("timeout").arg("20").arg("sipsak").args(&args).stdin(Stdio::null()).output().expect("run sipsak")
    });
    let got = bob.recv_request("MESSAGE", Duration::from_secs(15)).expect("bob receives the MESSAGE");
    assert!(got.ends_with(body), "{got}");
    bob.answer(&got, 200);
    let out = sipsak.join().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("SIP/2.0 200 OK"), "{text}");
}

#[test]
fn home_server_users_from_slapd_register_message_disable_and_survive_an_outage() {
    let mut slapd = Slapd::start();
    prepare(&slapd);
    add_user(&slapd, "alice@example.test", "alice-password");
    add_user(&slapd, "bob@example.test", "bob-password");
    add_user(&slapd, "dave@partner.test", "dave-password");
    let server = start_server(&slapd.url, "");

    let mut bob = Ua::new("bob", server.sip);
    assert_eq!(status(&bob.register(300)), 200, "bob registers with digest against slapd");
    let mut dave = Ua::new("dave", server.sip).in_domain("partner.test");
    let r = dave.register(300);
    assert_eq!(status(&r), 200, "a user of the domain admitted by prep domainadd signs in: {r}");
    sipsak_message(&server, &bob);
    let mut alice = Ua::new("alice", server.sip);
    assert_eq!(status(&alice.register(300)), 200);

    must(admin(&slapd, &["user", "disable", "alice@example.test"]), "user disable");
    std::thread::sleep(Duration::from_millis(1100)); // the cache TTL
    assert_eq!(status(&alice.register(300)), 403, "a disabled user is refused");

    // Outage: 503 with Retry-After within the timeout, not ready; then back without a restart.
    slapd.stop();
    std::thread::sleep(Duration::from_millis(1100));
    let started = Instant::now();
    let answer = bob.register(300);
    assert_eq!(status(&answer), 503, "{answer}");
    assert!(header(&answer, "Retry-After").is_some(), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(1800), "answered in {:?}", started.elapsed());
    assert_eq!(server.http_get("/readyz").map(|(c, _)| c), Some(503));

    slapd.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.http_get("/readyz").map(|(c, _)| c) != Some(200) {
        assert!(Instant::now() < deadline, "ready again after slapd returns");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&bob.register(300)), 200, "service resumes without restarting the server");

    // A directory that accepts connections but never answers: the deadline still holds.
    slapd.signal("STOP");
    std::thread::sleep(Duration::from_millis(1100));
    let started = Instant::now();
    let answer = bob.register(300);
    slapd.signal("CONT");
    assert_eq!(status(&answer), 503, "{answer}");
    assert!(started.elapsed() < Duration::from_millis(1800), "answered in {:?}", started.elapsed());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&bob.register(300)), 200, "service resumes after the stall");
}

#[test]
fn active_directory_schema_ldif_matches_the_golden_file() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_parley-server")).args(["prep", "schema", "--dialect", "ad"]).output().unwrap();
    assert!(out.status.success());
    let ldif = String::from_utf8(out.stdout).unwrap();
    let golden = support::repo_root().join("server/tests/golden/schema-ad.ldif");
    if std::env::var_os("PARLEY_BLESS").is_some() {
        std::fs::write(&golden, &ldif).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (regenerate with PARLEY_BLESS=1)");
    assert_eq!(
        ldif,
        want,
        "AD schema LDIF drifted from {}; regenerate with PARLEY_BLESS=1 and review",
        golden.display()
    );
}

#[test]
fn ldaps_and_starttls_verify_the_directory_certificate() {
    let slapd = Slapd::start_tls();
    let ldaps = slapd.ldaps_url.clone().unwrap();
    let ca = slapd.ca_file();
    let ca = ca.to_str().unwrap();
    let prep = must(admin(&slapd, &["prep", "schema", "--url", &ldaps, "--ca-file", ca]), "prep schema over ldaps");
    assert!(prep.contains("added object class parleyUser"), "{prep}");
    let untrusted = admin(&slapd, &["prep", "verify", "--url", &ldaps]);
    assert!(!untrusted.ok && untrusted.stderr.contains("UnknownIssuer"), "{}", untrusted.stderr);
    let starttls = admin(&slapd, &["prep", "verify", "--starttls", "--ca-file", ca]);
    assert!(starttls.stdout.contains("schema: prepared"), "{}{}", starttls.stdout, starttls.stderr);

    prepare(&slapd);
    add_user(&slapd, "bob@example.test", "bob-password");
    let server = start_server(&ldaps, &format!("ca_file = {ca:?}\n"));
    assert_eq!(status(&Ua::new("bob", server.sip).register(300)), 200, "the server reads users over ldaps");
}
