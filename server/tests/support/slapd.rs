//! A real OpenLDAP `slapd` for tests: a temporary `cn=config` (written with `slapadd -n0`) with
//! the core, cosine, nis and inetorgperson schemas, one mdb database for `dc=example,dc=test`
//! (holding `dc=partner,dc=example,dc=test` for a second domain), an administrator that also
//! manages `cn=config`, listening on 127.0.0.1 only. Stopped (and its files removed) on drop;
//! `stop` and `restart` simulate an outage on the same port and data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BASE: &str = "dc=example,dc=test";
pub const PARTNER_BASE: &str = "dc=partner,dc=example,dc=test";
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=test";
const ADMIN_PASSWORD: &str = "admin-secret";

pub struct Slapd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub url: String,
    /// `ldaps://127.0.0.1:PORT` when started with TLS (StartTLS then works on `url` too).
    pub ldaps_url: Option<String>,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Slapd {
    pub fn start() -> Slapd {
        Self::start_with(false)
    }

    /// With TLS: a test CA (`ca_file()`) signs a certificate for 127.0.0.1; slapd also listens
    /// on `ldaps_url` and offers StartTLS.
    pub fn start_tls() -> Slapd {
        Self::start_with(true)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn start_with(tls: bool) -> Slapd {
        super::require_tool("slapd");
        super::require_tool("ldapsearch");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("slapd.d")).unwrap();
        std::fs::create_dir_all(d.join("db")).unwrap();
        let tls_config = if tls {
            make_certificates(d);
            format!(
                "olcTLSCACertificateFile: {d}/ca.pem\nolcTLSCertificateFile: {d}/server.pem\nolcTLSCertificateKeyFile: {d}/server.key\n",
                d = d.display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "dn: cn=config\nobjectClass: olcGlobal\ncn: config\nolcPidFile: {d}/slapd.pid\nolcArgsFile: {d}/slapd.args\n{tls_config}\n\
             dn: cn=module{{0}},cn=config\nobjectClass: olcModuleList\ncn: module{{0}}\nolcModulePath: /usr/lib/ldap\nolcModuleLoad: back_mdb\n\n\
             dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n\n\
             include: file:///etc/ldap/schema/core.ldif\n\n\
             include: file:///etc/ldap/schema/cosine.ldif\n\n\
             include: file:///etc/ldap/schema/nis.ldif\n\n\
             include: file:///etc/ldap/schema/inetorgperson.ldif\n\n\
             dn: olcDatabase={{-1}}frontend,cn=config\nobjectClass: olcDatabaseConfig\nobjectClass: olcFrontendConfig\nolcDatabase: {{-1}}frontend\n\n\
             dn: olcDatabase={{0}}config,cn=config\nobjectClass: olcDatabaseConfig\nolcDatabase: {{0}}config\n\
             olcAccess: {{0}}to * by dn.exact=\"{ADMIN_DN}\" manage by * none\n\n\
             dn: olcDatabase={{1}}mdb,cn=config\nobjectClass: olcDatabaseConfig\nobjectClass: olcMdbConfig\nolcDatabase: {{1}}mdb\n\
             olcDbDirectory: {d}/db\nolcSuffix: {BASE}\nolcRootDN: {ADMIN_DN}\nolcRootPW: {ADMIN_PASSWORD}\n\
             olcDbMaxSize: 33554432\n\
             olcAccess: {{0}}to attrs=userPassword by self write by anonymous auth by * none\n\
             olcAccess: {{1}}to * by * read\n",
            d = d.display()
        );
        std::fs::write(d.join("config.ldif"), config).unwrap();
        run(Command::new("slapadd").args(["-n0", "-F"]).arg(d.join("slapd.d")).arg("-l").arg(d.join("config.ldif")));
        let data = format!(
            "dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
             dn: {PARTNER_BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: partner\no: Partner\n"
        );
        std::fs::write(d.join("data.ldif"), data).unwrap();
        run(Command::new("slapadd").args(["-b", BASE, "-F"]).arg(d.join("slapd.d")).arg("-l").arg(d.join("data.ldif")));
        std::fs::write(d.join("admin.pw"), ADMIN_PASSWORD).unwrap();
        let port = super::free_port();
        let ldaps_url = tls.then(|| format!("ldaps://127.0.0.1:{}", super::free_port()));
        let mut slapd = Slapd { child: None, dir, port, url: format!("ldap://127.0.0.1:{port}"), ldaps_url };
        slapd.restart();
        slapd
    }

    /// Starts (again) on the same port and data, and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "slapd is running");
        let log = std::fs::File::options().create(true).append(true).open(self.dir.path().join("slapd.log")).unwrap();
        let mut urls = format!("ldap://127.0.0.1:{}/", self.port);
        if let Some(ldaps) = &self.ldaps_url {
            urls = format!("{urls} {ldaps}/");
        }
        let child = Command::new("slapd")
            .arg("-h")
            .arg(urls)
            .arg("-F")
            .arg(self.dir.path().join("slapd.d"))
            .args(["-d", "0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start slapd");
        self.child = Some(child);
        // Ready when it answers an LDAP search: a TCP connect alone can succeed before slapd
        // listens (a connect to a free local port may be given that port as its own source and
        // connect to itself), and then the first real client is refused.
        let deadline = Instant::now() + Duration::from_secs(10);
        let log = || std::fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default();
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("slapd exited ({status}); log:\n{}", log());
            }
            let searched = Command::new("ldapsearch")
                .args(["-x", "-LLL", "-H", &self.url, "-b", "", "-s", "base", "objectClass=*"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if searched.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("slapd did not start; log:\n{}", log());
    }

    /// Stops slapd (SIGTERM) and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Sends a signal (e.g. "STOP", "CONT") to the running slapd.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("slapd is running");
        run(Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()));
    }

    pub fn admin_password_file(&self) -> PathBuf {
        self.dir.path().join("admin.pw")
    }

    /// Writes a password file (no trailing newline, as `ldapsearch -y` wants) and returns its path.
    pub fn password_file(&self, name: &str, password: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.pw"));
        std::fs::write(&path, password).unwrap();
        path
    }

    fn bind_args(&self, bind: Option<(&str, &Path)>) -> Vec<String> {
        let mut args = vec!["-x".to_string(), "-H".into(), self.url.clone(), "-o".into(), "ldif-wrap=no".into()];
        if let Some((dn, pw)) = bind {
            args.extend(["-D".into(), dn.into(), "-y".into(), pw.display().to_string()]);
        }
        args
    }

    /// `ldapsearch -LLL`: (success, stdout + stderr).
    pub fn search(
        &self,
        bind: Option<(&str, &Path)>,
        base: &str,
        scope: &str,
        filter: &str,
        attrs: &[&str],
    ) -> (bool, String) {
        let out = Command::new("ldapsearch")
            .args(self.bind_args(bind))
            .args(["-LLL", "-b", base, "-s", scope, filter])
            .args(attrs)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    /// `ldapsearch` as the administrator; panics on failure.
    pub fn admin_search(&self, base: &str, scope: &str, filter: &str, attrs: &[&str]) -> String {
        let (ok, out) = self.search(Some((ADMIN_DN, &self.admin_password_file())), base, scope, filter, attrs);
        assert!(ok, "ldapsearch failed: {out}");
        out
    }

    /// `ldapmodify` (add entries with `changetype: add`): (success, output).
    pub fn modify(&self, bind: Option<(&str, &Path)>, ldif: &str) -> (bool, String) {
        let out = super::support::output_with_stdin(Command::new("ldapmodify").args(self.bind_args(bind)), ldif);
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    pub fn admin_modify(&self, ldif: &str) -> String {
        let (ok, out) = self.modify(Some((ADMIN_DN, &self.admin_password_file())), ldif);
        assert!(ok, "ldapmodify failed: {out}");
        out
    }
}

/// A CA and a server certificate for 127.0.0.1 (CA:FALSE, serverAuth), made with openssl.
fn make_certificates(d: &Path) {
    super::require_tool("openssl");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(Command::new("openssl")
        .current_dir(d)
        .args(["req", "-x509"])
        .args(ec)
        .args(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Parley Test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
    run(Command::new("openssl").current_dir(d).args(["req"]).args(ec).args([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]));
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl").current_dir(d).args([
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]));
}

impl Drop for Slapd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
