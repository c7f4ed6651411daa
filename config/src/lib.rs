//! `parley-server`'s configuration, in one place for both programs: the server loads and validates
//! it, the operator builds the same typed value and serialises it (no TOML is written by hand).
//! Unknown keys and bad values are errors that name the key.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The service account `prep domain` creates and the servers bind as, relative to the base DN.
pub const SERVICE_ACCOUNT_RDN: &str = "cn=ParleyService,ou=Parley";

/// The service account's DN under `base_dn`.
pub fn service_account_dn(base_dn: &str) -> String {
    format!("{SERVICE_ACCOUNT_RDN},{base_dn}")
}

/// What a server does: home to users, or the stateless proxy in front of the Home Servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Home,
    FrontEnd,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The SIP domain users belong to (`sip:user@sip_domain`); also the digest realm.
    pub sip_domain: String,
    /// Other host names that mean the SIP domain in addresses (e.g. the server's own IP, so that
    /// `sip:alice@127.0.0.1` is alice of the domain), as Kamailio's `alias`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domain_aliases: Vec<String>,
    /// This server's name; users whose home-server attribute names it are homed here.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    pub storage: Storage,
    pub directory: DirectoryConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub registrar: Registrar,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub api: Api,
    /// Messages kept for users with no device signed in.
    #[serde(default, skip_serializing_if = "Offline::is_default")]
    pub offline: Offline,
    /// The web client and who may open WebSocket connections.
    #[serde(default, skip_serializing_if = "Web::is_default")]
    pub web: Web,
    /// The Front-End's routing table (role `frontend` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<FrontEnd>,
}

/// The presence-rules and contact-list HTTP API on the operations port.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// File holding a token that authorises an administrator for every user (`Bearer` scheme).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
}

/// Page-mode messages (MESSAGE) for a known user with no registered device are kept on the
/// user's Home Server, answered `202 Accepted`, and delivered when the user next registers.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Offline {
    /// `false`: such messages get `480 Temporarily Unavailable`, as before.
    pub enabled: bool,
    /// Messages kept for one user; past it, `480`.
    pub max_per_user: usize,
    /// Messages kept on this server for all users together; past it, `480`.
    pub max_total: usize,
    /// Seconds a message is kept; an older one is dropped undelivered (and counted).
    pub expiry_secs: u64,
}

impl Default for Offline {
    fn default() -> Self {
        Offline { enabled: true, max_per_user: 100, max_total: 100_000, expiry_secs: 7 * 24 * 3600 }
    }
}

impl Offline {
    fn is_default(&self) -> bool {
        *self == Offline::default()
    }
}

/// The web client and the WebSocket listeners' Origin check.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Web {
    /// Directory of the built web client (`make web` writes `web/dist`), served by `listen.web`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Origins (`https://chat.example.test`, `http://127.0.0.1:8088`) whose pages may open a
    /// WebSocket to `listen.ws`/`listen.wss`; `"*"` allows any. Empty (the default): only pages
    /// from the same host as the WebSocket listener (any port), which is where the web client
    /// comes from. A request without an Origin (not from a browser) is always allowed: the check
    /// guards users' browsers against other sites' pages, not the server against clients.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<String>,
}

impl Web {
    fn is_default(&self) -> bool {
        *self == Web::default()
    }
}

