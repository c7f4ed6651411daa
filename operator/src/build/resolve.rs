//! The one resolution of a CommunicationsDomain: its spec (validated by the controller) and the
//! servers it has or is about to have in, a [`ResolvedDomain`] out. The domain controller writes
//! it to `status.resolved`; the HomeServer and FrontEnd builders take nothing else of the domain.

use super::config::home_server_address;
use super::{BuildError, directory, name_ns, prep, tls_secret_name};
use crate::crd::{
    CommunicationsDomain, HomeServerAddress, ResolvedDirectory, ResolvedDomain, ResolvedKey, ResolvedLdap,
    ServerCertificate,
};
use crate::tiers::Sizing;

/// What the resolution needs besides the domain.
pub struct ResolveInput<'a> {
    /// The tier `spec.users` resolves to.
    pub sizing: &'a Sizing,
    /// The operator's image for domains that name none.
    pub default_image: &'a str,
    /// DNS suffix of Services.
    pub cluster_domain: &'a str,
    /// The Home Servers the domain has or is about to have (planned, waiting for removal, or
    /// written by the administrator).
    pub home_servers: &'a [String],
    /// Its Front-Ends.
    pub front_ends: &'a [String],
}

/// Resolves `domain`.
pub fn resolve(domain: &CommunicationsDomain, input: &ResolveInput) -> Result<ResolvedDomain, BuildError> {
    let (name, ns) = name_ns(domain, "CommunicationsDomain")?;
    let spec = &domain.spec;
    let ldap = directory::effective_ldap(domain)
        .map(|l| -> Result<ResolvedLdap, BuildError> {
            Ok(ResolvedLdap {
                url: l.url.clone(),
                base_dn: l.base_dn.clone(),
                bind_dn: l.service_bind_dn(),
                password_secret: prep::service_account_secret_ref(domain)
                    .map(|s| ResolvedKey { config_map: None, secret: Some(s.name), key: s.key })
                    .ok_or_else(|| BuildError::Config("an LDAP directory without a service account".into()))?,
                ca_bundle: l.ca_bundle.as_ref().map(|c| ResolvedKey {
                    config_map: c.config_map.clone(),
                    secret: c.secret.clone(),
                    key: c.key.clone(),
                }),
                start_tls: l.start_tls,
            })
        })
        .transpose()?;
    let file = match (&ldap, &spec.directory.file) {
        (None, Some(f)) => {
            Some(ResolvedKey { config_map: Some(f.config_map.clone()), secret: None, key: f.key.clone() })
        }
        _ => None,
    };
    if ldap.is_none() && file.is_none() {
        return Err(BuildError::Config("the domain names no directory".into()));
    }
    let mut servers: Vec<&String> = input.home_servers.iter().chain(input.front_ends).collect();
    let directory_server = directory::name(&name);
    if spec.directory.managed.is_some() {
        servers.push(&directory_server);
    }
    Ok(ResolvedDomain {
        generation: domain.metadata.generation.unwrap_or_default(),
        sip_domain: spec.sip_domain.clone(),
        users: spec.users,
        tier: input.sizing.tier,
        home_server_size: input.sizing.size(),
        image: spec.image.clone().unwrap_or_else(|| input.default_image.to_string()),
        require_client_tls: spec.tls.require_client_tls,
        directory: ResolvedDirectory { managed: spec.directory.managed.is_some(), ldap, file },
        certificates: servers
            .into_iter()
            .map(|s| ServerCertificate { server: s.clone(), secret: tls_secret_name(s) })
            .collect(),
        home_servers: input
            .home_servers
            .iter()
            .map(|h| HomeServerAddress { name: h.clone(), address: home_server_address(h, &ns, input.cluster_domain) })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;
    use crate::crd::{DirectorySpec, FileDirectory, ManagedDirectory};
    use crate::tiers;

    fn input<'a>(sizing: &'a Sizing, hs: &'a [String], fe: &'a [String]) -> ResolveInput<'a> {
        ResolveInput {
            sizing,
            default_image: "parley-server:1",
            cluster_domain: "cluster.local",
            home_servers: hs,
            front_ends: fe,
        }
    }

    #[test]
    fn an_enterprise_ldap_domain() {
        let d = fixtures::domain("corp", 25_000);
        let sizing = tiers::resolve(25_000);
        let hs = ["corp-home-1".to_string(), "corp-home-2".to_string()];
        let fe = ["corp-frontend".to_string()];
        let r = resolve(&d, &input(&sizing, &hs, &fe)).unwrap();
        assert_eq!((r.tier, r.users, r.generation), (tiers::Tier::Enterprise, 25_000, 1));
        assert_eq!((r.home_server_size.cpu.as_str(), r.home_server_size.data_volume.as_str()), ("2", "36Gi"));
        assert_eq!(r.image, "parley-server:1");
        let ldap = r.directory.ldap.as_ref().unwrap();
        assert_eq!(ldap.bind_dn, "cn=ParleyService,ou=Parley,dc=example,dc=test");
        assert_eq!(ldap.password_secret.secret.as_deref(), Some("ldap-service"));
        assert!(r.directory.file.is_none() && !r.directory.managed);
        assert_eq!(r.certificate_secret("corp-frontend"), Some("corp-frontend-tls"));
        assert_eq!(r.certificate_secret("corp-home-3"), None, "not planned: no certificate");
        assert_eq!(r.home_servers[1].address, "corp-home-2.ns.svc.cluster.local:5062");
    }

    #[test]
    fn managed_and_file_directories() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.directory = DirectorySpec { managed: Some(ManagedDirectory {}), ..Default::default() };
        let sizing = tiers::resolve(500);
        let r = resolve(&d, &input(&sizing, &[], &[])).unwrap();
        let ldap = r.directory.ldap.clone().unwrap();
        assert_eq!(ldap.url, "ldaps://corp-directory.ns.svc:636");
        assert_eq!(ldap.password_secret.secret.as_deref(), Some("corp-directory-service"));
        assert_eq!(ldap.ca_bundle.unwrap().secret.as_deref(), Some("corp-directory-tls"));
        assert_eq!(r.certificate_secret("corp-directory"), Some("corp-directory-tls"));
        d.spec.directory = DirectorySpec {
            file: Some(FileDirectory { config_map: "u".into(), key: "k".into() }),
            ..Default::default()
        };
        let r = resolve(&d, &input(&sizing, &[], &[])).unwrap();
        assert_eq!(r.directory.file.unwrap().config_map.as_deref(), Some("u"));
        assert!(r.directory.ldap.is_none());
        d.spec.directory = DirectorySpec::default();
        assert!(resolve(&d, &input(&sizing, &[], &[])).is_err());
    }
}
