//! CommunicationsDomain -> the HomeServer and FrontEnd resources its tier calls for (topology
//! `auto`), or a report on the ones the administrator wrote (`manual`).

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};

use super::apply::{apply, delete, patch_status};
use super::conditions::{Want, is_true, merge};
use super::{Context, RESYNC, Result, namespace_of, report_apply, report_transitions, validate};
use crate::build;
use crate::crd::condition::{PAUSED, READY, SCALE_DOWN_BLOCKED};
use crate::crd::{CommunicationsDomain, CommunicationsDomainStatus, FrontEnd, HomeServer, Topology};
use crate::tiers;

/// Whether users may still be homed on a Home Server. Until the directory can say how many users
/// name it (the directory issue), every existing Home Server counts as occupied, so a scale-down
/// never deletes one; the administrator moves the users and deletes the HomeServer.
pub fn may_have_users(_home_server: &str) -> bool {
    true
}

fn owned_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == uid)
}

pub async fn reconcile(d: Arc<CommunicationsDomain>, ctx: Arc<Context>) -> Result<Action> {
    if d.metadata.deletion_timestamp.is_some() {
        // Owner references take the HomeServers and FrontEnd (and so their workloads) with it.
        return Ok(Action::await_change());
    }
    let ns = namespace_of(d.as_ref())?;
    let name = d.name_any();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let client = ctx.client.clone();
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
    let old = d.status.clone().unwrap_or_default();
    let mut status = CommunicationsDomainStatus {
        observed_generation: d.metadata.generation,
        tier: Some(sizing.tier),
        home_servers: home_servers.iter().map(|h| h.name_any()).collect(),
        front_end: front_ends.first().map(|f| f.name_any()),
        waiting_removal: old.waiting_removal.clone(),
        conditions: Vec::new(),
        prepared_steps: old.prepared_steps.clone(),
    };
    let mut wants = Vec::new();
    let problems = validate::domain(&d);

    if d.spec.paused {
        wants.push(Want::new(PAUSED, true, "Paused", "spec.paused is true: the operator reads but changes nothing"));
    } else {
        wants.push(Want::new(PAUSED, false, "NotPaused", ""));
        if problems.is_empty() && d.spec.topology == Topology::Auto {
            let owned: Vec<String> = home_servers.iter().filter(|h| owned_by(*h, &uid)).map(|h| h.name_any()).collect();
            // Build.
            let plan = build::domain::plan(&d, &sizing, &owned, may_have_users)?;
            // Apply: Home Servers first, the Front-End routes to them.
            for hs in &plan.home_servers {
                let out = apply(&hs_api, hs).await?;
                report_apply(&ctx, d.as_ref(), hs, out).await;
            }
            for gone in &plan.delete_home_servers {
                if delete(&hs_api, gone).await? {
                    ctx.event(d.as_ref(), false, "Deleted", "ScaleDown", format!("deleted empty HomeServer {gone}"))
                        .await;
                }
            }
            match &plan.front_end {
                Some(fe) => {
                    let out = apply(&fe_api, fe).await?;
                    report_apply(&ctx, d.as_ref(), fe, out).await;
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
        } else if d.spec.topology == Topology::Manual {
            status.waiting_removal.clear();
        }
    }

    // Status.
    wants.push(if status.waiting_removal.is_empty() {
        Want::new(SCALE_DOWN_BLOCKED, false, "NothingWaiting", "")
    } else {
        let names: Vec<&str> = status.waiting_removal.iter().map(|w| w.name.as_str()).collect();
        Want::new(
            SCALE_DOWN_BLOCKED,
            true,
            "UsersMayBeHomed",
            format!(
                "HomeServer(s) {} are no longer needed but may still have users homed on them; see status.waitingRemoval",
                names.join(", ")
            ),
        )
    });
    wants.push(if !problems.is_empty() {
        Want::new(READY, false, "InvalidSpec", problems.join("; "))
    } else {
        ready(&status, &home_servers, &front_ends)
    });
    wants.sort_by_key(|w| w.type_);
    status.conditions = merge(&old.conditions, &wants, d.metadata.generation, Timestamp::now());
    let api: Api<CommunicationsDomain> = Api::namespaced(client, &ns);
    if patch_status(&api, &name, d.status.as_ref(), &status).await? {
        report_transitions(&ctx, d.as_ref(), &old.conditions, &status.conditions).await;
    }
    Ok(Action::requeue(RESYNC))
}

/// Ready when every Home Server the status lists, and its Front-End, report Ready.
fn ready(status: &CommunicationsDomainStatus, home_servers: &[HomeServer], front_ends: &[FrontEnd]) -> Want {
    let mut waiting = Vec::new();
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
