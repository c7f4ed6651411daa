//! `kubectl drain` of a node that runs a Home Server's pod. The Home Server's PodDisruptionBudget
//! refuses the eviction (its users have no other server), so the drain waits; the operator then
//! restarts the pod itself, the way a rollout would: only when every other server of the domain
//! runs ready, one Home Server at a time. The StatefulSet recreates the pod on a schedulable node
//! (where its volume can follow), the drain completes, and the Front-End answers the Home
//! Server's users 503 with Retry-After for the restart.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use tracing::debug;

use super::super::conditions::is_true;
use super::super::{Context, Result};
use crate::crd::condition::READY;
use crate::crd::{FrontEnd, HomeServer};

/// What was done about `hs`'s pod on a cordoned node, for the log and the status.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pod runs on a schedulable node (or has none yet, or the node cannot be read).
    Stays,
    /// Its node is cordoned; the pod waits until the domain's other servers are ready.
    Waits { node: String, waiting_for: Vec<String> },
    /// Its node is cordoned and the pod was deleted, to start elsewhere.
    Moved { node: String },
}

/// The domain's servers other than `hs` that are not ready: while any is down, moving `hs` too
/// would take a second group of users offline.
pub fn others_not_ready(hs: &str, home_servers: &[HomeServer], front_ends: &[FrontEnd]) -> Vec<String> {
    let homes = home_servers
        .iter()
        .filter(|h| h.name_any() != hs)
        .filter(|h| !h.status.as_ref().is_some_and(|s| is_true(&s.conditions, READY)))
        .map(|h| h.name_any());
    let fronts = front_ends
        .iter()
        .filter(|f| !f.status.as_ref().is_some_and(|s| is_true(&s.conditions, READY)))
        .map(|f| f.name_any());
    fronts.chain(homes).collect()
}

/// Moves the pod of `hs` off a cordoned node when the domain's other servers (`home_servers`,
/// `front_ends`) are ready.
pub async fn reconcile(
    ctx: &Context,
    hs: &HomeServer,
    home_servers: &[HomeServer],
    front_ends: &[FrontEnd],
) -> Result<Outcome> {
    let ns = hs.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod_name = format!("{}-0", hs.name_any());
    let Some(pod) = pods.get_opt(&pod_name).await? else { return Ok(Outcome::Stays) };
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else { return Ok(Outcome::Stays) };
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(Outcome::Stays);
    }
    let cordoned = match Api::<Node>::all(ctx.client.clone()).get_opt(&node).await {
        Ok(n) => n.and_then(|n| n.spec).and_then(|s| s.unschedulable).unwrap_or(false),
        // Without the right to read nodes (an installation that did not grant it), drains are the
        // administrator's to handle.
        Err(kube::Error::Api(e)) if e.code == 403 => {
            debug!(node, "may not read nodes: a drained node's Home Server is not moved");
            false
        }
        Err(e) => return Err(e.into()),
    };
    if !cordoned {
        return Ok(Outcome::Stays);
    }
    let waiting_for = others_not_ready(&hs.name_any(), home_servers, front_ends);
    if !waiting_for.is_empty() {
        return Ok(Outcome::Waits { node, waiting_for });
    }
    pods.delete(&pod_name, &DeleteParams::default()).await?;
    let note = format!("node {node} is cordoned (being drained): restarted pod {pod_name} to run elsewhere");
    ctx.event(hs, false, "MovingOffNode", "Restart", note).await;
    Ok(Outcome::Moved { node })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures;

    #[test]
    fn a_pod_moves_only_while_every_other_server_is_ready() {
        let homes = [fixtures::home_server("corp-home-1", "corp"), fixtures::home_server("corp-home-2", "corp")];
        assert_eq!(others_not_ready("corp-home-1", &homes, &[]), ["corp-home-2"], "no status: not ready");
        assert!(others_not_ready("corp-home-1", &homes[..1], &[]).is_empty(), "alone: nothing to wait for");
        let fe = fixtures::front_end("corp-frontend", "corp");
        assert_eq!(others_not_ready("corp-home-1", &homes[..1], &[fe]), ["corp-frontend"]);
    }
}
