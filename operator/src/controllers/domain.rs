//! CommunicationsDomain -> its certificates, its directory-prep Jobs, then the HomeServer and
//! FrontEnd resources its tier calls for (topology `auto`), or a report on the ones the
//! administrator wrote (`manual`).
//!
//! Order, as the seed requires: certificates and directory preparation first; no Home Server or
//! Front-End is created or changed before `DomainPrepared` is True.

mod certificates;
mod directory;
mod prep;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};

use super::apply::{ApplySet, delete, patch_status};
use super::conditions::{Want, is_true, merge};
use super::{Context, RESYNC, Result, namespace_of, report_transitions, unless_gone, validate};
use crate::build;
use crate::crd::condition::{
    CERTIFICATES_READY, DIRECTORY_READY, DOMAIN_PREPARED, ENTERPRISE_PREPARED, PAUSED, READY, SCALE_DOWN_BLOCKED,
    SCHEMA_PREPARED,
};
use crate::crd::{CommunicationsDomain, CommunicationsDomainStatus, FrontEnd, HomeServer, Topology};
use crate::tiers;

/// What the domain knows of each Home Server it owns: its users as its server last counted them
/// and whether a drain emptied it (a count taken while draining said none is left).
fn occupancy(home_servers: &[HomeServer], uid: &str) -> BTreeMap<String, build::domain::Occupancy> {
    home_servers
        .iter()
        .filter(|h| owned_by(*h, uid))
        .map(|h| {
            let status = h.status.clone().unwrap_or_default();
            let drained = h.spec.drain && status.users_remaining == Some(0);
            (h.name_any(), build::domain::Occupancy { users: status.users, drained })
        })
        .collect()
}

/// The kind of object a domain may name in its spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reference {
    Secret,
    ConfigMap,
}

/// The names of the Secrets and ConfigMaps `d`'s spec names (directory credentials, CA bundle,
/// users file): a change of one of them may change what the domain does.
pub fn referenced(d: &CommunicationsDomain, kind: Reference) -> Vec<String> {
    let dir = &d.spec.directory;
    let ldap = dir.ldap.as_ref();
    let ca = ldap.and_then(|l| l.ca_bundle.as_ref());
    match kind {
        Reference::Secret => ldap
            .and_then(|l| l.admin_secret.as_ref().map(|a| a.name.clone()))
            .into_iter()
            .chain(ldap.and_then(|l| l.explicit_service_account_secret()).map(|s| s.name.clone()))
            .chain(ca.and_then(|c| c.secret.clone()))
            .collect(),
        Reference::ConfigMap => dir
            .file
            .as_ref()
            .map(|f| f.config_map.clone())
            .into_iter()
            .chain(ca.and_then(|c| c.config_map.clone()))
            .collect(),
    }
}

/// The domains a change of `obj` concerns: the one that controls it, and those whose spec names it.
pub fn domains_of<K: Resource>(
    store: &kube::runtime::reflector::Store<CommunicationsDomain>,
    obj: &K,
    kind: Reference,
) -> Vec<kube::runtime::reflector::ObjectRef<CommunicationsDomain>> {
    use kube::runtime::reflector::ObjectRef;
    let ns = obj.meta().namespace.clone();
    let name = obj.meta().name.clone().unwrap_or_default();
    let mut refs: Vec<ObjectRef<CommunicationsDomain>> = obj
        .owner_references()
        .iter()
        .filter(|o| o.controller == Some(true) && o.kind == "CommunicationsDomain")
        .map(|o| {
            let r = ObjectRef::new(&o.name);
            match &ns {
                Some(ns) => r.within(ns),
                None => r,
            }
        })
        .collect();
    refs.extend(
        store
            .state()
            .iter()
            .filter(|d| d.namespace() == ns && referenced(d, kind).contains(&name))
            .map(|d| ObjectRef::from(d.as_ref())),
    );
    refs
}

fn owned_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == uid)
}

