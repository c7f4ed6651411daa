//! The HomeServer and FrontEnd resources a CommunicationsDomain with `topology: auto` calls for.

use std::collections::BTreeMap;

use kube::api::ObjectMeta;

use super::{BuildError, DOMAIN_LABEL, MANAGED_BY, name_ns, owner_ref};
use crate::crd::{
    ClientService, CommunicationsDomain, FrontEnd, FrontEndPorts, FrontEndSpec, HomeServer, HomeServerSpec,
    ServiceType, StorageOverrides, WaitingRemoval,
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

/// What the domain controller knows of an owned Home Server, from its status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Users homed on it, as its server last counted them in the directory (`None`: not known).
    pub users: Option<u64>,
    /// It drains (`spec.drain`) and its server, counting since, found no user homed there: it
    /// stays empty (the directory gives it no capacity, so placement homes no one there).
    pub drained: bool,
}

/// What the domain's children should be.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainPlan {
    /// HomeServers to apply, in order: the ones the tier calls for, then the one being drained.
    pub home_servers: Vec<HomeServer>,
    /// Owned HomeServers the tier no longer calls for, still holding users (or not known to be
    /// empty): each says what it waits for.
    pub waiting_removal: Vec<WaitingRemoval>,
    /// Owned HomeServers no longer called for and drained: safe to delete.
    pub delete_home_servers: Vec<String>,
    /// Why the scale-down cannot go on (the others lack capacity for a surplus Home Server's
    /// users); nothing is drained or deleted meanwhile.
    pub blocked: Option<String>,
    /// The capacity to register in the directory for each Home Server the domain keeps running
    /// (0 for surplus ones: placement must not home new users there).
    pub capacities: BTreeMap<String, u32>,
    /// The FrontEnd to apply, or `None` when the domain needs none (an owned one is then deleted).
    pub front_end: Option<FrontEnd>,
}

