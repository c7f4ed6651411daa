//! The LDAP directory: users are entries with the `parleyUser` auxiliary class (see
//! `prep::schema`), found by SIP address under the base DN of their SIP domain (the configured
//! base DN, or another one admitted with `prep domainadd`). Answers are cached briefly; every
//! lookup has a deadline, and an unreachable directory yields `DirectoryError::Unavailable` (the
//! core answers 503 with Retry-After).

use super::cache::TtlCache;
use super::ldap_client::{ClientError, LdapPool, LdapSettings, first, read_password};
use super::{DEFAULT_CAPACITY, Directory, DirectoryError, Load, User};
use crate::config::DirectoryConfig;
use crate::prep::names;
use crate::prep::schema::attrs as a;
use futures::future::BoxFuture;
use ldap3::Scope;
use std::collections::HashMap;
use std::time::Duration;

pub struct LdapDirectory {
    pool: LdapPool,
    base_dn: String,
    users: TtlCache<Option<User>>,
    /// SIP domain -> base DN of the domains admitted with `prep domainadd`.
    domains: TtlCache<HashMap<String, String>>,
}

impl LdapDirectory {
    pub fn new(settings: LdapSettings, base_dn: String, cache_ttl: Duration) -> anyhow::Result<LdapDirectory> {
        Ok(LdapDirectory {
            pool: LdapPool::new(settings)?,
            base_dn,
            users: TtlCache::new(cache_ttl, 100_000),
            domains: TtlCache::new(cache_ttl, 1),
        })
    }

    /// From `[directory] backend = "ldap"`; reads the bind password file now, connects lazily
    /// (a server whose directory is down starts, and reports not ready).
    pub fn from_config(config: &DirectoryConfig) -> anyhow::Result<LdapDirectory> {
        let DirectoryConfig::Ldap {
            url,
            base_dn,
            bind_dn,
            bind_password_file,
            ca_file,
            starttls,
            timeout_ms,
            cache_ttl_secs,
            pool_size,
        } = config
        else {
            anyhow::bail!("not an LDAP directory configuration");
        };
        let password = read_password(Some(bind_password_file), "")?;
        let settings = LdapSettings {
            url: url.clone(),
            bind_dn: Some(bind_dn.clone()),
            password,
            ca_file: ca_file.clone(),
            starttls: *starttls,
            timeout: Duration::from_millis(*timeout_ms),
            pool_size: *pool_size,
        };
        Self::new(settings, base_dn.clone(), Duration::from_secs(*cache_ttl_secs))
    }

    fn unavailable(e: ClientError) -> DirectoryError {
        DirectoryError::Unavailable(e.to_string())
    }

    /// Base DN to search for users of `domain`.
    async fn base_for(&self, domain: &str) -> Result<String, DirectoryError> {
        let domains = self.admitted().await?;
        Ok(domains.get(domain).cloned().unwrap_or_else(|| self.base_dn.clone()))
    }

    /// The SIP domains of the global settings (`prep enterprise`, `prep domainadd`) with their
    /// users' base DN.
    async fn admitted(&self) -> Result<HashMap<String, String>, DirectoryError> {
        let domains = match self.domains.get("") {
            Some(d) => d,
            None => {
                let entries = self
                    .pool
                    .search(
                        &names::domains(&self.base_dn),
                        Scope::OneLevel,
                        &format!("(objectClass={})", names::DOMAIN_CLASS),
                        &[a::SIP_DOMAIN, a::USER_BASE_DN],
                    )
                    .await
                    .map_err(Self::unavailable)?;
                let map: HashMap<String, String> = entries
                    .iter()
                    .filter_map(|e| {
                        Some((first(e, a::SIP_DOMAIN)?.to_ascii_lowercase(), first(e, a::USER_BASE_DN)?.to_string()))
                    })
                    .collect();
                self.domains.put("", map.clone());
                map
            }
        };
        Ok(domains)
    }

    async fn lookup(&self, address: &str) -> Result<Option<User>, DirectoryError> {
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        let base = self.base_for(domain).await?;
        let filter =
            format!("(&(objectClass={})({}={}))", names::USER_CLASS, a::SIP_ADDRESS, ldap3::ldap_escape(address));
        let entries = self
            .pool
            .search(
                &base,
                Scope::Subtree,
                &filter,
                &[a::SIP_ADDRESS, a::ENABLED, a::HOME_SERVER, a::HA1_MD5, a::HA1_SHA256],
            )
            .await
            .map_err(Self::unavailable)?;
        if entries.len() > 1 {
            tracing::warn!(address, count = entries.len(), "several directory entries carry this SIP address");
        }
        Ok(entries.first().map(|e| User {
            address: address.to_string(),
            enabled: first(e, a::ENABLED).is_some_and(|v| v.eq_ignore_ascii_case("TRUE")),
            home_server: first(e, a::HOME_SERVER).map(str::to_string),
            ha1_md5: first(e, a::HA1_MD5).map(str::to_ascii_lowercase),
            ha1_sha256: first(e, a::HA1_SHA256).map(str::to_ascii_lowercase),
        }))
    }
}

