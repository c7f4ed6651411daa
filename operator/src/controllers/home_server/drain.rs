//! A HomeServer's drain (`spec.drain`): the Job that moves its users away, the `Drained`
//! condition, and an Event per thousand users moved.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};

use super::super::apply::{apply, delete};
use super::super::conditions::Want;
use super::super::{Context, Result, pods};
use crate::build::{self, BuildError, Owner};
use crate::crd::condition::DRAINED;
use crate::crd::{HomeServer, HomeServerStatus, ResolvedDomain};

/// How a Job stands, from its conditions.
fn finished(job: &Job, type_: &str) -> Option<String> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let c = conditions.iter().find(|c| c.type_ == type_ && c.status == "True")?;
    Some(c.message.clone().unwrap_or_default())
}

/// Runs the drain of `hs` while `spec.drain` is true and says how far it is (the `Drained`
/// condition); `None` when it is not draining (a drain Job left from before is removed: a drain
/// called off stops, the users it moved stay moved). `status.usersRemaining` is the server's
/// latest count since the drain began.
pub async fn reconcile(
    ctx: &Context,
    hs: &HomeServer,
    resolved: &ResolvedDomain,
    status: &HomeServerStatus,
) -> Result<Option<Want>> {
    let name = hs.name_any();
    let ns = hs.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let job_name = build::drain::job_name(&name);
    let live = jobs.get_opt(&job_name).await?;
    let uid = hs.metadata.uid.clone().unwrap_or_default();
    let ours = live.as_ref().is_some_and(|j| j.owner_references().iter().any(|o| o.uid == uid));
    if !hs.spec.drain {
        if ours {
            delete(&jobs, &job_name).await?;
        }
        return Ok(None);
    }
    if status.users_remaining == Some(0) {
        let why = format!("no user is homed on {name}: it can be deleted without losing anyone");
        return Ok(Some(Want::new(DRAINED, true, "Empty", why)));
    }
    let remaining = status
        .users_remaining
        .map(|n| format!("{n} users remaining"))
        .unwrap_or_else(|| "users not counted yet".into());
    let owner = Owner::of(hs, "HomeServer")?;
    let job = match build::drain::job(&owner, &hs.spec.domain, resolved) {
        Ok(job) => job,
        Err(BuildError::Prep(why)) => {
            let why = format!("{name} cannot be drained by the operator: {why}; move its users by hand");
            return Ok(Some(Want::new(DRAINED, false, "CannotDrain", why)));
        }
        Err(e) => return Err(e.into()),
    };
    let want = match &live {
        None => {
            apply(&jobs, &job, "Job").await?;
            ctx.event(hs, false, "Draining", "Drain", format!("started Job {job_name}: {remaining}")).await;
            Want::new(DRAINED, false, "Draining", format!("{remaining}; Job {job_name} moves them"))
        }
        Some(_) if !ours => {
            let why = format!("a Job named {job_name} exists and is not this HomeServer's; remove or rename it");
            Want::new(DRAINED, false, "JobConflict", why)
        }
        Some(live) if finished(live, "Failed").is_some() => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            let message = match pods::job_pod_message(&pods, &job_name).await? {
                Some(m) => m,
                None => finished(live, "Failed").unwrap_or_default(),
            };
            let why = format!(
                "Job {job_name} failed ({remaining}): {}; it runs again once the Job is deleted",
                message.trim()
            );
            Want::new(DRAINED, false, "DrainFailed", why)
        }
        Some(live)
            if finished(live, "Complete").is_some() || build::prep::job_hash(live) != build::prep::job_hash(&job) =>
        {
            // Done while users are still counted here (homed since), or of other settings: run
            // again; the drain picks up where it is.
            delete(&jobs, &job_name).await?;
            Want::new(DRAINED, false, "Draining", format!("{remaining}; Job {job_name} runs again"))
        }
        Some(_) => Want::new(DRAINED, false, "Draining", format!("{remaining}; Job {job_name} moves them")),
    };
    Ok(Some(want))
}

/// An Event each time the users left to move cross a thousand, and one when none is left.
pub async fn report_progress(ctx: &Context, hs: &HomeServer, old: &HomeServerStatus, new: &HomeServerStatus) {
    let (Some(before), Some(now)) = (old.users_remaining, new.users_remaining) else { return };
    if now == 0 && before > 0 {
        ctx.event(hs, false, "Drained", "Drain", format!("every user of {} was moved", hs.name_any())).await;
    } else if now / 1000 < before / 1000 {
        let note = format!("{now} users remaining on {} ({} moved since the last report)", hs.name_any(), before - now);
        ctx.event(hs, false, "Draining", "Drain", note).await;
    }
}
