//! The one resolution of a CommunicationsDomain: its spec (validated by the controller) and the
//! servers it has or is about to have in, a [`ResolvedDomain`] out. Every builder of the domain's
//! objects (certificates, managed directory, prep Jobs, servers) takes nothing else of the domain
//! but its identity ([`super::Owner`]); the domain controller writes it to `status.resolved`, where
//! the HomeServer and FrontEnd controllers read it.

use std::collections::BTreeMap;

use super::certificates::ServerNames;
use super::config::{home_server_address, service_host};
use super::home_server::client_service_name;
use super::{BuildError, OPS_PORT, directory, name_ns, prep, tls_secret_name};
use crate::crd::{
    CommunicationsDomain, HomeServerAddress, ResolvedAdditionalDomain, ResolvedDirectory, ResolvedDomain, ResolvedKey,
    ResolvedLdap, ResolvedNetworkPolicy, ServerCertificate,
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
    /// The capacity to register in the directory for each Home Server that has one.
    pub capacities: &'a BTreeMap<String, u32>,
    /// Its Front-Ends.
    pub front_ends: &'a [String],
    /// The host a live HomeServer or FrontEnd advertises (its `spec.advertise`), by name: its
    /// certificate covers it too.
    pub advertised: &'a BTreeMap<String, String>,
}

/// The names `server`'s certificate covers: the SIP domain, its Services' DNS names (and a
/// Home Server's pod's) and the host it advertises.
fn certificate(sip_domain: &str, ns: &str, input: &ResolveInput, server: &str, home: bool) -> ServerCertificate {
    let names = ServerNames {
        sip_domain,
        service: server,
        other_services: if home { vec![client_service_name(server)] } else { vec![] },
        namespace: ns,
        cluster_domain: input.cluster_domain,
        pod_hostnames: if home { vec![format!("{server}-0")] } else { vec![] },
        advertise: input.advertised.get(server).map(String::as_str),
    }
    .sans();
    ServerCertificate { server: server.to_string(), secret: tls_secret_name(server), names }
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
                password_generated: prep::needs_generated_service_account(domain),
                admin_secret: l.admin_secret.clone(),
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
    // The managed directory's certificate comes from the domain's CA with the servers'.
    let directory_server = spec.directory.managed.as_ref().map(|_| directory::name(&name));
    let certificates = (input.home_servers.iter().map(|h| (h, true)))
        .chain(input.front_ends.iter().map(|f| (f, false)))
        .chain(directory_server.iter().map(|d| (d, false)))
        .map(|(server, home)| certificate(&spec.sip_domain, &ns, input, server, home))
        .collect();
    Ok(ResolvedDomain {
        generation: domain.metadata.generation.unwrap_or_default(),
        sip_domain: spec.sip_domain.clone(),
        users: spec.users,
        tier: input.sizing.tier,
        home_server_size: input.sizing.size(),
        image: spec.image.clone().unwrap_or_else(|| input.default_image.to_string()),
        require_client_tls: spec.tls.require_client_tls,
        directory: ResolvedDirectory { managed: spec.directory.managed.is_some(), ldap, file },
        certificates,
        certificate_issuer: spec.tls.issuer().cloned(),
        home_servers: input
            .home_servers
            .iter()
            .map(|h| HomeServerAddress {
                name: h.clone(),
                address: home_server_address(h, &ns, input.cluster_domain),
                capacity: input.capacities.get(h).copied(),
                api: format!("http://{}:{OPS_PORT}", service_host(h, &ns, input.cluster_domain)),
            })
            .collect(),
        additional_domains: spec
            .additional_domains
            .iter()
            .map(|a| ResolvedAdditionalDomain { sip_domain: a.sip_domain.clone(), base_dn: a.base_dn.clone() })
            .collect(),
        network_policy: spec
            .network_policy
            .enabled
            .then(|| ResolvedNetworkPolicy { monitoring_namespace: spec.network_policy.monitoring_namespace.clone() }),
        api_token_secret: Some(super::credentials::api_token_secret_name(&name)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;
    use crate::crd::{AdditionalDomain, DirectorySpec, FileDirectory, ManagedDirectory};
    use crate::tiers;

    fn input<'a>(sizing: &'a Sizing, hs: &'a [String], fe: &'a [String]) -> ResolveInput<'a> {
        ResolveInput {
            sizing,
            default_image: "parley-server:1",
            cluster_domain: "cluster.local",
            home_servers: hs,
            capacities: Box::leak(Box::default()),
            front_ends: fe,
            advertised: Box::leak(Box::default()),
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
        assert_eq!(r.certificate_issuer, d.spec.tls.issuer().cloned());
    }

    #[test]
    fn the_certificate_plan_names_what_each_server_is_reached_by() {
        let mut d = fixtures::domain("corp", 25_000);
        d.spec.additional_domains =
            vec![AdditionalDomain { sip_domain: "partner.test".into(), base_dn: "dc=partner,dc=test".into() }];
        let sizing = tiers::resolve(25_000);
        let hs = ["corp-home-1".to_string()];
        let fe = ["corp-frontend".to_string()];
        let advertised = BTreeMap::from([("corp-frontend".to_string(), "sip.example.test:5061".to_string())]);
        let r = resolve(&d, &ResolveInput { advertised: &advertised, ..input(&sizing, &hs, &fe) }).unwrap();
        let names = |server: &str| r.certificates.iter().find(|c| c.server == server).unwrap().names.clone();
        let home = names("corp-home-1");
        for n in [
            "example.test",
            "corp-home-1.ns.svc.cluster.local",
            "corp-home-1-sip.ns.svc",
            "corp-home-1-0.corp-home-1.ns.svc",
        ] {
            assert!(home.contains(&n.to_string()), "{n} missing from {home:?}");
        }
        assert!(!home.contains(&"sip.example.test".to_string()), "only the server that advertises it");
        let front = names("corp-frontend");
        assert!(front.contains(&"sip.example.test".to_string()) && front.contains(&"corp-frontend.ns.svc".to_string()));
        assert!(!front.iter().any(|n| n.contains("-0.")), "a Deployment's pods have no DNS names: {front:?}");
        assert_eq!(
            r.additional_domains,
            [ResolvedAdditionalDomain { sip_domain: "partner.test".into(), base_dn: "dc=partner,dc=test".into() }]
        );
        let ldap = r.directory.ldap.unwrap();
        assert_eq!(ldap.admin_secret.unwrap().name, "ldap-admin");
        assert!(!ldap.password_generated, "the administrator named the service account's Secret");
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
        assert!(ldap.password_generated && ldap.admin_secret.unwrap().name == "corp-directory-admin");
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
