//! The TOML configuration, validated into typed settings. Unknown keys and bad values are errors
//! that name the key.

use crate::home::auth::Algorithm;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The SIP domain users belong to (`sip:user@sip_domain`); also the digest realm.
    pub sip_domain: String,
    /// Other host names that mean the SIP domain in addresses (e.g. the server's own IP, so that
    /// `sip:alice@127.0.0.1` is alice of the domain), as Kamailio's `alias`.
    #[serde(default)]
    pub domain_aliases: Vec<String>,
    /// This server's name; users whose home-server attribute names it are homed here.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
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
}

/// The presence-rules and contact-list HTTP API on the operations port.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// File holding a token that authorises an administrator for every user (`Bearer` scheme).
    pub admin_token_file: Option<PathBuf>,
}

fn default_server_name() -> String {
    "home-1".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub ops: Option<SocketAddr>,
    /// Host or address written into Via and Contact headers this server adds (default: the
    /// listening address).
    pub advertise: Option<String>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            udp: Some("0.0.0.0:5060".parse().expect("literal")),
            tcp: Some("0.0.0.0:5060".parse().expect("literal")),
            tls: None,
            ops: Some("0.0.0.0:8080".parse().expect("literal")),
            advertise: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Create a self-signed certificate at `cert`/`key` on first start when they do not exist.
    #[serde(default)]
    pub self_signed: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub data_dir: PathBuf,
    pub logs_dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
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

fn default_ldap_timeout_ms() -> u64 {
    2000
}

fn default_ldap_cache_ttl_secs() -> u64 {
    30
}

fn default_ldap_pool_size() -> usize {
    4
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    pub max_connections_per_ip: usize,
    pub max_connections: usize,
    /// Seconds a stream connection may stay idle (no message, no keep-alive) before it is closed.
    pub idle_timeout_secs: u64,
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
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registrar {
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
    pub max_contacts: usize,
}

impl Default for Registrar {
    fn default() -> Self {
        let p = crate::home::registrar::Policy::default();
        Registrar {
            min_expires: p.min_expires,
            max_expires: p.max_expires,
            default_expires: p.default_expires,
            max_contacts: p.max_contacts,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Challenge algorithms, one WWW-Authenticate each, in this order. The default is MD5 alone:
    /// sipsak reads only the first challenge, and baresip 1.0 (libre 1.1) gives up when any
    /// challenge names an algorithm it lacks. Add "SHA-256" for clients that follow RFC 8760.
    pub algorithms: Vec<Algorithm>,
    pub nonce_ttl_secs: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Auth { algorithms: vec![Algorithm::Md5], nonce_ttl_secs: 300 }
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let mut config = Self::parse(&text).with_context(|| format!("config {}", path.display()))?;
        // Relative paths are relative to the config file, so a config can travel with its files.
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        rebase(&mut config.storage.data_dir);
        rebase(&mut config.storage.logs_dir);
        if let Some(tls) = &mut config.tls {
            rebase(&mut tls.cert);
            rebase(&mut tls.key);
        }
        match &mut config.directory {
            DirectoryConfig::File { file } => rebase(file),
            DirectoryConfig::Ldap { bind_password_file, ca_file, .. } => {
                rebase(bind_password_file);
                if let Some(ca) = ca_file {
                    rebase(ca);
                }
            }
        }
        Ok(config)
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let d = &self.sip_domain;
        if d.is_empty()
            || d.starts_with(['.', '-'])
            || !d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            bail!("key `sip_domain`: {d:?} is not a domain name");
        }
        if self.listen.udp.is_none() && self.listen.tcp.is_none() && self.listen.tls.is_none() {
            bail!("key `listen`: no SIP transport is enabled (set udp, tcp or tls)");
        }
        if self.listen.tls.is_some() && self.tls.is_none() {
            bail!("key `listen.tls` is set but the `[tls]` section (cert, key) is missing");
        }
        let r = &self.registrar;
        if r.min_expires == 0 || r.min_expires > r.max_expires {
            bail!("key `registrar.min_expires`: must be between 1 and registrar.max_expires ({})", r.max_expires);
        }
        if !(r.min_expires..=r.max_expires).contains(&r.default_expires) {
            bail!("key `registrar.default_expires`: must lie between min_expires and max_expires");
        }
        if self.auth.algorithms.is_empty() {
            bail!("key `auth.algorithms`: at least one of \"SHA-256\", \"MD5\" is needed");
        }
        if self.limits.max_message_bytes < 1024 {
            bail!("key `limits.max_message_bytes`: at least 1024");
        }
        if let DirectoryConfig::Ldap { url, timeout_ms, pool_size, .. } = &self.directory {
            if !(url.starts_with("ldap://") || url.starts_with("ldaps://")) {
                bail!("key `directory.url`: {url:?} is not an ldap:// or ldaps:// URL");
            }
            if *timeout_ms < 50 || *pool_size == 0 {
                bail!("key `directory.timeout_ms` must be at least 50 and `directory.pool_size` at least 1");
            }
        }
        if self.limits.max_body_bytes > self.limits.max_message_bytes {
            bail!("key `limits.max_body_bytes`: must not exceed limits.max_message_bytes");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "sip_domain = \"example.test\"\n[storage]\ndata_dir = \"d\"\nlogs_dir = \"l\"\n\
        [directory]\nbackend = \"file\"\nfile = \"users.toml\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.listen.udp, Some("0.0.0.0:5060".parse().unwrap()));
        assert_eq!(c.registrar.min_expires, 60);
        assert_eq!(c.auth.algorithms, vec![Algorithm::Md5]);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse(&format!("{MINIMAL}[limits]\nmax_mesage_bytes = 1\n")).unwrap_err().to_string();
        assert!(e.contains("max_mesage_bytes"), "{e}");
        let e = Config::parse(&MINIMAL.replace("example.test", "bad domain")).unwrap_err().to_string();
        assert!(e.contains("sip_domain"), "{e}");
        let e = Config::parse(&format!("{MINIMAL}[listen]\ntls = \"127.0.0.1:5061\"\n")).unwrap_err().to_string();
        assert!(e.contains("listen.tls"), "{e}");
        let e = Config::parse(&format!("{MINIMAL}[registrar]\nmin_expires = 0\n")).unwrap_err().to_string();
        assert!(e.contains("registrar.min_expires"), "{e}");
        let e = Config::parse(&format!("{MINIMAL}[auth]\nalgorithms = [\"SHA-512\"]\n")).unwrap_err().to_string();
        assert!(e.contains("algorithms"), "{e}");
    }
}