fn default_server_name() -> String {
    "home-1".into()
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    /// Mutual TLS between Front-Ends and Home Servers: both sides present a certificate from
    /// `tls.ca` and verify the other's. Requests arriving here may carry an asserted identity.
    pub internal: Option<SocketAddr>,
    pub ops: Option<SocketAddr>,
    /// SIP over WebSocket (RFC 7118, subprotocol `sip`), plain: for a browser on the same machine
    /// or behind a proxy that ends TLS. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws: Option<SocketAddr>,
    /// SIP over secure WebSocket, with the `[tls]` certificate. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wss: Option<SocketAddr>,
    /// HTTP listener serving the web client (`web.root`) at `/`. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<SocketAddr>,
    /// Host or address written into Via, Contact, Path and Record-Route headers this server adds
    /// (default: the listening address, or the SIP domain when listening on every address).
    pub advertise: Option<String>,
    /// Host (IP address or DNS name) peers on the internal link reach this server at, written into
    /// the Path and Record-Route a Front-End adds and the Contact a Home Server gives there
    /// (default: `advertise`). The environment variable `PARLEY_ADVERTISE_INTERNAL` overrides it,
    /// so replicas sharing one config each name their own pod IP.
    pub advertise_internal: Option<String>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            udp: Some(SocketAddr::from(([0, 0, 0, 0], 5060))),
            tcp: Some(SocketAddr::from(([0, 0, 0, 0], 5060))),
            tls: None,
            internal: None,
            ops: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            ws: None,
            wss: None,
            web: None,
            advertise: None,
            advertise_internal: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The deployment's CA (PEM, may hold several during a rotation): the only trust anchor of the
    /// internal mutual-TLS link. Required when `listen.internal` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Create a self-signed certificate at `cert`/`key` on first start when they do not exist.
    #[serde(default, skip_serializing_if = "is_false")]
    pub self_signed: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub data_dir: PathBuf,
    pub logs_dir: PathBuf,
    /// `parley.log` is rotated when it would pass this size ...
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// ... keeping this many older files (`parley.log.1` is the newest).
    #[serde(default = "default_log_files")]
    pub log_files: u32,
    /// When a change reaches the disk before its client is answered.
    #[serde(default)]
    pub sync: SyncPolicy,
}

/// `storage.sync`: how durable an answered change is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncPolicy {
    /// Written to the journal and synced (one sync for every change queued together): a change
    /// survives `kill -9` and power loss.
    #[default]
    EachChange,
    /// Written to the journal, synced at the next checkpoint (every 2 seconds): a change survives
    /// `kill -9`, but a machine crash or power loss can lose the last 2 seconds of changes
    /// (registrations, subscriptions, messages kept for offline users). Less CPU per change.
    Checkpoint,
}

pub fn default_log_max_bytes() -> u64 {
    100 * 1024 * 1024
}

