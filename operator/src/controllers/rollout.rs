//! Rolling a new pod spec (a new image, a changed config, a renewed certificate) through a
//! domain without taking its users down: the Front-End first (its Deployment replaces one replica
//! at a time, `maxUnavailable: 0`), then the Home Servers one at a time in index order, each only
//! when every server before it runs the domain's current resolution and is ready. A Home Server
//! whose turn has not come keeps its running pod spec; everything else about it is applied.
//!
//! A server records the resolution it rolled to (`status.rolledGeneration`); the turn is decided
//! from those records alone, so the pure functions here take the servers as they are.

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::ResourceExt;

use super::conditions::{Want, is_true};
use crate::build::TEMPLATE_HASH_ANNOTATION;
use crate::crd::condition::{READY, UP_TO_DATE};
use crate::crd::{FrontEnd, HomeServer};

fn template_hash(sts: &StatefulSet) -> Option<&str> {
    sts.metadata.annotations.as_ref()?.get(TEMPLATE_HASH_ANNOTATION).map(String::as_str)
}

/// Whether `desired` would change the pod of the running `live` StatefulSet.
pub fn changes_pod(desired: &StatefulSet, live: Option<&StatefulSet>) -> bool {
    live.is_some_and(|l| template_hash(l) != template_hash(desired))
}

/// Keeps `live`'s pod spec (and its hash) in `desired`: the change waits for its turn.
pub fn hold(desired: &mut StatefulSet, live: &StatefulSet) {
    if let (Some(d), Some(l)) = (desired.spec.as_mut(), live.spec.as_ref()) {
        d.template = l.template.clone();
    }
    let kept = template_hash(live).map(str::to_string);
    let annotations = desired.metadata.annotations.get_or_insert_default();
    match kept {
        Some(h) => annotations.insert(TEMPLATE_HASH_ANNOTATION.into(), h),
        None => annotations.remove(TEMPLATE_HASH_ANNOTATION),
    };
}

/// The order Home Servers roll in: by the number ending their name (`corp-home-2` before
/// `corp-home-10`), then by name.
fn order_key(name: &str) -> (u64, String) {
    (name.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX), name.to_string())
}

/// The servers `home_server` waits for before it may roll to the resolution `generation`: the
/// domain's Front-Ends and the Home Servers before it that do not run `generation` ready yet.
/// Empty: its turn. `home_servers` and `front_ends` are the domain's.
pub fn waiting_for(
    home_server: &str,
    generation: i64,
    home_servers: &[HomeServer],
    front_ends: &[FrontEnd],
) -> Vec<String> {
    let rolled = |g: Option<i64>, conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
        g == Some(generation) && is_true(conditions, READY)
    };
    let me = order_key(home_server);
    let fronts = front_ends.iter().filter(|f| {
        let s = f.status.clone().unwrap_or_default();
        !rolled(s.rolled_generation, &s.conditions)
    });
    let mut before: Vec<&HomeServer> = home_servers
        .iter()
        .filter(|h| h.metadata.deletion_timestamp.is_none() && order_key(&h.name_any()) < me)
        .filter(|h| {
            let s = h.status.clone().unwrap_or_default();
            !rolled(s.rolled_generation, &s.conditions)
        })
        .collect();
    before.sort_by_key(|h| order_key(&h.name_any()));
    fronts.map(|f| f.name_any()).chain(before.into_iter().map(|h| h.name_any())).collect()
}

/// The `UpToDate` condition of a Home Server built from the resolution `generation`, whose pod
/// change is `held` back for the servers named (or not), and whose pod is `ready`; with the
/// generation it has now rolled to, if it has.
pub fn up_to_date(held: Option<&[String]>, ready: bool, generation: i64) -> (Want, Option<i64>) {
    match held {
        Some(waiting) => {
            let why =
                format!("a new pod spec waits until {} run the domain's current settings, ready", waiting.join(", "));
            (Want::new(UP_TO_DATE, false, "WaitingForTurn", why), None)
        }
        None if ready => {
            (Want::new(UP_TO_DATE, true, "Current", "the pod runs the current pod spec"), Some(generation))
        }
        None => (Want::new(UP_TO_DATE, false, "Rolling", "the pod is being replaced or started"), None),
    }
}

