//! The managed directory (`spec.directory.managed: {}`): a one-replica OpenLDAP StatefulSet the
//! operator runs for a domain, from the image of the Dockerfile's `directory` target (Debian's
//! slapd under the `parley-directory` entrypoint, uid 65532).
//!
//! Objects, all owned by the CommunicationsDomain and named after it (`<domain>-directory...`):
//!
//! ```text
//! <domain>-directory-admin    Secret: bindDn, password (generated once, never regenerated) and
//!                             seed.ldif (the base entry and the administrator's entry)
//! <domain>-directory-tls      Secret: the directory's certificate from the domain's CA (made with
//!                             the servers' certificates, see controllers/domain/certificates.rs)
//! <domain>-directory-config   ConfigMap: slapd.ldif, the cn=config the first start writes
//! <domain>-directory          Service (ldaps 636) and StatefulSet (1 replica, PVC `data`)
//! ```
//!
//! The domain then has an LDAP directory like any other: [`effective_ldap`] is what the prep Jobs
//! and the servers' configs read, exactly as they read an external `spec.directory.ldap`.
//!
//! `cn=config` lives on the volume (`slapd.d`), written once from `slapd.ldif` by the entrypoint:
//! `prep schema` adds Parley's schema to it and `prep domain` its access rules, over LDAP, and a
//! restart must keep both. So a later change of `slapd.ldif` does not reach a directory that exists.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, KeyToPath, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretVolumeSource,
    Service, ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::{
    BuildError, Component, Owner, Workload, container_security_context, labels, pod_security_context, quantity::q,
    selector_labels, sha256_hex, tls_secret_name,
};
use crate::crd::{AdminSecretRef, CaBundleRef, CommunicationsDomain, LdapDirectory, ResolvedDomain};

/// The port clients use (ldaps); the Service maps it to [`LDAPS_CONTAINER_PORT`].
pub const LDAPS_PORT: i32 = 636;
/// slapd runs as a non-root user, which cannot bind below 1024.
pub const LDAPS_CONTAINER_PORT: i32 = 1636;
/// The name of the container's port (probes and NetworkPolicies name it).
pub const LDAPS_PORT_NAME: &str = "ldaps";
/// The volume: a directory of 500 to 10,000 users needs a few tens of MB.
pub const VOLUME_SIZE: &str = "1Gi";
/// The largest the mdb database may grow (a map size, not an allocation), below the volume's size.
pub const DB_MAX_BYTES: u64 = 768 * 1024 * 1024;
/// Annotation on the pod template: the hash of the directory's certificate. slapd reads its
/// certificate once, so a renewed one rolls the pod.
pub const TLS_HASH_ANNOTATION: &str = "parley.dev/tls-hash";

/// Where things are in the directory's container.
pub mod paths {
    pub const CONFIG_DIR: &str = "/etc/parley-directory/config";
    pub const CONFIG: &str = "/etc/parley-directory/config/slapd.ldif";
    pub const SEED_DIR: &str = "/etc/parley-directory/seed";
    pub const SEED: &str = "/etc/parley-directory/seed/seed.ldif";
    pub const TLS_DIR: &str = "/etc/parley-directory/tls";
    pub const TLS_CERT: &str = "/etc/parley-directory/tls/tls.crt";
    pub const TLS_KEY: &str = "/etc/parley-directory/tls/tls.key";
    pub const TLS_CA: &str = "/etc/parley-directory/tls/ca.crt";
    /// The volume: `slapd.d` (cn=config) and `data` (the mdb database).
    pub const DATA: &str = "/var/lib/ldap";
    pub const DB: &str = "/var/lib/ldap/data";
    /// slapd's pid and args files (an emptyDir: the root filesystem is read-only).
    pub const RUN: &str = "/run/slapd";
    pub const ENTRYPOINT: &str = "/usr/local/bin/parley-directory";
    pub const SLAPD: &str = "/usr/sbin/slapd";
}

/// Name of the directory's StatefulSet, Service and certificate (`<name>-tls`).
pub fn name(domain: &str) -> String {
    format!("{domain}-directory")
}

