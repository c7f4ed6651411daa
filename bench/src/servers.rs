//! Starting and stopping the servers under test, each pinned with taskset to the server CPUs.

use crate::procstat;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Parley's Home Server, UDP only.
    Parley,
    /// Parley with its TLS listener on as well (self-signed certificate).
    ParleyTls,
    /// Another build of Parley's Home Server (`--baseline`), UDP only: before/after in one run.
    ParleyBaseline,
    /// Parley with `storage.sync = "checkpoint"` (opt-in: the journal synced at checkpoints, not
    /// before each answer), UDP only.
    ParleySyncAtCheckpoint,
    Kamailio,
}

impl Kind {
    pub fn key(self) -> &'static str {
        match self {
            Kind::Parley => "parley",
            Kind::ParleyTls => "parley_tls",
            Kind::ParleyBaseline => "parley_baseline",
            Kind::ParleySyncAtCheckpoint => "parley_sync_at_checkpoint",
            Kind::Kamailio => "kamailio",
        }
    }
}

#[derive(Clone)]
pub struct Settings {
    pub parley_bin: PathBuf,
    /// The other build `--baseline` compares with, when given.
    pub baseline_bin: Option<PathBuf>,
    pub kamailio_cfg: PathBuf,
    /// taskset CPU list for servers.
    pub cpus: String,
    /// Kamailio UDP workers (two per server CPU).
    pub kamailio_children: usize,
    pub kamailio_shm_mb: usize,
    /// The Front-End row's Kamailio proxy relays with tm (`-A STATEFUL`) instead of `forward()`.
    pub kamailio_proxy_stateful: bool,
}

/// What a workload drives: one server, or a Front-End with the servers behind it. Clients send
/// to `sip()`; `cpu_seconds()` is the CPU of every server process involved.
pub trait Target {
    fn sip(&self) -> SocketAddr;
    fn cpu_seconds(&self) -> f64;
}

pub struct Server {
    /// What it is, for messages ("parley", "kamailio", "parley_fe home-1", ...).
    pub name: String,
    child: Child,
    pub sip: SocketAddr,
    pub dir: PathBuf,
    /// When it was spawned.
    pub started: Instant,
    pub ready_after: Duration,
    /// Parley's operations HTTP port (`/metrics`).
    pub ops: Option<u16>,
}

/// `GET path` on 127.0.0.1:`port` (Parley's operations HTTP): the status code and the body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    c.read_to_string(&mut text)?;
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((status, body))
}

/// Writes a Parley users file with u<first>..u<first+count-1> (password u<N>-password).
pub fn write_users(path: &Path, count: usize) -> anyhow::Result<()> {
    write_users_homed(path, count, &[])
}

/// As `write_users`, each user homed on `homes[N % homes.len()]` when `homes` is not empty (the
/// Front-End row: u<even> on the first Home Server, u<odd> on the second).
pub fn write_users_homed(path: &Path, count: usize, homes: &[&str]) -> anyhow::Result<()> {
    use md5::{Digest, Md5};
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..count {
        let u = format!("u{i}");
        let ha1 = hex::encode(Md5::digest(format!("{u}:{}:{u}-password", crate::sip::DOMAIN)));
        write!(w, "[[users]]\naddress = \"{u}@{}\"\nha1_md5 = \"{ha1}\"\n", crate::sip::DOMAIN)?;
        if !homes.is_empty() {
            writeln!(w, "home_server = \"{}\"", homes[i % homes.len()])?;
        }
    }
    w.flush()?;
    Ok(())
}

/// Parley's limits for a benchmark: sipp sends every call from one address, so the per-source
/// admission limit (1,000 messages a second by default) is off, as Kamailio has none.
pub const LIMITS: &str = "[limits]\nmax_messages_per_source = 0\n";

