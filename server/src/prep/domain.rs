//! `prep domain`: the service account the servers bind as, the three management groups, and the
//! access rules (OpenLDAP `olcAccess` on the database holding the base DN):
//!
//! - digest HA1 attributes: user administrators write, the service account reads, nobody else;
//! - users (`parleyUser` entries): user administrators write; the service account, server and
//!   read-only administrators read; user administrators may add and delete entries, and give
//!   any entry Parley's class and attributes (`user enable --from`);
//! - the settings container: server administrators write; the service account writes only the
//!   attribute the servers own (`parleyServerAddress`) and reads the rest; the others read;
//! - `ou=Parley` (service account, groups): the groups and the service account read (never the
//!   password).
//!
//! Each rule ends with `by * break`, so the directory's own rules still apply to everyone else.

use super::names::{self, GROUPS, READ_ONLY_ADMINS, SERVER_ADMINS, USER_ADMINS};
use super::{dn_within, ensure_entry, explain, norm_dn, one};
use crate::directory::ldap_client::{LdapPool, attr};
use crate::prep::schema::{attrs as a, strip_index};
use ldap3::{Mod, Scope};
use std::collections::HashSet;

const ACCESS: &str = "olcAccess";

pub async fn apply(pool: &LdapPool, base: &str, password: &str) -> anyhow::Result<Vec<String>> {
    let mut changes = Vec::new();
    let ou =
        |name: &str| vec![("objectClass", vec!["top".to_string(), "organizationalUnit".into()]), ("ou", one(name))];
    for (dn, name) in [(names::parley_ou(base), "Parley"), (names::people(base), "People")] {
        if ensure_entry(pool, &dn, ou(name)).await? {
            changes.push(format!("created {dn}"));
        }
    }
    let account = names::service_account(base);
    // simpleSecurityObject requires a userPassword: an unusable placeholder, replaced at once by
    // the Password Modify operation so that the directory hashes the real one.
    let placeholder = format!("{{SSHA}}unusable-{:032x}", rand::random::<u128>());
    let attrs = vec![
        ("objectClass", vec!["top".to_string(), "applicationProcess".into(), "simpleSecurityObject".into()]),
        ("cn", one(names::SERVICE_ACCOUNT_CN)),
        ("description", one("Parley servers bind as this account")),
        ("userPassword", one(&placeholder)),
    ];
    let created = ensure_entry(pool, &account, attrs).await?;
    if created
        || !pool.can_bind(&account, password).await.map_err(|e| explain(pool, "checking the service account", e))?
    {
        pool.set_password(&account, password)
            .await
            .map_err(|e| explain(pool, &format!("setting the password of {account}"), e))?;
        changes.push(if created {
            format!("created service account {account}")
        } else {
            format!("reset the password of service account {account}")
        });
    }
    // groupOfNames needs a member: the administrator running prep, as the seed makes the installer
    // a member of the groups it creates.
    let Some(admin) = pool.settings().bind_dn.clone() else {
        anyhow::bail!("prep domain needs --bind-dn (an administrator)");
    };
    for (cn, description) in GROUPS {
        let dn = names::group(base, cn);
        let attrs = vec![
            ("objectClass", vec!["top".to_string(), "groupOfNames".into()]),
            ("cn", one(cn)),
            ("description", one(description)),
            ("member", one(&admin)),
        ];
        if ensure_entry(pool, &dn, attrs).await? {
            changes.push(format!("created group {dn} (member: {admin})"));
        }
    }
    changes.extend(apply_rules(pool, base, base).await?);
    Ok(changes)
}

/// What is missing of the domain step.
pub async fn check(pool: &LdapPool, base: &str) -> anyhow::Result<Vec<String>> {
    let mut missing = Vec::new();
    let mut dns = vec![names::parley_ou(base), names::people(base), names::service_account(base)];
    dns.extend(GROUPS.iter().map(|(cn, _)| names::group(base, cn)));
    for dn in dns {
        if pool.get(&dn, &["1.1"]).await.map_err(|e| explain(pool, &dn, e))?.is_none() {
            missing.push(dn);
        }
    }
    missing.extend(check_rules(pool, base, base).await?);
    Ok(missing)
}