pub async fn reconcile(d: Arc<CommunicationsDomain>, ctx: Arc<Context>) -> Result<Action> {
    let ns = namespace_of(d.as_ref())?;
    let name = d.name_any();
    let client = ctx.client.clone();
    // The watch cache can lag behind a deletion (a child's deletion may start this reconcile
    // first): read the domain itself so that nothing is recreated for a domain that is going.
    let d = match Api::<CommunicationsDomain>::namespaced(client.clone(), &ns).get_opt(&name).await? {
        Some(d) if d.metadata.deletion_timestamp.is_none() => Arc::new(d),
        // Owner references take the HomeServers and FrontEnd (and so their workloads) with it.
        _ => {
            ctx.metrics.set_certificate_expiries(&ns, &name, &[]);
            return Ok(Action::await_change());
        }
    };
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let hs_api: Api<HomeServer> = Api::namespaced(client.clone(), &ns);
    let fe_api: Api<FrontEnd> = Api::namespaced(client.clone(), &ns);

    // Dereference: the domain's Home Servers and Front-Ends as they are now.
    let mut home_servers: Vec<HomeServer> = hs_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|h| h.spec.domain == name && h.metadata.deletion_timestamp.is_none())
        .collect();
    home_servers.sort_by_key(|h| h.name_any());
    let mut front_ends: Vec<FrontEnd> = fe_api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|f| f.spec.domain == name && f.metadata.deletion_timestamp.is_none())
        .collect();
    front_ends.sort_by_key(|f| f.name_any());

    let sizing = tiers::resolve(d.spec.users.into());
    let problems = validate::domain(&d);
    let old = d.status.clone().unwrap_or_default();
    let mut status = CommunicationsDomainStatus {
        observed_generation: d.metadata.generation,
        tier: Some(sizing.tier),
        home_servers: home_servers.iter().map(|h| h.name_any()).collect(),
        front_end: front_ends.first().map(|f| f.name_any()),
        home_server_count: None,
        phase: None,
        rollout: None,
        waiting_removal: old.waiting_removal.clone(),
        conditions: Vec::new(),
        prepared_steps: old.prepared_steps.clone(),
        // Paused: the last resolution stands; invalid: there is none (the servers wait).
        resolved: if problems.is_empty() { old.resolved.clone() } else { None },
    };
    let mut wants = Vec::new();
    let now = Timestamp::now();
    let mut requeue = RESYNC;
    // Set when the directory is not prepared yet: what Ready waits for.
    let mut preparing: Option<String> = None;
    // Why a scale-down cannot go on.
    let mut scale_down_blocked: Option<String> = None;

    if d.spec.paused {
        wants.push(Want::new(PAUSED, true, "Paused", "spec.paused is true: the operator reads but changes nothing"));
    } else {
        wants.push(Want::new(PAUSED, false, "NotPaused", ""));
    }
    if !d.spec.paused && problems.is_empty() {
        // Apply: every object of the domain's goes through this set, which then prunes the rest.
        let mut set = ApplySet::domain(&ctx, d.as_ref())?;
        // Build: the plan names the servers before they exist, so certificates and
        // `prep enterprise` can cover them first.
        let plan = match d.spec.topology {
            Topology::Auto => Some(build::domain::plan(&d, &sizing, &occupancy(&home_servers, &uid))?),
            Topology::Manual => None,
        };
        let (hs_names, fe_names) = server_names(plan.as_ref(), &home_servers, &front_ends);
        let capacities: BTreeMap<String, u32> = match &plan {
            Some(p) => p.capacities.clone(),
            None => home_servers.iter().filter_map(|h| Some((h.name_any(), h.spec.capacity?))).collect(),
        };
        // An advertised host set on a live HomeServer or FrontEnd joins its certificate's names.
        let advertised: BTreeMap<String, String> = (home_servers.iter().map(|h| (h.name_any(), &h.spec.advertise)))
            .chain(front_ends.iter().map(|f| (f.name_any(), &f.spec.advertise)))
            .filter_map(|(name, host)| Some((name, host.clone()?)))
            .collect();
        // Resolve: the one value every builder below takes (and status.resolved, the servers').
        let resolved = build::resolve::resolve(
            &d,
            &build::resolve::ResolveInput {
                sizing: &sizing,
                default_image: &ctx.settings.default_image,
                cluster_domain: &ctx.settings.cluster_domain,
                home_servers: &hs_names,
                capacities: &capacities,
                front_ends: &fe_names,
                advertised: &advertised,
            },
        )?;
        let owner = build::Owner::of(d.as_ref(), "CommunicationsDomain")?;
        for policy in build::network::build(&owner, &resolved, ctx.settings.operator_namespace.as_deref()) {
            set.apply(&policy).await?;
        }
        // The servers' operations API token and the Front-Ends' flow-token key: made once and
        // kept (the servers read them at start).
        let token = build::credentials::api_token_secret_name(&name);
        set.generate_once(&token, |value| build::credentials::api_token_secret(&owner, value)).await?;
        let flow_key = build::credentials::flow_key_secret_name(&name);
        set.generate_once(&flow_key, |value| build::credentials::flow_key_secret(&owner, value)).await?;

        let certs = certificates::reconcile(&ctx, &mut set, &d, &owner, &resolved, now).await?;
        ctx.metrics.set_certificate_expiries(&ns, &name, &certs.expiries);
        let complete = certs.complete;
        wants.push(certs.want);
        if let Some(at) = certs.next_check {
            requeue = requeue.min(until(now, at));
        }

        // The managed directory, before the prep Jobs that need it.
        let mut directory_waiting = None;
        if resolved.directory.managed {
            let dir = directory::reconcile(&ctx, &mut set, &owner, &resolved).await?;
            directory_waiting = dir.waiting;
            wants.push(dir.want);
        }

        let prep =
            prep::reconcile(&ctx, &mut set, &owner, &resolved, &old.prepared_steps, directory_waiting.as_deref())
                .await?;
        status.resolved = Some(resolved);
        status.prepared_steps = prep.prepared;
        if !prep.done {
            let why = prep.conditions.iter().find(|w| !w.status).map(|w| w.message.clone()).unwrap_or_default();
            preparing = Some(why);
        }
        wants.extend(prep.conditions);

        if let (Some(plan), true) = (plan, prep.done) {
            // Home Servers first, the Front-End routes to them.
            for hs in &plan.home_servers {
                set.apply(hs).await?;
            }
            for waiting in &plan.waiting_removal {
                set.keep::<HomeServer>(&waiting.name);
            }
            for gone in &plan.delete_home_servers {
                if delete(&hs_api, gone).await? {
                    ctx.event(d.as_ref(), false, "Deleted", "ScaleDown", format!("deleted empty HomeServer {gone}"))
                        .await;
                }
            }
            match &plan.front_end {
                Some(fe) => {
                    set.apply(fe).await?;
                }
                None => {
                    for fe in front_ends.iter().filter(|f| owned_by(*f, &uid)) {
                        if delete(&fe_api, &fe.name_any()).await? {
                            let note = format!("deleted FrontEnd {}: the {} tier has none", fe.name_any(), sizing.tier);
                            ctx.event(d.as_ref(), false, "Deleted", "ScaleDown", note).await;
                        }
                    }
                }
            }
            let mut names: BTreeSet<String> = status.home_servers.iter().cloned().collect();
            names.extend(plan.home_servers.iter().map(|h| h.name_any()));
            names.retain(|n| !plan.delete_home_servers.contains(n));
            status.home_servers = names.into_iter().collect();
            status.front_end = plan
                .front_end
                .as_ref()
                .map(|f| f.name_any())
                .or_else(|| front_ends.iter().find(|f| !owned_by(*f, &uid)).map(|f| f.name_any()));
            status.waiting_removal = plan.waiting_removal;
            scale_down_blocked = plan.blocked;
        } else {
            // Before the directory is prepared nothing is created or removed, and with topology
            // `manual` the administrator decides: what the domain owns stays.
            for h in home_servers.iter().filter(|h| owned_by(*h, &uid)) {
                set.keep::<HomeServer>(&h.name_any());
            }
            for f in front_ends.iter().filter(|f| owned_by(*f, &uid)) {
                set.keep::<FrontEnd>(&f.name_any());
            }
            if d.spec.topology == Topology::Manual {
                status.waiting_removal.clear();
            }
        }
        if complete {
            set.prune().await?;
        }
    } else {
        // Paused or invalid: nothing was looked at, so the last word on these stands.
        for type_ in [CERTIFICATES_READY, SCHEMA_PREPARED, ENTERPRISE_PREPARED, DOMAIN_PREPARED, DIRECTORY_READY] {
            wants.extend(carried_over(&old.conditions, type_));
        }
    }

    // Status.
    wants.push(match &scale_down_blocked {
        Some(why) => Want::new(SCALE_DOWN_BLOCKED, true, "NotEnoughCapacity", why.clone()),
        None => Want::new(SCALE_DOWN_BLOCKED, false, "NotBlocked", ""),
    });
    wants.push(if !problems.is_empty() {
        Want::new(READY, false, "InvalidSpec", problems.join("; "))
    } else if let Some(why) = preparing {
        Want::new(READY, false, "PreparingDirectory", format!("the directory is not prepared yet: {why}"))
    } else {
        let directory = wants.iter().find(|w| w.type_ == DIRECTORY_READY && !w.status).map(|w| w.message.clone());
        ready(&status, &home_servers, &front_ends, directory)
    });
    wants.sort_by_key(|w| w.type_);
    status.home_server_count = Some(u32::try_from(status.home_servers.len()).unwrap_or(u32::MAX));
    status.rollout =
        status.resolved.as_ref().and_then(|r| super::rollout::progress(r.generation, &home_servers, &front_ends));
    status.phase = Some(phase(&wants, &status).into());
    if !status.waiting_removal.is_empty() {
        // A drain moves users: look at its progress more often than the resync.
        requeue = requeue.min(DRAIN_POLL);
    }
    status.conditions = merge(&old.conditions, &wants, d.metadata.generation, Timestamp::now());
    let api: Api<CommunicationsDomain> = Api::namespaced(client, &ns);
    let Some(wrote) = unless_gone(patch_status(&api, &name, d.status.as_ref(), &status).await)? else {
        return Ok(Action::await_change());
    };
    if wrote {
        report_transitions(&ctx, d.as_ref(), &old.conditions, &status.conditions).await;
    }
    Ok(Action::requeue(requeue))
}

