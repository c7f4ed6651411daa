//! The managed directory on the API server (`spec.directory.managed`): its admin Secret (made
//! once), its ConfigMap, Service and StatefulSet (built by [`build::directory`]), and whether its
//! pod is ready, which the prep Jobs wait for.

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;

use super::super::apply::ApplySet;
use super::super::conditions::Want;
use super::super::{Context, Result, pods};
use crate::build::directory::{self, DirectoryInput};
use crate::build::{Owner, sha256_hex, tls_secret_name};
use crate::crd::condition::DIRECTORY_READY;
use crate::crd::{CommunicationsDomain, ResolvedDomain};

/// The `DirectoryReady` verdict, and what the prep Jobs wait for while it is False.
pub struct DirectoryOutcome {
    pub want: Want,
    pub waiting: Option<String>,
}

/// Makes sure the managed directory of the domain `owner` exists as built, and reports on its pod.
pub async fn reconcile(
    ctx: &Context,
    set: &mut ApplySet<'_, CommunicationsDomain>,
    owner: &Owner,
    resolved: &ResolvedDomain,
) -> Result<DirectoryOutcome> {
    let (name, ns) = (&owner.name, owner.namespace.as_str());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let admin = directory::admin_secret_name(name);
    // Made once and kept: the directory holds this password from its first start on.
    set.generate_once(&admin, |password| directory::admin_secret(owner, &resolved.sip_domain, password)).await?;
    let sts_name = directory::name(name);
    // slapd reads its certificate at start: a renewed one rolls the pod (the hash is in its template).
    let tls_hash = secrets
        .get_opt(&tls_secret_name(&sts_name))
        .await?
        .and_then(|s| s.data)
        .and_then(|data| data.get("tls.crt").map(|c| sha256_hex(&c.0)));
    let input = DirectoryInput { owner, domain: resolved, image: &ctx.settings.directory_image, tls_hash };
    let objects = directory::build(&input)?;
    set.apply(&objects.config_map).await?;
    set.apply(&objects.service).await?;
    set.apply(&objects.stateful_set).await?;

    let pod = format!("{sts_name}-0");
    let live = Api::<Pod>::namespaced(ctx.client.clone(), ns).get_opt(&pod).await?;
    let ready = live
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if ready {
        let url = directory::url(name, ns);
        return Ok(DirectoryOutcome {
            want: Want::new(DIRECTORY_READY, true, "PodReady", format!("pod {pod} serves {url}")),
            waiting: None,
        });
    }
    let why = pods::why_not_ready(ctx, ns, &pod).await.unwrap_or_else(|| format!("waiting for pod {pod} to be ready"));
    Ok(DirectoryOutcome { want: Want::new(DIRECTORY_READY, false, "Waiting", why.clone()), waiting: Some(why) })
}
