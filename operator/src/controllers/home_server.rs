//! HomeServer -> ConfigMap, headless Service, PodDisruptionBudget, StatefulSet.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::apply::{ApplySet, patch_status};
use super::conditions::{Want, merge};
use super::{Context, RESYNC, Result, namespace_of, report_transitions, unless_gone, validate};
use super::{rollout, server_status};
use crate::build::{self, BuildContext, Component, FIELD_MANAGER, quantity};
use crate::crd::condition::{PAUSED, READY};
use crate::crd::{CommunicationsDomain, FrontEnd, HomeServer, HomeServerStatus};

mod drain;
mod node_drain;

use tracing::{debug, info};

/// Condition type: the volumes have the size the spec asks for.
pub const VOLUMES: &str = "VolumesUpToDate";

pub async fn reconcile(hs: Arc<HomeServer>, ctx: Arc<Context>) -> Result<Action> {
    if hs.metadata.deletion_timestamp.is_some() {
        // Owner references take the children with it; nothing to clean up outside them.
        return Ok(Action::await_change());
    }
    let ns = namespace_of(hs.as_ref())?;
    let name = hs.name_any();
    let client = ctx.client.clone();
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);

    // Dereference.
    let domain = Api::<CommunicationsDomain>::namespaced(client.clone(), &ns).get_opt(&hs.spec.domain).await?;
    let live_sts = sts_api.get_opt(&name).await?;
    let old = hs.status.clone().unwrap_or_default();
    let mut status = HomeServerStatus { observed_generation: hs.metadata.generation, ..old.clone() };
    let mut wants = Vec::new();
    let mut wrote_workload = false;
    // The domain resolution built from, and the servers a held pod change waits for.
    let (mut generation, mut held): (Option<i64>, Option<Vec<String>>) = (None, None);
    // Set while the pod waits to move off a cordoned node.
    let mut moving_off: Option<String> = None;

    match &domain {
        None => {
            wants.push(Want::new(
                READY,
                false,
                "DomainNotFound",
                format!("CommunicationsDomain {} not found in namespace {ns}", hs.spec.domain),
            ));
        }
        Some(domain) if domain.spec.paused => {
            wants.push(Want::new(
                PAUSED,
                true,
                "DomainPaused",
                format!("CommunicationsDomain {} is paused: the operator changes nothing", hs.spec.domain),
            ));
        }
        Some(domain) => {
            wants.push(Want::new(PAUSED, false, "NotPaused", ""));
            // Validate; the domain's part is its controller's: it resolved the domain once.
            let problems = validate::home_server(&hs);
            let resolved = validate::resolved_for(domain, &name);
            if let Ok(r) = &resolved {
                status.tier = Some(r.tier);
            }
            if !problems.is_empty() {
                wants.push(Want::new(READY, false, "InvalidSpec", problems.join("; ")));
            } else if let Err(why) = resolved {
                wants.push(Want::new(READY, false, "WaitingForDomain", why));
            } else if let Some(why) = validate::waits_for_directory(domain) {
                wants.push(Want::new(READY, false, "WaitingForDirectory", why));
            } else if let Ok(resolved) = resolved {
                // Build.
                let bctx = BuildContext { resolved, cluster_domain: &ctx.settings.cluster_domain };
                let mut objs = build::home_server::build(&hs, &bctx)?;
                let volumes = keep_claim_templates(&mut objs.stateful_set, live_sts.as_ref());
                // The domain's servers: a new pod spec waits for this Home Server's turn in the
                // domain's rollout, and a pod on a drained node moves only while they all run.
                let (homes, fronts) = domain_servers(&ctx, &ns, &hs.spec.domain).await?;
                if let Some(live) = live_sts.as_ref().filter(|l| rollout::changes_pod(&objs.stateful_set, Some(l))) {
                    let waiting = rollout::waiting_for(&name, resolved.generation, &homes, &fronts);
                    if !waiting.is_empty() {
                        rollout::hold(&mut objs.stateful_set, live);
                        held = Some(waiting);
                    }
                }
                generation = Some(resolved.generation);
                match node_drain::reconcile(&ctx, hs.as_ref(), &homes, &fronts).await? {
                    node_drain::Outcome::Stays => {}
                    node_drain::Outcome::Moved { node } => {
                        info!(home_server = %name, node, "moved off a cordoned node")
                    }
                    node_drain::Outcome::Waits { node, waiting_for } => {
                        let why = format!(
                            "node {node} is cordoned; the pod moves once {} run ready again",
                            waiting_for.join(", ")
                        );
                        info!(home_server = %name, "{why}");
                        moving_off = Some(why);
                    }
                }
                // Apply, in order, then remove what is no longer built.
                let mut set = ApplySet::new(&ctx, hs.as_ref(), Component::HomeServer)?;
                set.apply(&objs.config_map).await?;
                set.apply(&objs.service).await?;
                set.apply(&objs.client_service).await?;
                set.apply(&objs.pdb).await?;
                wrote_workload = set.apply(&objs.stateful_set).await?.wrote();
                set.prune().await?;
                wants.push(expand_volumes(&ctx, &ns, &name, &volumes).await?);
                status.resolved = Some(objs.resolved);
                status.address = Some(objs.address);
                // What the server says of its users (kept from before while it cannot answer).
                let counted = if serving(live_sts.as_ref()) { count_users(&ctx, &name, &ns).await } else { None };
                if let Some(c) = &counted {
                    (status.users, status.capacity) = (Some(c.homed_users), Some(c.capacity));
                }
                // Only a count taken while draining says how many are left.
                status.users_remaining =
                    if hs.spec.drain { counted.map(|c| c.homed_users).or(old.users_remaining) } else { None };
                wants.extend(drain::reconcile(&ctx, hs.as_ref(), resolved, &status).await?);
            }
        }
    }

    // Status.
    if !wants.iter().any(|w| w.type_ == READY) {
        let mut want = ready(live_sts.as_ref(), wrote_workload, &name);
        if !want.status && live_sts.is_some() {
            // Say what the pod waits for, not only that it does.
            if let Some(why) = super::pods::why_not_ready(&ctx, &ns, &format!("{name}-0")).await {
                want.message = why;
            }
        }
        wants.insert(0, want);
    }
    if let Some(generation) = generation {
        let ready = wants.iter().any(|w| w.type_ == READY && w.status);
        let (want, rolled) = rollout::up_to_date(held.as_deref(), ready, generation);
        status.rolled_generation = rolled.or(status.rolled_generation);
        wants.push(want);
    }
    wants.sort_by_key(|w| w.type_);
    status.conditions = merge(&old.conditions, &wants, hs.metadata.generation, Timestamp::now());
    let Some(wrote) = unless_gone(
        patch_status(&Api::<HomeServer>::namespaced(client, &ns), &name, hs.status.as_ref(), &status).await,
    )?
    else {
        return Ok(Action::await_change());
    };
    if wrote {
        report_transitions(&ctx, hs.as_ref(), &old.conditions, &status.conditions).await;
        drain::report_progress(&ctx, hs.as_ref(), &old, &status).await;
    }
    if let Some(why) = &moving_off {
        ctx.event(hs.as_ref(), false, "WaitingToMove", "Restart", why.clone()).await;
    }
    Ok(Action::requeue(if hs.spec.drain || held.is_some() || moving_off.is_some() {
        super::domain::DRAIN_POLL
    } else if serving(live_sts.as_ref()) {
        STATUS_POLL
    } else {
        RESYNC
    }))
}

