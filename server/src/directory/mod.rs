//! Where users live: one trait, a file backend for standalone servers (the embedded default) and,
//! in its own module, an LDAP backend for production.

pub mod cache;
pub mod file;
pub mod ldap;
pub mod ldap_client;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// What the server needs to know about a user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Address of record without scheme, lower-case: `alice@example.test`.
    pub address: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Name of the Home Server this user is homed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_server: Option<String>,
    /// Digest HA1 = MD5(username:realm:password), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha1_md5: Option<String>,
    /// Digest HA1 = SHA-256(username:realm:password), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha1_sha256: Option<String>,
}

fn yes() -> bool {
    true
}

impl User {
    /// The digest username: the user part of the address.
    pub fn username(&self) -> &str {
        self.address.split_once('@').map_or(self.address.as_str(), |(u, _)| u)
    }
}

/// The capacity of a Home Server whose directory entry names none (`prep enterprise
/// --home-server NAME=HOST:PORT,capacity=N` sets it).
pub const DEFAULT_CAPACITY: u64 = 10_000;

/// What a Home Server publishes about its share of the users, from the directory (not from who
/// is registered): the enabled users homed on it, and how many it may be given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub homed: u64,
    pub capacity: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The directory could not be reached or did not answer in time: answer 503, retry later.
    #[error("directory unavailable: {0}")]
    Unavailable(String),
}

/// Lookups the SIP core makes. Implementations cache as they see fit and never block for long.
pub trait Directory: Send + Sync {
    /// Finds a user by address of record (`user@domain`, lower-case host).
    fn find_user<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<Option<User>, DirectoryError>>;

    /// The answer about a user when it is at hand (a file, a cache), or `None` when only
    /// `find_user` can tell. Polling `find_user` once for this would not do: where it must ask a
    /// server, the request leaves on that poll, and dropping the future leaves its answer to
    /// arrive for no one while the lookup is made again.
    fn user_at_hand(&self, _address: &str) -> Option<Result<Option<User>, DirectoryError>> {
        None
    }

    /// The SIP domains whose users this directory holds (the domain itself and those admitted
    /// with `prep domainadd`), lower-case.
    fn domains(&self) -> BoxFuture<'_, Result<Vec<String>, DirectoryError>>;

    /// Whether the directory currently answers (drives `/readyz`).
    fn is_ready(&self) -> BoxFuture<'_, bool>;

    /// Drops any cached answer about a user, so that the next lookup reads the directory (a
    /// user just moved to another Home Server).
    fn forget(&self, _address: &str) {}

    /// The enabled users homed on Home Server `server`, and its capacity.
    fn load<'a>(&'a self, server: &'a str) -> BoxFuture<'a, Result<Load, DirectoryError>>;
}
