//! `parley-server user add|set-password|enable|disable|move|drain|show|list`: user administration
//! in the LDAP directory, as a member of the user administrators group would do it. Passwords are
//! never stored: `add` and `set-password` write the digest HA1 attributes (realm = the SIP domain).
//!
//! Placement (`add` and `enable` without a Home Server, `move` without one, `drain`) gives a user
//! to the registered Home Server with the most free capacity (its capacity less its enabled homed
//! users, counted in the directory; ties by name). `move` and `drain` carry each user's durable
//! state over the Home Servers' administrators' API (`placement.rs`).

mod placement;

use crate::directory::ldap_client::{ClientError, INSUFFICIENT_ACCESS, LdapPool, attr, first};
use crate::home::auth::{Algorithm, ha1};
use crate::prep::names::{self, DOMAIN_CLASS, SERVER_CLASS, USER_CLASS};
use crate::prep::schema::attrs as a;
use crate::prep::{Connection, dn_within};
use anyhow::{Context, bail};
use clap::Subcommand;
use ldap3::{Mod, Scope, SearchEntry};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum UserLdapCommand {
    /// Add a user (password from --password-file or standard input).
    Add {
        #[command(flatten)]
        conn: Connection,
        /// Address of record, e.g. alice@example.test.
        address: String,
        /// The Home Server the user is homed on (registered with `prep enterprise --home-server`);
        /// without it, the one with the most free capacity.
        #[arg(long)]
        home_server: Option<String>,
        /// Display name (default: the user part of the address).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Set a user's password (writes the digest HA1 attributes).
    SetPassword {
        #[command(flatten)]
        conn: Connection,
        address: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Allow a user to sign in; with --from, make existing directory entries Parley users.
    Enable {
        #[command(flatten)]
        conn: Connection,
        #[arg(required_unless_present = "from", conflicts_with = "from")]
        address: Option<String>,
        /// A CSV file (header line; columns `address`, and optionally `home_server`) or an LDIF
        /// file (entries with `dn:` and optionally `parleySipAddress` or `mail`) of entries to
        /// enable; users without a Home Server are placed.
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Stop a user from signing in.
    Disable {
        #[command(flatten)]
        conn: Connection,
        address: String,
    },
    /// Move a user, with their registrations, contact list, presence rules and publications, to
    /// another Home Server (without --home-server: the one with the most free capacity).
    Move {
        #[command(flatten)]
        conn: Connection,
        address: String,
        #[arg(long)]
        home_server: Option<String>,
        /// File holding the Home Servers' admin API token (their `[api] admin_token_file`).
        #[arg(long, env = "PARLEY_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<PathBuf>,
        /// Only rewrite the directory's Home Server attribute: the user's state on the old Home
        /// Server is not carried (the behaviour of earlier versions).
        #[arg(long)]
        directory_only: bool,
    },
    /// Move every user of a Home Server to the others, each to the one with the most free
    /// capacity at that moment; refuses when they lack the capacity. Re-running continues.
    Drain {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        home_server: String,
        #[arg(long, env = "PARLEY_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<PathBuf>,
    },
    /// Show a user.
    Show {
        #[command(flatten)]
        conn: Connection,
        address: String,
    },
    /// List users (paged), one line each: address, enabled|disabled, Home Server.
    List {
        #[command(flatten)]
        conn: Connection,
        #[arg(long, default_value_t = 500)]
        page_size: i32,
    },
}

pub fn run(cmd: UserLdapCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(run_async(cmd))
}

/// Error text for a failed operation: permission problems name the bind DN.
pub(crate) fn explain(pool: &LdapPool, what: &str, e: ClientError) -> anyhow::Error {
    match e.rc() {
        Some(INSUFFICIENT_ACCESS) => anyhow::anyhow!("permission denied: {} may not {what}", pool.bind_dn()),
        _ => anyhow::anyhow!("{what}: {e}"),
    }
}

pub(crate) fn normalise_address(address: &str) -> anyhow::Result<(String, String, String)> {
    let address = address.trim().trim_start_matches("sip:").to_ascii_lowercase();
    match address.split_once('@') {
        Some((user, domain)) if !user.is_empty() && !domain.is_empty() => {
            Ok((address.clone(), user.to_string(), domain.to_string()))
        }
        _ => bail!("address {address:?} is not user@domain"),
    }
}

fn read_new_password(file: Option<&Path>) -> anyhow::Result<String> {
    let text = match file {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        None => {
            let mut s = String::new();
            std::io::stdin().read_line(&mut s).context("reading the password from standard input")?;
            s
        }
    };
    let password = text.trim_end_matches(['\r', '\n']).to_string();
    anyhow::ensure!(!password.is_empty(), "empty password");
    Ok(password)
}

/// The base DN of the users of `domain`: an admitted domain's, else the forest root.
pub(crate) async fn base_for(pool: &LdapPool, base: &str, domain: &str) -> anyhow::Result<String> {
    let filter = format!("(&(objectClass={DOMAIN_CLASS})({}={}))", a::SIP_DOMAIN, ldap3::ldap_escape(domain));
    let entries = pool
        .search(&names::domains(base), Scope::OneLevel, &filter, &[a::USER_BASE_DN])
        .await
        .map_err(|e| explain(pool, "read the admitted domains", e))?;
    Ok(entries.first().and_then(|e| first(e, a::USER_BASE_DN)).unwrap_or(base).to_string())
}

const USER_ATTRS: &[&str] = &[a::SIP_ADDRESS, a::ENABLED, a::HOME_SERVER, a::HA1_MD5, a::HA1_SHA256, "cn"];

async fn find(pool: &LdapPool, base: &str, address: &str, domain: &str) -> anyhow::Result<SearchEntry> {
    let user_base = base_for(pool, base, domain).await?;
    let filter = format!("(&(objectClass={USER_CLASS})({}={}))", a::SIP_ADDRESS, ldap3::ldap_escape(address));
    let entries = pool
        .search(&user_base, Scope::Subtree, &filter, USER_ATTRS)
        .await
        .map_err(|e| explain(pool, &format!("search {user_base}"), e))?;
    match entries.len() {
        0 => bail!("no such user: {address} (under {user_base}, as seen by {})", pool.bind_dn()),
        1 => Ok(entries.into_iter().next().expect("one")),
        n => bail!("{n} entries carry the SIP address {address}; fix the directory"),
    }
}

pub(crate) async fn check_home_server(pool: &LdapPool, base: &str, name: &str) -> anyhow::Result<()> {
    let servers = pool
        .search(&names::home_servers(base), Scope::OneLevel, &format!("(objectClass={SERVER_CLASS})"), &["cn"])
        .await
        .map_err(|e| explain(pool, "read the registered Home Servers", e))?;
    let known: Vec<&str> = servers.iter().filter_map(|e| first(e, "cn")).collect();
    if !known.iter().any(|k| k.eq_ignore_ascii_case(name)) {
        bail!(
            "no Home Server named {name:?} is registered (known: {}); register it with `prep enterprise --home-server NAME=ADDRESS`",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        );
    }
    Ok(())
}

fn ha1_mods(user: &str, realm: &str, password: &str) -> Vec<(String, String)> {
    vec![
        (a::HA1_MD5.to_string(), ha1(Algorithm::Md5, user, realm, password)),
        (a::HA1_SHA256.to_string(), ha1(Algorithm::Sha256, user, realm, password)),
    ]
}

pub(crate) async fn replace(
    pool: &LdapPool,
    dn: &str,
    what: &str,
    values: Vec<(String, String)>,
) -> anyhow::Result<()> {
    let mods = values.into_iter().map(|(k, v)| Mod::Replace(k, HashSet::from([v]))).collect();
    pool.modify(dn, mods).await.map_err(|e| explain(pool, &format!("{what} ({dn})"), e))
}

async fn run_async(cmd: UserLdapCommand) -> anyhow::Result<()> {
    match cmd {
        UserLdapCommand::Add { conn, address, home_server, name, password_file } => {
            let (address, user, domain) = normalise_address(&address)?;
            let password = read_new_password(password_file.as_deref())?;
            let (pool, base) = conn.open()?;
            let home_server = match home_server {
                Some(h) => {
                    check_home_server(&pool, &base, &h).await?;
                    h
                }
                None => {
                    let mut loads = placement::Loads::read(&pool, &base).await?;
                    loads.place(&[])?
                }
            };
            let user_base = base_for(&pool, &base, &domain).await?;
            let dn = format!("uid={},{}", ldap3::dn_escape(&user), names::people(&user_base));
            let mut attrs = vec![
                ("objectClass".to_string(), vec!["inetOrgPerson".to_string(), USER_CLASS.to_string()]),
                ("uid".to_string(), vec![user.clone()]),
                ("cn".to_string(), vec![name.unwrap_or_else(|| user.clone())]),
                ("sn".to_string(), vec![user.clone()]),
                (a::SIP_ADDRESS.to_string(), vec![address.clone()]),
                (a::ENABLED.to_string(), vec!["TRUE".to_string()]),
                (a::HOME_SERVER.to_string(), vec![home_server.clone()]),
            ];
            attrs.extend(ha1_mods(&user, &domain, &password).into_iter().map(|(k, v)| (k, vec![v])));
            match pool.add(&dn, attrs).await {
                Ok(()) => {
                    audit(&conn, "user added", &address, &home_server);
                    println!("added {address} as {dn}, homed on {home_server}")
                }
                Err(e) if e.rc() == Some(crate::directory::ldap_client::ALREADY_EXISTS) => {
                    bail!("user {address} already exists ({dn})")
                }
                Err(e) => return Err(explain(&pool, &format!("add users ({dn})"), e)),
            }
        }
        UserLdapCommand::SetPassword { conn, address, password_file } => {
            let (address, user, domain) = normalise_address(&address)?;
            let password = read_new_password(password_file.as_deref())?;
            let (pool, base) = conn.open()?;
            let entry = find(&pool, &base, &address, &domain).await?;
            replace(&pool, &entry.dn, "change passwords", ha1_mods(&user, &domain, &password)).await?;
            audit(&conn, "password set", &address, "");
            println!("set the password of {address}");
        }
        UserLdapCommand::Enable { conn, address: Some(address), from: None } => {
            set_enabled(&conn, &address, true).await?
        }
        UserLdapCommand::Enable { conn, from, .. } => {
            let file = from.expect("clap requires an address or --from");
            placement::enable_from(&conn, &file).await?
        }
        UserLdapCommand::Disable { conn, address } => set_enabled(&conn, &address, false).await?,
        UserLdapCommand::Move { conn, address, home_server, admin_token_file, directory_only } => {
            let (address, _, domain) = normalise_address(&address)?;
            let (pool, base) = conn.open()?;
            if let Some(h) = &home_server {
                check_home_server(&pool, &base, h).await?;
            }
            let entry = find(&pool, &base, &address, &domain).await?;
            let was = first(&entry, a::HOME_SERVER).map(str::to_string);
            let mut loads = placement::Loads::read(&pool, &base).await?;
            let to = match home_server {
                Some(h) => loads.canonical(&h),
                None => loads.place(&[was.as_deref().unwrap_or_default()])?,
            };
            if directory_only {
                replace(&pool, &entry.dn, "move users", vec![(a::HOME_SERVER.to_string(), to.clone())]).await?;
                let was = was.unwrap_or_else(|| "none".into());
                audit(&conn, "user moved (directory only: state not carried)", &address, &format!("{was} -> {to}"));
                println!("moved {address} from {was} to {to} (directory only: their state on {was} was not carried)");
                return Ok(());
            }
            let token = placement::read_token(admin_token_file.as_deref())?;
            let mover = placement::Mover::new(&conn, &pool, token);
            mover.move_user(&entry.dn, &address, was.as_deref(), &to, &loads).await?;
            println!("moved {address} from {} to {to}", was.as_deref().unwrap_or("none"));
        }
        UserLdapCommand::Drain { conn, home_server, admin_token_file } => {
            let token = placement::read_token(admin_token_file.as_deref())?;
            placement::drain(&conn, &home_server, token).await?;
        }
        UserLdapCommand::Show { conn, address } => {
            let (address, _, domain) = normalise_address(&address)?;
            let (pool, base) = conn.open()?;
            let entry = find(&pool, &base, &address, &domain).await?;
            print!("{}", describe(&entry, &address));
        }
        UserLdapCommand::List { conn, page_size } => {
            let (pool, base) = conn.open()?;
            let bases = user_bases(&pool, &base).await?;
            for b in bases {
                for entry in list(&pool, &b, page_size).await? {
                    let enabled = if is_enabled(&entry) { "enabled" } else { "disabled" };
                    let address = first(&entry, a::SIP_ADDRESS).unwrap_or("?");
                    println!("{address} {enabled} {}", first(&entry, a::HOME_SERVER).unwrap_or("-"));
                }
            }
        }
    }
    Ok(())
}

/// Where users live: the forest root and every admitted domain's base DN outside it.
pub(crate) async fn user_bases(pool: &LdapPool, base: &str) -> anyhow::Result<Vec<String>> {
    let mut bases = vec![base.to_string()];
    let domains = pool
        .search(&names::domains(base), Scope::OneLevel, &format!("(objectClass={DOMAIN_CLASS})"), &[a::USER_BASE_DN])
        .await
        .map_err(|e| explain(pool, "read the admitted domains", e))?;
    for d in &domains {
        if let Some(b) = first(d, a::USER_BASE_DN)
            && !bases.iter().any(|x| dn_within(b, x))
        {
            bases.push(b.to_string());
        }
    }
    Ok(bases)
}

async fn set_enabled(conn: &Connection, address: &str, enabled: bool) -> anyhow::Result<()> {
    let (address, _, domain) = normalise_address(address)?;
    let (pool, base) = conn.open()?;
    let entry = find(&pool, &base, &address, &domain).await?;
    let (value, verb) = if enabled { ("TRUE", "enable") } else { ("FALSE", "disable") };
    replace(&pool, &entry.dn, &format!("{verb} users"), vec![(a::ENABLED.to_string(), value.to_string())]).await?;
    audit(conn, if enabled { "user enabled" } else { "user disabled" }, &address, "");
    println!("{verb}d {address}");
    Ok(())
}

/// One line per administrative change, with who made it (the DN bound as) and when (the log's
/// timestamp), on standard error: the audit trail a security review asks for.
pub(crate) fn audit(conn: &Connection, change: &str, address: &str, detail: &str) {
    let actor = conn.bind_dn.as_deref().unwrap_or("(anonymous)");
    tracing::info!(target: "audit", actor, user = address, detail, "{change}");
}

fn is_enabled(entry: &SearchEntry) -> bool {
    first(entry, a::ENABLED).is_some_and(|v| v.eq_ignore_ascii_case("TRUE"))
}

fn describe(entry: &SearchEntry, address: &str) -> String {
    let digests: Vec<&str> = [(a::HA1_MD5, "MD5"), (a::HA1_SHA256, "SHA-256")]
        .iter()
        .filter(|(attr_name, _)| !attr(entry, attr_name).is_empty())
        .map(|(_, label)| *label)
        .collect();
    format!(
        "address: {address}\ndn: {}\nname: {}\nenabled: {}\nhome server: {}\ndigest credentials: {}\n",
        entry.dn,
        first(entry, "cn").unwrap_or("-"),
        if is_enabled(entry) { "yes" } else { "no" },
        first(entry, a::HOME_SERVER).unwrap_or("-"),
        if digests.is_empty() { "none visible".to_string() } else { digests.join(", ") },
    )
}

/// Every user under `base`, fetched `page_size` at a time with the paged-results control.
async fn list(pool: &LdapPool, base: &str, page_size: i32) -> anyhow::Result<Vec<SearchEntry>> {
    let filter = format!("(objectClass={USER_CLASS})");
    let mut entries = pool
        .paged_search(base, &filter, &[a::SIP_ADDRESS, a::ENABLED, a::HOME_SERVER], page_size)
        .await
        .map_err(|e| explain(pool, &format!("list users under {base}"), e))?;
    entries.sort_by(|x, y| first(x, a::SIP_ADDRESS).cmp(&first(y, a::SIP_ADDRESS)));
    Ok(entries)
}