/// Name of the Secret with the administrator's DN and generated password.
pub fn admin_secret_name(domain: &str) -> String {
    format!("{domain}-directory-admin")
}

/// Name of the ConfigMap holding `slapd.ldif`.
pub fn config_map_name(domain: &str) -> String {
    format!("{domain}-directory-config")
}

/// The base DN of a managed directory: one `dc` per label of the SIP domain
/// (`example.test` -> `dc=example,dc=test`).
pub fn base_dn(sip_domain: &str) -> String {
    sip_domain.split('.').map(|l| format!("dc={l}")).collect::<Vec<_>>().join(",")
}

/// The administrator: the database's root DN, with `manage` on cn=config.
pub fn admin_dn(base: &str) -> String {
    format!("cn=admin,{base}")
}

/// The directory's URL, through its Service (the certificate names `<svc>.<ns>.svc`).
pub fn url(domain: &str, namespace: &str) -> String {
    format!("ldaps://{}.{namespace}.svc:{LDAPS_PORT}", name(domain))
}

/// The LDAP directory the domain's prep Jobs and servers use: `spec.directory.ldap` as written,
/// or, for a managed directory, the one the operator runs (its Service, the base DN from the SIP
/// domain, the generated admin Secret, the domain's CA from the directory's certificate Secret).
/// `None` for a users file.
pub fn effective_ldap(domain: &CommunicationsDomain) -> Option<LdapDirectory> {
    let d = &domain.spec.directory;
    if let Some(ldap) = &d.ldap {
        return Some(ldap.clone());
    }
    d.managed.as_ref()?;
    let name = domain.metadata.name.as_deref().unwrap_or_default();
    let ns = domain.metadata.namespace.as_deref().unwrap_or("default");
    Some(LdapDirectory {
        url: url(name, ns),
        base_dn: base_dn(&domain.spec.sip_domain),
        bind_dn: None,
        // The operator generates the service account's password (prep::service_account_secret_ref).
        service_account_secret_ref: None,
        password_secret: None,
        admin_secret: Some(AdminSecretRef {
            name: admin_secret_name(name),
            key: "password".into(),
            bind_dn_key: "bindDn".into(),
        }),
        // The directory's certificate Secret carries the domain's CA bundle as `ca.crt`, so nobody
        // but the operator reads the CA's own Secret (which holds its key).
        ca_bundle: Some(CaBundleRef {
            config_map: None,
            secret: Some(tls_secret_name(&self::name(name))),
            key: "ca.crt".into(),
        }),
        start_tls: false,
    })
}

fn directory_labels(domain: &str) -> BTreeMap<String, String> {
    labels(&name(domain), Component::Directory, domain)
}

/// The first entries of the database: the base entry and the administrator's, whose
/// `userPassword` is what a bind as the root DN checks (cn=config holds no password).
pub fn seed_ldif(sip_domain: &str, password: &str) -> String {
    let base = base_dn(sip_domain);
    let first = sip_domain.split('.').next().unwrap_or_default();
    format!(
        "dn: {base}\nobjectClass: top\nobjectClass: dcObject\nobjectClass: organization\ndc: {first}\no: {sip_domain}\n\n\
         dn: {admin}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: admin\n\
         description: Directory administrator, made by parley-operator (the prep Jobs bind as it)\nuserPassword: {password}\n",
        admin = admin_dn(&base)
    )
}

/// The administrator's Secret (`bindDn`, `password`, `seed.ldif`) of the directory of the domain
/// `owner` (SIP domain `sip_domain`), made once with a generated `password` and kept: the
/// directory holds the password from its first start on.
pub fn admin_secret(owner: &Owner, sip_domain: &str, password: &str) -> Secret {
    let base = base_dn(sip_domain);
    let data = [
        ("bindDn", admin_dn(&base)),
        ("password", password.to_string()),
        ("seed.ldif", seed_ldif(sip_domain, password)),
    ];
    Secret {
        metadata: owner.meta(admin_secret_name(&owner.name), directory_labels(&owner.name)),
        type_: Some("Opaque".into()),
        data: Some(data.into_iter().map(|(k, v)| (k.to_string(), ByteString(v.into_bytes()))).collect()),
        ..Default::default()
    }
}

