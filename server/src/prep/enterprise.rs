//! `prep enterprise`: the global settings container with the SIP domains and the Home Servers.

use super::names::{self, SERVER_CLASS, SERVICES_CLASS};
use super::{ensure_entry, explain, one};
use crate::directory::ldap_client::{LdapPool, attr};
use crate::prep::schema::attrs as a;
use ldap3::Mod;
use std::collections::HashSet;

fn container(cn: &str) -> Vec<(&'static str, Vec<String>)> {
    vec![("objectClass", vec!["top".into(), SERVICES_CLASS.into()]), ("cn", one(cn))]
}

pub async fn apply(
    pool: &LdapPool,
    base: &str,
    sip_domains: &[String],
    home_servers: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut servers = Vec::new();
    for spec in home_servers {
        let Some((name, address)) = spec.split_once('=').filter(|(n, a)| !n.is_empty() && !a.is_empty()) else {
            anyhow::bail!("--home-server {spec:?}: expected NAME=HOST:PORT");
        };
        servers.push((name.trim(), address.trim()));
    }
    let mut changes = Vec::new();
    let services = names::services(base);
    let mut attrs = container("Parley Services");
    attrs.push(("description", one("Parley global settings")));
    if ensure_entry(pool, &services, attrs).await? {
        changes.push(format!("created settings container {services}"));
    }
    for dn in [names::home_servers(base), names::domains(base)] {
        let cn = dn.trim_start_matches("cn=").split(',').next().unwrap_or_default().to_string();
        if ensure_entry(pool, &dn, container(&cn)).await? {
            changes.push(format!("created {dn}"));
        }
    }
    changes.extend(add_sip_domains(pool, base, sip_domains).await?);
    for (name, address) in servers {
        let dn = names::home_server(base, name);
        let attrs = vec![
            ("objectClass", vec!["top".into(), SERVER_CLASS.into()]),
            ("cn", one(name)),
            (a::SERVER_ADDRESS, one(address)),
        ];
        if ensure_entry(pool, &dn, attrs).await? {
            changes.push(format!("registered Home Server {name} at {address}"));
            continue;
        }
        let entry = pool.get(&dn, &[a::SERVER_ADDRESS]).await.map_err(|e| explain(pool, &dn, e))?;
        let have = entry.as_ref().map(|e| attr(e, a::SERVER_ADDRESS).to_vec()).unwrap_or_default();
        if have != [address] {
            let values = HashSet::from([address.to_string()]);
            pool.modify(&dn, vec![Mod::Replace(a::SERVER_ADDRESS.to_string(), values)])
                .await
                .map_err(|e| explain(pool, &format!("updating {dn}"), e))?;
            changes.push(format!("Home Server {name}: address set to {address} (was {})", have.join(", ")));
        }
    }
    Ok(changes)
}

/// Adds SIP domains missing from the container's list.
pub async fn add_sip_domains(pool: &LdapPool, base: &str, domains: &[String]) -> anyhow::Result<Vec<String>> {
    let services = names::services(base);
    let entry =
        pool.get(&services, &[a::SIP_DOMAIN]).await.map_err(|e| explain(pool, &services, e))?.ok_or_else(|| {
            anyhow::anyhow!("the settings container {services} is missing: run `prep enterprise` first")
        })?;
    let have: HashSet<String> = attr(&entry, a::SIP_DOMAIN).iter().map(|d| d.to_ascii_lowercase()).collect();
    let mut changes = Vec::new();
    let mut mods = Vec::new();
    for d in domains {
        let d = d.trim().to_ascii_lowercase();
        if !have.contains(&d) && !mods.iter().any(|m| matches!(m, Mod::Add(_, v) if v.contains(&d))) {
            changes.push(format!("added SIP domain {d}"));
            mods.push(Mod::Add(a::SIP_DOMAIN.to_string(), HashSet::from([d])));
        }
    }
    if !mods.is_empty() {
        pool.modify(&services, mods).await.map_err(|e| explain(pool, &format!("updating {services}"), e))?;
    }
    Ok(changes)
}

/// What is missing of the enterprise step.
pub async fn check(pool: &LdapPool, base: &str) -> anyhow::Result<Vec<String>> {
    let mut missing = Vec::new();
    for dn in [names::services(base), names::home_servers(base), names::domains(base)] {
        let entry = pool.get(&dn, &["objectClass"]).await.map_err(|e| explain(pool, &dn, e))?;
        let ok = entry.is_some_and(|e| attr(&e, "objectClass").iter().any(|c| c.eq_ignore_ascii_case(SERVICES_CLASS)));
        if !ok {
            missing.push(dn);
        }
    }
    Ok(missing)
}