pub fn default_log_files() -> u32 {
    5
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum DirectoryConfig {
    File {
        file: PathBuf,
    },
    /// An LDAP directory prepared with `parley-server prep`; the server binds as the service account.
    Ldap {
        /// `ldap://host:389` or `ldaps://host:636`.
        url: String,
        base_dn: String,
        bind_dn: String,
        bind_password_file: PathBuf,
        /// PEM CA certificates for ldaps:// or StartTLS (default: the system store).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
        #[serde(default)]
        starttls: bool,
        /// Deadline for each directory operation, connecting included.
        #[serde(default = "default_ldap_timeout_ms")]
        timeout_ms: u64,
        /// How long answers (including "no such user") are reused.
        #[serde(default = "default_ldap_cache_ttl_secs")]
        cache_ttl_secs: u64,
        #[serde(default = "default_ldap_pool_size")]
        pool_size: usize,
    },
}

pub fn default_ldap_timeout_ms() -> u64 {
    2000
}

pub fn default_ldap_cache_ttl_secs() -> u64 {
    30
}

pub fn default_ldap_pool_size() -> usize {
    4
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    pub max_connections_per_ip: usize,
    pub max_connections: usize,
    /// Seconds a stream connection may stay idle (no message, no keep-alive) before it is closed.
    pub idle_timeout_secs: u64,
    /// Seconds a stream connection has to complete a message once it has begun one, and to send
    /// its first one after connecting: a peer that trickles bytes or sends nothing (slowloris)
    /// is closed long before the idle timeout.
    pub message_timeout_secs: u64,
    /// Messages a second one address may send (twice that in a burst); 0: no limit. Over it, UDP
    /// datagrams are dropped unread and stream connections are read more slowly, so a flood from
    /// one address does not crowd out everyone else. The internal link is exempt. Raise it for a
    /// large office behind one NAT address, or for a load generator.
    pub max_messages_per_source: u32,
    /// Requests in progress (waiting for the directory, the store or a forwarded answer) above
    /// which new ones are answered `503` with `Retry-After` at once, before any work is done.
    pub max_pending_requests: usize,
    /// Requests a second the whole server takes on (0: no limit). Over it a new request is
    /// answered `503` with a random `Retry-After` that grows with the excess, so a crowd of clients
    /// returning together (after a restart or a crash) comes back spread out instead of at once.
    /// OPTIONS (health probes) are exempt.
    pub max_requests_per_second: u32,
    /// Seconds a server keeps serving after SIGTERM while it reports not ready (`/readyz` 503,
    /// OPTIONS 503), so that load balancers and Kubernetes take it out of rotation first.
    pub shutdown_grace_secs: u64,
    /// Upper bound, in seconds from SIGTERM, of the whole shutdown (grace, refusing new work,
    /// finishing open transactions, closing connections); keep it below the pod's
    /// `terminationGracePeriodSeconds`.
    pub shutdown_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 65_535,
            max_headers: 128,
            max_body_bytes: 16_384,
            max_connections_per_ip: 64,
            max_connections: 100_000,
            idle_timeout_secs: 600,
            message_timeout_secs: 10,
            max_messages_per_source: 1_000,
            max_pending_requests: 10_000,
            max_requests_per_second: 0,
            shutdown_grace_secs: 5,
            shutdown_timeout_secs: 20,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registrar {
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub max_contacts: usize,
    /// Spread of the expiry granted to a REGISTER, in percent: a binding is granted a random
    /// interval between (100 - this)% and 100% of what was asked (or the default), never below
    /// `min_expires`, so clients that signed in together do not all refresh together.
    pub expires_jitter_percent: u32,
}

impl Default for Registrar {
    fn default() -> Self {
        Registrar {
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
            max_contacts: 10,
            expires_jitter_percent: 20,
        }
    }
}

/// A digest algorithm, by its RFC 7616 token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum Algorithm {
    #[serde(rename = "MD5")]
    Md5,
    #[serde(rename = "SHA-256")]
    Sha256,
}

impl Algorithm {
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    pub fn from_token(t: &str) -> Option<Algorithm> {
        match t.to_ascii_uppercase().as_str() {
            "MD5" => Some(Algorithm::Md5),
            "SHA-256" => Some(Algorithm::Sha256),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Challenge algorithms, one WWW-Authenticate each, in this order. The default is MD5 alone:
    /// sipsak reads only the first challenge, and baresip 1.0 (libre 1.1) gives up when any
    /// challenge names an algorithm it lacks. Add "SHA-256" for clients that follow RFC 8760.
    pub algorithms: Vec<Algorithm>,
    pub nonce_ttl_secs: u64,
    /// Failed authentications from one address (for any user) within `failure_window_secs` that
    /// lock that address out for `lockout_secs`. A locked-out attempt is answered exactly like a
    /// wrong password, so guessing learns nothing, not even that it was stopped.
    pub max_failures_per_source: u32,
    /// Failed authentications for one user (from any address) within the window that lock the
    /// user out: a much higher bar, so an attacker on one address cannot lock a user out.
    pub max_failures_per_user: u32,
    pub failure_window_secs: u64,
    pub lockout_secs: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            algorithms: vec![Algorithm::Md5],
            nonce_ttl_secs: 300,
            max_failures_per_source: 10,
            max_failures_per_user: 100,
            failure_window_secs: 300,
            lockout_secs: 300,
        }
    }
}

/// The Front-End's view of the domain: which Home Servers exist and where their internal
/// (mutual-TLS) ports are.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FrontEnd {
    pub home_servers: Vec<HomeServerRoute>,
    /// Seconds a user's Home Server, as the directory names it, is remembered.
    #[serde(default = "default_route_cache_secs")]
    pub route_cache_secs: u64,
    /// Milliseconds between OPTIONS probes of each Home Server (one unanswered for a second, or
    /// refused, marks it down; an answer marks it up).
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// A file holding a secret every replica of the domain's Front-Ends reads: flow tokens are
    /// then minted under a key they share, so when a replica goes away, a Home Server reaches
    /// its UDP clients through another one. Without it, each process has a key of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_key_file: Option<PathBuf>,
}

pub fn default_route_cache_secs() -> u64 {
    10
}

pub fn default_probe_interval_ms() -> u64 {
    500
}