/// How often a running Home Server's user count is read into its status (placement and a
/// scale-down's capacity check go by it).
pub const STATUS_POLL: std::time::Duration = std::time::Duration::from_secs(30);

/// The HomeServers and FrontEnds of the domain `domain` in `ns`.
async fn domain_servers(ctx: &Context, ns: &str, domain: &str) -> Result<(Vec<HomeServer>, Vec<FrontEnd>)> {
    let homes = Api::<HomeServer>::namespaced(ctx.client.clone(), ns).list(&Default::default()).await?.items;
    let fronts = Api::<FrontEnd>::namespaced(ctx.client.clone(), ns).list(&Default::default()).await?.items;
    Ok((
        homes.into_iter().filter(|h| h.spec.domain == domain).collect(),
        fronts.into_iter().filter(|f| f.spec.domain == domain).collect(),
    ))
}

/// The Home Server's own count of its users (`/status`), or `None` when it does not answer.
async fn count_users(ctx: &Context, name: &str, ns: &str) -> Option<server_status::ServerStatus> {
    let url = server_status::url(ctx.settings.server_status_url.as_deref(), name, ns, &ctx.settings.cluster_domain);
    server_status::fetch(&url)
        .await
        .map_err(|e| debug!(home_server = %name, error = %e, "no status from the server"))
        .ok()
}