/// How often a domain that drains a Home Server looks at its progress.
pub const DRAIN_POLL: Duration = Duration::from_secs(10);

/// The domain's phase, in a word, from its conditions (see `CommunicationsDomainStatus::phase`).
fn phase(wants: &[Want], status: &CommunicationsDomainStatus) -> &'static str {
    let holds = |t: &str| wants.iter().any(|w| w.type_ == t && w.status);
    let ready = wants.iter().find(|w| w.type_ == READY);
    match ready {
        _ if holds(PAUSED) => "Paused",
        Some(w) if w.reason == "InvalidSpec" => "Invalid",
        Some(w) if w.reason == "PreparingDirectory" => "Preparing",
        _ if !status.waiting_removal.is_empty() || holds(SCALE_DOWN_BLOCKED) => "Scaling",
        _ if status.rollout.is_some() => "Upgrading",
        Some(w) if w.status => "Ready",
        _ => "Progressing",
    }
}

/// The time from `now` until `at`, at least a second (a renewal due now is retried shortly).
fn until(now: Timestamp, at: Timestamp) -> Duration {
    Duration::from_secs(u64::try_from(at.as_second() - now.as_second()).unwrap_or(0).max(1))
}

/// The Home Servers and Front-Ends the domain has or is about to have: those the plan calls
/// for (plus ones waiting for removal) with topology `auto`, the existing ones with `manual`.
fn server_names(
    plan: Option<&build::domain::DomainPlan>,
    home_servers: &[HomeServer],
    front_ends: &[FrontEnd],
) -> (Vec<String>, Vec<String>) {
    match plan {
        Some(p) => {
            let mut hs: BTreeSet<String> = p.home_servers.iter().map(|h| h.name_any()).collect();
            hs.extend(p.waiting_removal.iter().map(|w| w.name.clone()));
            (hs.into_iter().collect(), p.front_end.iter().map(|f| f.name_any()).collect())
        }
        None => {
            (home_servers.iter().map(|h| h.name_any()).collect(), front_ends.iter().map(|f| f.name_any()).collect())
        }
    }
}

