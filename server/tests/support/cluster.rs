//! Several servers on 127.0.0.1, as a multi-server deployment runs them: Home Servers and
//! Front-Ends sharing one users file and one CA, talking mutual TLS on their internal ports.

use super::{DOMAIN, free_port};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A certificate authority whose certificates the servers trust on the internal link.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub cert: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        std::fs::write(&cert, issuer.pem()).unwrap();
        Ca { issuer, cert }
    }

    /// A leaf for `name` (serverAuth and clientAuth): returns (certificate, key) file paths.
    pub fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec![name.to_string(), "127.0.0.1".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// A users file: each `(user, home server)` with the password `<user>-password`; a user without
/// a domain is of `example.test`. The digest realm is the user's domain.
pub fn users_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let text: String = users
        .iter()
        .map(|(address, home)| {
            let (u, domain) = address.split_once('@').unwrap_or((address, DOMAIN));
            let ha1 = hex::encode(<md5::Md5 as md5::Digest>::digest(format!("{u}:{domain}:{u}-password")));
            format!("[[users]]\naddress = \"{u}@{domain}\"\nhome_server = \"{home}\"\nha1_md5 = \"{ha1}\"\n")
        })
        .collect();
    let path = dir.join("users.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// One running server process of either role.
pub struct Node {
    pub name: String,
    role: &'static str,
    child: Option<Child>,
    config: PathBuf,
    pub log: PathBuf,
    /// SIP over UDP and TCP, for clients.
    pub sip: SocketAddr,
    /// SIP over TLS, for clients (the server's certificate, from the deployment CA).
    pub tls: SocketAddr,
    pub internal: SocketAddr,
    pub ops: SocketAddr,
}

/// The `[directory]` section of a users file.
pub fn file_directory(users: &Path) -> String {
    format!("[directory]\nbackend = \"file\"\nfile = {users:?}\n")
}

impl Node {
    /// Writes the config of a server and starts it. `frontend` is the routing table of a
    /// Front-End (`None` for a Home Server).
    pub fn start(dir: &Path, name: &str, ca: &Ca, users: &Path, frontend: Option<&[(String, SocketAddr)]>) -> Node {
        Self::start_with(dir, name, ca, &file_directory(users), frontend, "", "")
    }

    /// As `start`, with the `[directory]` section given (an LDAP directory, say), `listen` lines
    /// added to `[listen]` and `extra` sections appended to the config.
    pub fn start_with(
        dir: &Path,
        name: &str,
        ca: &Ca,
        directory: &str,
        frontend: Option<&[(String, SocketAddr)]>,
        listen: &str,
        extra: &str,
    ) -> Node {
        let own = dir.join(name);
        std::fs::create_dir_all(&own).unwrap();
        let (cert, key) = ca.issue(&own, name);
        let table = frontend
            .map(|homes| {
                let rows: Vec<String> =
                    homes.iter().map(|(n, a)| format!("{{ name = \"{n}\", address = \"{a}\" }}")).collect();
                format!("[frontend]\nhome_servers = [{}]\nprobe_interval_ms = 100\n", rows.join(", "))
            })
            .unwrap_or_default();
        // Ports are picked free, but another test may take one before the server binds it: then
        // the server exits at once, and it gets other ports.
        for _attempt in 0..3 {
            let (sip, tls, internal, ops) = (free_port(), free_port(), free_port(), free_port());
            let config = format!(
                "sip_domain = \"{DOMAIN}\"\ndomain_aliases = [\"127.0.0.1\"]\nserver_name = \"{name}\"\n\
                 [listen]\nudp = \"127.0.0.1:{sip}\"\ntcp = \"127.0.0.1:{sip}\"\ntls = \"127.0.0.1:{tls}\"\n\
                 internal = \"127.0.0.1:{internal}\"\nops = \"127.0.0.1:{ops}\"\n{listen}\n\
                 [tls]\ncert = {cert:?}\nkey = {key:?}\nca = {ca:?}\n\
                 [storage]\ndata_dir = \"data\"\nlogs_dir = \"logs\"\n\
                 {directory}{table}{extra}",
                ca = ca.cert,
            );
            let config_path = own.join("parley.toml");
            std::fs::write(&config_path, config).unwrap();
            let mut node = Node {
                name: name.into(),
                role: if frontend.is_some() { "frontend" } else { "home" },
                child: None,
                config: config_path,
                log: own.join("server.log"),
                sip: SocketAddr::from(([127, 0, 0, 1], sip)),
                tls: SocketAddr::from(([127, 0, 0, 1], tls)),
                internal: SocketAddr::from(([127, 0, 0, 1], internal)),
                ops: SocketAddr::from(([127, 0, 0, 1], ops)),
            };
            if node.try_spawn() {
                return node;
            }
        }
        panic!(
            "{name} did not start on three sets of ports; log:\n{}",
            std::fs::read_to_string(own.join("server.log")).unwrap_or_default()
        );
    }

    fn spawn(&mut self) {
        assert!(self.try_spawn(), "{} did not become ready; log:\n{}", self.name, self.log_text());
    }

    /// Starts the process and waits until it is ready: false if it exited first.
    fn try_spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_parley-server"))
            .args(["serve", "--role", self.role, "--config"])
            .arg(&self.config)
            .env("PARLEY_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start parley-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if super::http_get(self.ops, "/readyz").is_some_and(|(code, _)| code == 200) {
                return true;
            }
            if self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_some()) {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} did not become ready in 20 s; log:\n{}", self.name, self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        super::http_get(self.ops, "/metrics").expect("metrics").1
    }

    /// Stops the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the process (SIGSTOP) or lets it go on (SIGCONT): a hung server keeps its
    /// connections open and answers nothing.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends SIGTERM and waits (up to `bound`) for the process to exit: its status and how long
    /// it took. Panics, with the log, if it is still running after `bound`.
    pub fn terminate(&mut self, bound: Duration) -> (std::process::ExitStatus, Duration) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
        assert!(status.success(), "kill -TERM");
        self.wait_exit(bound)
    }

    /// Waits (up to `bound`) for the process, already signalled, to exit: its status and how long
    /// the wait took.
    pub fn wait_exit(&mut self, bound: Duration) -> (std::process::ExitStatus, Duration) {
        let child = self.child.as_mut().expect("running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return (status, started.elapsed());
            }
            if started.elapsed() > bound {
                panic!("{} still running after {bound:?}; log:\n{}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the process again, on the same ports and data directory, and waits until ready.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        self.spawn();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process dies of SIGKILL all the same; let it go on first for a clean end.
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
        }
        self.kill();
    }
}
