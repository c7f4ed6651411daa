//! The domain's NetworkPolicies (`spec.networkPolicy`, on by default): what reaches its pods.
//!
//! ```text
//! <domain>-home-servers  SIP (5060 UDP/TCP unless clients must use TLS, 5061, WebSocket 7443)
//!                        and the web client (8088) from anywhere;
//!                        the internal link (5062) from the domain's Front-End pods;
//!                        operations (8080) from the monitoring namespace, the operator's
//!                        namespace (it reads `/status`) and the domain's drain Jobs
//! <domain>-front-ends    the same, the internal link from the domain's Home Server pods
//!                        (operations from monitoring and the operator only)
//!                        (a Home Server sends a request back through the instance that holds
//!                        the client's connection)
//! <domain>-directory     ldaps from the domain's pods (servers, prep Jobs, anything labelled
//!                        parley.dev/domain=<domain>), with a managed directory only
//! ```
//!
//! Ports are named, as the containers name them, so a policy follows the pod spec. Only ingress
//! is restricted: what the pods reach (the directory, DNS, the other servers) is unchanged.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::drain::DRAIN_COMPONENT;
use super::{Component, DOMAIN_LABEL, MANAGED_BY, Owner};
use crate::crd::ResolvedDomain;

const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

fn selector(domain: &str, component: Option<Component>) -> LabelSelector {
    let mut labels = BTreeMap::from([(DOMAIN_LABEL.to_string(), domain.to_string())]);
    if let Some(c) = component {
        labels.insert(COMPONENT_LABEL.to_string(), c.as_str().to_string());
    }
    LabelSelector { match_labels: Some(labels), ..Default::default() }
}

fn port(name: &str, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::String(name.into())),
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

fn policy(owner: &Owner, name: String, pods: LabelSelector, ingress: Vec<NetworkPolicyIngressRule>) -> NetworkPolicy {
    let labels = [
        ("app.kubernetes.io/name", "parley"),
        ("app.kubernetes.io/instance", name.as_str()),
        (COMPONENT_LABEL, "network-policy"),
        ("app.kubernetes.io/part-of", "parley"),
        ("app.kubernetes.io/managed-by", MANAGED_BY),
        (DOMAIN_LABEL, owner.name.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    NetworkPolicy {
        metadata: owner.meta(name, labels),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..Default::default()
        }),
    }
}

/// Who may reach a server role's operations port.
struct OpsPeers<'a> {
    monitoring: Option<&'a str>,
    operator: Option<&'a str>,
    /// The domain's `user drain` Jobs (Home Servers only: they call the admin API).
    drain_jobs: bool,
}

fn namespace(ns: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".into(), ns.to_string())])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A server role's ingress: SIP from anywhere, the internal link from the domain's `peer` pods,
/// operations from `ops`.
fn server_ingress(
    domain: &str,
    require_client_tls: bool,
    peer: Component,
    ops: OpsPeers,
) -> Vec<NetworkPolicyIngressRule> {
    let mut sip = Vec::new();
    if !require_client_tls {
        sip.extend([port("sip-udp", "UDP"), port("sip-tcp", "TCP")]);
    }
    sip.extend([port("sip-tls", "TCP"), port("sip-wss", "TCP"), port("web", "TCP")]);
    let mut rules = vec![
        NetworkPolicyIngressRule { ports: Some(sip), from: None },
        NetworkPolicyIngressRule {
            ports: Some(vec![port("sip-internal", "TCP")]),
            from: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(selector(domain, Some(peer))),
                ..Default::default()
            }]),
        },
    ];
    let mut from: Vec<NetworkPolicyPeer> = ops.monitoring.into_iter().chain(ops.operator).map(namespace).collect();
    if ops.drain_jobs {
        let mut drain = selector(domain, None);
        drain.match_labels.get_or_insert_default().insert(COMPONENT_LABEL.into(), DRAIN_COMPONENT.into());
        from.push(NetworkPolicyPeer { pod_selector: Some(drain), ..Default::default() });
    }
    if !from.is_empty() {
        rules.push(NetworkPolicyIngressRule { ports: Some(vec![port("ops", "TCP")]), from: Some(from) });
    }
    rules
}

