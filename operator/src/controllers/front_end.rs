//! FrontEnd -> ConfigMap (with the domain's routing table), Service, PodDisruptionBudget, Deployment.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::apply::{ApplySet, patch_status};
use super::conditions::{Want, merge};
use super::{Context, RESYNC, Result, namespace_of, report_transitions, unless_gone, validate};
use crate::build::config::HomeServerRoute;
use crate::build::{self, BuildContext, Component};
use crate::crd::condition::{PAUSED, READY};
use crate::crd::{CommunicationsDomain, FrontEnd, FrontEndStatus};

pub async fn reconcile(fe: Arc<FrontEnd>, ctx: Arc<Context>) -> Result<Action> {
    if fe.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = namespace_of(fe.as_ref())?;
    let name = fe.name_any();
    let client = ctx.client.clone();
    let deploy_api: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    // Dereference: the domain (its resolved settings hold the routing table).
    let domain = Api::<CommunicationsDomain>::namespaced(client.clone(), &ns).get_opt(&fe.spec.domain).await?;
    let mut routes: Vec<HomeServerRoute> = Vec::new();
    let live = deploy_api.get_opt(&name).await?;
    let old = fe.status.clone().unwrap_or_default();
    let mut status = FrontEndStatus { observed_generation: fe.metadata.generation, ..old.clone() };
    let mut wants = Vec::new();
    let mut wrote_workload = false;
    // The domain resolution built from.
    let mut generation = None;

    match &domain {
        None => wants.push(Want::new(
            READY,
            false,
            "DomainNotFound",
            format!("CommunicationsDomain {} not found in namespace {ns}", fe.spec.domain),
        )),
        Some(domain) if domain.spec.paused => wants.push(Want::new(
            PAUSED,
            true,
            "DomainPaused",
            format!("CommunicationsDomain {} is paused: the operator changes nothing", fe.spec.domain),
        )),
        Some(domain) => {
            wants.push(Want::new(PAUSED, false, "NotPaused", ""));
            let problems = validate::front_end(&fe);
            let resolved = validate::resolved_for(domain, &name);
            if let Ok(r) = &resolved {
                status.tier = Some(r.tier);
                status.domain_users = Some(r.users);
            }
            if !problems.is_empty() {
                wants.push(Want::new(READY, false, "InvalidSpec", problems.join("; ")));
            } else if let Err(why) = resolved {
                wants.push(Want::new(READY, false, "WaitingForDomain", why));
            } else if let Some(why) = validate::waits_for_directory(domain) {
                wants.push(Want::new(READY, false, "WaitingForDirectory", why));
            } else if let Ok(resolved) = resolved {
                routes = resolved
                    .home_servers
                    .iter()
                    .map(|h| HomeServerRoute { name: h.name.clone(), address: h.address.clone() })
                    .collect();
                let bctx = BuildContext { resolved, cluster_domain: &ctx.settings.cluster_domain };
                let objs = build::front_end::build(&fe, &bctx, &routes)?;
                generation = Some(resolved.generation);
                // Apply, in order, then remove what is no longer built.
                let mut set = ApplySet::new(&ctx, fe.as_ref(), Component::FrontEnd)?;
                set.apply(&objs.config_map).await?;
                set.apply(&objs.service).await?;
                set.apply(&objs.pdb).await?;
                wrote_workload = set.apply(&objs.deployment).await?.wrote();
                set.prune().await?;
                status.replicas = objs.deployment.spec.as_ref().and_then(|s| s.replicas);
                status.home_servers = routes.iter().map(|r| r.name.clone()).collect();
            }
        }
    }

    status.ready_replicas = live.as_ref().and_then(|d| d.status.as_ref()).and_then(|s| s.ready_replicas).or(Some(0));
    if !wants.iter().any(|w| w.type_ == READY) {
        let mut want = ready(live.as_ref(), wrote_workload, &name, routes.len());
        if !want.status && live.is_some() {
            // Say what a replica waits for, not only that it does.
            let selector = build::selector_labels(&name, Component::FrontEnd)
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            if let Some(why) = super::pods::why_any_not_ready(&ctx, &ns, &selector).await {
                want.message = why;
            }
        }
        if want.status {
            status.rolled_generation = generation;
        }
        wants.push(want);
    }
    wants.sort_by_key(|w| w.type_);
    status.conditions = merge(&old.conditions, &wants, fe.metadata.generation, Timestamp::now());
    let Some(wrote) =
        unless_gone(patch_status(&Api::<FrontEnd>::namespaced(client, &ns), &name, fe.status.as_ref(), &status).await)?
    else {
        return Ok(Action::await_change());
    };
    if wrote {
        report_transitions(&ctx, fe.as_ref(), &old.conditions, &status.conditions).await;
    }
    Ok(Action::requeue(RESYNC))
}

/// Ready when every replica runs the current revision and is ready, and there is somewhere to route.
fn ready(deploy: Option<&Deployment>, just_written: bool, name: &str, routes: usize) -> Want {
    let Some(d) = deploy else {
        return Want::new(READY, false, "Creating", format!("creating Deployment {name}"));
    };
    if routes == 0 {
        return Want::new(READY, false, "NoHomeServers", "the domain has no Home Servers to route to");
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let current = st.observed_generation >= d.metadata.generation && !just_written;
    let ready = st.ready_replicas.unwrap_or(0);
    if current && ready >= want && st.updated_replicas.unwrap_or(0) >= want {
        Want::new(READY, true, "Running", format!("{ready} of {want} replicas ready"))
    } else {
        Want::new(READY, false, "Progressing", format!("{ready} of {want} replicas ready"))
    }
}
