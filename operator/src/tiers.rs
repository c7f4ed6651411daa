//! The sizing table from the seed (DESIGN.md, "Sizing tiers") and its resolution from a user count.

use serde::Serialize;

/// Users one Home Server is sized for in the standard and enterprise tiers.
pub const USERS_PER_HOME_SERVER: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Small,
    Standard,
    Enterprise,
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
            front_end_replicas: 2,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_follow_the_seed() {
        assert_eq!(resolve(1_000).tier, Tier::Small);
        assert_eq!(resolve(1_000).memory, "512Mi");
        assert_eq!(resolve(1_001).tier, Tier::Standard);
        assert_eq!(resolve(10_000).tier, Tier::Standard);
        assert_eq!(resolve(10_000).front_end_replicas, 0);
        let big = resolve(10_001);
        assert_eq!(
            (big.tier, big.home_servers, big.front_end_replicas),
            (Tier::Enterprise, 2, 2)
        );
        assert_eq!(resolve(25_000).home_servers, 3);
    }
}
