//! The `parley-server` config of each server, built as the server's own typed value
//! (`parley-config`) and serialised; the server loads exactly this type.

use parley_config::{Config, DirectoryConfig, FrontEnd, Limits, Listen, Storage, SyncPolicy, Tls};
use std::net::SocketAddr;

use super::{
    BuildContext, BuildError, INTERNAL_PORT, OPS_PORT, SIP_PORT, SIP_TLS_PORT, SIP_WSS_PORT, WEB_PORT, WEB_ROOT, paths,
};

pub use parley_config::HomeServerRoute;

/// The internal (mutual-TLS) address of a Home Server's Service, as the Front-End dials it.
pub fn home_server_address(name: &str, namespace: &str, cluster_domain: &str) -> String {
    format!("{}:{INTERNAL_PORT}", service_host(name, namespace, cluster_domain))
}

/// The hosts a server names itself by in the SIP headers it adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advertise {
    /// For clients: Via, Contact, the client-side Record-Route.
    pub public: Option<String>,
    /// For the internal link (a Home Server's Service name; a Front-End's pod IP comes from
    /// `PARLEY_ADVERTISE_INTERNAL` at run time instead, as replicas share one config).
    pub internal: Option<String>,
}

/// The server a config is for, with what only its role has.
#[derive(Clone, Copy, Debug)]
pub enum ServerRole<'a> {
    /// A Home Server, and when its store makes a change durable.
    Home { sync: SyncPolicy },
    /// A Front-End, and the routing table of the domain's Home Servers.
    FrontEnd(&'a [HomeServerRoute]),
}

/// The cluster DNS name of a Service.
pub fn service_host(name: &str, namespace: &str, cluster_domain: &str) -> String {
    format!("{name}.{namespace}.svc.{cluster_domain}")
}

/// Seconds a server stops taking traffic before it shuts down: a Front-End waits for Kubernetes
/// to remove it from its Service's endpoints; a Home Server is reached only through the
/// Front-Ends, which stop sending at its first 503 probe.
pub const FRONT_END_SHUTDOWN_GRACE_SECS: u64 = 5;
pub const HOME_SERVER_SHUTDOWN_GRACE_SECS: u64 = 1;

/// Limits: the server's defaults, the shutdown grace of its role and, for a Home Server, a request
/// rate its capacity calls for (a fifth of its users a second), so that after a restart its
/// returning clients are spread rather than taken in one burst.
fn limits(resolved: &crate::crd::ResolvedDomain, server_name: &str, front_end: bool) -> Limits {
    let defaults = Limits::default();
    if front_end {
        return Limits { shutdown_grace_secs: FRONT_END_SHUTDOWN_GRACE_SECS, ..defaults };
    }
    let capacity = resolved.home_servers.iter().find(|h| h.name == server_name).and_then(|h| h.capacity);
    Limits {
        shutdown_grace_secs: HOME_SERVER_SHUTDOWN_GRACE_SECS,
        max_requests_per_second: capacity.filter(|c| *c > 0).map_or(0, |c| (c / 5).max(200)),
        ..defaults
    }
}