/// `cn=config` of a new directory: the core, cosine, nis and inetorgperson schemas (Parley's own
/// is added by `prep schema`), TLS from the mounted certificate, the config database managed by
/// the administrator, and one mdb database for the base DN on the volume. Authenticated users may
/// read, anonymous ones only bind; `prep domain` puts Parley's access rules before these.
pub fn slapd_ldif(sip_domain: &str) -> String {
    let base = base_dn(sip_domain);
    let admin = admin_dn(&base);
    format!(
        "# Written by parley-operator: the cn=config of the directory's first start (later ones keep theirs).\n\
         dn: cn=config\nobjectClass: olcGlobal\ncn: config\n\
         olcPidFile: {run}/slapd.pid\nolcArgsFile: {run}/slapd.args\n\
         olcTLSCACertificateFile: {ca}\nolcTLSCertificateFile: {cert}\nolcTLSCertificateKeyFile: {key}\n\
         olcTLSProtocolMin: 3.3\n\n\
         dn: cn=module{{0}},cn=config\nobjectClass: olcModuleList\ncn: module{{0}}\nolcModulePath: /usr/lib/ldap\nolcModuleLoad: back_mdb\n\n\
         dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n\n\
         include: file:///etc/ldap/schema/core.ldif\n\n\
         include: file:///etc/ldap/schema/cosine.ldif\n\n\
         include: file:///etc/ldap/schema/nis.ldif\n\n\
         include: file:///etc/ldap/schema/inetorgperson.ldif\n\n\
         dn: olcDatabase={{-1}}frontend,cn=config\nobjectClass: olcDatabaseConfig\nobjectClass: olcFrontendConfig\nolcDatabase: {{-1}}frontend\n\
         olcPasswordHash: {{SSHA}}\n\n\
         dn: olcDatabase={{0}}config,cn=config\nobjectClass: olcDatabaseConfig\nolcDatabase: {{0}}config\n\
         olcAccess: {{0}}to * by dn.exact=\"{admin}\" manage by * none\n\n\
         dn: olcDatabase={{1}}mdb,cn=config\nobjectClass: olcDatabaseConfig\nobjectClass: olcMdbConfig\nolcDatabase: {{1}}mdb\n\
         olcDbDirectory: {db}\nolcSuffix: {base}\nolcRootDN: {admin}\nolcDbMaxSize: {DB_MAX_BYTES}\n\
         olcDbIndex: objectClass eq\nolcDbIndex: cn,uid,mail eq\n\
         olcAccess: {{0}}to attrs=userPassword by self write by anonymous auth by * none\n\
         olcAccess: {{1}}to * by users read by * none\n",
        run = paths::RUN,
        ca = paths::TLS_CA,
        cert = paths::TLS_CERT,
        key = paths::TLS_KEY,
        db = paths::DB,
    )
}

/// What the directory's objects are built from.
#[derive(Clone, Debug, PartialEq)]
pub struct DirectoryInput<'a> {
    /// The domain whose directory it is.
    pub owner: &'a Owner,
    pub domain: &'a ResolvedDomain,
    /// The image of the Dockerfile's `directory` target.
    pub image: &'a str,
    /// Hash of the directory's certificate as it is now (None before it exists).
    pub tls_hash: Option<String>,
}

/// The managed directory's objects, in the order they are applied.
#[derive(Clone, Debug, PartialEq)]
pub struct DirectoryObjects {
    pub config_map: ConfigMap,
    pub service: Service,
    pub stateful_set: StatefulSet,
}

