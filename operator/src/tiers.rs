//! The sizing table from the seed (DESIGN.md, "Sizing tiers") and its resolution from a user count.
//!
//! `resolve` turns `CommunicationsDomain.spec.users` into a [`Sizing`]: how many Home Servers,
//! their CPU, memory and volumes, and whether a Front-End fronts them. The user count itself is
//! never rewritten; explicit overrides on a HomeServer or FrontEnd are merged on top by
//! [`home_server_resources`], [`front_end_resources`] and [`volume_size`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Users one Home Server is sized for in the standard and enterprise tiers.
pub const USERS_PER_HOME_SERVER: u64 = 10_000;

/// Front-End replicas the enterprise tier starts with (the seed has one; Parley needs two for availability).
pub const MIN_FRONT_END_REPLICAS: u32 = 2;

/// Per-replica size of a Front-End. The seed's table does not size the proxy; it is stateless and
/// light, so it gets the small tier's CPU and memory.
pub const FRONT_END_CPU: &str = "1";
/// See [`FRONT_END_CPU`].
pub const FRONT_END_MEMORY: &str = "512Mi";

/// The sizing tier a domain resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Up to 1,000 users: one Home Server with 1 CPU and 512Mi, no Front-End.
    Small,
    /// 1,001 to 10,000 users: one Home Server with 2 CPUs and 2Gi, no Front-End.
    Standard,
    /// Over 10,000 users: one Home Server per 10,000 users behind a Front-End.
    Enterprise,
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tier::Small => "small",
            Tier::Standard => "standard",
            Tier::Enterprise => "enterprise",
        })
    }
}

/// What a tier calls for: how many Home Servers, their size, and whether a Front-End fronts them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sizing {
    pub tier: Tier,
    pub home_servers: u32,
    pub cpu: &'static str,
    pub memory: &'static str,
    pub data_volume: &'static str,
    pub logs_volume: &'static str,
    /// Front-End replicas; 0 means clients reach the Home Server directly.
    pub front_end_replicas: u32,
}

impl Sizing {
    /// The size of one Home Server in this tier.
    pub fn size(&self) -> crate::crd::TierSize {
        crate::crd::TierSize {
            cpu: self.cpu.into(),
            memory: self.memory.into(),
            data_volume: self.data_volume.into(),
            logs_volume: self.logs_volume.into(),
        }
    }

    /// Whether the tier puts a Front-End in front of the Home Servers.
    pub fn has_front_end(&self) -> bool {
        self.front_end_replicas > 0
    }
}

pub fn resolve(users: u64) -> Sizing {
    match users {
        0..=1_000 => Sizing {
            tier: Tier::Small,
            home_servers: 1,
            cpu: "1",
            memory: "512Mi",
            data_volume: "20Gi",
            logs_volume: "1Gi",
            front_end_replicas: 0,
        },
        1_001..=10_000 => Sizing {
            tier: Tier::Standard,
            home_servers: 1,
            cpu: "2",
            memory: "2Gi",
            data_volume: "36Gi",
            logs_volume: "36Gi",
            front_end_replicas: 0,
        },
        _ => Sizing {
            tier: Tier::Enterprise,
            home_servers: u32::try_from(users.div_ceil(USERS_PER_HOME_SERVER)).unwrap_or(u32::MAX),
            cpu: "2",
            memory: "2Gi",
            data_volume: "36Gi",
            logs_volume: "36Gi",
            front_end_replicas: MIN_FRONT_END_REPLICAS,
        },
    }
}

/// Requests equal to limits (Guaranteed QoS: a Home Server is never the first to be evicted).
fn guaranteed(cpu: &str, memory: &str) -> ResourceRequirements {
    let both: BTreeMap<String, Quantity> =
        [("cpu".to_string(), Quantity(cpu.to_string())), ("memory".to_string(), Quantity(memory.to_string()))].into();
    ResourceRequirements { requests: Some(both.clone()), limits: Some(both), ..Default::default() }
}

/// Lays `over` on top of `base` key by key: an override of `limits.cpu` replaces only that entry,
/// so a HomeServer that raises its memory keeps the tier's CPU.
pub fn merge_resources(mut base: ResourceRequirements, over: Option<&ResourceRequirements>) -> ResourceRequirements {
    let Some(over) = over else { return base };
    for (target, source) in [(&mut base.requests, &over.requests), (&mut base.limits, &over.limits)] {
        if let Some(source) = source {
            let target = target.get_or_insert_with(BTreeMap::new);
            for (k, v) in source {
                target.insert(k.clone(), v.clone());
            }
        }
    }
    base
}

/// Resources of a Home Server's container: the tier's values, then the HomeServer's overrides.
pub fn home_server_resources(
    size: &crate::crd::TierSize,
    overrides: Option<&ResourceRequirements>,
) -> ResourceRequirements {
    merge_resources(guaranteed(&size.cpu, &size.memory), overrides)
}

