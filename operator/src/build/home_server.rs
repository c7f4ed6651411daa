//! Objects of a HomeServer: ConfigMap, headless Service (the pod's stable name, which the
//! Front-End dials), client Service `<name>-sip`, StatefulSet of one pod with data and logs
//! volumes, PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Service, ServicePort,
    ServiceSpec, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::config::{self, Advertise, ServerRole, home_server_address, service_host};
use super::*;
use crate::crd::{HomeServer, ResolvedSize};
use crate::tiers;

/// Everything built for one HomeServer, in the order it is applied.
#[derive(Clone, Debug, PartialEq)]
pub struct HomeServerObjects {
    pub config_map: ConfigMap,
    pub service: Service,
    /// What clients connect to (of `spec.service.type`).
    pub client_service: Service,
    pub pdb: PodDisruptionBudget,
    pub stateful_set: StatefulSet,
    /// The size the StatefulSet runs with, for the status.
    pub resolved: ResolvedSize,
    /// Where the Front-End reaches this Home Server.
    pub address: String,
}

/// Builds the objects of `hs` from its domain (`ctx`).
pub fn build(hs: &HomeServer, ctx: &BuildContext) -> Result<HomeServerObjects, BuildError> {
    let component = Component::HomeServer;
    let workload = Workload::of(hs, "HomeServer", component, &hs.spec.domain)?;
    let meta = |obj_name: String| workload.meta(obj_name);
    let (name, labels, selector) = (workload.name.clone(), &workload.labels, &workload.selector);

    let client_service_name = client_service_name(&name);
    let advertise = Advertise {
        public: Some(
            hs.spec
                .advertise
                .clone()
                .unwrap_or_else(|| service_host(&client_service_name, &workload.namespace, ctx.cluster_domain)),
        ),
        internal: Some(service_host(&name, &workload.namespace, ctx.cluster_domain)),
    };
    let storage = hs.spec.storage.clone().unwrap_or_default();
    let sync = storage.sync.unwrap_or_default().into();
    let config_text = config::render(ctx, &name, ServerRole::Home { sync }, &advertise)?;
    let config_hash = sha256_hex(config_text.as_bytes());
    let config_map = ConfigMap {
        metadata: meta(config_map_name(&name)),
        data: Some(BTreeMap::from([("parley.toml".to_string(), config_text)])),
        ..Default::default()
    };

    let plain = !ctx.resolved.require_client_tls;
    let service = Service {
        metadata: meta(name.clone()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector.clone()),
            // Not ready means not in DNS (the default). Never `Some(false)`: see
            // `tests::no_false_the_api_server_drops`.
            ports: Some(service_ports(plain)),
            ..Default::default()
        }),
        ..Default::default()
    };

    let client_type = hs.spec.service.type_;
    let client_service = Service {
        metadata: ObjectMeta {
            annotations: (!hs.spec.service.annotations.is_empty()).then(|| hs.spec.service.annotations.clone()),
            ..meta(client_service_name)
        },
        spec: Some(ServiceSpec {
            type_: Some(client_type.as_str().into()),
            selector: Some(selector.clone()),
            ports: Some(super::front_end::client_ports(plain, SIP_PORT, SIP_TLS_PORT)),
            // Keep clients' source addresses (SIP's received/rport) on node ports and load balancers.
            external_traffic_policy: (client_type != crate::crd::ServiceType::ClusterIP).then(|| "Local".into()),
            ..Default::default()
        }),
        ..Default::default()
    };

    // A Home Server has no replica to fail over to: a voluntary eviction (node drain) waits for an
    // administrator's decision instead of silently cutting off its users. A pod that is not
    // running anyway may be evicted.
    let pdb = PodDisruptionBudget {
        metadata: meta(name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector.clone()), ..Default::default() }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        ..Default::default()
    };

    let resources = tiers::home_server_resources(&ctx.resolved.home_server_size, hs.spec.resources.as_ref());
    let data_size = tiers::volume_size(&ctx.resolved.home_server_size.data_volume, storage.data_size.as_ref());
    let logs_size = tiers::volume_size(&ctx.resolved.home_server_size.logs_volume, storage.logs_size.as_ref());
    let resolved = ResolvedSize {
        cpu: resources.limits.as_ref().and_then(|l| l.get("cpu")).map(|q| q.0.clone()),
        memory: resources.limits.as_ref().and_then(|l| l.get("memory")).map(|q| q.0.clone()),
        data_volume: Some(data_size.0.clone()),
        logs_volume: Some(logs_size.0.clone()),
    };
    let claim = |claim_name: &str, size| PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some(claim_name.into()), labels: Some(selector.clone()), ..Default::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size)])),
                ..Default::default()
            }),
            storage_class_name: storage.storage_class_name.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };

    let mut container = server_container(ctx, component, resources);
    let mut volumes = common_volumes(&name, ctx);
    if let Some(secret) = &ctx.resolved.api_token_secret {
        mount_secret(&mut container, &mut volumes, "api-token", secret, "token", paths::API_TOKEN_DIR);
    }
    let mut pod_labels = labels.clone();
    pod_labels.extend(selector.clone());
    let mut stateful_set = StatefulSet {
        metadata: meta(name.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(name.clone()),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..Default::default() },
            pod_management_policy: Some("OrderedReady".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..Default::default()
            }),
            // Users' state outlives the HomeServer resource: deleting it keeps the volumes.
            // (`spec.storage.deleteOnRemove` says otherwise.)
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(if storage.delete_on_remove { "Delete" } else { "Retain" }.into()),
                when_scaled: Some("Retain".into()),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), config_hash)])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: Some(pod_security_context()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(termination_grace_seconds()),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![claim("data", data_size), claim("logs", logs_size)]),
            ..Default::default()
        }),
        ..Default::default()
    };
    // What the pod runs, in one value: the controller holds a changed pod spec back until the
    // Home Server's turn in a rollout comes (controllers::rollout).
    let template = stateful_set.spec.as_ref().map(|s| &s.template);
    let template_hash = sha256_hex(&serde_json::to_vec(&template).map_err(|e| BuildError::Config(e.to_string()))?);
    stateful_set.metadata.annotations.get_or_insert_default().insert(TEMPLATE_HASH_ANNOTATION.into(), template_hash);

    Ok(HomeServerObjects {
        config_map,
        service,
        client_service,
        pdb,
        stateful_set,
        resolved,
        address: home_server_address(&name, &workload.namespace, ctx.cluster_domain),
    })
}