fn tcp_probe(period: i32, failures: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction { port: IntOrString::String(LDAPS_PORT_NAME.into()), ..Default::default() }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        success_threshold: Some(1),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn secret_volume(name: &str, secret: &str, items: Option<Vec<KeyToPath>>) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items,
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Builds the managed directory of `input.domain` (which must have `spec.directory.managed`).
pub fn build(input: &DirectoryInput) -> Result<DirectoryObjects, BuildError> {
    if !input.domain.directory.managed {
        return Err(BuildError::Config("the domain's directory is not managed".into()));
    }
    let domain_name = input.owner.name.clone();
    let workload = Workload::owned_by(input.owner, Component::Directory, &domain_name);
    let name = name(&domain_name);
    let workload = Workload {
        labels: directory_labels(&domain_name),
        selector: selector_labels(&name, Component::Directory),
        name: name.clone(),
        ..workload
    };
    let meta = |obj_name: String| workload.meta(obj_name);

    let ldif = slapd_ldif(&input.domain.sip_domain);
    let config_map = ConfigMap {
        metadata: meta(config_map_name(&domain_name)),
        data: Some(BTreeMap::from([("slapd.ldif".to_string(), ldif)])),
        ..Default::default()
    };

    let service = Service {
        metadata: meta(name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(workload.selector.clone()),
            ports: Some(vec![super::service_port(LDAPS_PORT_NAME, LDAPS_PORT, LDAPS_CONTAINER_PORT, "TCP")]),
            ..Default::default()
        }),
        ..Default::default()
    };

    let container = Container {
        name: "slapd".into(),
        image: Some(input.image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![paths::ENTRYPOINT.into()]),
        args: Some(
            [
                "--config",
                paths::CONFIG,
                "--seed",
                paths::SEED,
                "--data",
                paths::DATA,
                "--slapd",
                paths::SLAPD,
                "--",
                // Foreground, connection and operation logs (OpenLDAP's `stats`) on stderr.
                "-d",
                "stats",
                "-h",
                &format!("ldaps://:{LDAPS_CONTAINER_PORT}/"),
            ]
            .map(String::from)
            .to_vec(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some(LDAPS_PORT_NAME.into()),
            container_port: LDAPS_CONTAINER_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(tcp_probe(5, 2)),
        liveness_probe: Some(tcp_probe(10, 3)),
        // The first start writes cn=config and the database before slapd listens.
        startup_probe: Some(tcp_probe(2, 60)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".to_string(), q("100m")), ("memory".to_string(), q("64Mi"))])),
            limits: Some(BTreeMap::from([("memory".to_string(), q("512Mi"))])),
            ..Default::default()
        }),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![
            mount("config", paths::CONFIG_DIR, true),
            mount("seed", paths::SEED_DIR, true),
            mount("tls", paths::TLS_DIR, true),
            mount("data", paths::DATA, false),
            mount("run", paths::RUN, false),
            mount("tmp", "/tmp", false),
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let empty_dir = |n: &str, size: &str| Volume {
        name: n.into(),
        empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(q(size)), ..Default::default() }),
        ..Default::default()
    };
    let volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&domain_name),
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        },
        // Only the seed entries: the password itself is for the prep Jobs.
        secret_volume(
            "seed",
            &admin_secret_name(&domain_name),
            Some(vec![KeyToPath { key: "seed.ldif".into(), path: "seed.ldif".into(), ..Default::default() }]),
        ),
        secret_volume("tls", &tls_secret_name(&name), None),
        empty_dir("run", "1Mi"),
        empty_dir("tmp", "16Mi"),
    ];
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(workload.selector.clone()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), q(VOLUME_SIZE))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut pod_labels = workload.labels.clone();
    pod_labels.extend(workload.selector.clone());
    let mut annotations = BTreeMap::from([(
        super::CONFIG_HASH_ANNOTATION.to_string(),
        sha256_hex(config_map.data.as_ref().map(|d| d["slapd.ldif"].as_bytes()).unwrap_or_default()),
    )]);
    if let Some(h) = &input.tls_hash {
        annotations.insert(TLS_HASH_ANNOTATION.to_string(), h.clone());
    }
    let stateful_set = StatefulSet {
        metadata: meta(name.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(name.clone()),
            selector: LabelSelector { match_labels: Some(workload.selector.clone()), ..Default::default() },
            pod_management_policy: Some("OrderedReady".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..Default::default()
            }),
            // The directory is the domain's: deleting the domain deletes its users too (the
            // StatefulSet goes with the domain, and its volume with the StatefulSet).
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Delete".into()),
                when_scaled: Some("Retain".into()),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: Some(pod_security_context()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(30),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(DirectoryObjects { config_map, service, stateful_set })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;
    use crate::crd::{DirectorySpec, ManagedDirectory};

    pub fn managed(name: &str) -> CommunicationsDomain {
        let mut d = fixtures::domain(name, 500);
        d.spec.directory = DirectorySpec { managed: Some(ManagedDirectory {}), ..Default::default() };
        d
    }

    fn owner(d: &CommunicationsDomain) -> Owner {
        Owner::of(d, "CommunicationsDomain").unwrap()
    }

    fn objects(d: &CommunicationsDomain) -> DirectoryObjects {
        let input = DirectoryInput {
            owner: &owner(d),
            domain: &fixtures::resolved(d),
            image: "parley-directory:test",
            tls_hash: Some("h1".into()),
        };
        build(&input).unwrap()
    }

    #[test]
    fn names_and_base_dn_come_from_the_domain() {
        assert_eq!(base_dn("example.test"), "dc=example,dc=test");
        assert_eq!(base_dn("im.corp-1.example.org"), "dc=im,dc=corp-1,dc=example,dc=org");
        assert_eq!(admin_dn("dc=a,dc=b"), "cn=admin,dc=a,dc=b");
        assert_eq!(url("corp", "ns"), "ldaps://corp-directory.ns.svc:636");
    }

    #[test]
    fn a_managed_directory_is_an_ldap_directory_for_everyone_else() {
        let d = managed("corp");
        let l = effective_ldap(&d).unwrap();
        assert_eq!(l.url, "ldaps://corp-directory.ns.svc:636");
        assert_eq!(l.base_dn, "dc=example,dc=test");
        assert_eq!(l.service_bind_dn(), "cn=ParleyService,ou=Parley,dc=example,dc=test");
        let admin = l.admin_secret.unwrap();
        assert_eq!(
            (admin.name.as_str(), admin.key.as_str(), admin.bind_dn_key.as_str()),
            ("corp-directory-admin", "password", "bindDn")
        );
        let ca = l.ca_bundle.unwrap();
        assert_eq!((ca.secret.as_deref(), ca.key.as_str()), (Some("corp-directory-tls"), "ca.crt"));
        assert!(!l.start_tls);
        // An external directory is as written; a users file has none.
        let external = fixtures::domain("corp", 500);
        assert_eq!(effective_ldap(&external), external.spec.directory.ldap.clone());
        let mut file = external.clone();
        file.spec.directory = serde_json::from_value(serde_json::json!({"file": {"configMap": "u"}})).unwrap();
        assert_eq!(effective_ldap(&file), None);
    }

    #[test]
    fn the_admin_secret_holds_the_dn_the_password_and_the_seed() {
        let d = managed("corp");
        let s = admin_secret(&owner(&d), "example.test", "pw123");
        assert_eq!(s.metadata.name.as_deref(), Some("corp-directory-admin"));
        assert_eq!(s.metadata.owner_references.as_ref().unwrap()[0].name, "corp");
        let data = s.data.unwrap();
        let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        assert_eq!(text("bindDn"), "cn=admin,dc=example,dc=test");
        assert_eq!(text("password"), "pw123");
        let seed = text("seed.ldif");
        assert!(seed.starts_with("dn: dc=example,dc=test\n"), "{seed}");
        assert!(seed.contains("dc: example\n") && seed.contains("dn: cn=admin,dc=example,dc=test\n"), "{seed}");
        assert!(seed.contains("userPassword: pw123\n"), "{seed}");
    }

    #[test]
    fn slapd_config_has_the_base_dn_the_schemas_tls_and_the_admin_managing_cn_config() {
        let c = slapd_ldif("example.test");
        for want in [
            "olcSuffix: dc=example,dc=test\n",
            "olcRootDN: cn=admin,dc=example,dc=test\n",
            "olcAccess: {0}to * by dn.exact=\"cn=admin,dc=example,dc=test\" manage by * none\n",
            "olcDbDirectory: /var/lib/ldap/data\n",
            "include: file:///etc/ldap/schema/inetorgperson.ldif\n",
            "olcModuleLoad: back_mdb\n",
            "olcTLSCertificateFile: /etc/parley-directory/tls/tls.crt\n",
            "olcTLSCertificateKeyFile: /etc/parley-directory/tls/tls.key\n",
            "olcPidFile: /run/slapd/slapd.pid\n",
        ] {
            assert!(c.contains(want), "missing {want:?} in\n{c}");
        }
        assert!(!c.contains("olcRootPW"), "no password in a ConfigMap");
    }

    #[test]
    fn the_stateful_set_is_one_non_root_replica_with_a_volume_and_probes() {
        let d = managed("corp");
        let o = objects(&d);
        let sts = o.stateful_set.spec.as_ref().unwrap();
        assert_eq!(o.stateful_set.metadata.name.as_deref(), Some("corp-directory"));
        assert_eq!(sts.replicas, Some(1));
        let owner = &o.stateful_set.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("CommunicationsDomain", "corp", Some(true))
        );
        let claims = sts.volume_claim_templates.as_ref().unwrap();
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
        let retention = sts.persistent_volume_claim_retention_policy.as_ref().unwrap();
        assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
        let pod = sts.template.spec.as_ref().unwrap();
        let ps = pod.security_context.as_ref().unwrap();
        assert_eq!((ps.run_as_non_root, ps.run_as_user, ps.fs_group), (Some(true), Some(65532), Some(65532)));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("parley-directory:test"));
        let cs = c.security_context.as_ref().unwrap();
        assert_eq!(cs.read_only_root_filesystem, Some(true));
        assert_eq!(cs.capabilities.as_ref().unwrap().drop.as_ref().unwrap(), &["ALL"]);
        for p in [&c.readiness_probe, &c.liveness_probe, &c.startup_probe] {
            assert_eq!(p.as_ref().unwrap().tcp_socket.as_ref().unwrap().port, IntOrString::String("ldaps".into()));
        }
        let args = c.args.as_ref().unwrap();
        assert_eq!(&args[..2], ["--config", paths::CONFIG]);
        assert!(args.ends_with(&["-h".to_string(), "ldaps://:1636/".to_string()]), "{args:?}");
        let mounts: BTreeMap<_, _> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.name.as_str(), (m.mount_path.as_str(), m.read_only)))
            .collect();
        assert_eq!(mounts["data"], ("/var/lib/ldap", None));
        assert_eq!(mounts["seed"], (paths::SEED_DIR, Some(true)));
        let vols = pod.volumes.as_ref().unwrap();
        let seed = vols.iter().find(|v| v.name == "seed").unwrap().secret.as_ref().unwrap();
        assert_eq!(seed.secret_name.as_deref(), Some("corp-directory-admin"));
        assert_eq!(seed.items.as_ref().unwrap()[0].key, "seed.ldif", "only the seed, not the bare password");
        let tls = vols.iter().find(|v| v.name == "tls").unwrap().secret.as_ref().unwrap();
        assert_eq!(tls.secret_name.as_deref(), Some("corp-directory-tls"));
        let cm = vols.iter().find(|v| v.name == "config").unwrap().config_map.as_ref().unwrap();
        assert_eq!(cm.name, "corp-directory-config");
        assert_eq!(o.config_map.data.as_ref().unwrap()["slapd.ldif"], slapd_ldif("example.test"));
        // A renewed certificate rolls the pod.
        let ann = sts.template.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
        assert_eq!(ann[TLS_HASH_ANNOTATION], "h1");
    }

    #[test]
    fn the_service_offers_ldaps_on_636() {
        let o = objects(&managed("corp"));
        let spec = o.service.spec.as_ref().unwrap();
        let p = &spec.ports.as_ref().unwrap()[0];
        assert_eq!(
            (p.name.as_deref(), p.port, p.target_port.clone()),
            (Some("ldaps"), 636, Some(IntOrString::Int(1636)))
        );
        assert_eq!(spec.selector, o.stateful_set.spec.as_ref().unwrap().selector.match_labels);
        assert_eq!(o.service.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"], "directory");
    }

    #[test]
    fn only_a_managed_directory_is_built() {
        let d = fixtures::domain("corp", 500);
        let input = DirectoryInput { owner: &owner(&d), domain: &fixtures::resolved(&d), image: "i", tls_hash: None };
        assert!(build(&input).is_err());
    }
}