/// The config of the server `server_name`.
pub fn build(
    ctx: &BuildContext,
    server_name: &str,
    role: ServerRole,
    advertise: &Advertise,
) -> Result<Config, BuildError> {
    let (front_end, sync) = match role {
        ServerRole::Home { sync } => (None, sync),
        ServerRole::FrontEnd(routes) => (Some(routes), SyncPolicy::default()),
    };
    let resolved = ctx.resolved;
    let plain = !resolved.require_client_tls;
    let any = |port: i32| Some(SocketAddr::from(([0, 0, 0, 0], port as u16)));
    // A managed directory is an LDAP directory the operator runs: the same settings, made up.
    let directory = match (&resolved.directory.ldap, &resolved.directory.file) {
        (Some(ldap), _) => DirectoryConfig::Ldap {
            url: ldap.url.clone(),
            base_dn: ldap.base_dn.clone(),
            bind_dn: ldap.bind_dn.clone(),
            bind_password_file: paths::DIRECTORY_PASSWORD.into(),
            // The pod mounts the CA bundle here when the domain names one (see common_volumes).
            ca_file: ldap.ca_bundle.as_ref().map(|_| paths::DIRECTORY_CA.into()),
            starttls: ldap.start_tls,
            timeout_ms: parley_config::default_ldap_timeout_ms(),
            cache_ttl_secs: parley_config::default_ldap_cache_ttl_secs(),
            pool_size: parley_config::default_ldap_pool_size(),
        },
        (None, Some(_)) => DirectoryConfig::File { file: paths::DIRECTORY_FILE.into() },
        (None, None) => return Err(BuildError::Config("the domain names no directory".into())),
    };
    Ok(Config {
        sip_domain: resolved.sip_domain.clone(),
        domain_aliases: Vec::new(),
        server_name: server_name.to_string(),
        listen: Listen {
            udp: if plain { any(SIP_PORT) } else { None },
            tcp: if plain { any(SIP_PORT) } else { None },
            tls: any(SIP_TLS_PORT),
            internal: any(INTERNAL_PORT),
            ops: any(OPS_PORT),
            // Browsers: the web client from the image, SIP over secure WebSocket.
            ws: None,
            wss: any(SIP_WSS_PORT),
            web: any(WEB_PORT),
            advertise: advertise.public.clone(),
            advertise_internal: advertise.internal.clone(),
        },
        tls: Some(Tls {
            cert: paths::TLS_CERT.into(),
            key: paths::TLS_KEY.into(),
            ca: Some(paths::TLS_CA.into()),
            self_signed: false,
        }),
        storage: Storage {
            data_dir: paths::DATA_DIR.into(),
            logs_dir: paths::LOGS_DIR.into(),
            log_max_bytes: parley_config::default_log_max_bytes(),
            log_files: parley_config::default_log_files(),
            sync,
        },
        directory,
        limits: limits(resolved, server_name, front_end.is_some()),
        registrar: Default::default(),
        auth: Default::default(),
        // A Home Server's operations API takes the domain's administrator token (`user drain`).
        api: parley_config::Api {
            admin_token_file: resolved
                .api_token_secret
                .as_ref()
                .filter(|_| front_end.is_none())
                .map(|_| paths::API_TOKEN.into()),
        },
        offline: Default::default(),
        web: parley_config::Web { root: Some(WEB_ROOT.into()), origins: Vec::new() },
        frontend: front_end.map(|home_servers| FrontEnd {
            home_servers: home_servers.to_vec(),
            route_cache_secs: parley_config::default_route_cache_secs(),
            probe_interval_ms: parley_config::default_probe_interval_ms(),
            flow_key_file: Some(paths::FLOW_KEY.into()),
        }),
    })
}