/// The access rules that let Parley's accounts use the users under `target` (and, when `target`
/// is the forest root `base`, the settings container and `ou=Parley`).
pub fn access_rules(base: &str, target: &str) -> Vec<String> {
    let group = |cn: &str| format!("group.exact=\"{}\"", names::group(base, cn));
    let (ua, sa, ro) = (group(USER_ADMINS), group(SERVER_ADMINS), group(READ_ONLY_ADMINS));
    let svc = format!("dn.exact=\"{}\"", names::service_account(base));
    let mut rules = vec![
        format!(
            "to dn.subtree=\"{target}\" attrs={},{} by {ua} write by {svc} read by * none",
            a::HA1_MD5,
            a::HA1_SHA256
        ),
        // `user enable --from`: user administrators make existing entries Parley users.
        format!(
            "to dn.subtree=\"{target}\" attrs=objectClass,{},{},{} by {ua} write by * break",
            a::SIP_ADDRESS,
            a::ENABLED,
            a::HOME_SERVER
        ),
        format!(
            "to dn.subtree=\"{target}\" filter=(objectClass={}) by {ua} write by {svc} read by {sa} read by {ro} read by * break",
            names::USER_CLASS
        ),
        format!("to dn.subtree=\"{target}\" attrs=children by {ua} write by * break"),
    ];
    if norm_dn(base) == norm_dn(target) {
        let services = names::services(base);
        rules.push(format!(
            "to dn.subtree=\"{services}\" attrs={} by {sa} write by {svc} write by * break",
            a::SERVER_ADDRESS
        ));
        rules.push(format!(
            "to dn.subtree=\"{services}\" by {sa} write by {svc} read by {ua} read by {ro} read by * break"
        ));
        rules.push(format!(
            "to dn.subtree=\"{}\" attrs=entry,objectClass,cn,ou,member,description by {sa} read by {ua} read by {ro} read by {svc} read by * break",
            names::parley_ou(base)
        ));
    }
    rules
}

/// Whether an existing rule is one of ours for `target`: it names our user administrators group
/// and one of the subtrees we write rules for.
fn is_ours(rule: &str, base: &str, target: &str) -> bool {
    let rule = strip_index(rule);
    let mut subtrees = vec![target.to_string()];
    if norm_dn(base) == norm_dn(target) {
        subtrees.push(names::services(base));
        subtrees.push(names::parley_ou(base));
    }
    let Some(subtree) = rule.strip_prefix("to dn.subtree=\"").and_then(|r| r.split('"').next()) else {
        return false;
    };
    rule.contains(&names::group(base, USER_ADMINS)) && subtrees.iter().any(|s| norm_dn(s) == norm_dn(subtree))
}

/// The cn=config database entry whose suffix holds `dn`, with its access rules.
async fn database_for(pool: &LdapPool, dn: &str) -> anyhow::Result<(String, Vec<String>)> {
    let what = "reading the database configuration in cn=config (needs manage access to cn=config)";
    let databases = pool
        .search("cn=config", Scope::OneLevel, "(olcSuffix=*)", &["olcSuffix", ACCESS])
        .await
        .map_err(|e| explain(pool, what, e))?;
    databases
        .into_iter()
        .filter_map(|d| {
            let suffix = attr(&d, "olcSuffix").iter().filter(|s| dn_within(dn, s)).max_by_key(|s| s.len())?.clone();
            Some((suffix.len(), d))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, d)| (d.dn.clone(), attr(&d, ACCESS).to_vec()))
        .ok_or_else(|| anyhow::anyhow!("{what}: no database visible to {} holds {dn}", pool.bind_dn()))
}

/// Puts the rules for `target` first in its database's access list (when they are not already
/// there as one block), replacing older versions of ours. Other rules are left alone.
pub async fn apply_rules(pool: &LdapPool, base: &str, target: &str) -> anyhow::Result<Vec<String>> {
    let (db, existing) = database_for(pool, target).await?;
    let want = access_rules(base, target);
    let have: Vec<&str> = existing.iter().map(|r| strip_index(r)).collect();
    // Present as one block, in order: prepared (wherever the block is, so that the rules of
    // several domains never displace each other).
    let start = have.iter().position(|r| *r == want[0]);
    if start.is_some_and(|p| have.len() >= p + want.len() && want.iter().zip(&have[p..]).all(|(w, h)| w == h)) {
        return Ok(Vec::new());
    }
    let stale: Vec<&String> = existing.iter().filter(|r| is_ours(r, base, target)).collect();
    let mut mods = Vec::new();
    if !stale.is_empty() {
        mods.push(Mod::Delete(ACCESS.to_string(), stale.iter().map(|r| r.to_string()).collect::<HashSet<_>>()));
    }
    for (i, rule) in want.iter().enumerate() {
        mods.push(Mod::Add(ACCESS.to_string(), HashSet::from([format!("{{{i}}}{rule}")])));
    }
    pool.modify(&db, mods).await.map_err(|e| explain(pool, &format!("setting access rules on {db}"), e))?;
    let verb = if stale.is_empty() { "added" } else { "replaced" };
    Ok(vec![format!("{verb} {} access rules for {target} on {db}", want.len())])
}

/// Which of our rules for `target` are missing (any order, anywhere in the list counts).
pub async fn check_rules(pool: &LdapPool, base: &str, target: &str) -> anyhow::Result<Vec<String>> {
    let (db, existing) = database_for(pool, target).await?;
    let have: HashSet<&str> = existing.iter().map(|r| strip_index(r)).collect();
    let absent = access_rules(base, target).iter().filter(|r| !have.contains(r.as_str())).count();
    Ok(if absent == 0 { Vec::new() } else { vec![format!("{absent} access rules for {target} on {db}")] })
}
