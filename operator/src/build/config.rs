//! The `parley-server` TOML config (the server's contract; see `server/src/config.rs`).

use serde::Serialize;

use super::{BuildContext, BuildError, OPS_PORT, SIP_PORT, SIP_TLS_PORT, paths};

/// Largest SIP message the servers accept.
pub const MAX_MESSAGE_BYTES: u32 = 65_535;

#[derive(Serialize)]
struct ServerConfig<'a> {
    sip_domain: &'a str,
    server_name: &'a str,
    listen: Listen,
    tls: TlsFiles,
    storage: Storage,
    directory: Directory,
    limits: Limits,
    #[serde(skip_serializing_if = "Option::is_none")]
    frontend: Option<Frontend<'a>>,
}

#[derive(Serialize)]
struct Listen {
    #[serde(skip_serializing_if = "Option::is_none")]
    udp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp: Option<String>,
    tls: String,
    ops: String,
}

#[derive(Serialize)]
struct TlsFiles {
    cert: &'static str,
    key: &'static str,
}

#[derive(Serialize)]
struct Storage {
    data_dir: &'static str,
    logs_dir: &'static str,
}

#[derive(Serialize)]
struct Directory {
    backend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_dn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bind_dn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bind_password_file: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'static str>,
}

#[derive(Serialize)]
struct Limits {
    max_message_bytes: u32,
}

#[derive(Serialize)]
struct Frontend<'a> {
    home_servers: &'a [HomeServerRoute],
}

/// A row of the Front-End's routing table: a Home Server's name (what users' directory entries
/// name) and the address of its Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HomeServerRoute {
    pub name: String,
    pub address: String,
}

/// The Service address of a Home Server, as the Front-End dials it (mutual TLS on 5061).
pub fn home_server_address(name: &str, namespace: &str, cluster_domain: &str) -> String {
    format!("{name}.{namespace}.svc.{cluster_domain}:{SIP_TLS_PORT}")
}

/// Renders the config of the server `server_name`; `front_end` is the routing table of a
/// Front-End, `None` for a Home Server.
pub fn render(
    ctx: &BuildContext,
    server_name: &str,
    front_end: Option<&[HomeServerRoute]>,
) -> Result<String, BuildError> {
    let spec = &ctx.domain.spec;
    let plain = !spec.tls.require_client_tls;
    let any = |port: i32| format!("0.0.0.0:{port}");
    let directory = match (&spec.directory.ldap, &spec.directory.file) {
        (Some(ldap), _) => Directory {
            backend: "ldap",
            url: Some(ldap.url.clone()),
            base_dn: Some(ldap.base_dn.clone()),
            bind_dn: Some(ldap.service_bind_dn()),
            bind_password_file: Some(paths::DIRECTORY_PASSWORD),
            file: None,
        },
        (None, Some(_)) => Directory {
            backend: "file",
            url: None,
            base_dn: None,
            bind_dn: None,
            bind_password_file: None,
            file: Some(paths::DIRECTORY_FILE),
        },
        (None, None) => return Err(BuildError::Config("the domain names no directory".into())),
    };
    let config = ServerConfig {
        sip_domain: &spec.sip_domain,
        server_name,
        listen: Listen {
            udp: plain.then(|| any(SIP_PORT)),
            tcp: plain.then(|| any(SIP_PORT)),
            tls: any(SIP_TLS_PORT),
            ops: any(OPS_PORT),
        },
        tls: TlsFiles { cert: paths::TLS_CERT, key: paths::TLS_KEY },
        storage: Storage { data_dir: paths::DATA_DIR, logs_dir: paths::LOGS_DIR },
        directory,
        limits: Limits { max_message_bytes: MAX_MESSAGE_BYTES },
        frontend: front_end.map(|home_servers| Frontend { home_servers }),
    };
    let body = toml::to_string(&config).map_err(|e| BuildError::Config(e.to_string()))?;
    Ok(format!("# Written by parley-operator; edits are overwritten.\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;
    use crate::build::fixtures::ctx;
    use crate::crd::{DirectorySpec, FileDirectory};

    #[test]
    fn home_server_config_follows_the_contract() {
        let d = fixtures::domain("corp", 500);
        let text = render(&ctx(&d), "corp-home-1", None).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
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
        assert_eq!(v["directory"]["bind_dn"].as_str(), Some("cn=parley-service,ou=Parley,dc=example,dc=test"));
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
        let text = render(&ctx(&d), "corp-frontend", Some(&routes)).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        let table = v["frontend"]["home_servers"].as_array().unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table[0]["name"].as_str(), Some("corp-home-1"));
        assert_eq!(table[1]["address"].as_str(), Some("corp-home-2.ns.svc.cluster.local:5061"));
    }

    #[test]
    fn required_client_tls_drops_the_plain_listeners() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.tls.require_client_tls = true;
        let v: toml::Value = toml::from_str(&render(&ctx(&d), "x", None).unwrap()).unwrap();
        assert!(v["listen"].get("udp").is_none() && v["listen"].get("tcp").is_none());
        assert_eq!(v["listen"]["tls"].as_str(), Some("0.0.0.0:5061"));
    }

    #[test]
    fn file_directory_points_at_the_mounted_file() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.directory = DirectorySpec {
            ldap: None,
            file: Some(FileDirectory { config_map: "users".into(), key: "u.toml".into() }),
        };
        let v: toml::Value = toml::from_str(&render(&ctx(&d), "x", None).unwrap()).unwrap();
        assert_eq!(v["directory"]["backend"].as_str(), Some("file"));
        assert_eq!(v["directory"]["file"].as_str(), Some("/etc/parley/directory/users.toml"));
        assert!(v["directory"].get("url").is_none());
    }

    #[test]
    fn values_are_escaped() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.directory.ldap.as_mut().unwrap().base_dn = "dc=\"quoted\"\n,dc=x".into();
        let v: toml::Value = toml::from_str(&render(&ctx(&d), "x", None).unwrap()).unwrap();
        assert_eq!(v["directory"]["base_dn"].as_str(), Some("dc=\"quoted\"\n,dc=x"));
    }
}
