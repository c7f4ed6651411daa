//! Test support: starts a real `parley-server` on 127.0.0.1 with free ports, a temporary data
//! directory and the sample users (examples/standalone/users.toml: alice, bob, carol with
//! passwords `<name>-password`, domain example.test), and stops it when dropped.
#![allow(dead_code)] // each test binary uses part of this module

pub mod baresip;
pub mod browser;
pub mod cluster;
pub mod pidf;
pub mod ua;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DOMAIN: &str = "example.test";

pub fn password(user: &str) -> String {
    format!("{user}-password")
}

/// A port free on both UDP and TCP of 127.0.0.1, not handed out before in this process, and
/// below the kernel's ephemeral range (and Kubernetes' NodePorts): a port from that range, once
/// its probe socket is closed, can be given to any socket bound to port 0 (a user agent of a test
/// running alongside takes a server's port while it restarts after `kill -9`) or to an outgoing
/// connect as its source (a readiness check that connects to itself before the server listens).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    const LOWEST: u16 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|low| *low > LOWEST + 1_000)
        .unwrap_or(32_768)
        .min(30_000); // Kubernetes' NodePorts are 30000-32767.
    let span = u32::from(ephemeral - LOWEST);
    // Where this process starts looking: test binaries running at once start apart.
    let start = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        (h.finish() % u64::from(span)) as u32
    };
    let mut given = GIVEN.lock().unwrap();
    for i in 0..span {
        let port = LOWEST + ((start + i) % span) as u16;
        if !given.contains(&port)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            given.push(port);
            return port;
        }
    }
    panic!("no free port between {LOWEST} and {ephemeral} on 127.0.0.1");
}

/// GET over plain HTTP: status and body, or None when the server does not answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

