//! The domain's directory-prep Jobs on the API server; the order and the conditions are decided
//! by [`build::prep::sequence`]; a managed directory's Jobs wait for its pod ([`build::prep::hold_for_directory`]).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::super::apply::{ApplySet, delete};
use super::super::conditions::Want;
use super::super::{Context, Result};
use crate::build::{DOMAIN_LABEL, Owner, prep};
use crate::crd::{CommunicationsDomain, PreparedStep, ResolvedDomain};

/// The prep conditions and what the status remembers.
pub struct PrepOutcome {
    pub conditions: Vec<Want>,
    pub prepared: Vec<PreparedStep>,
    /// Every step succeeded: the domain's workloads may run. Until then a change of a Job, of the
    /// directory's StatefulSet or of a Secret the domain names brings the next reconcile.
    pub done: bool,
}

/// Creates the generated service-account Secret once, runs the next prep Job of the domain
/// `owner` and reports.
pub async fn reconcile(
    ctx: &Context,
    set: &mut ApplySet<'_, CommunicationsDomain>,
    owner: &Owner,
    resolved: &ResolvedDomain,
    prepared: &[PreparedStep],
    directory_waiting: Option<&str>,
) -> Result<PrepOutcome> {
    let Some(ldap) = &resolved.directory.ldap else {
        // A file directory: nothing to read or write.
        let plan = prep::sequence(owner, resolved, &BTreeMap::new(), prepared)?;
        return Ok(PrepOutcome { conditions: plan.conditions, prepared: plan.prepared, done: plan.done });
    };
    let ns = &owner.namespace;
    if ldap.password_generated {
        // Made once and kept: a new password would lock the running servers out.
        let name = prep::generated_service_account_secret_name(&owner.name);
        set.generate_once(&name, |password| prep::service_account_secret(owner, password)).await?;
    }

    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!("{DOMAIN_LABEL}={},app.kubernetes.io/component=directory-prep", owner.name);
    let mut observed = BTreeMap::new();
    for job in jobs.list(&ListParams::default().labels(&selector)).await?.items {
        let failed = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Failed" && c.status == "True"));
        let message = if failed { super::super::pods::job_pod_message(&pods, &job.name_any()).await? } else { None };
        observed.insert(job.name_any(), prep::observe(&job, message));
    }
    let mut plan = prep::sequence(owner, resolved, &observed, prepared)?;
    if let Some(why) = directory_waiting {
        // A managed directory whose pod is not ready: the next Job would only fail.
        prep::hold_for_directory(&mut plan, why);
    }
    for gone in &plan.delete {
        delete(&jobs, gone).await?;
    }
    // The Jobs that ran and still count; any other Job of the domain's (one of an additional
    // domain no longer listed) is pruned.
    for job in observed.keys().filter(|j| !plan.delete.contains(j)) {
        set.keep::<Job>(job);
    }
    if let Some(job) = &plan.create {
        set.apply(job).await?;
    }
    Ok(PrepOutcome { conditions: plan.conditions, prepared: plan.prepared, done: plan.done })
}