/// The number at the end of an operator-owned Home Server's name (`corp-home-12` -> 12).
fn index_of(name: &str) -> u32 {
    name.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Plans the children of an auto-topology domain from what it owns now (`owned`, by name).
///
/// Scale-down moves users before it removes anything: the surplus Home Servers are drained one at
/// a time, highest index first, and each is deleted only once drained. A drain starts only when
/// the Home Servers that stay have free capacity for its users; otherwise `blocked` says so.
pub fn plan(
    domain: &CommunicationsDomain,
    sizing: &Sizing,
    owned: &BTreeMap<String, Occupancy>,
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
    let capacity = u32::try_from(capacity).unwrap_or(u32::MAX);
    let desired: Vec<String> = (1..=count).map(|n| home_server_name(&name, n)).collect();
    let mut surplus: Vec<&String> = owned.keys().filter(|o| !desired.contains(o)).collect();
    surplus.sort_by_key(|hs| std::cmp::Reverse(index_of(hs)));
    let (drained, surplus): (Vec<&String>, Vec<&String>) = surplus.into_iter().partition(|hs| owned[*hs].drained);

    // Cross-home traffic goes through a Front-End, so one stays while more than one Home Server
    // runs. Without one, clients connect to the Home Server: it gets the entry point's Service.
    let has_front_end = sizing.has_front_end() || desired.len() + surplus.len() > 1;
    let template = domain.spec.front_end.clone().unwrap_or_default();
    let hs_template = domain.spec.home_server.clone().unwrap_or_default();
    let home_service = ClientService {
        type_: if has_front_end { ServiceType::ClusterIP } else { template.service_type.unwrap_or_default() },
        annotations: Default::default(),
    };
    let home_server = |hs: &String, drain: bool| HomeServer {
        metadata: meta(hs.clone(), "home-server"),
        spec: HomeServerSpec {
            domain: name.clone(),
            capacity: Some(capacity),
            resources: hs_template.resources.clone(),
            storage: (hs_template.delete_volumes_on_remove || hs_template.storage_sync.is_some()).then(|| {
                StorageOverrides {
                    delete_on_remove: hs_template.delete_volumes_on_remove,
                    sync: hs_template.storage_sync,
                    ..Default::default()
                }
            }),
            service: home_service.clone(),
            drain,
            advertise: None,
        },
        status: None,
    };
    let mut home_servers: Vec<HomeServer> = desired.iter().map(|hs| home_server(hs, false)).collect();
    let mut capacities: BTreeMap<String, u32> = desired.iter().map(|hs| (hs.clone(), capacity)).collect();
    // (Drained ones too, until they are gone: their registration does not change meanwhile.)
    capacities.extend(surplus.iter().chain(&drained).map(|hs| (hs.to_string(), 0)));

    // The first surplus Home Server drains when the others can take its users.
    let mut waiting_removal = Vec::new();
    let mut blocked = None;
    let reason = |hs: &str, what: String| WaitingRemoval {
        name: hs.to_string(),
        reason: format!("{users} users need {count} Home Server(s) in the {tier} tier: {what}", tier = sizing.tier),
    };
    if let Some(first) = surplus.first() {
        let free: u64 = desired
            .iter()
            .map(|hs| u64::from(capacity).saturating_sub(owned.get(hs).and_then(|o| o.users).unwrap_or(0)))
            .sum();
        match owned[*first].users {
            None => {
                blocked = Some(format!(
                    "HomeServer {first} is no longer needed, but how many users it holds is not known yet (its \
                     server has not reported); it is drained once it does"
                ));
                waiting_removal.push(reason(first, format!("waiting for {first} to report its users")));
            }
            Some(n) if n > free => {
                blocked = Some(format!(
                    "HomeServer {first} holds {n} users but the Home Servers that stay ({}) have room for only \
                     {free} more: raise spec.users or spec.homeServers, or move users elsewhere; nothing is \
                     drained or deleted",
                    desired.join(", ")
                ));
                waiting_removal.push(reason(first, format!("{n} users to move, {free} free elsewhere")));
            }
            Some(n) => {
                home_servers.push(home_server(first, true));
                waiting_removal.push(reason(first, format!("draining {first}: {n} users still homed there")));
            }
        }
        for hs in &surplus[1..] {
            waiting_removal.push(reason(hs, format!("{hs} drains after {first}")));
        }
    }

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
        delete_home_servers: drained.into_iter().cloned().collect(),
        blocked,
        capacities,
        front_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;
    use crate::crd::{FrontEndTemplate, HomeServerTemplate, ServiceType, StorageSync};
    use crate::tiers::resolve;
    use k8s_openapi::api::core::v1::ResourceRequirements;

    fn names(p: &DomainPlan) -> Vec<String> {
        p.home_servers.iter().map(|h| h.metadata.name.clone().unwrap()).collect()
    }

    #[test]
    fn small_and_standard_domains_get_one_home_server_and_no_front_end() {
        for users in [500, 1_000, 1_001, 5_000, 10_000] {
            let d = fixtures::domain("corp", users);
            let p = plan(&d, &resolve(users.into()), &BTreeMap::new()).unwrap();
            assert_eq!(names(&p), vec!["corp-home-1"]);
            assert_eq!(p.home_servers[0].spec.capacity, Some(users));
            assert!(p.front_end.is_none(), "{users}");
        }
    }

    #[test]
    fn enterprise_domains_get_a_home_server_per_ten_thousand_and_a_front_end() {
        let d = fixtures::domain("corp", 25_000);
        let p = plan(&d, &resolve(25_000), &BTreeMap::new()).unwrap();
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
        let p = plan(&d, &resolve(25_000), &BTreeMap::new()).unwrap();
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

    fn occupied(users: &[Option<u64>]) -> BTreeMap<String, Occupancy> {
        users
            .iter()
            .enumerate()
            .map(|(i, u)| (home_server_name("corp", i as u32 + 1), Occupancy { users: *u, drained: false }))
            .collect()
    }

    #[test]
    fn scale_down_drains_the_highest_surplus_home_server_first_and_deletes_nothing_yet() {
        let d = fixtures::domain("corp", 5_000);
        let p = plan(&d, &resolve(5_000), &occupied(&[Some(10), Some(20), Some(30)])).unwrap();
        assert_eq!(names(&p), vec!["corp-home-1", "corp-home-3"]);
        assert!(!p.home_servers[0].spec.drain);
        assert!(p.home_servers[1].spec.drain, "corp-home-3 drains");
        let waiting: Vec<_> = p.waiting_removal.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(waiting, vec!["corp-home-3", "corp-home-2"]);
        assert!(p.waiting_removal[0].reason.contains("draining corp-home-3: 30 users"), "{:?}", p.waiting_removal);
        assert!(p.waiting_removal[1].reason.contains("drains after corp-home-3"));
        assert!(p.delete_home_servers.is_empty() && p.blocked.is_none());
        assert_eq!(p.capacities["corp-home-1"], 5_000);
        assert_eq!((p.capacities["corp-home-2"], p.capacities["corp-home-3"]), (0, 0), "no new users on surplus ones");
        assert!(p.front_end.is_some(), "the Front-End stays while several Home Servers run");
    }

    #[test]
    fn drained_home_servers_are_deleted_and_the_front_end_goes_with_the_last() {
        let d = fixtures::domain("corp", 5_000);
        let mut owned = occupied(&[Some(60), Some(20), Some(0)]);
        owned.get_mut("corp-home-3").unwrap().drained = true;
        let p = plan(&d, &resolve(5_000), &owned).unwrap();
        assert_eq!(p.delete_home_servers, vec!["corp-home-3"]);
        assert_eq!(names(&p), vec!["corp-home-1", "corp-home-2"], "then corp-home-2 drains");
        assert!(p.home_servers[1].spec.drain);
        assert!(p.front_end.is_some());
        owned.get_mut("corp-home-2").unwrap().drained = true;
        owned.get_mut("corp-home-2").unwrap().users = Some(0);
        let p = plan(&d, &resolve(5_000), &owned).unwrap();
        assert_eq!(p.delete_home_servers, vec!["corp-home-3", "corp-home-2"]);
        assert!(p.front_end.is_none() && p.waiting_removal.is_empty());
    }

    #[test]
    fn a_drain_that_cannot_fit_blocks_and_deletes_nothing() {
        let d = fixtures::domain("corp", 5_000);
        let p = plan(&d, &resolve(5_000), &occupied(&[Some(4_000), Some(3_000)])).unwrap();
        assert_eq!(names(&p), vec!["corp-home-1"], "nothing drains");
        let why = p.blocked.unwrap();
        assert!(why.contains("corp-home-2 holds 3000 users") && why.contains("room for only 1000"), "{why}");
        assert!(p.delete_home_servers.is_empty());
        // A server that has not reported is not drained blind either.
        let p = plan(&d, &resolve(5_000), &occupied(&[Some(1), None])).unwrap();
        assert!(p.blocked.as_ref().unwrap().contains("not known yet"));
        assert_eq!(names(&p), vec!["corp-home-1"]);
    }

    #[test]
    fn surplus_home_servers_drain_in_index_order_not_name_order() {
        let mut d = fixtures::domain("corp", 80_000);
        d.spec.home_servers = Some(8);
        let owned = occupied(&[Some(1); 10]);
        let p = plan(&d, &resolve(80_000), &owned).unwrap();
        assert_eq!(p.home_servers.last().unwrap().metadata.name.as_deref(), Some("corp-home-10"));
        assert_eq!(p.waiting_removal[1].name, "corp-home-9");
    }

    #[test]
    fn volumes_go_with_a_removed_home_server_only_when_asked() {
        let mut d = fixtures::domain("corp", 500);
        assert!(plan(&d, &resolve(500), &BTreeMap::new()).unwrap().home_servers[0].spec.storage.is_none());
        d.spec.home_server = Some(HomeServerTemplate { delete_volumes_on_remove: true, ..Default::default() });
        let p = plan(&d, &resolve(500), &BTreeMap::new()).unwrap();
        assert!(p.home_servers[0].spec.storage.as_ref().unwrap().delete_on_remove);
    }

    #[test]
    fn the_domain_s_storage_sync_reaches_every_home_server_it_owns() {
        let mut d = fixtures::domain("corp", 25_000);
        d.spec.home_server =
            Some(HomeServerTemplate { storage_sync: Some(StorageSync::Checkpoint), ..Default::default() });
        let p = plan(&d, &resolve(25_000), &BTreeMap::new()).unwrap();
        assert!(p.home_servers.len() > 1);
        for hs in &p.home_servers {
            let storage = hs.spec.storage.as_ref().expect("storage overrides");
            assert_eq!((storage.sync, storage.delete_on_remove), (Some(StorageSync::Checkpoint), false));
        }
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
        d.spec.home_server = Some(HomeServerTemplate { resources: Some(small.clone()), ..Default::default() });
        let p = plan(&d, &resolve(5_000), &BTreeMap::new()).unwrap();
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
        let _ = plan(&d, &resolve(25_000), &BTreeMap::new()).unwrap();
        assert_eq!(d, before);
    }
}