/// Where a rollout to `generation` stands, for the domain's status; `None` unless some server's
/// pod is being replaced for it: a Home Server whose `UpToDate` is False, or a Front-End not
/// ready that has not rolled to it (a spec change that leaves the pods alone is no rollout).
pub fn progress(generation: i64, home_servers: &[HomeServer], front_ends: &[FrontEnd]) -> Option<String> {
    let condition_false = |conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition], t: &str| {
        conditions.iter().any(|c| c.type_ == t && c.status == "False")
    };
    let mut servers: Vec<(String, Option<i64>, bool)> = front_ends
        .iter()
        .map(|f| {
            let s = f.status.clone().unwrap_or_default();
            let pending = s.rolled_generation.is_some_and(|g| g < generation) && condition_false(&s.conditions, READY);
            (f.name_any(), s.rolled_generation, pending)
        })
        .collect();
    let mut homes: Vec<(String, Option<i64>, bool)> = home_servers
        .iter()
        .map(|h| {
            let s = h.status.clone().unwrap_or_default();
            let pending = s.rolled_generation.is_some() && condition_false(&s.conditions, UP_TO_DATE);
            (h.name_any(), s.rolled_generation, pending)
        })
        .collect();
    homes.sort_by_key(|(n, _, _)| order_key(n));
    servers.extend(homes);
    if !servers.iter().any(|(_, _, pending)| *pending) {
        return None;
    }
    let done: Vec<&str> =
        servers.iter().filter(|(_, g, p)| *g == Some(generation) && !p).map(|(n, _, _)| n.as_str()).collect();
    let left: Vec<&str> =
        servers.iter().filter(|(_, g, p)| *g != Some(generation) || *p).map(|(n, _, _)| n.as_str()).collect();
    Some(format!(
        "rolling out generation {generation}: {} of {} servers done{}; now {}{}",
        done.len(),
        servers.len(),
        if done.is_empty() { String::new() } else { format!(" ({})", done.join(", ")) },
        left[0],
        if left.len() > 1 { format!(", then {}", left[1..].join(", ")) } else { String::new() },
    ))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::build::fixtures;
    use crate::crd::{FrontEndStatus, HomeServerStatus};

    fn ready(status: bool) -> Vec<Condition> {
        vec![Condition {
            type_: READY.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: String::new(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }]
    }

    fn hs(name: &str, rolled: i64, is_ready: bool) -> HomeServer {
        let mut h = fixtures::home_server(name, "corp");
        h.status = Some(HomeServerStatus {
            rolled_generation: Some(rolled),
            conditions: ready(is_ready),
            ..Default::default()
        });
        h
    }

    fn fe(rolled: i64, is_ready: bool) -> FrontEnd {
        let mut f = fixtures::front_end("corp-frontend", "corp");
        f.status =
            Some(FrontEndStatus { rolled_generation: Some(rolled), conditions: ready(is_ready), ..Default::default() });
        f
    }

    #[test]
    fn the_front_end_rolls_first_then_home_servers_one_at_a_time_in_index_order() {
        let homes = [hs("corp-home-10", 1, true), hs("corp-home-2", 1, true), hs("corp-home-1", 1, true)];
        assert_eq!(waiting_for("corp-home-1", 2, &homes, &[fe(1, true)]), ["corp-frontend"]);
        assert_eq!(waiting_for("corp-home-1", 2, &homes, &[fe(2, true)]), Vec::<String>::new());
        assert_eq!(waiting_for("corp-home-10", 2, &homes, &[fe(2, true)]), ["corp-home-1", "corp-home-2"]);
        let homes = [hs("corp-home-10", 1, true), hs("corp-home-2", 2, false), hs("corp-home-1", 2, true)];
        assert_eq!(waiting_for("corp-home-10", 2, &homes, &[fe(2, true)]), ["corp-home-2"], "rolled but not ready");
        let homes = [hs("corp-home-10", 1, true), hs("corp-home-2", 2, true), hs("corp-home-1", 2, true)];
        assert!(waiting_for("corp-home-10", 2, &homes, &[fe(2, true)]).is_empty());
        assert!(waiting_for("corp-home-1", 2, &homes, &[]).is_empty(), "no Front-End: the first Home Server goes");
    }

    #[test]
    fn a_held_change_keeps_the_running_pod_spec_and_its_hash() {
        let d = fixtures::domain("corp", 500);
        let live = crate::build::home_server::build(&fixtures::home_server("h", "corp"), &fixtures::ctx(&d))
            .unwrap()
            .stateful_set;
        let mut d2 = d.clone();
        d2.spec.image = Some("parley-server:2".into());
        let mut desired = crate::build::home_server::build(&fixtures::home_server("h", "corp"), &fixtures::ctx(&d2))
            .unwrap()
            .stateful_set;
        assert!(changes_pod(&desired, Some(&live)));
        assert!(!changes_pod(&desired, None), "a new StatefulSet is not a rollout");
        hold(&mut desired, &live);
        assert!(!changes_pod(&desired, Some(&live)));
        assert_eq!(desired.spec.as_ref().unwrap().template, live.spec.as_ref().unwrap().template);
    }

    #[test]
    fn progress_names_what_is_done_and_what_comes_and_only_while_a_pod_is_replaced() {
        let mut waiting = hs("corp-home-2", 1, true);
        let conditions = &mut waiting.status.as_mut().unwrap().conditions;
        conditions.push(Condition { type_: UP_TO_DATE.into(), status: "False".into(), ..ready(false).remove(0) });
        let homes = [waiting, hs("corp-home-1", 2, true)];
        assert_eq!(
            progress(2, &homes, &[fe(2, true)]).unwrap(),
            "rolling out generation 2: 2 of 3 servers done (corp-frontend, corp-home-1); now corp-home-2"
        );
        // A new generation no pod changes for (say, more users): nothing rolls.
        assert_eq!(progress(3, &[hs("corp-home-1", 2, true)], &[fe(2, true)]), None);
        let mut new = fixtures::home_server("corp-home-1", "corp");
        new.status = None;
        assert_eq!(progress(2, &[new], &[]), None, "a domain being created is not upgrading");
    }
}