/// An HTTP request to `addr` with an optional bearer token: status and body, or None when the
/// server does not answer (refused, reset, or silent for 5 s), as when it is killed meanwhile.
pub fn try_http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub struct Server {
    child: Child,
    /// UDP and TCP listen on the same port.
    pub sip: SocketAddr,
    pub tls: SocketAddr,
    pub ops: SocketAddr,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    /// `PARLEY_LOG`: `debug` for tests, unset (the server's default) for those that check it.
    log_level: Option<&'static str>,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with("")
    }

    /// Starts with extra TOML appended to the config (whole sections, e.g. `[registrar]`).
    pub fn start_with(extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    /// Starts with a generated directory of `count` users `u0`..`u{count-1}` (passwords
    /// `u<N>-password`) in addition to nothing else.
    pub fn start_with_users(count: usize, extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let users: String = (0..count)
            .map(|i| {
                let u = format!("u{i}");
                let ha1 = hex::encode(<md5::Md5 as md5::Digest>::digest(format!("{u}:{DOMAIN}:{u}-password")));
                format!("[[users]]\naddress = \"{u}@{DOMAIN}\"\nha1_md5 = \"{ha1}\"\n")
            })
            .collect();
        let path = dir.path().join("users.toml");
        std::fs::write(&path, users).unwrap();
        Self::start_in_with_users(dir, &path, extra)
    }

    /// Starts on an existing data directory (to restart on the same state).
    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Server {
        let users = repo_root().join("examples/standalone/users.toml");
        Self::start_in_with_users(dir, &users, extra)
    }

    /// Starts with the sample users, `listen` lines added to `[listen]` (e.g. `wss = "..."`) and
    /// `extra` sections appended.
    pub fn start_with_listen(listen: &str, extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let users = repo_root().join("examples/standalone/users.toml");
        Self::start_configured(dir, &users, listen, extra)
    }

    fn start_in_with_users(dir: tempfile::TempDir, users: &Path, extra: &str) -> Server {
        Self::start_configured(dir, users, "", extra)
    }

    fn start_configured(dir: tempfile::TempDir, users: &Path, listen: &str, extra: &str) -> Server {
        let (sip, tls, ops) = (free_port(), free_port(), free_port());
        let config = format!(
            "sip_domain = \"{DOMAIN}\"\ndomain_aliases = [\"127.0.0.1\"]\n\
             [listen]\nudp = \"127.0.0.1:{sip}\"\ntcp = \"127.0.0.1:{sip}\"\ntls = \"127.0.0.1:{tls}\"\nops = \"127.0.0.1:{ops}\"\n{listen}\n\
             [tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\nself_signed = true\n\
             [storage]\ndata_dir = \"data\"\nlogs_dir = \"logs\"\n\
             [directory]\nbackend = \"file\"\nfile = \"{}\"\n{extra}",
            users.display()
        );
        std::fs::write(dir.path().join("parley.toml"), config).unwrap();
        Self::start_from(dir, sip, tls, ops)
    }

    /// Starts with `dir/parley.toml` as written by the caller, listening on the given ports.
    pub fn start_from(dir: tempfile::TempDir, sip: u16, tls: u16, ops: u16) -> Server {
        Self::start_from_with_log(dir, sip, tls, ops, Some("debug"))
    }

    /// As `start_from`, with `PARLEY_LOG` set to `level`, or unset (the default a person gets).
    pub fn start_from_with_log(
        dir: tempfile::TempDir,
        sip: u16,
        tls: u16,
        ops: u16,
        log_level: Option<&'static str>,
    ) -> Server {
        let log = dir.path().join("server.log");
        let child = Self::spawn(&dir.path().join("parley.toml"), log_level, std::fs::File::create(&log).unwrap());
        let server = Server {
            child,
            sip: SocketAddr::from(([127, 0, 0, 1], sip)),
            tls: SocketAddr::from(([127, 0, 0, 1], tls)),
            ops: SocketAddr::from(([127, 0, 0, 1], ops)),
            dir,
            log,
            log_level,
        };
        server.wait_ready();
        server
    }

    fn spawn(config: &Path, log_level: Option<&str>, stderr: std::fs::File) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_parley-server"));
        command.args(["serve", "--role", "home", "--config"]).arg(config).env_remove("PARLEY_LOG");
        if let Some(level) = log_level {
            command.env("PARLEY_LOG", level);
        }
        command.stdout(Stdio::null()).stderr(stderr).spawn().expect("start parley-server")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.http_get("/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not become ready; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("tls/cert.pem")
    }

    /// GET on the operations port: status code and body.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.ops, path)
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// A metric's value (first sample whose name and labels start with `name`).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.http_get("/metrics").expect("metrics");
        body.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{body}"))
    }

    /// `kill -9`, then starts again on the same config, ports and data.
    pub fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let log = std::fs::OpenOptions::new().append(true).open(&self.log).unwrap();
        self.child = Self::spawn(&self.dir.path().join("parley.toml"), self.log_level, log);
        self.wait_ready();
    }

    /// The server's process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, as a crash would; `start_again` brings it back.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts the server again (after it exited or was killed) on the same config, ports and
    /// data; returns how long it took from exec to `/readyz` answering 200.
    pub fn start_again(&mut self) -> Duration {
        assert!(self.child.try_wait().unwrap().is_some(), "still running");
        let log = std::fs::OpenOptions::new().append(true).open(&self.log).unwrap();
        let started = Instant::now();
        self.child = Self::spawn(&self.dir.path().join("parley.toml"), self.log_level, log);
        self.wait_ready();
        started.elapsed()
    }

    /// PUT or GET on the HTTP API with a bearer token; returns status and body.
    pub fn http(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let (code, head, body) = self.http_raw(method, path, auth.as_deref(), body);
        let _ = head;
        (code, body)
    }

    /// An HTTP request with any Authorization value; returns status, header section and body.
    pub fn http_raw(&self, method: &str, path: &str, authorization: Option<&str>, body: &str) -> (u16, String, String) {
        http_request(self.ops, method, path, authorization, body)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test's server says what it was doing (its directory goes with it).
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("--- the last {} lines of the server's log ---", tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The output of one `parley-server` command.
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `parley-server` binary with `args`, extra environment and `stdin`.
pub fn run_parley(args: &[&str], env: &[(&str, &std::ffi::OsStr)], stdin: &str) -> Out {
    let out = output_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_parley-server")).args(args).envs(env.iter().copied()),
        stdin,
    );
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Runs a command to the end with `input` on its standard input; returns its output and status.
/// The command may exit before reading its input (an argument error, say): writing then fails
/// with EPIPE, which is no error of the test, so the exit status and output are what count. The
/// input is written from a thread, so a command that writes much before reading cannot block it.
pub fn output_with_stdin(command: &mut Command, input: &str) -> std::process::Output {
    let mut child =
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start command");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || match stdin.write_all(input.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()), // written, or the command did not want it
    });
    let out = child.wait_with_output().expect("wait for command");
    writer.join().unwrap().expect("write standard input");
    out
}

/// Whether an external tool a test can do without is installed. Under CI (`CI=true`) a missing
/// tool is a failure (`make deps` installs it); elsewhere the test leaves out what needs it, and
/// this prints why.
pub fn tool_available(name: &str, left_out: &str) -> bool {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().unwrap().status.success();
    if !found {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{name} is not installed (CI=true): run `make deps`");
        eprintln!("{name} is not installed (`make deps` installs it): leaving out {left_out}");
    }
    found
}

/// Whether an external tool is installed; tests that need it fail loudly when it is not
/// (`make deps` installs them), so a missing tool never passes silently.
pub fn require_tool(name: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().unwrap().status.success();
    assert!(found, "{name} is not installed: run `make deps`");
}

/// An HTTP/1.1 request to `addr` with any Authorization value: status, header section and body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (code, head.to_string(), body.to_string())
}

/// The end of each file in `dir` whose extension is one of `extensions` (a child's logs and
/// outputs), for a failure message.
pub fn tails_of(dir: &Path, extensions: &[&str]) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| extensions.iter().any(|x| e == *x)) {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
            let tail: String = text.chars().rev().take(3000).collect::<Vec<_>>().into_iter().rev().collect();
            out += &format!("==== {}\n{tail}\n", path.display());
        }
    }
    out
}

/// Runs `cmd` in `dir` with no standard input and its output in `dir`'s stdout.txt and
/// stderr.txt (read back by [`tails_of`]).
pub fn spawn_in(cmd: &mut Command, dir: &Path) -> std::io::Result<Child> {
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout.txt"))?)
        .stderr(std::fs::File::create(dir.join("stderr.txt"))?)
        .spawn()
}