/// The condition `type_` as it stands, to be written again unchanged.
fn carried_over(
    old: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &'static str,
) -> Option<Want> {
    old.iter().find(|c| c.type_ == type_).map(|c| Want::new(type_, c.status == "True", &c.reason, &c.message))
}

/// Ready when every Home Server the status lists, its Front-End and its managed directory (when
/// it has one; `directory` says why it is not ready) report Ready.
fn ready(
    status: &CommunicationsDomainStatus,
    home_servers: &[HomeServer],
    front_ends: &[FrontEnd],
    directory: Option<String>,
) -> Want {
    let mut waiting = Vec::new();
    if let Some(why) = directory {
        waiting.push(format!("the directory ({why})"));
    }
    if status.home_servers.is_empty() {
        return Want::new(READY, false, "NoHomeServers", "the domain has no Home Servers");
    }
    for name in &status.home_servers {
        let ok = home_servers
            .iter()
            .find(|h| &h.name_any() == name)
            .and_then(|h| h.status.as_ref())
            .is_some_and(|s| is_true(&s.conditions, READY));
        if !ok {
            waiting.push(format!("HomeServer {name}"));
        }
    }
    if let Some(fe) = &status.front_end {
        let ok = front_ends
            .iter()
            .find(|f| &f.name_any() == fe)
            .and_then(|f| f.status.as_ref())
            .is_some_and(|s| is_true(&s.conditions, READY));
        if !ok {
            waiting.push(format!("FrontEnd {fe}"));
        }
    }
    if waiting.is_empty() {
        Want::new(READY, true, "AllReady", "every Home Server and the Front-End are ready")
    } else {
        Want::new(READY, false, "Progressing", format!("waiting for {}", waiting.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::build::fixtures;

    #[test]
    fn certificates_cover_planned_and_waiting_servers_before_they_exist() {
        let d = fixtures::domain("corp", 5_000);
        let owned: Vec<String> = (1..=2).map(|n| build::domain::home_server_name("corp", n)).collect();
        let owned =
            owned.into_iter().map(|n| (n, build::domain::Occupancy { users: Some(1), drained: false })).collect();
        let plan = build::domain::plan(&d, &tiers::resolve(5_000), &owned).unwrap();
        let (hs, fe) = server_names(Some(&plan), &[], &[]);
        assert_eq!(hs, ["corp-home-1", "corp-home-2"], "corp-home-2 waits for removal and keeps its certificate");
        assert_eq!(fe, ["corp-frontend"]);
        let manual = [fixtures::home_server("mine", "corp")];
        let (hs, fe) = server_names(None, &manual, &[fixtures::front_end("edge", "corp")]);
        assert_eq!((hs, fe), (vec!["mine".to_string()], vec!["edge".to_string()]));
    }

    #[test]
    fn renewal_requeues_at_the_due_time_and_never_at_once() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(until(now, Timestamp::from_second(1_600).unwrap()), Duration::from_secs(600));
        assert_eq!(until(now, Timestamp::from_second(10).unwrap()), Duration::from_secs(1));
    }

    #[test]
    fn a_paused_domain_keeps_its_last_word_on_certificates_and_preparation() {
        let old = vec![Condition {
            type_: DOMAIN_PREPARED.into(),
            status: "True".into(),
            reason: "Succeeded".into(),
            message: "Job corp-prep-domain succeeded".into(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::from_second(5).unwrap()),
        }];
        let w = carried_over(&old, DOMAIN_PREPARED).unwrap();
        assert_eq!(w, Want::new(DOMAIN_PREPARED, true, "Succeeded", "Job corp-prep-domain succeeded"));
        assert!(carried_over(&old, CERTIFICATES_READY).is_none());
    }
}