impl Directory for LdapDirectory {
    fn find_user<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<Option<User>, DirectoryError>> {
        Box::pin(async move {
            if let Some(answer) = self.users.get(address) {
                return Ok(answer);
            }
            let answer = self.lookup(address).await?;
            self.users.put(address, answer.clone());
            Ok(answer)
        })
    }

    fn user_at_hand(&self, address: &str) -> Option<Result<Option<User>, DirectoryError>> {
        self.users.get(address).map(Ok)
    }

    fn domains(&self) -> BoxFuture<'_, Result<Vec<String>, DirectoryError>> {
        Box::pin(async move { Ok(self.admitted().await?.into_keys().collect()) })
    }

    fn forget(&self, address: &str) {
        self.users.forget(address);
    }

    /// Counts the enabled users whose `parleyHomeServer` is `server` under the base DN and every
    /// admitted domain's (a paged search that asks for no attributes), and reads the server's
    /// capacity from its entry.
    fn load<'a>(&'a self, server: &'a str) -> BoxFuture<'a, Result<Load, DirectoryError>> {
        Box::pin(async move {
            let mut bases = vec![self.base_dn.clone()];
            for b in self.admitted().await?.into_values() {
                if !bases.iter().any(|x| crate::prep::dn_within(&b, x)) {
                    bases.push(b);
                }
            }
            let filter = homed_filter(server);
            let mut homed = 0;
            for base in bases {
                homed += self.pool.count(&base, &filter).await.map_err(Self::unavailable)?;
            }
            let dn = names::home_server(&self.base_dn, server);
            let entry = self.pool.get(&dn, &[a::CAPACITY]).await.map_err(Self::unavailable)?;
            let capacity = entry
                .as_ref()
                .and_then(|e| first(e, a::CAPACITY))
                .and_then(|c| c.trim().parse().ok())
                .unwrap_or(DEFAULT_CAPACITY);
            Ok(Load { homed, capacity })
        })
    }

    fn is_ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            match self.pool.search(&self.base_dn, Scope::Base, "(objectClass=*)", &["1.1"]).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "directory not ready");
                    false
                }
            }
        })
    }
}

/// The enabled users homed on `server`.
pub fn homed_filter(server: &str) -> String {
    format!(
        "(&(objectClass={})({}={})({}=TRUE))",
        names::USER_CLASS,
        a::HOME_SERVER,
        ldap3::ldap_escape(server),
        a::ENABLED
    )
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, DirectoryConfig, Role};

    const BASE: &str = "sip_domain = \"example.test\"\n[storage]\ndata_dir = \"d\"\nlogs_dir = \"l\"\n[directory]\n\
        backend = \"ldap\"\nurl = \"ldaps://ldap.example.test\"\nbase_dn = \"dc=example,dc=test\"\n\
        bind_dn = \"cn=ParleyService,ou=Parley,dc=example,dc=test\"\nbind_password_file = \"pw\"\n";

    #[test]
    fn ldap_config_gets_defaults_and_errors_name_the_key() {
        let c = Config::parse(BASE, Role::Home).unwrap();
        let DirectoryConfig::Ldap { timeout_ms, cache_ttl_secs, pool_size, starttls, ca_file, .. } = c.directory else {
            panic!("ldap backend");
        };
        assert_eq!((timeout_ms, cache_ttl_secs, pool_size, starttls, ca_file), (2000, 30, 4, false, None));
        let e = Config::parse(&BASE.replace("ldaps://", "http://"), Role::Home).unwrap_err();
        assert!(e.contains("directory.url"), "{e}");
        let e = Config::parse(&format!("{BASE}bind_password = \"x\"\n"), Role::Home).unwrap_err();
        assert!(e.contains("bind_password"), "a password in the config is refused: {e}");
        let e = Config::parse(&format!("{BASE}timeout_ms = 0\n"), Role::Home).unwrap_err();
        assert!(e.contains("directory.timeout_ms"), "{e}");
    }
}
