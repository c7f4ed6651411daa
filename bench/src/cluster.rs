//! The Front-End row: a Front-End in front of two Home Servers, all three pinned to the server
//! CPUs, the clients talking only to the Front-End.
//!
//! - Parley: `parley-server serve --role frontend` in front of two `serve --role home`
//!   (`home-1`, `home-2`), linked by the internal mutual-TLS port with certificates from a
//!   throwaway CA made here with openssl (as scripts/run-multi.sh does). The users file homes
//!   u<even> on home-1 and u<odd> on home-2; the Front-End routes by it and authenticates nobody,
//!   the Home Server that receives a request does.
//! - Kamailio: bench/kamailio/proxy.cfg (stateless) in front of two bench/kamailio/registrar.cfg,
//!   routing by the same split (u<even> to A, u<odd> to B); the registrars authenticate.

use crate::servers::{LIMITS, Server, Settings, Target};
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

/// The names the users file homes users on (u<N> on `HOMES[N % 2]`).
pub const HOMES: [&str; 2] = ["home-1", "home-2"];

/// Shared memory of each Kamailio process of the row, in MB (a registrar's tm keeps a
/// non-INVITE server transaction for 32 s over UDP; 1,000/s needs far less than this).
const KAMAILIO_SHM_MB: usize = 1024;

pub struct Cluster {
    /// The Front-End (or proxy): where clients send.
    pub front: Server,
    /// The Home Servers (or registrars) behind it.
    pub homes: Vec<Server>,
}

impl Target for Cluster {
    fn sip(&self) -> SocketAddr {
        self.front.sip
    }

    fn cpu_seconds(&self) -> f64 {
        self.servers().map(|s| s.cpu_seconds()).sum()
    }
}

impl Cluster {
    fn servers(&self) -> impl Iterator<Item = &Server> {
        std::iter::once(&self.front).chain(&self.homes)
    }

    /// CPU seconds of each process tree so far, by name.
    pub fn cpu_by_process(&self) -> BTreeMap<String, f64> {
        self.servers().map(|s| (s.name.clone(), s.cpu_seconds())).collect()
    }

    pub fn alive(&mut self) -> bool {
        let front = self.front.alive();
        self.homes.iter_mut().fold(front, |all, s| s.alive() && all)
    }

    pub fn log_errors(&self) -> Vec<String> {
        self.servers().flat_map(|s| s.log_errors().into_iter().map(|l| format!("{}: {l}", s.name))).collect()
    }

    pub fn stop(self) {
        let Cluster { front, homes } = self;
        front.stop();
        for h in homes {
            h.stop();
        }
    }

    /// Parley: two Home Servers, then the Front-End (which probes them before taking traffic).
    pub fn start_parley(settings: &Settings, dir: &Path, users: &Path) -> anyhow::Result<Cluster> {
        fresh_dir(dir)?;
        let pki = dir.join("pki");
        make_pki(&pki, &["frontend", HOMES[0], HOMES[1]])?;
        let mut homes = Vec::new();
        let mut routes = Vec::new();
        for name in HOMES {
            let home_dir = dir.join(name);
            let (cmd, sip, internal, ops) = parley_cmd(settings, &home_dir, &pki, name, "home", users, "")?;
            let mut home = Server::spawn(&format!("parley {name}"), cmd, &home_dir, sip)?;
            home.ops = Some(ops);
            home.wait_ready()?;
            homes.push(home);
            routes.push(format!("{{ name = \"{name}\", address = \"127.0.0.1:{internal}\" }}"));
        }
        let fe_dir = dir.join("frontend");
        let frontend = format!("[frontend]\nhome_servers = [{}]\n", routes.join(", "));
        let (cmd, sip, _, ops) = parley_cmd(settings, &fe_dir, &pki, "frontend", "frontend", users, &frontend)?;
        let mut front = Server::spawn("parley frontend", cmd, &fe_dir, sip)?;
        // The Front-End answers SIP before it has probed its Home Servers (requests for users
        // get 503 until then); its /readyz answers once the probes are done.
        front.ops = Some(ops);
        front.wait_ready()?;
        front.ready_after = front.started.elapsed();
        Ok(Cluster { front, homes })
    }