/// Whether the StatefulSet's pod is up to answer (its last known state).
fn serving(sts: Option<&StatefulSet>) -> bool {
    sts.and_then(|s| s.status.as_ref()).is_some_and(|s| s.ready_replicas.unwrap_or(0) >= 1)
}

/// Ready when the StatefulSet's one pod runs the current revision and passes its readiness probe.
fn ready(sts: Option<&StatefulSet>, just_written: bool, name: &str) -> Want {
    let Some(sts) = sts else {
        return Want::new(READY, false, "Creating", format!("creating StatefulSet {name}"));
    };
    let st = sts.status.clone().unwrap_or_default();
    let current = st.observed_generation >= sts.metadata.generation && !just_written;
    let rolled = st.updated_replicas.unwrap_or(0) >= 1 || st.current_revision == st.update_revision;
    if current && rolled && st.ready_replicas.unwrap_or(0) >= 1 {
        Want::new(READY, true, "Running", format!("pod {name}-0 is ready"))
    } else {
        Want::new(
            READY,
            false,
            "Progressing",
            format!("waiting for pod {name}-0 to run the current spec and become ready"),
        )
    }
}

/// A volume whose claim template differs between what the spec wants and what exists.
#[derive(Debug, PartialEq)]
pub struct VolumeChange {
    pub claim: String,
    pub have: String,
    pub want: String,
}

/// A StatefulSet's claim templates cannot change once it exists. Keeps the live templates in the
/// desired object (so the apply is accepted) and returns the size changes the spec asks for,
/// which are made on the PersistentVolumeClaims themselves.
pub fn keep_claim_templates(desired: &mut StatefulSet, live: Option<&StatefulSet>) -> Vec<VolumeChange> {
    let Some(live_templates) = live.and_then(|l| l.spec.as_ref()).and_then(|s| s.volume_claim_templates.clone()) else {
        return Vec::new();
    };
    let size = |c: &PersistentVolumeClaim| {
        c.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_default()
    };
    let Some(templates) = desired.spec.as_mut().and_then(|s| s.volume_claim_templates.as_mut()) else {
        return Vec::new();
    };
    let mut changes = Vec::new();
    for t in templates.iter_mut() {
        let Some(l) = live_templates.iter().find(|l| l.metadata.name == t.metadata.name) else { continue };
        let (have, want) = (size(l), size(t));
        if !quantity::same(&have, &want) {
            changes.push(VolumeChange { claim: t.metadata.name.clone().unwrap_or_default(), have: have.clone(), want });
        }
        // Keep what exists: size and class.
        if let (Some(ts), Some(ls)) = (t.spec.as_mut(), l.spec.as_ref()) {
            ts.resources = ls.resources.clone();
            ts.storage_class_name = ls.storage_class_name.clone();
        }
    }
    changes
}

