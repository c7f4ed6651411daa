//! Directory preparation, the counterpart of the seed's `prep=schema|enterprise|domain|domainadd`:
//! each step is idempotent, prints what it changed (or "already prepared"), and `prep verify`
//! checks every step.
//!
//! Layout in the directory (`<base>` is the forest root, `--base-dn`):
//!
//! ```text
//! cn=parley,cn=schema,cn=config            attribute types and object classes (schema.rs)
//! cn=Parley Services,<base>                parleyServices: global settings, parleySipDomain values
//!   cn=Home Servers,...                    parleyServer entries: cn = server name, parleyServerAddress,
//!                                          parleyCapacity, parleyServerApi
//!   cn=Domains,...                         parleyDomain entries admitted by `prep domainadd`
//! ou=Parley,<base>                         cn=ParleyService (the servers' bind DN) and three groups
//! ou=People,<base>                         where `user add` creates users
//! ```

pub mod domain;
pub mod domainadd;
pub mod enterprise;
pub mod schema;
pub mod schema_apply;
pub mod verify;

use crate::directory::ldap_client::{ClientError, INSUFFICIENT_ACCESS, LdapPool, LdapSettings, read_password};
use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Names of the entries Parley creates, in one place.
pub mod names {
    pub const USER_CLASS: &str = "parleyUser";
    pub const SERVICES_CLASS: &str = "parleyServices";
    pub const SERVER_CLASS: &str = "parleyServer";
    pub const DOMAIN_CLASS: &str = "parleyDomain";
    pub const SERVICE_ACCOUNT_CN: &str = "ParleyService";
    pub const SERVER_ADMINS: &str = "ParleyServerAdmins";
    pub const USER_ADMINS: &str = "ParleyUserAdmins";
    pub const READ_ONLY_ADMINS: &str = "ParleyReadOnlyAdmins";
    /// The management groups with their descriptions.
    pub const GROUPS: [(&str, &str); 3] = [
        (SERVER_ADMINS, "Parley server administrators: manage the global settings and Home Servers"),
        (USER_ADMINS, "Parley user administrators: add users, set passwords, enable, disable, move"),
        (READ_ONLY_ADMINS, "Parley read-only administrators: read users and settings"),
    ];

    pub fn services(base: &str) -> String {
        format!("cn=Parley Services,{base}")
    }
    pub fn home_servers(base: &str) -> String {
        format!("cn=Home Servers,{}", services(base))
    }
    pub fn domains(base: &str) -> String {
        format!("cn=Domains,{}", services(base))
    }
    pub fn home_server(base: &str, name: &str) -> String {
        format!("cn={},{}", ldap3::dn_escape(name), home_servers(base))
    }
    pub fn domain(base: &str, sip_domain: &str) -> String {
        format!("cn={},{}", ldap3::dn_escape(sip_domain), domains(base))
    }
    pub fn parley_ou(base: &str) -> String {
        format!("ou=Parley,{base}")
    }
    /// The servers' bind DN: one definition, shared with the operator through the config crate.
    pub fn service_account(base: &str) -> String {
        crate::config::service_account_dn(base)
    }
    pub fn group(base: &str, cn: &str) -> String {
        format!("cn={cn},{}", parley_ou(base))
    }
    pub fn people(base: &str) -> String {
        format!("ou=People,{base}")
    }
}