/// Resources of a Front-End replica: the default, then the FrontEnd's overrides.
pub fn front_end_resources(overrides: Option<&ResourceRequirements>) -> ResourceRequirements {
    merge_resources(guaranteed(FRONT_END_CPU, FRONT_END_MEMORY), overrides)
}

/// A volume's size: the override when given, else the tier's.
pub fn volume_size(tier_size: &str, over: Option<&Quantity>) -> Quantity {
    over.cloned().unwrap_or_else(|| Quantity(tier_size.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    fn get<'a>(m: &'a Option<BTreeMap<String, Quantity>>, k: &str) -> &'a str {
        &m.as_ref().unwrap()[k].0
    }

    #[test]
    fn boundaries_follow_the_seed() {
        assert_eq!(resolve(1_000).tier, Tier::Small);
        assert_eq!(resolve(1_000).memory, "512Mi");
        assert_eq!(resolve(1_001).tier, Tier::Standard);
        assert_eq!(resolve(10_000).tier, Tier::Standard);
        assert_eq!(resolve(10_000).front_end_replicas, 0);
        let big = resolve(10_001);
        assert_eq!((big.tier, big.home_servers, big.front_end_replicas), (Tier::Enterprise, 2, 2));
        assert_eq!(resolve(25_000).home_servers, 3);
    }

    #[test]
    fn every_boundary_resolves_every_column() {
        // (users, tier, home servers, cpu, memory, data, logs, front-end replicas)
        let table = [
            (1, Tier::Small, 1, "1", "512Mi", "20Gi", "1Gi", 0),
            (1_000, Tier::Small, 1, "1", "512Mi", "20Gi", "1Gi", 0),
            (1_001, Tier::Standard, 1, "2", "2Gi", "36Gi", "36Gi", 0),
            (10_000, Tier::Standard, 1, "2", "2Gi", "36Gi", "36Gi", 0),
            (10_001, Tier::Enterprise, 2, "2", "2Gi", "36Gi", "36Gi", 2),
            (20_000, Tier::Enterprise, 2, "2", "2Gi", "36Gi", "36Gi", 2),
            (20_001, Tier::Enterprise, 3, "2", "2Gi", "36Gi", "36Gi", 2),
            (25_000, Tier::Enterprise, 3, "2", "2Gi", "36Gi", "36Gi", 2),
        ];
        for (users, tier, hs, cpu, mem, data, logs, fe) in table {
            let s = resolve(users);
            assert_eq!(
                (s.tier, s.home_servers, s.cpu, s.memory, s.data_volume, s.logs_volume, s.front_end_replicas),
                (tier, hs, cpu, mem, data, logs, fe),
                "users = {users}"
            );
            assert_eq!(s.has_front_end(), fe > 0);
        }
    }

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        assert_eq!(resolve(u64::MAX).home_servers, u32::MAX);
    }

    #[test]
    fn tier_resources_set_requests_equal_to_limits() {
        let r = home_server_resources(&resolve(500).size(), None);
        assert_eq!(get(&r.requests, "cpu"), "1");
        assert_eq!(get(&r.limits, "cpu"), "1");
        assert_eq!(get(&r.requests, "memory"), "512Mi");
        assert_eq!(get(&r.limits, "memory"), "512Mi");
        let r = home_server_resources(&resolve(25_000).size(), None);
        assert_eq!(get(&r.limits, "cpu"), "2");
        assert_eq!(get(&r.limits, "memory"), "2Gi");
    }

    #[test]
    fn overrides_win_key_by_key() {
        let over = ResourceRequirements {
            limits: Some([("memory".to_string(), q("4Gi"))].into()),
            requests: Some([("cpu".to_string(), q("500m"))].into()),
            ..Default::default()
        };
        let r = home_server_resources(&resolve(5_000).size(), Some(&over));
        assert_eq!(get(&r.limits, "memory"), "4Gi");
        assert_eq!(get(&r.limits, "cpu"), "2", "tier value kept where not overridden");
        assert_eq!(get(&r.requests, "cpu"), "500m");
        assert_eq!(get(&r.requests, "memory"), "2Gi");
    }

    #[test]
    fn overrides_may_add_resources_the_tier_does_not_set() {
        let over = ResourceRequirements {
            limits: Some([("ephemeral-storage".to_string(), q("1Gi"))].into()),
            ..Default::default()
        };
        let r = front_end_resources(Some(&over));
        assert_eq!(get(&r.limits, "ephemeral-storage"), "1Gi");
        assert_eq!(get(&r.limits, "cpu"), FRONT_END_CPU);
        assert_eq!(get(&r.requests, "memory"), FRONT_END_MEMORY);
    }

    #[test]
    fn volume_overrides_win() {
        assert_eq!(volume_size("20Gi", None), q("20Gi"));
        assert_eq!(volume_size("20Gi", Some(&q("100Gi"))), q("100Gi"));
    }
}