/// Name of the Service clients reach a Home Server through.
pub fn client_service_name(home_server: &str) -> String {
    format!("{home_server}-sip")
}

/// SIP ports of a server's Service (5060 UDP and TCP unless clients must use TLS, 5061), the
/// internal mutual-TLS port the Front-End dials, and ops.
pub fn service_ports(plain: bool) -> Vec<ServicePort> {
    let mut ports = super::front_end::client_ports(plain, SIP_PORT, SIP_TLS_PORT);
    ports.push(super::service_port("sip-internal", INTERNAL_PORT, INTERNAL_PORT, "TCP"));
    ports.push(super::service_port("ops", OPS_PORT, OPS_PORT, "TCP"));
    ports
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ResourceRequirements;

    use super::*;
    use crate::build::fixtures;
    use crate::build::fixtures::ctx;
    use crate::build::quantity::q;
    use crate::crd::{StorageOverrides, StorageSync};

    #[test]
    fn clients_reach_the_home_server_through_its_sip_service_and_it_says_so() {
        let d = fixtures::domain("corp", 500);
        let mut hs = fixtures::home_server("corp-home-1", "corp");
        hs.spec.service.type_ = crate::crd::ServiceType::NodePort;
        hs.spec.service.annotations.insert("lb.example/kind".into(), "nlb".into());
        let o = build(&hs, &ctx(&d)).unwrap();
        let svc = &o.client_service;
        assert_eq!(svc.metadata.name.as_deref(), Some("corp-home-1-sip"));
        assert_eq!(svc.metadata.annotations.as_ref().unwrap()["lb.example/kind"], "nlb");
        let spec = svc.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert!(spec.ports.as_ref().unwrap().iter().all(|p| p.port != 5062 && p.port != 8080), "clients see SIP only");
        let config = parley_config::Config::parse(
            &o.config_map.data.as_ref().unwrap()["parley.toml"],
            parley_config::Role::Home,
        )
        .unwrap();
        assert_eq!(config.listen.advertise.as_deref(), Some("corp-home-1-sip.ns.svc.cluster.local"));
        assert_eq!(config.listen.advertise_internal.as_deref(), Some("corp-home-1.ns.svc.cluster.local"));
        hs.spec.advertise = Some("sip.example.test".into());
        let o = build(&hs, &ctx(&d)).unwrap();
        assert!(o.config_map.data.as_ref().unwrap()["parley.toml"].contains("advertise = \"sip.example.test\""));
    }

    fn pod(o: &HomeServerObjects) -> &PodSpec {
        o.stateful_set.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn every_object_is_labelled_and_owned() {
        let d = fixtures::domain("corp", 500);
        let o = build(&fixtures::home_server("corp-home-1", "corp"), &ctx(&d)).unwrap();
        let metas = [&o.config_map.metadata, &o.service.metadata, &o.pdb.metadata, &o.stateful_set.metadata];
        for m in metas {
            assert_eq!(m.namespace.as_deref(), Some("ns"));
            let l = m.labels.as_ref().unwrap();
            assert_eq!(l["app.kubernetes.io/managed-by"], "parley-operator");
            assert_eq!(l["app.kubernetes.io/component"], "home-server");
            assert_eq!(l["app.kubernetes.io/instance"], "corp-home-1");
            assert_eq!(l["parley.dev/domain"], "corp");
            let owners = m.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "HomeServer");
            assert_eq!(owners[0].name, "corp-home-1");
            assert_eq!(owners[0].uid, "uid-corp-home-1");
            assert_eq!(owners[0].controller, Some(true));
        }
        assert_eq!(o.config_map.metadata.name.as_deref(), Some("corp-home-1-config"));
        assert_eq!(o.stateful_set.metadata.name.as_deref(), Some("corp-home-1"));
        assert_eq!(o.address, "corp-home-1.ns.svc.cluster.local:5062");
    }

    #[test]
    fn without_a_uid_nothing_is_built() {
        let d = fixtures::domain("corp", 500);
        let mut hs = fixtures::home_server("corp-home-1", "corp");
        hs.metadata.uid = None;
        assert_eq!(build(&hs, &ctx(&d)), Err(BuildError::MissingMetadata("HomeServer", "uid")));
    }

    #[test]
    fn service_is_headless_and_selects_the_pod() {
        let d = fixtures::domain("corp", 500);
        let o = build(&fixtures::home_server("h", "corp"), &ctx(&d)).unwrap();
        let spec = o.service.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        let sts = o.stateful_set.spec.as_ref().unwrap();
        assert_eq!(spec.selector.as_ref(), sts.selector.match_labels.as_ref());
        let tpl_labels = sts.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        for (k, v) in spec.selector.as_ref().unwrap() {
            assert_eq!(tpl_labels.get(k), Some(v));
        }
        let ports: Vec<_> =
            spec.ports.as_ref().unwrap().iter().map(|p| (p.port, p.protocol.clone().unwrap())).collect();
        assert_eq!(
            ports,
            vec![
                (5060, "UDP".into()),
                (5060, "TCP".into()),
                (5061, "TCP".into()),
                (7443, "TCP".into()),
                (8088, "TCP".into()),
                (5062, "TCP".into()),
                (8080, "TCP".into())
            ]
        );
        assert_eq!(sts.service_name.as_deref(), Some("h"));
    }

    #[test]
    fn statefulset_runs_one_pod_with_data_and_logs_claims_sized_by_tier() {
        for (users, cpu, mem, data, logs) in [
            (500, "1", "512Mi", "20Gi", "1Gi"),
            (5_000, "2", "2Gi", "36Gi", "36Gi"),
            (25_000, "2", "2Gi", "36Gi", "36Gi"),
        ] {
            let d = fixtures::domain("corp", users);
            let o = build(&fixtures::home_server("h", "corp"), &ctx(&d)).unwrap();
            let sts = o.stateful_set.spec.as_ref().unwrap();
            assert_eq!(sts.replicas, Some(1));
            let claims = sts.volume_claim_templates.as_ref().unwrap();
            let sizes: Vec<_> = claims
                .iter()
                .map(|c| {
                    let s = c.spec.as_ref().unwrap();
                    assert_eq!(s.access_modes.as_deref(), Some(&["ReadWriteOnce".to_string()][..]));
                    (
                        c.metadata.name.clone().unwrap(),
                        s.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0.clone(),
                    )
                })
                .collect();
            assert_eq!(sizes, vec![("data".into(), data.to_string()), ("logs".into(), logs.to_string())]);
            let r = pod(&o).containers[0].resources.as_ref().unwrap();
            assert_eq!(r.limits.as_ref().unwrap()["cpu"], q(cpu));
            assert_eq!(r.requests.as_ref().unwrap()["memory"], q(mem));
            assert_eq!(o.resolved.data_volume.as_deref(), Some(data));
            let retention = sts.persistent_volume_claim_retention_policy.as_ref().unwrap();
            assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
        }
    }

    #[test]
    fn overrides_on_the_home_server_win() {
        let d = fixtures::domain("corp", 500);
        let mut hs = fixtures::home_server("h", "corp");
        hs.spec.resources =
            Some(ResourceRequirements { limits: Some([("memory".into(), q("1Gi"))].into()), ..Default::default() });
        hs.spec.storage = Some(StorageOverrides {
            data_size: Some(q("100Gi")),
            logs_size: None,
            storage_class_name: Some("fast".into()),
            delete_on_remove: true,
            sync: None,
        });
        let o = build(&hs, &ctx(&d)).unwrap();
        let r = pod(&o).containers[0].resources.as_ref().unwrap();
        assert_eq!(r.limits.as_ref().unwrap()["memory"], q("1Gi"));
        assert_eq!(r.limits.as_ref().unwrap()["cpu"], q("1"));
        let claims = o.stateful_set.spec.as_ref().unwrap().volume_claim_templates.as_ref().unwrap();
        let data = claims[0].spec.as_ref().unwrap();
        assert_eq!(data.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"], q("100Gi"));
        assert_eq!(data.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claims[1].spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
            q("1Gi")
        );
        assert_eq!(o.resolved.memory.as_deref(), Some("1Gi"));
        assert_eq!(o.resolved.data_volume.as_deref(), Some("100Gi"));
        let retention = o.stateful_set.spec.as_ref().unwrap().persistent_volume_claim_retention_policy.as_ref();
        assert_eq!(retention.unwrap().when_deleted.as_deref(), Some("Delete"), "deleteOnRemove");
    }

    /// `storage.sync` reaches the config the server parses; unset, the server's default.
    #[test]
    fn the_storage_sync_of_the_home_server_is_the_server_s() {
        let d = fixtures::domain("corp", 500);
        let mut hs = fixtures::home_server("h", "corp");
        let sync_of = |hs: &HomeServer| {
            let o = build(hs, &ctx(&d)).unwrap();
            let text = &o.config_map.data.as_ref().unwrap()["parley.toml"];
            parley_config::Config::parse(text, parley_config::Role::Home).unwrap().storage.sync
        };
        assert_eq!(sync_of(&hs), parley_config::SyncPolicy::EachChange);
        hs.spec.storage = Some(StorageOverrides { sync: Some(StorageSync::Checkpoint), ..Default::default() });
        assert_eq!(sync_of(&hs), parley_config::SyncPolicy::Checkpoint);
    }

    #[test]
    fn probes_hit_the_operations_port() {
        let d = fixtures::domain("corp", 500);
        let o = build(&fixtures::home_server("h", "corp"), &ctx(&d)).unwrap();
        let c = &pod(&o).containers[0];
        let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            let g = p.as_ref().unwrap().http_get.as_ref().unwrap();
            (g.path.clone().unwrap(), g.port.clone())
        };
        assert_eq!(path(&c.readiness_probe), ("/readyz".into(), IntOrString::String("ops".into())));
        assert_eq!(path(&c.liveness_probe), ("/healthz".into(), IntOrString::String("ops".into())));
        assert_eq!(path(&c.startup_probe).0, "/healthz");
        assert!(c.ports.as_ref().unwrap().iter().any(|p| p.name.as_deref() == Some("ops") && p.container_port == 8080));
        assert_eq!(
            c.args.as_ref().unwrap(),
            &["serve", "--role", "home", "--config", "/etc/parley/parley.toml"].map(String::from).to_vec()
        );
        assert_eq!(c.image.as_deref(), Some("parley-server:test"));
    }

    #[test]
    fn pod_is_locked_down() {
        let d = fixtures::domain("corp", 500);
        let o = build(&fixtures::home_server("h", "corp"), &ctx(&d)).unwrap();
        let p = pod(&o);
        let psc = p.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(65532));
        assert_eq!(psc.fs_group, Some(65532));
        assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let sc = p.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(p.automount_service_account_token, Some(false));
    }

    #[test]
    fn the_directory_ca_bundle_is_mounted_where_the_config_can_name_it() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.directory.ldap.as_mut().unwrap().ca_bundle = Some(crate::crd::CaBundleRef {
            config_map: None,
            secret: Some("ldap-ca".into()),
            key: "bundle.pem".into(),
        });
        let o = build(&fixtures::home_server("h", "corp"), &ctx(&d)).unwrap();
        let p = pod(&o);
        let m = p.containers[0].volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "directory-ca").unwrap();
        assert_eq!((m.mount_path.as_str(), m.read_only), (paths::DIRECTORY_CA_DIR, Some(true)));
        let v = p.volumes.as_ref().unwrap().iter().find(|v| v.name == "directory-ca").unwrap();
        let s = v.secret.as_ref().unwrap();
        assert_eq!(s.secret_name.as_deref(), Some("ldap-ca"));
        assert_eq!(
            (s.items.as_ref().unwrap()[0].key.as_str(), s.items.as_ref().unwrap()[0].path.as_str()),
            ("bundle.pem", "ca.crt")
        );
        // Without a bundle, no such volume.
        let plain = build(&fixtures::home_server("h", "corp"), &ctx(&fixtures::domain("corp", 500))).unwrap();
        assert!(pod(&plain).volumes.as_ref().unwrap().iter().all(|v| v.name != "directory-ca"));
    }

    #[test]
    fn volumes_and_mounts_line_up() {
        let d = fixtures::domain("corp", 500);
        let o = build(&fixtures::home_server("h", "corp"), &ctx(&d)).unwrap();
        let p = pod(&o);
        let mounts: BTreeMap<_, _> = p.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.mount_path.clone(), (m.name.clone(), m.read_only)))
            .collect();
        assert_eq!(mounts["/etc/parley/parley.toml"], ("config".into(), Some(true)));
        assert_eq!(mounts["/etc/parley/tls"], ("tls".into(), Some(true)));
        assert_eq!(mounts["/etc/parley/directory"], ("directory".into(), Some(true)));
        // writable mounts leave readOnly out (the API server drops `false`, see build::tests)
        assert_eq!(mounts["/var/lib/parley/data"], ("data".into(), None));
        assert_eq!(mounts["/var/lib/parley/logs"], ("logs".into(), None));
        assert_eq!(mounts["/tmp"], ("tmp".into(), None));
        let vols: BTreeMap<_, _> = p.volumes.as_ref().unwrap().iter().map(|v| (v.name.clone(), v)).collect();
        assert_eq!(vols["config"].config_map.as_ref().unwrap().name, "h-config");
        assert_eq!(vols["tls"].secret.as_ref().unwrap().secret_name.as_deref(), Some("h-tls"));
        let dir = vols["directory"].secret.as_ref().unwrap();
        assert_eq!(dir.secret_name.as_deref(), Some("ldap-service"));
        assert_eq!(dir.items.as_ref().unwrap()[0].path, "password");
        // data and logs come from the claim templates, not from pod volumes
        assert!(!vols.contains_key("data") && !vols.contains_key("logs"));
        for m in mounts.values() {
            let claim = ["data", "logs"].contains(&m.0.as_str());
            assert!(claim || vols.contains_key(&m.0), "mount {} has no volume", m.0);
        }
    }

    #[test]
    fn config_changes_change_the_pod_template_hash() {
        let d = fixtures::domain("corp", 500);
        let a = build(&fixtures::home_server("h", "corp"), &ctx(&d)).unwrap();
        let mut d2 = d.clone();
        d2.spec.directory.ldap.as_mut().unwrap().url = "ldaps://other:636".into();
        let b = build(&fixtures::home_server("h", "corp"), &ctx(&d2)).unwrap();
        let hash = |o: &HomeServerObjects| {
            o.stateful_set.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()
                [CONFIG_HASH_ANNOTATION]
                .clone()
        };
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), sha256_hex(a.config_map.data.as_ref().unwrap()["parley.toml"].as_bytes()));
        let again = build(&fixtures::home_server("h", "corp"), &ctx(&d)).unwrap();
        assert_eq!(a, again, "builders are deterministic");
    }

    #[test]
    fn pdb_guards_the_single_pod() {
        let d = fixtures::domain("corp", 500);
        let o = build(&fixtures::home_server("h", "corp"), &ctx(&d)).unwrap();
        let spec = o.pdb.spec.as_ref().unwrap();
        assert_eq!(spec.min_available, Some(IntOrString::Int(1)));
        assert_eq!(spec.unhealthy_pod_eviction_policy.as_deref(), Some("AlwaysAllow"));
        assert_eq!(
            spec.selector.as_ref().unwrap().match_labels,
            o.stateful_set.spec.as_ref().unwrap().selector.match_labels
        );
    }

    #[test]
    fn required_client_tls_closes_5060() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.tls.require_client_tls = true;
        let o = build(&fixtures::home_server("h", "corp"), &ctx(&d)).unwrap();
        let svc_ports: Vec<_> =
            o.service.spec.as_ref().unwrap().ports.as_ref().unwrap().iter().map(|p| p.port).collect();
        assert_eq!(svc_ports, vec![5061, 7443, 8088, 5062, 8080]);
        let c = &pod(&o).containers[0];
        assert!(c.ports.as_ref().unwrap().iter().all(|p| p.container_port != 5060));
    }

    #[test]
    fn domain_image_wins_over_the_default() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.image = Some("registry.example/parley-server:1.2".into());
        let o = build(&fixtures::home_server("h", "corp"), &ctx(&d)).unwrap();
        assert_eq!(pod(&o).containers[0].image.as_deref(), Some("registry.example/parley-server:1.2"));
    }
}