/// How prep and user commands reach the directory. The bind password comes from
/// `--bind-password-file` or the environment variable `PARLEY_LDAP_PASSWORD`, never from argv.
#[derive(Args, Clone, Debug)]
pub struct Connection {
    /// Directory URL: ldap://host:389, ldaps://host:636 (add --starttls for StartTLS on ldap://).
    #[arg(long, env = "PARLEY_LDAP_URL")]
    pub url: Option<String>,
    /// Forest root: where the settings container, groups and users live.
    #[arg(long, env = "PARLEY_LDAP_BASE_DN")]
    pub base_dn: Option<String>,
    /// DN to bind as (an administrator for prep; a user administrator for user commands).
    #[arg(long, env = "PARLEY_LDAP_BIND_DN")]
    pub bind_dn: Option<String>,
    /// File holding the bind password (default: environment variable PARLEY_LDAP_PASSWORD).
    #[arg(long, env = "PARLEY_LDAP_BIND_PASSWORD_FILE")]
    pub bind_password_file: Option<PathBuf>,
    /// PEM file of CA certificates that sign the directory's certificate.
    #[arg(long, env = "PARLEY_LDAP_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    #[arg(long)]
    pub starttls: bool,
    /// Deadline for connecting and for each operation.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

impl Connection {
    /// A one-connection pool and the base DN.
    pub fn open(&self) -> anyhow::Result<(LdapPool, String)> {
        let Some(url) = self.url.clone() else { bail!("--url (or PARLEY_LDAP_URL) is required") };
        let Some(base) = self.base_dn.clone() else { bail!("--base-dn (or PARLEY_LDAP_BASE_DN) is required") };
        let password = read_password(self.bind_password_file.as_deref(), "PARLEY_LDAP_PASSWORD")?;
        if self.bind_dn.is_some() && password.is_none() {
            bail!("no bind password: use --bind-password-file or the environment variable PARLEY_LDAP_PASSWORD");
        }
        let pool = LdapPool::new(LdapSettings {
            url,
            bind_dn: self.bind_dn.clone(),
            password,
            ca_file: self.ca_file.clone(),
            starttls: self.starttls,
            timeout: Duration::from_millis(self.timeout_ms),
            pool_size: 1,
        })?;
        Ok((pool, base))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dialect {
    /// OpenLDAP: applied over LDAP to cn=schema,cn=config.
    Openldap,
    /// Active Directory: prints attributeSchema/classSchema LDIF for ldifde.
    Ad,
}

#[derive(Subcommand, Debug)]
pub enum PrepCommand {
    /// Add Parley's attribute types and object classes to the directory schema.
    Schema {
        #[command(flatten)]
        conn: Connection,
        #[arg(long, value_enum, default_value_t = Dialect::Openldap)]
        dialect: Dialect,
        /// Print the LDIF instead of applying it (always so for --dialect ad).
        #[arg(long)]
        print: bool,
    },
    /// Create the global settings container (SIP domains, Home Servers).
    Enterprise {
        #[command(flatten)]
        conn: Connection,
        /// A SIP domain this deployment serves (repeatable).
        #[arg(long = "sip-domain")]
        sip_domains: Vec<String>,
        /// Register a Home Server as NAME=HOST:PORT[,capacity=N][,api=http://HOST:PORT] (repeatable;
        /// capacity: how many users placement gives it, 10,000 when unset; api: its operations port,
        /// which `user move` and `user drain` call).
        #[arg(long = "home-server", value_name = "NAME=HOST:PORT[,capacity=N][,api=URL]")]
        home_servers: Vec<String>,
    },
    /// Create the service account, the three management groups and their access rules.
    Domain {
        #[command(flatten)]
        conn: Connection,
        /// File holding the service account's password.
        #[arg(long)]
        service_account_password_file: PathBuf,
    },
    /// Let users of another directory domain (base DN and SIP domain) use these servers.
    Domainadd {
        #[command(flatten)]
        conn: Connection,
        /// The other domain's SIP domain.
        #[arg(long)]
        domain: String,
        /// Base DN under which the other domain's users live.
        #[arg(long)]
        domain_base_dn: String,
    },
    /// Check every step; one line per step; exit status 0 when all are prepared.
    Verify {
        #[command(flatten)]
        conn: Connection,
    },
}

/// Runs a prep command; `verify` fails when a step is not prepared.
pub fn run(cmd: PrepCommand) -> anyhow::Result<()> {
    if let PrepCommand::Schema { dialect, print, .. } = &cmd {
        match (dialect, print) {
            (Dialect::Ad, _) => {
                print!("{}", schema::ad_ldif());
                return Ok(());
            }
            (Dialect::Openldap, true) => {
                print!("{}", schema::openldap_ldif());
                return Ok(());
            }
            _ => {}
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let report = |step: &str, changes: Vec<String>| {
            if changes.is_empty() {
                println!("{step}: already prepared");
            }
            for c in changes {
                println!("{step}: {c}");
            }
        };
        match cmd {
            PrepCommand::Schema { conn, .. } => {
                let (pool, _) = conn.open()?;
                report("schema", schema_apply::apply(&pool).await?);
            }
            PrepCommand::Enterprise { conn, sip_domains, home_servers } => {
                let (pool, base) = conn.open()?;
                report("enterprise", enterprise::apply(&pool, &base, &sip_domains, &home_servers).await?);
            }
            PrepCommand::Domain { conn, service_account_password_file } => {
                let (pool, base) = conn.open()?;
                let password = read_password(Some(&service_account_password_file), "")?.expect("read from file");
                report("domain", domain::apply(&pool, &base, &password).await?);
            }
            PrepCommand::Domainadd { conn, domain, domain_base_dn } => {
                let (pool, base) = conn.open()?;
                report("domainadd", domainadd::apply(&pool, &base, &domain, &domain_base_dn).await?);
            }
            PrepCommand::Verify { conn } => {
                let (pool, base) = conn.open()?;
                if !verify::run(&pool, &base).await? {
                    bail!("the directory is not fully prepared");
                }
            }
        }
        Ok(())
    })
}

/// Turns a directory error into a message that names the step's need.
pub fn explain(pool: &LdapPool, what: &str, e: ClientError) -> anyhow::Error {
    match e.rc() {
        Some(INSUFFICIENT_ACCESS) => anyhow::anyhow!("{what}: permission denied for {}: {e}", pool.bind_dn()),
        _ => anyhow::anyhow!("{what}: {e}"),
    }
}

/// Adds `dn` unless it exists; returns whether it was added.
pub async fn ensure_entry(pool: &LdapPool, dn: &str, attrs: Vec<(&str, Vec<String>)>) -> anyhow::Result<bool> {
    if pool.get(dn, &["1.1"]).await.map_err(|e| explain(pool, &format!("reading {dn}"), e))?.is_some() {
        return Ok(false);
    }
    let attrs = attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    match pool.add(dn, attrs).await {
        Ok(()) => Ok(true),
        Err(e) if e.rc() == Some(crate::directory::ldap_client::ALREADY_EXISTS) => Ok(false),
        Err(e) => Err(explain(pool, &format!("creating {dn}"), e)),
    }
}

/// A single-valued attribute list helper: `one("x")`.
pub fn one(v: &str) -> Vec<String> {
    vec![v.to_string()]
}

/// DNs compared the way directories do for our purposes: case-insensitively, ignoring spaces
/// after separators.
pub fn dn_eq(a: &str, b: &str) -> bool {
    norm_dn(a) == norm_dn(b)
}

pub fn norm_dn(dn: &str) -> String {
    dn.split(',').map(|rdn| rdn.trim().to_ascii_lowercase()).collect::<Vec<_>>().join(",")
}

/// Whether `dn` equals `suffix` or lies under it.
pub fn dn_within(dn: &str, suffix: &str) -> bool {
    let (dn, suffix) = (norm_dn(dn), norm_dn(suffix));
    dn == suffix || dn.ends_with(&format!(",{suffix}"))
}
