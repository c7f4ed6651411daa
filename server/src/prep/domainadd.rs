//! `prep domainadd`: admits another directory domain (its SIP domain and the base DN of its
//! users): a `parleyDomain` entry in the settings container, the SIP domain in the container's
//! list, a `ou=People` under the other base DN, and the access rules for that base DN.

use super::names::{self, DOMAIN_CLASS};
use super::{domain, ensure_entry, enterprise, explain, one};
use crate::directory::ldap_client::{LdapPool, attr, first};
use crate::prep::schema::attrs as a;
use ldap3::{Mod, Scope};
use std::collections::HashSet;

pub async fn apply(pool: &LdapPool, base: &str, sip_domain: &str, user_base: &str) -> anyhow::Result<Vec<String>> {
    let sip_domain = sip_domain.trim().to_ascii_lowercase();
    anyhow::ensure!(
        !sip_domain.is_empty() && sip_domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'),
        "--domain {sip_domain:?} is not a domain name"
    );
    if pool.get(user_base, &["1.1"]).await.map_err(|e| explain(pool, user_base, e))?.is_none() {
        anyhow::bail!("base DN {user_base} does not exist (or is not visible to {})", pool.bind_dn());
    }
    let mut changes = enterprise::add_sip_domains(pool, base, std::slice::from_ref(&sip_domain)).await?;
    let dn = names::domain(base, &sip_domain);
    let attrs = vec![
        ("objectClass", vec!["top".to_string(), DOMAIN_CLASS.into()]),
        ("cn", one(&sip_domain)),
        (a::SIP_DOMAIN, one(&sip_domain)),
        (a::USER_BASE_DN, one(user_base)),
    ];
    if ensure_entry(pool, &dn, attrs).await? {
        changes.push(format!("admitted domain {sip_domain} with users under {user_base}"));
    } else {
        let entry = pool.get(&dn, &[a::USER_BASE_DN]).await.map_err(|e| explain(pool, &dn, e))?;
        let have = entry.as_ref().and_then(|e| first(e, a::USER_BASE_DN)).unwrap_or_default().to_string();
        if !super::dn_eq(&have, user_base) {
            let values = HashSet::from([user_base.to_string()]);
            pool.modify(&dn, vec![Mod::Replace(a::USER_BASE_DN.to_string(), values)])
                .await
                .map_err(|e| explain(pool, &format!("updating {dn}"), e))?;
            changes.push(format!("domain {sip_domain}: user base DN set to {user_base} (was {have})"));
        }
    }
    let people = names::people(user_base);
    let ou = vec![("objectClass", vec!["top".to_string(), "organizationalUnit".into()]), ("ou", one("People"))];
    if ensure_entry(pool, &people, ou).await? {
        changes.push(format!("created {people}"));
    }
    changes.extend(domain::apply_rules(pool, base, user_base).await?);
    Ok(changes)
}

/// The admitted domains: (SIP domain, user base DN).
pub async fn admitted(pool: &LdapPool, base: &str) -> anyhow::Result<Vec<(String, String)>> {
    let entries = pool
        .search(
            &names::domains(base),
            Scope::OneLevel,
            &format!("(objectClass={DOMAIN_CLASS})"),
            &[a::SIP_DOMAIN, a::USER_BASE_DN],
        )
        .await
        .map_err(|e| explain(pool, "reading the admitted domains", e))?;
    Ok(entries
        .iter()
        .filter_map(|e| Some((attr(e, a::SIP_DOMAIN).first()?.clone(), first(e, a::USER_BASE_DN)?.to_string())))
        .collect())
}

/// What is missing for one admitted domain.
pub async fn check(pool: &LdapPool, base: &str, sip_domain: &str, user_base: &str) -> anyhow::Result<Vec<String>> {
    let mut missing = Vec::new();
    if pool.get(&names::people(user_base), &["1.1"]).await.map_err(|e| explain(pool, user_base, e))?.is_none() {
        missing.push(format!("{} ({sip_domain})", names::people(user_base)));
    }
    missing.extend(domain::check_rules(pool, base, user_base).await?);
    Ok(missing)
}