/// A row of the Front-End's routing table: a Home Server's name (what users' directory entries
/// name) and `host:port` of its internal mutual-TLS listener.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HomeServerRoute {
    pub name: String,
    pub address: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Reads, parses and validates a config file for a role. Relative paths become relative to the
    /// config file, so a config can travel with its files. Opens nothing else.
    pub fn load(path: &Path, role: Role) -> Result<Config, Error> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: shown.clone(), source })?;
        let mut config = Self::parse(&text, role).map_err(|message| Error::Invalid { path: shown, message })?;
        config.rebase(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    /// Parses and validates config text; the error names the offending key.
    pub fn parse(text: &str, role: Role) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        config.validate(role)?;
        Ok(config)
    }

    /// The TOML text of this config, as `parse` reads it back.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config always serialises")
    }

    fn rebase(&mut self, base: &Path) {
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        rebase(&mut self.storage.data_dir);
        rebase(&mut self.storage.logs_dir);
        if let Some(tls) = &mut self.tls {
            rebase(&mut tls.cert);
            rebase(&mut tls.key);
            if let Some(ca) = &mut tls.ca {
                rebase(ca);
            }
        }
        if let Some(f) = &mut self.api.admin_token_file {
            rebase(f);
        }
        if let Some(r) = &mut self.web.root {
            rebase(r);
        }
        if let Some(f) = self.frontend.as_mut().and_then(|fe| fe.flow_key_file.as_mut()) {
            rebase(f);
        }
        match &mut self.directory {
            DirectoryConfig::File { file } => rebase(file),
            DirectoryConfig::Ldap { bind_password_file, ca_file, .. } => {
                rebase(bind_password_file);
                if let Some(ca) = ca_file {
                    rebase(ca);
                }
            }
        }
    }

    pub fn validate(&self, role: Role) -> Result<(), String> {
        let d = &self.sip_domain;
        if !is_domain_name(d) {
            return Err(format!("key `sip_domain`: {d:?} is not a domain name"));
        }
        let l = &self.listen;
        if l.udp.is_none() && l.tcp.is_none() && l.tls.is_none() && l.ws.is_none() && l.wss.is_none() {
            return Err("key `listen`: no SIP transport is enabled (set udp, tcp, tls, ws or wss)".into());
        }
        if self.listen.tls.is_some() && self.tls.is_none() {
            return Err("key `listen.tls` is set but the `[tls]` section (cert, key) is missing".into());
        }
        if self.listen.wss.is_some() && self.tls.is_none() {
            return Err("key `listen.wss` is set but the `[tls]` section (cert, key) is missing".into());
        }
        if self.listen.web.is_some() && self.web.root.is_none() {
            return Err("key `listen.web` needs `web.root`: the directory of the built web client".into());
        }
        for o in &self.web.origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(format!("key `web.origins`: {o:?} is not \"*\" or an http(s)://host[:port] origin"));
            }
        }
        if self.offline.enabled && (self.offline.max_per_user == 0 || self.offline.expiry_secs == 0) {
            return Err(
                "keys `offline.max_per_user` and `offline.expiry_secs`: at least 1 (or offline.enabled = false)".into(),
            );
        }
        if self.listen.internal.is_some() && self.tls.as_ref().is_none_or(|t| t.ca.is_none()) {
            return Err("key `listen.internal` needs `tls.ca`: the CA both ends of the internal link trust".into());
        }
        let r = &self.registrar;
        if r.min_expires == 0 || r.min_expires > r.max_expires {
            return Err(format!(
                "key `registrar.min_expires`: must be between 1 and registrar.max_expires ({})",
                r.max_expires
            ));
        }
        if !(r.min_expires..=r.max_expires).contains(&r.default_expires) {
            return Err("key `registrar.default_expires`: must lie between min_expires and max_expires".into());
        }
        if r.expires_jitter_percent > 50 {
            return Err("key `registrar.expires_jitter_percent`: at most 50".into());
        }
        if self.limits.shutdown_timeout_secs == 0
            || self.limits.shutdown_grace_secs >= self.limits.shutdown_timeout_secs
        {
            return Err(
                "keys `limits.shutdown_grace_secs` and `limits.shutdown_timeout_secs`: the grace must be shorter than the \
                 timeout (at least 1 s)"
                    .into(),
            );
        }
        if self.auth.max_failures_per_source == 0 || self.auth.max_failures_per_user == 0 {
            return Err("keys `auth.max_failures_per_source` and `auth.max_failures_per_user`: at least 1".into());
        }
        if self.auth.algorithms.is_empty() {
            return Err("key `auth.algorithms`: at least one of \"SHA-256\", \"MD5\" is needed".into());
        }
        if self.limits.max_message_bytes < 1024 {
            return Err("key `limits.max_message_bytes`: at least 1024".into());
        }
        if self.limits.message_timeout_secs == 0 || self.limits.message_timeout_secs > self.limits.idle_timeout_secs {
            return Err("key `limits.message_timeout_secs`: between 1 and limits.idle_timeout_secs".into());
        }
        if self.limits.max_body_bytes > self.limits.max_message_bytes {
            return Err("key `limits.max_body_bytes`: must not exceed limits.max_message_bytes".into());
        }
        if let DirectoryConfig::Ldap { url, timeout_ms, pool_size, .. } = &self.directory {
            if !(url.starts_with("ldap://") || url.starts_with("ldaps://")) {
                return Err(format!("key `directory.url`: {url:?} is not an ldap:// or ldaps:// URL"));
            }
            if *timeout_ms < 50 || *pool_size == 0 {
                return Err(
                    "key `directory.timeout_ms` must be at least 50 and `directory.pool_size` at least 1".into()
                );
            }
        }
        match (role, &self.frontend) {
            (Role::Home, Some(_)) => {
                return Err("key `frontend`: only a Front-End (--role frontend) has a routing table".into());
            }
            (Role::FrontEnd, None) => {
                return Err("key `frontend`: a Front-End needs `[frontend] home_servers` to route to".into());
            }
            (Role::FrontEnd, Some(fe)) => {
                if fe.home_servers.is_empty() {
                    return Err("key `frontend.home_servers`: at least one Home Server is needed".into());
                }
                for (i, hs) in fe.home_servers.iter().enumerate() {
                    if hs.name.is_empty() || fe.home_servers[..i].iter().any(|o| o.name == hs.name) {
                        return Err(format!("key `frontend.home_servers`: name {:?} is empty or repeated", hs.name));
                    }
                    if !has_port(&hs.address) {
                        return Err(format!(
                            "key `frontend.home_servers`: address {:?} of {:?} is not host:port",
                            hs.address, hs.name
                        ));
                    }
                }
                if self.listen.internal.is_none() {
                    return Err(
                        "key `listen.internal`: a Front-End needs its mutual-TLS port for Home Servers' requests"
                            .into(),
                    );
                }
            }
            (Role::Home, None) => {}
        }
        Ok(())
    }
}