impl Server {
    /// Starts a server in a fresh directory under `dir` and waits until it answers OPTIONS.
    pub fn start(kind: Kind, settings: &Settings, dir: &Path, users: &Path) -> anyhow::Result<Server> {
        let mut ops_port = None;
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let port = crate::free_udp_port();
        let sip = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &settings.cpus]);
        match kind {
            Kind::Parley | Kind::ParleyTls | Kind::ParleyBaseline | Kind::ParleySyncAtCheckpoint => {
                let ops = crate::free_tcp_port();
                ops_port = Some(ops);
                let tls = if kind == Kind::ParleyTls {
                    let t = crate::free_tcp_port();
                    format!("tls = \"127.0.0.1:{t}\"\n")
                } else {
                    String::new()
                };
                let tls_section = if kind == Kind::ParleyTls {
                    "[tls]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\nself_signed = true\n"
                } else {
                    ""
                };
                let sync = if kind == Kind::ParleySyncAtCheckpoint { "sync = \"checkpoint\"\n" } else { "" };
                let bin = match (kind, &settings.baseline_bin) {
                    (Kind::ParleyBaseline, Some(b)) => b,
                    (Kind::ParleyBaseline, None) => bail!("no --baseline binary given"),
                    _ => &settings.parley_bin,
                };
                let config = |limits: &str| {
                    format!(
                        "sip_domain = \"example.test\"\ndomain_aliases = [\"127.0.0.1\"]\n\
                         [listen]\nudp = \"127.0.0.1:{port}\"\n{tls}ops = \"127.0.0.1:{ops}\"\n{tls_section}\
                         [storage]\ndata_dir = \"data\"\nlogs_dir = \"logs\"\n{sync}\
                         [directory]\nbackend = \"file\"\nfile = \"{}\"\n\
                         [registrar]\nmax_expires = 7200\n{limits}",
                        users.display()
                    )
                };
                let path = dir.join("parley.toml");
                std::fs::write(&path, config(LIMITS))?;
                // A baseline that predates the [limits] keys gets the config it understands.
                let understood = Command::new(bin).arg("check-config").arg("--config").arg(&path).output()?;
                if !understood.status.success() {
                    std::fs::write(&path, config(""))?;
                }
                cmd.arg(bin)
                    .args(["serve", "--role", "home", "--config"])
                    .arg(dir.join("parley.toml"))
                    .env("PARLEY_LOG", "warn");
            }
            Kind::Kamailio => {
                let db = dir.join("dbtext");
                copy_dir(Path::new("/usr/share/kamailio/dbtext/kamailio"), &db)
                    .context("copying Kamailio's db_text tables (is kamailio installed?)")?;
                let template = std::fs::read_to_string(&settings.kamailio_cfg)?;
                let cfg = template
                    .replace("@DEBUG@", "0")
                    .replace("@CHILDREN@", &settings.kamailio_children.to_string())
                    .replace("@PORT@", &port.to_string())
                    .replace("@UDP_BUF@", sipp_buf())
                    .replace("@DBDIR@", &db.display().to_string());
                std::fs::write(dir.join("kamailio.cfg"), cfg)?;
                cmd.arg("kamailio")
                    .arg("-f")
                    .arg(dir.join("kamailio.cfg"))
                    .args(["-DD", "-E", "-m", &settings.kamailio_shm_mb.to_string(), "-M", "32"])
                    .arg("-Y")
                    .arg(dir.join("run"));
                std::fs::create_dir_all(dir.join("run"))?;
            }
        }
        let mut server = Server::spawn(kind.key(), cmd, dir, sip)?;
        if ops_port.is_some() {
            // It may answer SIP before its operations HTTP listens (with many users, by the time
            // the directory file is read): the runs read its /metrics.
            server.ops = ops_port;
            server.wait_ready()?;
        }
        Ok(server)
    }

    /// Waits until a Parley server's `/readyz` (on its ops port) answers 200, as
    /// scripts/run-multi.sh does.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        let Some(ops) = self.ops else { bail!("{}: no operations port", self.name) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            match http_get(ops, "/readyz") {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = format!("{status} {}", body.trim()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{}: /readyz on port {ops} did not answer 200 within 30 s (last: {last})", self.name)
    }

    /// Parley's journal syncs so far (`None` for Kamailio; none counted with `storage.sync =
    /// "checkpoint"`).
    pub fn journal_syncs(&self) -> Option<crate::syncs::SyncTimes> {
        let (status, body) = http_get(self.ops?, "/metrics").ok()?;
        (status == 200).then(|| crate::syncs::SyncTimes::parse(&body)).flatten()
    }

    /// Spawns `cmd` (already wrapped in taskset) in `dir`, its stderr to `dir/server.log`, and
    /// waits until `sip` answers OPTIONS.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path, sip: SocketAddr) -> anyhow::Result<Server> {
        let log = std::fs::File::create(dir.join("server.log"))?;
        let started = Instant::now();
        // Its own process group, so that stopping it reaches every worker it forks.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut server = Server {
            name: name.to_string(),
            child,
            sip,
            dir: dir.to_path_buf(),
            started,
            ready_after: Duration::ZERO,
            ops: None,
        };
        let limit = Duration::from_secs(120);
        let deadline = started + limit;
        // OPTIONS in short rounds, so that a server that exits at once is reported at once.
        loop {
            if let Some(at) = crate::sip::wait_options(sip, Duration::from_millis(200)) {
                server.ready_after = at - started;
                return Ok(server);
            }
            let exited = !server.alive();
            if exited || Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                let tail: String =
                    log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                let what =
                    if exited { "exited".to_string() } else { format!("did not answer OPTIONS within {limit:?}") };
                bail!("{name} {what}; log tail:\n{tail}");
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn cpu_seconds(&self) -> f64 {
        procstat::tree_cpu_seconds(self.pid())
    }

    /// The server's processes (Kamailio's children too).
    pub fn pids(&self) -> Vec<u32> {
        procstat::tree(self.pid())
    }

    /// (PSS, RSS) of the server's process tree in bytes.
    pub fn memory(&self) -> (u64, u64) {
        procstat::tree_memory(self.pid())
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// Lines of the server's log that mention errors (e.g. Kamailio's "out of memory").
    pub fn log_errors(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("server.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("error") || l.contains("out of") || l.contains("panic")
            })
            .take(5)
            .map(|l| l.chars().take(300).collect())
            .collect()
    }

    /// SIGTERM to the server's process group, SIGKILL to what is left after a few seconds; waits
    /// until the whole group is gone.
    pub fn stop(mut self) {
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.alive() {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_group();
    }

    fn signal_group(&self, signal: i32) -> bool {
        // SAFETY: signalling the process group this bench created for the server.
        unsafe { libc::kill(-(self.pid() as i32), signal) == 0 }
    }

    fn kill_group(&mut self) {
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.signal_group(0) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Target for Server {
    fn sip(&self) -> SocketAddr {
        self.sip
    }

    fn cpu_seconds(&self) -> f64 {
        Server::cpu_seconds(self)
    }
}

impl Drop for Server {
    /// A server left running by an error path is killed with its workers.
    fn drop(&mut self) {
        if self.signal_group(0) {
            self.kill_group();
        }
    }
}

pub fn sipp_buf() -> &'static str {
    crate::sipp::BUFF
}

pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}
