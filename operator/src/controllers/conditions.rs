//! Status conditions whose `lastTransitionTime` only moves when their status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition as a reconcile decides it, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Want {
    pub fn new(type_: &'static str, status: bool, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { type_, status, reason: reason.into(), message: message.into() }
    }
}

/// The conditions to write: `want` in order, keeping each old condition's `lastTransitionTime`
/// while its status stays the same, so a steady state rewrites nothing.
pub fn merge(old: &[Condition], want: &[Want], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    want.iter()
        .map(|w| {
            let status = if w.status { "True" } else { "False" };
            let previous = old.iter().find(|c| c.type_ == w.type_);
            let last_transition_time = match previous {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: w.type_.to_string(),
                status: status.to_string(),
                reason: w.reason.clone(),
                message: w.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Conditions whose status differs between `old` and `new` (for Events on transitions).
pub fn transitions<'a>(old: &[Condition], new: &'a [Condition]) -> Vec<&'a Condition> {
    new.iter()
        .filter(|n| old.iter().find(|o| o.type_ == n.type_).map(|o| o.status != n.status).unwrap_or(true))
        .collect()
}

/// Whether the condition `type_` is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let first = merge(&[], &[Want::new("Ready", false, "Progressing", "starting")], Some(1), at(100));
        assert_eq!(first[0].last_transition_time, Time(at(100)));
        let same = merge(&first, &[Want::new("Ready", false, "Progressing", "still starting")], Some(2), at(200));
        assert_eq!(same[0].last_transition_time, Time(at(100)));
        assert_eq!(same[0].observed_generation, Some(2));
        assert_eq!(same[0].message, "still starting");
        let flipped = merge(&same, &[Want::new("Ready", true, "Running", "")], Some(2), at(300));
        assert_eq!(flipped[0].last_transition_time, Time(at(300)));
        assert_eq!(transitions(&same, &flipped).len(), 1);
        assert!(transitions(&flipped, &flipped).is_empty());
        assert!(is_true(&flipped, "Ready"));
    }
}
