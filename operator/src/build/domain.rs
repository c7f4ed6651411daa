//! The HomeServer and FrontEnd resources a CommunicationsDomain with `topology: auto` calls for.

use std::collections::BTreeMap;

use kube::api::ObjectMeta;

use super::{BuildError, DOMAIN_LABEL, MANAGED_BY, name_ns, owner_ref};
use crate::crd::{
    ClientService, CommunicationsDomain, FrontEnd, FrontEndPorts, FrontEndSpec, HomeServer, HomeServerSpec,
    ServiceType, WaitingRemoval,
};
use crate::tiers::{MIN_FRONT_END_REPLICAS, Sizing, USERS_PER_HOME_SERVER};

/// Name of the `n`th (from 1) operator-owned Home Server of `domain`.
pub fn home_server_name(domain: &str, n: u32) -> String {
    format!("{domain}-home-{n}")
}

/// Name of the operator-owned Front-End of `domain`.
pub fn front_end_name(domain: &str) -> String {
    format!("{domain}-frontend")
}

/// What the domain's children should be.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainPlan {
    /// HomeServers to apply, in order.
    pub home_servers: Vec<HomeServer>,
    /// Owned HomeServers the tier no longer calls for but that may still have users homed on them.
    pub waiting_removal: Vec<WaitingRemoval>,
    /// Owned HomeServers no longer called for and known to be empty: safe to delete.
    pub delete_home_servers: Vec<String>,
    /// The FrontEnd to apply, or `None` when the domain needs none (an owned one is then deleted).
    pub front_end: Option<FrontEnd>,
}

