//! `prep verify`: one line per step, "prepared" or "missing: <what>", like the seed's validation
//! steps. Returns whether every step is prepared.

use super::{domain, domainadd, enterprise, schema_apply};
use crate::directory::ldap_client::LdapPool;

pub async fn run(pool: &LdapPool, base: &str) -> anyhow::Result<bool> {
    let mut all = true;
    let mut line = |step: &str, missing: Vec<String>, note: &str| {
        if missing.is_empty() {
            println!("{step}: prepared{note}");
        } else {
            all = false;
            println!("{step}: missing: {}", missing.join("; "));
        }
    };
    line("schema", schema_apply::check(pool).await?, "");
    let enterprise_missing = enterprise::check(pool, base).await?;
    let has_container = !enterprise_missing.contains(&super::names::services(base));
    line("enterprise", enterprise_missing, "");
    line("domain", domain::check(pool, base).await?, "");
    if !has_container {
        line("domainadd", vec!["the settings container (run prep enterprise first)".into()], "");
    } else {
        let domains = domainadd::admitted(pool, base).await?;
        let mut missing = Vec::new();
        for (sip_domain, user_base) in &domains {
            missing.extend(domainadd::check(pool, base, sip_domain, user_base).await?);
        }
        let note = if domains.is_empty() {
            " (no other domains admitted)".to_string()
        } else {
            format!(" ({})", domains.iter().map(|(d, b)| format!("{d} at {b}")).collect::<Vec<_>>().join(", "))
        };
        line("domainadd", missing, &note);
    }
    Ok(all)
}
