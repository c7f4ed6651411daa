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
    let servers = home_servers.iter().map(|spec| parse_home_server(spec)).collect::<anyhow::Result<Vec<_>>>()?;
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
    for spec in servers {
        let HomeServerSpec { name, address, capacity, api } = &spec;
        let dn = names::home_server(base, name);
        let mut attrs = vec![
            ("objectClass", vec!["top".into(), SERVER_CLASS.into()]),
            ("cn", one(name)),
            (a::SERVER_ADDRESS, one(address)),
        ];
        let capacity_text = capacity.map(|c| c.to_string());
        if let Some(c) = &capacity_text {
            attrs.push((a::CAPACITY, one(c)));
        }
        if let Some(api) = api {
            attrs.push((a::SERVER_API, one(api)));
        }
        if ensure_entry(pool, &dn, attrs).await? {
            let mut line = format!("registered Home Server {name} at {address}");
            if let Some(c) = capacity {
                line += &format!(", capacity {c}");
            }
            if let Some(api) = api {
                line += &format!(", API {api}");
            }
            changes.push(line);
            continue;
        }
        // Already registered: what the command names replaces what is there; what it leaves out
        // stays as it is.
        let wanted: Vec<(&str, &str, &str)> = [
            Some((a::SERVER_ADDRESS, "address", address.as_str())),
            capacity_text.as_deref().map(|c| (a::CAPACITY, "capacity", c)),
            api.as_deref().map(|u| (a::SERVER_API, "API", u)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let names: Vec<&str> = wanted.iter().map(|(attr_name, _, _)| *attr_name).collect();
        let entry = pool.get(&dn, &names).await.map_err(|e| explain(pool, &dn, e))?;
        for (attr_name, label, value) in wanted {
            let have = entry.as_ref().map(|e| attr(e, attr_name).to_vec()).unwrap_or_default();
            if have != [value] {
                let values = HashSet::from([value.to_string()]);
                pool.modify(&dn, vec![Mod::Replace(attr_name.to_string(), values)])
                    .await
                    .map_err(|e| explain(pool, &format!("updating {dn}"), e))?;
                let was = if have.is_empty() { "unset".to_string() } else { have.join(", ") };
                changes.push(format!("Home Server {name}: {label} set to {value} (was {was})"));
            }
        }
    }
    Ok(changes)
}

/// A Home Server as `prep enterprise --home-server` names it:
/// `NAME=HOST:PORT[,capacity=N][,api=http://HOST:PORT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeServerSpec {
    pub name: String,
    pub address: String,
    pub capacity: Option<u64>,
    pub api: Option<String>,
}

pub fn parse_home_server(spec: &str) -> anyhow::Result<HomeServerSpec> {
    let usage = "expected NAME=HOST:PORT[,capacity=N][,api=http://HOST:PORT]";
    let Some((name, rest)) = spec.split_once('=').map(|(n, r)| (n.trim(), r)).filter(|(n, _)| !n.is_empty()) else {
        anyhow::bail!("--home-server {spec:?}: {usage}");
    };
    let mut parts = rest.split(',');
    let address = parts.next().unwrap_or_default().trim();
    if address.is_empty() || address.contains('=') {
        anyhow::bail!("--home-server {spec:?}: {usage}");
    }
    let (mut capacity, mut api) = (None, None);
    for part in parts {
        match part.split_once('=').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim())) {
            Some((k, v)) if k == "capacity" && capacity.is_none() => {
                let n = v.parse::<u64>().map_err(|_| {
                    anyhow::anyhow!("--home-server {spec:?}: capacity {v:?} is not a whole number of users")
                })?;
                capacity = Some(n);
            }
            Some((k, v)) if k == "api" && api.is_none() => {
                let host_port = v.strip_prefix("http://").map(|hp| hp.trim_end_matches('/'));
                let ok = host_port.is_some_and(|hp| {
                    hp.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                        && !hp.contains(['/', '?', '#', '@'])
                        && !hp.contains(char::is_whitespace)
                });
                if !ok {
                    anyhow::bail!(
                        "--home-server {spec:?}: api {v:?} must be http://HOST:PORT, the Home Server's operations port"
                    );
                }
                api = Some(v.trim_end_matches('/').to_string());
            }
            _ => anyhow::bail!("--home-server {spec:?}: unknown or repeated option {part:?}; {usage}"),
        }
    }
    Ok(HomeServerSpec { name: name.to_string(), address: address.to_string(), capacity, api })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_server_specs_parse_with_and_without_options() {
        let old = parse_home_server("home-1=h1.example.test:5061").unwrap();
        assert_eq!(
            (old.name.as_str(), old.address.as_str(), old.capacity, old.api),
            ("home-1", "h1.example.test:5061", None, None)
        );
        let new = parse_home_server("home-2=10.0.0.2:5062,capacity=5000,api=http://10.0.0.2:8080/").unwrap();
        assert_eq!(new.capacity, Some(5000));
        assert_eq!(new.api.as_deref(), Some("http://10.0.0.2:8080"));
        for bad in [
            "home-1",
            "=h:1",
            "home-1=",
            "home-1=h:1,capacity=lots",
            "home-1=h:1,capacity=-1",
            "home-1=h:1,api=https://h:8080",
            "home-1=h:1,api=http://h:8080/prefix",
            "home-1=h:1,api=http://h",
            "home-1=h:1,colour=blue",
            "home-1=h:1,capacity=1,capacity=2",
        ] {
            assert!(parse_home_server(bad).is_err(), "{bad} is refused");
        }
    }
}