/// Plans the children of an auto-topology domain. `owned` names the HomeServers the domain owns
/// now; `may_have_users` says whether one may still have users homed on it (until the directory
/// can tell, the controller answers yes for every existing Home Server).
pub fn plan(
    domain: &CommunicationsDomain,
    sizing: &Sizing,
    owned: &[String],
    may_have_users: impl Fn(&str) -> bool,
) -> Result<DomainPlan, BuildError> {
    let (name, ns) = name_ns(domain, "CommunicationsDomain")?;
    let owner = owner_ref(domain, "CommunicationsDomain")?;
    let meta = |child: String, component: &str| ObjectMeta {
        name: Some(child),
        namespace: Some(ns.clone()),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
            ("app.kubernetes.io/component".to_string(), component.to_string()),
            (DOMAIN_LABEL.to_string(), name.clone()),
        ])),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };

    let count = domain.spec.home_servers.unwrap_or(sizing.home_servers).max(1);
    let users = u64::from(domain.spec.users);
    let capacity = users.div_ceil(u64::from(count)).clamp(1, USERS_PER_HOME_SERVER);
    let desired: Vec<String> = (1..=count).map(|n| home_server_name(&name, n)).collect();
    // Cross-home traffic goes through a Front-End, so one stays while more than one Home Server
    // runs. Without one, clients connect to the Home Server: it gets the entry point's Service.
    let kept_count = owned.iter().filter(|o| !desired.contains(o) && may_have_users(o)).count();
    let has_front_end = sizing.has_front_end() || desired.len() + kept_count > 1;
    let template = domain.spec.front_end.clone().unwrap_or_default();
    let home_service = ClientService {
        type_: if has_front_end { ServiceType::ClusterIP } else { template.service_type.unwrap_or_default() },
        annotations: Default::default(),
    };
    let home_servers = desired
        .iter()
        .map(|hs| HomeServer {
            metadata: meta(hs.clone(), "home-server"),
            spec: HomeServerSpec {
                domain: name.clone(),
                capacity: Some(u32::try_from(capacity).unwrap_or(u32::MAX)),
                resources: domain.spec.home_server.as_ref().and_then(|t| t.resources.clone()),
                storage: None,
                service: home_service.clone(),
                advertise: None,
            },
            status: None,
        })
        .collect();

    let mut extra: Vec<&String> = owned.iter().filter(|o| !desired.contains(o)).collect();
    extra.sort();
    let (kept, empty): (Vec<&String>, Vec<&String>) = extra.into_iter().partition(|hs| may_have_users(hs));
    let waiting_removal: Vec<WaitingRemoval> = kept
        .into_iter()
        .map(|hs| WaitingRemoval {
            name: hs.clone(),
            reason: format!(
                "{users} users need {count} Home Server(s) in the {tier} tier, but users may still be homed on {hs}; \
                 move them to another Home Server (parley-server user move) and delete HomeServer {hs} to finish \
                 scaling down",
                tier = sizing.tier,
            ),
        })
        .collect();

    let front_end = has_front_end.then(|| FrontEnd {
        metadata: meta(front_end_name(&name), "front-end"),
        spec: FrontEndSpec {
            domain: name.clone(),
            replicas: Some(template.replicas.unwrap_or(MIN_FRONT_END_REPLICAS.max(sizing.front_end_replicas) as i32)),
            service_type: template.service_type.unwrap_or_default(),
            ports: FrontEndPorts::default(),
            resources: template.resources.clone(),
            advertise: None,
        },
        status: None,
    });

    Ok(DomainPlan {
        home_servers,
        waiting_removal,
        delete_home_servers: empty.into_iter().cloned().collect(),
        front_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;
    use crate::crd::{FrontEndTemplate, HomeServerTemplate, ServiceType};
    use crate::tiers::resolve;
    use k8s_openapi::api::core::v1::ResourceRequirements;

    fn names(p: &DomainPlan) -> Vec<String> {
        p.home_servers.iter().map(|h| h.metadata.name.clone().unwrap()).collect()
    }

    #[test]
    fn small_and_standard_domains_get_one_home_server_and_no_front_end() {
        for users in [500, 1_000, 1_001, 5_000, 10_000] {
            let d = fixtures::domain("corp", users);
            let p = plan(&d, &resolve(users.into()), &[], |_| true).unwrap();
            assert_eq!(names(&p), vec!["corp-home-1"]);
            assert_eq!(p.home_servers[0].spec.capacity, Some(users));
            assert!(p.front_end.is_none(), "{users}");
        }
    }

    #[test]
    fn enterprise_domains_get_a_home_server_per_ten_thousand_and_a_front_end() {
        let d = fixtures::domain("corp", 25_000);
        let p = plan(&d, &resolve(25_000), &[], |_| true).unwrap();
        assert_eq!(names(&p), vec!["corp-home-1", "corp-home-2", "corp-home-3"]);
        assert!(p.home_servers.iter().all(|h| h.spec.capacity == Some(8_334) && h.spec.domain == "corp"));
        let fe = p.front_end.unwrap();
        assert_eq!(fe.metadata.name.as_deref(), Some("corp-frontend"));
        assert_eq!(fe.spec.replicas, Some(2));
        assert_eq!(fe.spec.domain, "corp");
    }

    #[test]
    fn children_are_owned_by_the_domain() {
        let d = fixtures::domain("corp", 25_000);
        let p = plan(&d, &resolve(25_000), &[], |_| true).unwrap();
        let fe = p.front_end.clone().unwrap();
        for m in p.home_servers.iter().map(|h| &h.metadata).chain([&fe.metadata]) {
            let o = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (o.kind.as_str(), o.name.as_str(), o.uid.as_str()),
                ("CommunicationsDomain", "corp", "uid-corp")
            );
            assert_eq!(o.controller, Some(true));
            assert_eq!(m.labels.as_ref().unwrap()[DOMAIN_LABEL], "corp");
            assert_eq!(m.namespace.as_deref(), Some("ns"));
        }
    }

    #[test]
    fn scale_down_keeps_home_servers_that_may_have_users_and_says_why() {
        let d = fixtures::domain("corp", 5_000);
        let owned: Vec<String> = (1..=3).map(|n| home_server_name("corp", n)).collect();
        let p = plan(&d, &resolve(5_000), &owned, |_| true).unwrap();
        assert_eq!(names(&p), vec!["corp-home-1"]);
        let waiting: Vec<_> = p.waiting_removal.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(waiting, vec!["corp-home-2", "corp-home-3"]);
        assert!(p.waiting_removal[0].reason.contains("users may still be homed on corp-home-2"));
        assert!(p.delete_home_servers.is_empty());
        assert!(p.front_end.is_some(), "the Front-End stays while several Home Servers run");
    }

    #[test]
    fn empty_home_servers_are_deleted_on_scale_down() {
        let d = fixtures::domain("corp", 5_000);
        let owned: Vec<String> = (1..=3).map(|n| home_server_name("corp", n)).collect();
        let p = plan(&d, &resolve(5_000), &owned, |hs| hs == "corp-home-2").unwrap();
        assert_eq!(p.delete_home_servers, vec!["corp-home-3"]);
        assert_eq!(p.waiting_removal.len(), 1);
        let p = plan(&d, &resolve(5_000), &owned, |_| false).unwrap();
        assert_eq!(p.delete_home_servers.len(), 2);
        assert!(p.front_end.is_none());
    }

    #[test]
    fn explicit_counts_and_front_end_settings_win() {
        let mut d = fixtures::domain("corp", 5_000);
        d.spec.home_servers = Some(2);
        let small = ResourceRequirements {
            requests: Some([("cpu".to_string(), crate::build::quantity::q("200m"))].into()),
            ..Default::default()
        };
        d.spec.front_end = Some(FrontEndTemplate {
            replicas: Some(4),
            service_type: Some(ServiceType::LoadBalancer),
            resources: Some(small.clone()),
        });
        d.spec.home_server = Some(HomeServerTemplate { resources: Some(small.clone()) });
        let p = plan(&d, &resolve(5_000), &[], |_| true).unwrap();
        assert_eq!(names(&p), vec!["corp-home-1", "corp-home-2"]);
        assert_eq!(p.home_servers[0].spec.capacity, Some(2_500));
        assert!(p.home_servers.iter().all(|h| h.spec.resources.as_ref() == Some(&small)));
        let fe = p.front_end.unwrap();
        assert_eq!(fe.spec.replicas, Some(4));
        assert_eq!(fe.spec.service_type, ServiceType::LoadBalancer);
        assert_eq!(fe.spec.resources, Some(small));
    }

    #[test]
    fn user_count_is_never_rewritten() {
        let d = fixtures::domain("corp", 25_000);
        let before = d.clone();
        let _ = plan(&d, &resolve(25_000), &[], |_| true).unwrap();
        assert_eq!(d, before);
    }
}
