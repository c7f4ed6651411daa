//! Why a workload's pod is not ready, in the words of the scheduler, the kubelet and the pod's
//! Events, for the Ready condition of HomeServers and FrontEnds.

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::ListParams;

use super::Context;

/// Why a pod is not ready, read from the API server (None: nothing to say beyond "waiting").
pub async fn why_not_ready(ctx: &Context, ns: &str, pod: &str) -> Option<String> {
    let p = Api::<Pod>::namespaced(ctx.client.clone(), ns).get_opt(pod).await.ok()?;
    let selector = format!("involvedObject.kind=Pod,involvedObject.name={pod}");
    let events = Api::<Event>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().fields(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    explain_pod(pod, p.as_ref(), &events)
}

/// What keeps a pod from running, from its conditions, its container's state and its Events: a
/// Secret or volume that cannot be mounted, a pod no node can take (e.g. `Insufficient cpu`), an
/// image that cannot be had, a container that keeps crashing.
pub fn explain_pod(name: &str, pod: Option<&Pod>, events: &[Event]) -> Option<String> {
    let Some(pod) = pod else { return Some(format!("waiting for pod {name} to be created")) };
    let status = pod.status.as_ref()?;
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| c.message.clone().unwrap_or_default());
    if let Some(why) = unscheduled {
        return Some(format!("pod {name} cannot be scheduled: {}", why.trim()));
    }
    // The newest warning about mounting or pulling says more than "ContainerCreating".
    let newest_warning = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| matches!(e.reason.as_deref(), Some("FailedMount" | "Failed" | "FailedCreatePodSandBox")))
        .max_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0).or(e.event_time.as_ref().map(|t| t.0)));
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref().map(|w| (c.name.clone(), w.clone())));
    match (waiting, newest_warning) {
        (Some((_, w)), Some(e)) if w.reason.as_deref() == Some("ContainerCreating") || w.reason.is_none() => {
            Some(format!(
                "pod {name}: {}: {}",
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default().trim()
            ))
        }
        (Some((container, w)), _) if w.reason.as_deref() != Some("ContainerCreating") => Some(format!(
            "pod {name}: container {container} is waiting: {}{}",
            w.reason.unwrap_or_default(),
            w.message.map(|m| format!(": {}", m.trim())).unwrap_or_default()
        )),
        (None, Some(e)) if status.phase.as_deref() == Some("Pending") => Some(format!(
            "pod {name}: {}: {}",
            e.reason.clone().unwrap_or_default(),
            e.message.clone().unwrap_or_default().trim()
        )),
        _ => None,
    }
}

/// Why the first not-ready pod among those `selector` (`k=v,...`) matches is not ready.
pub async fn why_any_not_ready(ctx: &Context, ns: &str, selector: &str) -> Option<String> {
    let pods =
        Api::<Pod>::namespaced(ctx.client.clone(), ns).list(&ListParams::default().labels(selector)).await.ok()?;
    let waiting = pods.items.into_iter().find(|p| {
        !p.status.iter().flat_map(|s| s.conditions.iter().flatten()).any(|c| c.type_ == "Ready" && c.status == "True")
    })?;
    why_not_ready(ctx, ns, &waiting.metadata.name?).await
}

/// The end of a failed Job pod's log (its termination message), newest pod first.
pub async fn job_pod_message(pods: &Api<Pod>, job: &str) -> Result<Option<String>, kube::Error> {
    let mut list = pods.list(&ListParams::default().labels(&format!("job-name={job}"))).await?.items;
    list.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.clone()));
    Ok(list.iter().find_map(|p| {
        let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
        statuses.iter().find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_what_the_pod_waits_for() {
        let pod = |v: serde_json::Value| -> Pod { serde_json::from_value(v).unwrap() };
        let event = |reason: &str, message: &str| -> Event {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "h-0"},
                "type": "Warning", "reason": reason, "message": message,
                "lastTimestamp": "2026-12-02T06:00:00Z"
            }))
            .unwrap()
        };
        assert_eq!(explain_pod("h-0", None, &[]).unwrap(), "waiting for pod h-0 to be created");
        let unschedulable = pod(serde_json::json!({"metadata": {"name": "h-0"}, "status": {"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient cpu."}]}}));
        let why = explain_pod("h-0", Some(&unschedulable), &[]).unwrap();
        assert!(why.contains("cannot be scheduled") && why.contains("Insufficient cpu"), "{why}");
        let creating = pod(serde_json::json!({"metadata": {"name": "h-0"}, "status": {"phase": "Pending",
            "containerStatuses": [{"name": "server", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]}}));
        let mount = event("FailedMount", "MountVolume.SetUp failed for volume \"tls\" : secret \"h-tls\" not found");
        let why = explain_pod("h-0", Some(&creating), std::slice::from_ref(&mount)).unwrap();
        assert!(why.contains("FailedMount") && why.contains("secret \"h-tls\" not found"), "{why}");
        let crashing = pod(serde_json::json!({"metadata": {"name": "h-0"}, "status": {"phase": "Running",
            "containerStatuses": [{"name": "server", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}}}]}}));
        let why = explain_pod("h-0", Some(&crashing), &[]).unwrap();
        assert!(why.contains("container server is waiting: CrashLoopBackOff: back-off 40s"), "{why}");
        assert_eq!(explain_pod("h-0", Some(&creating), &[]), None, "nothing more to say than waiting");
    }
}