/// The NetworkPolicies of the domain `owner`; none when `spec.networkPolicy.enabled` is false.
/// `operator_namespace` is where the operator runs (it reads the Home Servers' `/status`).
pub fn build(owner: &Owner, domain: &ResolvedDomain, operator_namespace: Option<&str>) -> Vec<NetworkPolicy> {
    let Some(settings) = &domain.network_policy else { return Vec::new() };
    let name = owner.name.as_str();
    let monitoring = settings.monitoring_namespace.as_deref();
    let ops = |drain_jobs| OpsPeers { monitoring, operator: operator_namespace, drain_jobs };
    let tls_only = domain.require_client_tls;
    let mut out = vec![
        policy(
            owner,
            format!("{name}-home-servers"),
            selector(name, Some(Component::HomeServer)),
            server_ingress(name, tls_only, Component::FrontEnd, ops(true)),
        ),
        policy(
            owner,
            format!("{name}-front-ends"),
            selector(name, Some(Component::FrontEnd)),
            server_ingress(name, tls_only, Component::HomeServer, ops(false)),
        ),
    ];
    if domain.directory.managed {
        out.push(policy(
            owner,
            super::directory::name(name),
            selector(name, Some(Component::Directory)),
            vec![NetworkPolicyIngressRule {
                ports: Some(vec![port(super::directory::LDAPS_PORT_NAME, "TCP")]),
                from: Some(vec![NetworkPolicyPeer { pod_selector: Some(selector(name, None)), ..Default::default() }]),
            }],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;
    use crate::crd::{DirectorySpec, ManagedDirectory, ResolvedNetworkPolicy};

    fn ports(rule: &NetworkPolicyIngressRule) -> Vec<String> {
        rule.ports
            .iter()
            .flatten()
            .map(|p| match &p.port {
                Some(IntOrString::String(s)) => format!("{s}/{}", p.protocol.as_deref().unwrap_or("")),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn labels_of(peer: &NetworkPolicyPeer) -> BTreeMap<String, String> {
        peer.pod_selector.as_ref().unwrap().match_labels.clone().unwrap()
    }

    #[test]
    fn sip_from_anywhere_the_internal_link_between_the_domains_roles_and_ops_from_monitoring() {
        let mut d = fixtures::domain("corp", 25_000);
        d.spec.directory = DirectorySpec { managed: Some(ManagedDirectory {}), ..Default::default() };
        let owner = Owner::of(&d, "CommunicationsDomain").unwrap();
        let mut resolved = fixtures::resolved(&d);
        resolved.network_policy = Some(ResolvedNetworkPolicy { monitoring_namespace: Some("monitoring".into()) });
        let policies = build(&owner, &resolved, Some("parley-system"));
        let names: Vec<_> = policies.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["corp-home-servers", "corp-front-ends", "corp-directory"]);

        let home = policies[0].spec.as_ref().unwrap();
        let pods = home.pod_selector.as_ref().unwrap().match_labels.clone().unwrap();
        assert_eq!(pods[DOMAIN_LABEL], "corp");
        assert_eq!(pods[COMPONENT_LABEL], "home-server");
        let rules = home.ingress.as_ref().unwrap();
        assert_eq!(ports(&rules[0]), ["sip-udp/UDP", "sip-tcp/TCP", "sip-tls/TCP", "sip-wss/TCP", "web/TCP"]);
        assert!(rules[0].from.is_none(), "SIP from anywhere");
        assert_eq!(ports(&rules[1]), ["sip-internal/TCP"]);
        let from = labels_of(&rules[1].from.as_ref().unwrap()[0]);
        assert_eq!((from[DOMAIN_LABEL].as_str(), from[COMPONENT_LABEL].as_str()), ("corp", "front-end"));
        assert_eq!(ports(&rules[2]), ["ops/TCP"]);
        let ops = rules[2].from.as_ref().unwrap();
        let ns = |i: usize| ops[i].namespace_selector.as_ref().unwrap().match_labels.clone().unwrap();
        assert_eq!(ns(0)["kubernetes.io/metadata.name"], "monitoring");
        assert_eq!(ns(1)["kubernetes.io/metadata.name"], "parley-system", "the operator reads /status");
        let drain = labels_of(&ops[2]);
        assert_eq!((drain[DOMAIN_LABEL].as_str(), drain[COMPONENT_LABEL].as_str()), ("corp", DRAIN_COMPONENT));

        let front = policies[1].spec.as_ref().unwrap().ingress.as_ref().unwrap();
        assert_eq!(labels_of(&front[1].from.as_ref().unwrap()[0])[COMPONENT_LABEL], "home-server");
        assert_eq!(front[2].from.as_ref().unwrap().len(), 2, "no drain Job calls a Front-End");

        let directory = policies[2].spec.as_ref().unwrap();
        let rule = &directory.ingress.as_ref().unwrap()[0];
        assert_eq!(ports(rule), ["ldaps/TCP"]);
        let from = labels_of(&rule.from.as_ref().unwrap()[0]);
        assert_eq!(from.len(), 1, "any pod of the domain: {from:?}");
        assert_eq!(from[DOMAIN_LABEL], "corp");
        for p in &policies {
            assert_eq!(p.metadata.owner_references.as_ref().unwrap()[0].name, "corp");
            assert_eq!(p.spec.as_ref().unwrap().policy_types.as_deref(), Some(&["Ingress".to_string()][..]));
        }
    }

    #[test]
    fn tls_only_domains_admit_no_plain_sip_and_without_monitoring_ops_is_for_drain_jobs_only() {
        let d = fixtures::domain("corp", 500);
        let owner = Owner::of(&d, "CommunicationsDomain").unwrap();
        let mut resolved = fixtures::resolved(&d);
        resolved.require_client_tls = true;
        let policies = build(&owner, &resolved, None);
        assert_eq!(policies.len(), 2, "no directory policy without a managed directory");
        let rules = policies[0].spec.as_ref().unwrap().ingress.as_ref().unwrap();
        assert_eq!(ports(&rules[0]), ["sip-tls/TCP", "sip-wss/TCP", "web/TCP"]);
        assert_eq!(rules[2].from.as_ref().unwrap().len(), 1, "ops from the drain Jobs only: {rules:?}");
        let front = policies[1].spec.as_ref().unwrap().ingress.as_ref().unwrap();
        assert_eq!(front.len(), 2, "no ops rule: {front:?}");
        resolved.network_policy = None;
        assert!(build(&owner, &resolved, None).is_empty());
    }

    #[test]
    fn the_named_ports_are_the_containers() {
        let mut d = fixtures::domain("corp", 500);
        d.spec.directory = DirectorySpec { managed: Some(ManagedDirectory {}), ..Default::default() };
        let mut names: Vec<String> = crate::build::container_ports(true).into_iter().filter_map(|p| p.name).collect();
        names.push(crate::build::directory::LDAPS_PORT_NAME.into());
        let owner = Owner::of(&d, "CommunicationsDomain").unwrap();
        for p in build(&owner, &fixtures::resolved(&d), Some("op")) {
            for rule in p.spec.unwrap().ingress.unwrap() {
                for port in ports(&rule) {
                    let name = port.split('/').next().unwrap().to_string();
                    assert!(names.contains(&name), "{name} is not a container port: {names:?}");
                }
            }
        }
    }
}