    /// Kamailio: registrars A and B, then the proxy in front of them.
    pub fn start_kamailio(settings: &Settings, root: &Path, dir: &Path) -> anyhow::Result<Cluster> {
        fresh_dir(dir)?;
        let registrar = std::fs::read_to_string(root.join("bench/kamailio/registrar.cfg"))?;
        let proxy = std::fs::read_to_string(root.join("bench/kamailio/proxy.cfg"))?;
        let mut homes = Vec::new();
        for name in ["registrar-a", "registrar-b"] {
            homes.push(kamailio(settings, &registrar, &dir.join(name), &format!("kamailio {name}"), &[], &[])?);
        }
        let ports = [("@PORT_A@", homes[0].sip.port().to_string()), ("@PORT_B@", homes[1].sip.port().to_string())];
        let defines: &[&str] = if settings.kamailio_proxy_stateful { &["STATEFUL"] } else { &[] };
        let front = kamailio(settings, &proxy, &dir.join("proxy"), "kamailio proxy", &ports, defines)?;
        Ok(Cluster { front, homes })
    }
}

fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
}

/// A Parley process of the row: its config in `dir/parley.toml`, the command to start it, its
/// SIP address, its internal (mutual-TLS) port and its ops (HTTP) port.
fn parley_cmd(
    settings: &Settings,
    dir: &Path,
    pki: &Path,
    name: &str,
    role: &str,
    users: &Path,
    extra: &str,
) -> anyhow::Result<(Command, SocketAddr, u16, u16)> {
    std::fs::create_dir_all(dir)?;
    let port = crate::free_udp_port();
    let internal = crate::free_tcp_port();
    let ops = crate::free_tcp_port();
    let config = format!(
        "sip_domain = \"example.test\"\nserver_name = \"{name}\"\ndomain_aliases = [\"127.0.0.1\"]\n\
         [listen]\nudp = \"127.0.0.1:{port}\"\ninternal = \"127.0.0.1:{internal}\"\nops = \"127.0.0.1:{ops}\"\n\
         [tls]\ncert = \"{pki}/{name}.crt\"\nkey = \"{pki}/{name}.key\"\nca = \"{pki}/ca.crt\"\n\
         [storage]\ndata_dir = \"data\"\nlogs_dir = \"logs\"\n\
         [directory]\nbackend = \"file\"\nfile = \"{users}\"\n\
         [registrar]\nmax_expires = 7200\n{LIMITS}{extra}",
        pki = pki.display(),
        users = users.display(),
    );
    std::fs::write(dir.join("parley.toml"), config)?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &settings.cpus])
        .arg(&settings.parley_bin)
        .args(["serve", "--role", role, "--config"])
        .arg(dir.join("parley.toml"))
        .env("PARLEY_LOG", "warn");
    Ok((cmd, SocketAddr::from(([127, 0, 0, 1], port)), internal, ops))
}

/// A Kamailio process of the row from a template with the usual placeholders (and `-A` defines).
fn kamailio(
    settings: &Settings,
    template: &str,
    dir: &Path,
    name: &str,
    extra: &[(&str, String)],
    defines: &[&str],
) -> anyhow::Result<Server> {
    std::fs::create_dir_all(dir.join("run"))?;
    let port = crate::free_udp_port();
    let mut cfg = template
        .replace("@DEBUG@", "0")
        .replace("@CHILDREN@", &settings.kamailio_children.to_string())
        .replace("@PORT@", &port.to_string())
        .replace("@UDP_BUF@", crate::servers::sipp_buf());
    for (k, v) in extra {
        cfg = cfg.replace(k, v);
    }
    std::fs::write(dir.join("kamailio.cfg"), cfg)?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &settings.cpus, "kamailio", "-f"])
        .arg(dir.join("kamailio.cfg"))
        .args(["-DD", "-E", "-m", &KAMAILIO_SHM_MB.to_string(), "-M", "32", "-Y"])
        .arg(dir.join("run"));
    for d in defines {
        cmd.args(["-A", d]);
    }
    Server::spawn(name, cmd, dir, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A throwaway CA and one certificate per name (serverAuth and clientAuth, for 127.0.0.1), made
/// with openssl as scripts/run-multi.sh makes the demo's.
fn make_pki(dir: &Path, names: &[&str]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let openssl = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("running openssl (apt-get install openssl)")?;
        if !out.status.success() {
            bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-days",
        "2",
        "-subj",
        "/CN=parley-bench CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&ca)?;
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,DNS:example.test,IP:127.0.0.1\n\
         extendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
    )?;
    for name in names {
        let (key, csr, crt, subj) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("/CN={name}"));
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-subj", &subj, "-keyout", &key, "-out", &csr]);
        openssl(&req)?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            "leaf.ext",
        ])?;
    }
    Ok(())
}