/// Grows the pod's claims where the spec asks for more (the storage class must allow expansion);
/// refuses to shrink.
async fn expand_volumes(ctx: &Context, ns: &str, sts: &str, changes: &[VolumeChange]) -> Result<Want> {
    if changes.is_empty() {
        return Ok(Want::new(VOLUMES, true, "AsSpecified", "volumes have the requested size"));
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let mut messages = Vec::new();
    let mut shrink = false;
    let mut refused = None;
    for c in changes {
        let pvc_name = format!("{}-{sts}-0", c.claim);
        if quantity::parse(&c.want) < quantity::parse(&c.have) {
            shrink = true;
            messages.push(format!("{} is {} and cannot shrink to {}", c.claim, c.have, c.want));
            continue;
        }
        messages.push(format!("{} grows from {} to {}", c.claim, c.have, c.want));
        if let Some(pvc) = pvcs.get_opt(&pvc_name).await? {
            let requested =
                pvc.spec.and_then(|s| s.resources).and_then(|r| r.requests).and_then(|r| r.get("storage").cloned());
            if requested.is_none_or(|q| quantity::parse(&q.0) < quantity::parse(&c.want)) {
                let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": c.want}}}});
                match pvcs.patch(&pvc_name, &PatchParams::apply(FIELD_MANAGER), &Patch::Merge(&patch)).await {
                    Ok(_) => ctx.event_for_pvc(ns, &pvc_name, &c.want).await,
                    // The storage class does not allow expansion: say so instead of retrying forever.
                    Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => {
                        refused = Some(format!("{pvc_name} cannot grow: {}", e.message));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(if shrink {
        Want::new(VOLUMES, false, "CannotShrink", messages.join("; "))
    } else if let Some(why) = refused {
        Want::new(VOLUMES, false, "ExpansionRefused", why)
    } else {
        Want::new(
            VOLUMES,
            false,
            "Expanding",
            format!("{} (the claim templates keep their first size)", messages.join("; ")),
        )
    })
}

impl Context {
    async fn event_for_pvc(&self, ns: &str, pvc: &str, size: &str) {
        let obj = PersistentVolumeClaim {
            metadata: kube::api::ObjectMeta {
                name: Some(pvc.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        self.event(&obj, false, "Expanding", "Resize", format!("requested {size} for {pvc}")).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;

    fn sts(users: u32) -> StatefulSet {
        let d = fixtures::domain("corp", users);
        build::home_server::build(&fixtures::home_server("h", "corp"), &fixtures::ctx(&d)).unwrap().stateful_set
    }

    #[test]
    fn claim_templates_of_a_live_statefulset_are_kept() {
        let live = sts(500);
        let mut desired = sts(5_000);
        let changes = keep_claim_templates(&mut desired, Some(&live));
        assert_eq!(
            changes,
            vec![
                VolumeChange { claim: "data".into(), have: "20Gi".into(), want: "36Gi".into() },
                VolumeChange { claim: "logs".into(), have: "1Gi".into(), want: "36Gi".into() },
            ]
        );
        assert_eq!(
            desired.spec.as_ref().unwrap().volume_claim_templates,
            live.spec.as_ref().unwrap().volume_claim_templates
        );
        // The rest of the spec still follows the new tier.
        let c = &desired.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.resources.as_ref().unwrap().limits.as_ref().unwrap()["cpu"].0, "2");
    }

    #[test]
    fn nothing_to_keep_for_a_new_statefulset() {
        let mut desired = sts(5_000);
        let before = desired.clone();
        assert!(keep_claim_templates(&mut desired, None).is_empty());
        assert_eq!(desired, before);
    }

    #[test]
    fn readiness_needs_the_current_revision() {
        use k8s_openapi::api::apps::v1::StatefulSetStatus;
        assert_eq!(ready(None, false, "h").reason, "Creating");
        let mut s = sts(500);
        s.metadata.generation = Some(2);
        s.status = Some(StatefulSetStatus {
            observed_generation: Some(1),
            ready_replicas: Some(1),
            updated_replicas: Some(1),
            ..Default::default()
        });
        assert_eq!(ready(Some(&s), false, "h").reason, "Progressing");
        s.status.as_mut().unwrap().observed_generation = Some(2);
        assert!(ready(Some(&s), false, "h").status);
        assert!(!ready(Some(&s), true, "h").status, "a StatefulSet just written is not yet observed");
    }
}