fn is_domain_name(d: &str) -> bool {
    !d.is_empty()
        && !d.starts_with(['.', '-'])
        && d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

fn has_port(address: &str) -> bool {
    address.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "sip_domain = \"example.test\"\n[storage]\ndata_dir = \"d\"\nlogs_dir = \"l\"\n\
        [directory]\nbackend = \"file\"\nfile = \"users.toml\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, Role::Home).unwrap();
        assert_eq!(c.listen.udp, Some("0.0.0.0:5060".parse().unwrap()));
        assert_eq!(c.registrar.min_expires, 60);
        assert_eq!(c.auth.algorithms, vec![Algorithm::Md5]);
        assert_eq!(c.storage.sync, SyncPolicy::EachChange);
    }

    #[test]
    fn storage_sync_is_each_change_or_checkpoint() {
        let with = |v: &str| MINIMAL.replace("logs_dir = \"l\"\n", &format!("logs_dir = \"l\"\nsync = \"{v}\"\n"));
        let c = Config::parse(&with("checkpoint"), Role::Home).unwrap();
        assert_eq!(c.storage.sync, SyncPolicy::Checkpoint);
        assert_eq!(Config::parse(&c.to_toml(), Role::Home).unwrap(), c);
        let e = Config::parse(&with("never"), Role::Home).unwrap_err();
        assert!(e.contains("sync = \"never\"") && e.contains("expected `each-change` or `checkpoint`"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse(&format!("{MINIMAL}[limits]\nmax_mesage_bytes = 1\n"), Role::Home).unwrap_err();
        assert!(e.contains("max_mesage_bytes"), "{e}");
        let e = Config::parse(&MINIMAL.replace("example.test", "bad domain"), Role::Home).unwrap_err();
        assert!(e.contains("sip_domain"), "{e}");
        let e = Config::parse(&format!("{MINIMAL}[listen]\ntls = \"127.0.0.1:5061\"\n"), Role::Home).unwrap_err();
        assert!(e.contains("listen.tls"), "{e}");
        let e = Config::parse(&format!("{MINIMAL}[registrar]\nmin_expires = 0\n"), Role::Home).unwrap_err();
        assert!(e.contains("registrar.min_expires"), "{e}");
        let e = Config::parse(&format!("{MINIMAL}[auth]\nalgorithms = [\"SHA-512\"]\n"), Role::Home).unwrap_err();
        assert!(e.contains("algorithms"), "{e}");
        let e = Config::parse(&format!("{MINIMAL}[limits]\nshutdown_grace_secs = 30\n"), Role::Home).unwrap_err();
        assert!(e.contains("limits.shutdown_grace_secs"), "{e}");
        let e = Config::parse(&format!("{MINIMAL}[registrar]\nexpires_jitter_percent = 80\n"), Role::Home).unwrap_err();
        assert!(e.contains("registrar.expires_jitter_percent"), "{e}");
    }

    #[test]
    fn websocket_web_and_offline_keys_are_checked() {
        let e = Config::parse(&format!("{MINIMAL}[listen]\nwss = \"127.0.0.1:5067\"\n"), Role::Home).unwrap_err();
        assert!(e.contains("listen.wss"), "{e}");
        let web = format!("{MINIMAL}[listen]\nudp = \"127.0.0.1:5060\"\nweb = \"127.0.0.1:8088\"\n");
        let e = Config::parse(&web, Role::Home).unwrap_err();
        assert!(e.contains("web.root"), "{e}");
        let e = Config::parse(&format!("{MINIMAL}[web]\norigins = [\"chat.example.test\"]\n"), Role::Home).unwrap_err();
        assert!(e.contains("web.origins"), "{e}");
        let e = Config::parse(&format!("{MINIMAL}[offline]\nmax_per_user = 0\n"), Role::Home).unwrap_err();
        assert!(e.contains("offline.max_per_user"), "{e}");
        let only_ws = MINIMAL.to_string() + "[listen]\nws = \"127.0.0.1:5066\"\n[web]\norigins = [\"*\"]\n";
        let c = Config::parse(&only_ws, Role::Home).unwrap();
        assert_eq!(c.listen.ws, Some("127.0.0.1:5066".parse().unwrap()));
        assert!(c.offline.enabled, "kept by default");
        assert_eq!(Config::parse(&c.to_toml(), Role::Home).unwrap(), c);
    }

    #[test]
    fn roles_need_their_own_sections() {
        let e = Config::parse(MINIMAL, Role::FrontEnd).unwrap_err();
        assert!(e.contains("`frontend`"), "{e}");
        let fe = format!(
            "{MINIMAL}[tls]\ncert = \"c\"\nkey = \"k\"\nca = \"ca\"\n[frontend]\n\
             home_servers = [{{ name = \"home-1\", address = \"home-1:5062\" }}]\n"
        );
        let e = Config::parse(&fe, Role::FrontEnd).unwrap_err();
        assert!(e.contains("listen.internal"), "{e}");
        let e = Config::parse(&fe, Role::Home).unwrap_err();
        assert!(e.contains("only a Front-End"), "{e}");
        let fe = fe.replace("[tls]", "[listen]\ninternal = \"0.0.0.0:5062\"\nudp = \"0.0.0.0:5060\"\n[tls]");
        Config::parse(&fe, Role::FrontEnd).unwrap();
        let e = Config::parse(&fe.replace("home-1:5062", "home-1"), Role::FrontEnd).unwrap_err();
        assert!(e.contains("not host:port"), "{e}");
        let e = Config::parse(&fe.replace("ca = \"ca\"\n", ""), Role::FrontEnd).unwrap_err();
        assert!(e.contains("tls.ca"), "{e}");
    }

    #[test]
    fn serialised_configs_read_back_unchanged() {
        let mut c = Config::parse(MINIMAL, Role::Home).unwrap();
        c.directory = DirectoryConfig::Ldap {
            url: "ldaps://ldap:636".into(),
            base_dn: "dc=\"quoted\"\n,dc=x".into(),
            bind_dn: service_account_dn("dc=x"),
            bind_password_file: "/p".into(),
            ca_file: None,
            starttls: false,
            timeout_ms: 100,
            cache_ttl_secs: 1,
            pool_size: 2,
        };
        assert_eq!(Config::parse(&c.to_toml(), Role::Home).unwrap(), c);
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = std::env::temp_dir().join(format!("parley-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("parley.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = Config::load(&path, Role::Home).unwrap();
        assert_eq!(c.storage.data_dir, dir.join("d"));
        assert_eq!(c.directory, DirectoryConfig::File { file: dir.join("users.toml") });
        std::fs::remove_dir_all(&dir).unwrap();
        let e = Config::load(&dir.join("missing.toml"), Role::Home).unwrap_err().to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }
}
