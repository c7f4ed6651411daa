//! Objects of a FrontEnd: ConfigMap (with the domain's routing table), Deployment of N replicas
//! spread across nodes, client Service, PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, EmptyDirVolumeSource, PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, Service,
    ServicePort, ServiceSpec, Volume, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::config::{self, Advertise, HomeServerRoute, service_host};
use super::credentials::flow_key_secret_name;
use super::*;
use crate::crd::{FrontEnd, ServiceType};
use crate::tiers;

/// Replicas of a FrontEnd that does not say.
pub const DEFAULT_REPLICAS: i32 = tiers::MIN_FRONT_END_REPLICAS as i32;

/// Everything built for one FrontEnd, in the order it is applied.
#[derive(Clone, Debug, PartialEq)]
pub struct FrontEndObjects {
    pub config_map: ConfigMap,
    pub service: Service,
    pub pdb: PodDisruptionBudget,
    pub deployment: Deployment,
}

/// Builds the objects of `fe`; `routes` is the routing table (the domain's Home Servers).
pub fn build(fe: &FrontEnd, ctx: &BuildContext, routes: &[HomeServerRoute]) -> Result<FrontEndObjects, BuildError> {
    let component = Component::FrontEnd;
    let workload = Workload::of(fe, "FrontEnd", component, &fe.spec.domain)?;
    let meta = |obj_name: String| workload.meta(obj_name);
    let (name, labels, selector) = (workload.name.clone(), &workload.labels, &workload.selector);

    let advertise = Advertise {
        public: Some(
            fe.spec.advertise.clone().unwrap_or_else(|| service_host(&name, &workload.namespace, ctx.cluster_domain)),
        ),
        internal: None,
    };
    let config_text = config::render(ctx, &name, config::ServerRole::FrontEnd(routes), &advertise)?;
    let config_hash = sha256_hex(config_text.as_bytes());
    let config_map = ConfigMap {
        metadata: meta(config_map_name(&name)),
        data: Some(BTreeMap::from([("parley.toml".to_string(), config_text)])),
        ..Default::default()
    };

    let plain = !ctx.resolved.require_client_tls;
    let external = fe.spec.service_type != ServiceType::ClusterIP;
    let service = Service {
        metadata: meta(name.clone()),
        spec: Some(ServiceSpec {
            type_: Some(fe.spec.service_type.as_str().into()),
            selector: Some(selector.clone()),
            ports: Some(client_ports(plain, fe.spec.ports.sip, fe.spec.ports.sip_tls)),
            // A client's datagrams and connections keep reaching the proxy that holds its flow.
            session_affinity: Some("ClientIP".into()),
            // Keep clients' source addresses (SIP's received/rport) on node ports and load balancers.
            external_traffic_policy: external.then(|| "Local".into()),
            ..Default::default()
        }),
        ..Default::default()
    };

    let pdb = PodDisruptionBudget {
        metadata: meta(name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector.clone()), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let replicas = fe.spec.replicas.unwrap_or(DEFAULT_REPLICAS);
    let resources = tiers::front_end_resources(fe.spec.resources.as_ref());
    let mut volumes = common_volumes(&name, ctx);
    for scratch in ["data", "logs"] {
        volumes.push(Volume {
            name: scratch.into(),
            empty_dir: Some(EmptyDirVolumeSource { size_limit: Some(quantity::q("1Gi")), ..Default::default() }),
            ..Default::default()
        });
    }
    let mut container = server_container(ctx, component, resources);
    let flow_key = flow_key_secret_name(&fe.spec.domain);
    mount_secret(&mut container, &mut volumes, "flow-key", &flow_key, "key", paths::FLOW_KEY_DIR);
    let mut pod_labels = labels.clone();
    pod_labels.extend(selector.clone());
    let deployment = Deployment {
        metadata: meta(name.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..Default::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
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
                    affinity: Some(Affinity {
                        pod_anti_affinity: Some(PodAntiAffinity {
                            // Preferred, not required: a one-node cluster (kind) still runs every replica.
                            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                                weight: 100,
                                pod_affinity_term: PodAffinityTerm {
                                    label_selector: Some(LabelSelector {
                                        match_labels: Some(selector.clone()),
                                        ..Default::default()
                                    }),
                                    topology_key: "kubernetes.io/hostname".into(),
                                    ..Default::default()
                                },
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };

    Ok(FrontEndObjects { config_map, service, pdb, deployment })
}

/// The client-facing ports: `sip` (UDP and TCP, unless clients must use TLS) and `sip_tls`.
pub fn client_ports(plain: bool, sip: i32, sip_tls: i32) -> Vec<ServicePort> {
    let port = super::service_port;
    let mut ports = Vec::new();
    if plain {
        ports.push(port("sip-udp", sip, SIP_PORT, "UDP"));
        ports.push(port("sip-tcp", sip, SIP_PORT, "TCP"));
    }
    ports.push(port("sip-tls", sip_tls, SIP_TLS_PORT, "TCP"));
    // Browsers: the web client, and SIP over secure WebSocket.
    ports.push(port("sip-wss", SIP_WSS_PORT, SIP_WSS_PORT, "TCP"));
    ports.push(port("web", WEB_PORT, WEB_PORT, "TCP"));
    ports
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::config::home_server_address;
    use crate::build::fixtures;
    use crate::build::fixtures::ctx;
    use crate::build::quantity::q;
    use crate::crd::FrontEndPorts;

    fn routes(n: usize) -> Vec<HomeServerRoute> {
        (1..=n)
            .map(|i| {
                let name = format!("corp-home-{i}");
                HomeServerRoute { address: home_server_address(&name, "ns", "cluster.local"), name }
            })
            .collect()
    }

    #[test]
    fn each_replica_advertises_its_pod_ip_on_the_internal_link() {
        let d = fixtures::domain("corp", 25_000);
        let o = build(&fixtures::front_end("corp-frontend", "corp"), &ctx(&d), &routes(2)).unwrap();
        let env = pod(&o).containers[0].env.clone().unwrap();
        let ip = env.iter().find(|e| e.name == "PARLEY_ADVERTISE_INTERNAL").expect("set");
        assert_eq!(ip.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path, "status.podIP");
        let text = &o.config_map.data.as_ref().unwrap()["parley.toml"];
        let config = parley_config::Config::parse(text, parley_config::Role::FrontEnd).unwrap();
        assert_eq!(config.listen.advertise.as_deref(), Some("corp-frontend.ns.svc.cluster.local"));
        assert_eq!(config.listen.advertise_internal, None, "replicas share the config; the pod IP comes from env");
    }

    /// Every replica reads the domain's flow-token key, so that any of them can reach a client
    /// whose Path names another that went away.
    #[test]
    fn replicas_share_the_domains_flow_token_key() {
        let d = fixtures::domain("corp", 25_000);
        let o = build(&fixtures::front_end("corp-frontend", "corp"), &ctx(&d), &routes(2)).unwrap();
        let text = &o.config_map.data.as_ref().unwrap()["parley.toml"];
        let config = parley_config::Config::parse(text, parley_config::Role::FrontEnd).unwrap();
        let key_file = config.frontend.unwrap().flow_key_file.expect("a shared key");
        let volume = pod(&o).volumes.as_ref().unwrap().iter().find(|v| v.name == "flow-key").expect("flow-key volume");
        assert_eq!(volume.secret.as_ref().unwrap().secret_name.as_deref(), Some("corp-flow-key"));
        let mounts = pod(&o).containers[0].volume_mounts.clone().unwrap();
        let mount = mounts.iter().find(|m| m.name == "flow-key").expect("mounted");
        let item = &volume.secret.as_ref().unwrap().items.as_ref().unwrap()[0];
        assert_eq!(std::path::Path::new(&mount.mount_path).join(&item.path), key_file);
    }

    fn pod(o: &FrontEndObjects) -> &PodSpec {
        o.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn every_object_is_labelled_and_owned() {
        let d = fixtures::domain("corp", 25_000);
        let o = build(&fixtures::front_end("corp-frontend", "corp"), &ctx(&d), &routes(3)).unwrap();
        for m in [&o.config_map.metadata, &o.service.metadata, &o.pdb.metadata, &o.deployment.metadata] {
            let l = m.labels.as_ref().unwrap();
            assert_eq!(l["app.kubernetes.io/component"], "front-end");
            assert_eq!(l["app.kubernetes.io/managed-by"], "parley-operator");
            assert_eq!(l["parley.dev/domain"], "corp");
            let owner = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("FrontEnd", "corp-frontend"));
            assert_eq!(owner.controller, Some(true));
        }
    }

    #[test]
    fn config_map_holds_the_routing_table() {
        let d = fixtures::domain("corp", 25_000);
        let o = build(&fixtures::front_end("fe", "corp"), &ctx(&d), &routes(3)).unwrap();
        let text = &o.config_map.data.as_ref().unwrap()["parley.toml"];
        let v: toml::Value = toml::from_str(text).unwrap();
        let table = v["frontend"]["home_servers"].as_array().unwrap();
        let rows: Vec<_> =
            table.iter().map(|r| (r["name"].as_str().unwrap(), r["address"].as_str().unwrap())).collect();
        assert_eq!(
            rows,
            vec![
                ("corp-home-1", "corp-home-1.ns.svc.cluster.local:5062"),
                ("corp-home-2", "corp-home-2.ns.svc.cluster.local:5062"),
                ("corp-home-3", "corp-home-3.ns.svc.cluster.local:5062"),
            ]
        );
        assert_eq!(v["server_name"].as_str(), Some("fe"));
        let c = &pod(&o).containers[0];
        assert_eq!(c.args.as_ref().unwrap()[2], "frontend");
    }

    #[test]
    fn deployment_replicas_spread_and_roll_without_loss() {
        let d = fixtures::domain("corp", 25_000);
        let mut fe = fixtures::front_end("fe", "corp");
        let o = build(&fe, &ctx(&d), &routes(3)).unwrap();
        let spec = o.deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let ru = spec.strategy.as_ref().unwrap().rolling_update.as_ref().unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        let anti = pod(&o).affinity.as_ref().unwrap().pod_anti_affinity.as_ref().unwrap();
        let term = &anti.preferred_during_scheduling_ignored_during_execution.as_ref().unwrap()[0].pod_affinity_term;
        assert_eq!(term.topology_key, "kubernetes.io/hostname");
        assert_eq!(term.label_selector.as_ref().unwrap().match_labels, spec.selector.match_labels);
        fe.spec.replicas = Some(5);
        let o = build(&fe, &ctx(&d), &routes(3)).unwrap();
        assert_eq!(o.deployment.spec.as_ref().unwrap().replicas, Some(5));
    }

    #[test]
    fn service_exposes_sip_ports_with_the_spec_type() {
        let d = fixtures::domain("corp", 25_000);
        let mut fe = fixtures::front_end("fe", "corp");
        let o = build(&fe, &ctx(&d), &routes(1)).unwrap();
        let spec = o.service.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.external_traffic_policy, None);
        let ports: Vec<_> = spec
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.port, p.protocol.clone().unwrap(), p.target_port.clone().unwrap()))
            .collect();
        assert_eq!(
            ports,
            vec![
                ("sip-udp".into(), 5060, "UDP".into(), IntOrString::Int(5060)),
                ("sip-tcp".into(), 5060, "TCP".into(), IntOrString::Int(5060)),
                ("sip-tls".into(), 5061, "TCP".into(), IntOrString::Int(5061)),
                ("sip-wss".into(), 7443, "TCP".into(), IntOrString::Int(7443)),
                ("web".into(), 8088, "TCP".into(), IntOrString::Int(8088)),
            ]
        );
        fe.spec.service_type = ServiceType::LoadBalancer;
        fe.spec.ports = FrontEndPorts { sip: 15060, sip_tls: 15061 };
        let o = build(&fe, &ctx(&d), &routes(1)).unwrap();
        let spec = o.service.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        let p = &spec.ports.as_ref().unwrap()[2];
        assert_eq!((p.port, p.target_port.clone()), (15061, Some(IntOrString::Int(5061))));
    }

    #[test]
    fn resources_default_and_override() {
        let d = fixtures::domain("corp", 25_000);
        let mut fe = fixtures::front_end("fe", "corp");
        let o = build(&fe, &ctx(&d), &routes(1)).unwrap();
        let r = pod(&o).containers[0].resources.clone().unwrap();
        assert_eq!(r.limits.as_ref().unwrap()["cpu"], q("1"));
        assert_eq!(r.limits.as_ref().unwrap()["memory"], q("512Mi"));
        fe.spec.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
            requests: Some([("cpu".into(), q("250m"))].into()),
            ..Default::default()
        });
        let o = build(&fe, &ctx(&d), &routes(1)).unwrap();
        let r = pod(&o).containers[0].resources.clone().unwrap();
        assert_eq!(r.requests.as_ref().unwrap()["cpu"], q("250m"));
    }

    #[test]
    fn pod_is_locked_down_with_scratch_volumes() {
        let d = fixtures::domain("corp", 25_000);
        let o = build(&fixtures::front_end("fe", "corp"), &ctx(&d), &routes(1)).unwrap();
        let p = pod(&o);
        let sc = p.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(p.security_context.as_ref().unwrap().run_as_non_root, Some(true));
        let vols: Vec<_> = p.volumes.as_ref().unwrap().iter().map(|v| v.name.as_str()).collect();
        for m in p.containers[0].volume_mounts.as_ref().unwrap() {
            assert!(vols.contains(&m.name.as_str()), "mount {} has no volume", m.name);
        }
        let c = &p.containers[0];
        assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readyz"));
        assert_eq!(c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/healthz"));
    }

    #[test]
    fn routing_changes_roll_the_pods() {
        let d = fixtures::domain("corp", 25_000);
        let fe = fixtures::front_end("fe", "corp");
        let a = build(&fe, &ctx(&d), &routes(2)).unwrap();
        let b = build(&fe, &ctx(&d), &routes(3)).unwrap();
        let hash = |o: &FrontEndObjects| {
            o.deployment.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()
                [CONFIG_HASH_ANNOTATION]
                .clone()
        };
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn pdb_allows_one_replica_down() {
        let d = fixtures::domain("corp", 25_000);
        let o = build(&fixtures::front_end("fe", "corp"), &ctx(&d), &routes(1)).unwrap();
        assert_eq!(o.pdb.spec.as_ref().unwrap().max_unavailable, Some(IntOrString::Int(1)));
    }
}