/// The config file's text: a header, then the TOML the server reads.
pub fn render(
    ctx: &BuildContext,
    server_name: &str,
    role: ServerRole,
    advertise: &Advertise,
) -> Result<String, BuildError> {
    let config = build(ctx, server_name, role, advertise)?;
    Ok(format!("# Written by parley-operator; edits are overwritten.\n{}", config.to_toml()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;
    use crate::build::fixtures::ctx;
    use crate::crd::{DirectorySpec, FileDirectory, ManagedDirectory};
    use parley_config::Role;

    const HOME: ServerRole = ServerRole::Home { sync: SyncPolicy::EachChange };

    /// Every rendered config must pass the server's own validation for its role.
    fn parse(text: &str, role: Role) -> toml::Value {
        if let Err(e) = parley_config::Config::parse(text, role) {
            panic!("the server refuses the rendered config: {e}\n{text}");
        }
        toml::from_str(text).unwrap()
    }

    #[test]
    fn every_tier_and_directory_renders_a_config_the_server_accepts() {
        let routes = [HomeServerRoute { name: "corp-home-1".into(), address: "corp-home-1.ns.svc:5062".into() }];
        for users in [500, 5_000, 25_000] {
            for directory in ["ldap", "file", "managed"] {
                for require_tls in [false, true] {
                    let mut d = fixtures::domain("corp", users);
                    d.spec.tls.require_client_tls = require_tls;
                    if directory == "file" {
                        d.spec.directory = DirectorySpec {
                            ldap: None,
                            file: Some(FileDirectory { config_map: "u".into(), key: "k".into() }),
                            managed: None,
                        };
                    }
                    if directory == "managed" {
                        d.spec.directory = DirectorySpec { managed: Some(ManagedDirectory {}), ..Default::default() };
                    }
                    parse(&render(&ctx(&d), "corp-home-1", HOME, &Advertise::default()).unwrap(), Role::Home);
                    parse(
                        &render(&ctx(&d), "corp-frontend", ServerRole::FrontEnd(&routes), &Advertise::default())
                            .unwrap(),
                        Role::FrontEnd,
                    );
                }
            }
        }
    }

    #[test]
    fn browsers_shutdown_and_the_returning_load_are_configured_per_role() {
        let d = fixtures::domain("corp", 25_000);
        let routes = [HomeServerRoute { name: "corp-home-1".into(), address: "corp-home-1.ns.svc:5062".into() }];
        let read = |text: String, role| parley_config::Config::parse(&text, role).expect("the server accepts it");
        let home = read(render(&ctx(&d), "corp-home-1", HOME, &Advertise::default()).unwrap(), Role::Home);
        let front = read(
            render(&ctx(&d), "corp-frontend", ServerRole::FrontEnd(&routes), &Advertise::default()).unwrap(),
            Role::FrontEnd,
        );
        for c in [&home, &front] {
            assert_eq!(c.listen.wss.map(|a| a.port()), Some(SIP_WSS_PORT as u16));
            assert_eq!(c.listen.web.map(|a| a.port()), Some(WEB_PORT as u16));
            assert_eq!(c.web.root.as_deref(), Some(std::path::Path::new(WEB_ROOT)));
            assert!(c.limits.shutdown_timeout_secs < crate::build::termination_grace_seconds() as u64);
        }
        assert_eq!(front.limits.shutdown_grace_secs, FRONT_END_SHUTDOWN_GRACE_SECS);
        assert_eq!(home.limits.shutdown_grace_secs, HOME_SERVER_SHUTDOWN_GRACE_SECS);
        // 25,000 users on three Home Servers: 8,334 each, so 1,666 requests a second on return.
        assert_eq!((home.limits.max_requests_per_second, front.limits.max_requests_per_second), (1_666, 0));
    }

    #[test]
    fn the_directory_ca_bundle_and_starttls_reach_the_server() {
        let mut d = fixtures::domain("corp", 500);
        let ldap = d.spec.directory.ldap.as_mut().unwrap();
        ldap.start_tls = true;
        ldap.ca_bundle = Some(serde_json::from_value(serde_json::json!({"configMap": "ldap-ca"})).unwrap());
        let c = build(&ctx(&d), "x", HOME, &Advertise::default()).unwrap();
        let DirectoryConfig::Ldap { ca_file, starttls, .. } = c.directory else { panic!("ldap") };
        assert_eq!((ca_file.as_deref(), starttls), (Some(std::path::Path::new(paths::DIRECTORY_CA)), true));
    }

    #[test]
    fn a_managed_directory_reaches_the_server_as_ldaps_with_the_domains_ca() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.directory = DirectorySpec { managed: Some(ManagedDirectory {}), ..Default::default() };
        let v = parse(&render(&ctx(&d), "corp-home-1", HOME, &Advertise::default()).unwrap(), Role::Home);
        assert_eq!(v["directory"]["backend"].as_str(), Some("ldap"));
        assert_eq!(v["directory"]["url"].as_str(), Some("ldaps://corp-directory.ns.svc:636"));
        assert_eq!(v["directory"]["base_dn"].as_str(), Some("dc=example,dc=test"));
        assert_eq!(v["directory"]["bind_dn"].as_str(), Some("cn=ParleyService,ou=Parley,dc=example,dc=test"));
        assert_eq!(v["directory"]["ca_file"].as_str(), Some(paths::DIRECTORY_CA));
        assert_eq!(v["directory"]["bind_password_file"].as_str(), Some(paths::DIRECTORY_PASSWORD));
    }

    #[test]
    fn home_server_config_follows_the_contract() {
        let d = fixtures::domain("corp", 500);
        let text = render(&ctx(&d), "corp-home-1", HOME, &Advertise::default()).unwrap();
        let v = parse(&text, Role::Home);
        assert_eq!(v["sip_domain"].as_str(), Some("example.test"));
        assert_eq!(v["server_name"].as_str(), Some("corp-home-1"));
        assert_eq!(v["listen"]["udp"].as_str(), Some("0.0.0.0:5060"));
        assert_eq!(v["listen"]["tcp"].as_str(), Some("0.0.0.0:5060"));
        assert_eq!(v["listen"]["tls"].as_str(), Some("0.0.0.0:5061"));
        assert_eq!(v["listen"]["ops"].as_str(), Some("0.0.0.0:8080"));
        assert_eq!(v["tls"]["cert"].as_str(), Some("/etc/parley/tls/tls.crt"));
        assert_eq!(v["tls"]["key"].as_str(), Some("/etc/parley/tls/tls.key"));
        assert_eq!(v["storage"]["data_dir"].as_str(), Some("/var/lib/parley/data"));
        assert_eq!(v["storage"]["logs_dir"].as_str(), Some("/var/lib/parley/logs"));
        assert_eq!(v["directory"]["backend"].as_str(), Some("ldap"));
        assert_eq!(v["directory"]["url"].as_str(), Some("ldap://ldap.example:389"));
        assert_eq!(v["directory"]["base_dn"].as_str(), Some("dc=example,dc=test"));
        assert_eq!(v["directory"]["bind_dn"].as_str(), Some("cn=ParleyService,ou=Parley,dc=example,dc=test"));
        assert_eq!(v["directory"]["bind_password_file"].as_str(), Some("/etc/parley/directory/password"));
        assert_eq!(v["limits"]["max_message_bytes"].as_integer(), Some(65535));
        assert!(v.get("frontend").is_none());
    }

    #[test]
    fn front_end_config_lists_the_home_servers() {
        let d = fixtures::domain("corp", 25_000);
        let routes = vec![
            HomeServerRoute {
                name: "corp-home-1".into(),
                address: home_server_address("corp-home-1", "ns", "cluster.local"),
            },
            HomeServerRoute {
                name: "corp-home-2".into(),
                address: home_server_address("corp-home-2", "ns", "cluster.local"),
            },
        ];
        let text = render(&ctx(&d), "corp-frontend", ServerRole::FrontEnd(&routes), &Advertise::default()).unwrap();
        let v = parse(&text, Role::FrontEnd);
        let table = v["frontend"]["home_servers"].as_array().unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table[0]["name"].as_str(), Some("corp-home-1"));
        assert_eq!(table[1]["address"].as_str(), Some("corp-home-2.ns.svc.cluster.local:5062"));
    }

    #[test]
    fn required_client_tls_drops_the_plain_listeners() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.tls.require_client_tls = true;
        let v = parse(&render(&ctx(&d), "x", HOME, &Advertise::default()).unwrap(), Role::Home);
        assert!(v["listen"].get("udp").is_none() && v["listen"].get("tcp").is_none());
        assert_eq!(v["listen"]["tls"].as_str(), Some("0.0.0.0:5061"));
    }

    #[test]
    fn file_directory_points_at_the_mounted_file() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.directory = DirectorySpec {
            ldap: None,
            file: Some(FileDirectory { config_map: "users".into(), key: "u.toml".into() }),
            managed: None,
        };
        let v = parse(&render(&ctx(&d), "x", HOME, &Advertise::default()).unwrap(), Role::Home);
        assert_eq!(v["directory"]["backend"].as_str(), Some("file"));
        assert_eq!(v["directory"]["file"].as_str(), Some("/etc/parley/directory/users.toml"));
        assert!(v["directory"].get("url").is_none());
    }

    #[test]
    fn values_are_escaped() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.directory.ldap.as_mut().unwrap().base_dn = "dc=\"quoted\"\n,dc=x".into();
        let v = parse(&render(&ctx(&d), "x", HOME, &Advertise::default()).unwrap(), Role::Home);
        assert_eq!(v["directory"]["base_dn"].as_str(), Some("dc=\"quoted\"\n,dc=x"));
    }
}
