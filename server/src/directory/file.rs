//! The file directory: a TOML list of users, read once at start.
//!
//! ```toml
//! [[users]]
//! address = "alice@example.test"
//! ha1_md5 = "..."      # printed by `parley-server user hash`
//! ha1_sha256 = "..."
//! ```

use super::{DEFAULT_CAPACITY, Directory, DirectoryError, Load, User};
use anyhow::{Context, bail};
use futures::future::BoxFuture;
use hashbrown::HashTable;
use serde::Deserialize;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<User>,
}

pub struct FileDirectory {
    /// By address, held once (a map would hold each address twice: a million users' file is
    /// the largest thing a Home Server holds after its subscriptions).
    users: HashTable<Box<Entry>>,
    hasher: RandomState,
    /// The users' domains, sorted: the file is read once, so this is computed once (servers ask
    /// every second).
    domains: Vec<String>,
}

/// A user as held: HA1s as bytes, and boxed, so the table's buckets (twice as many as users,
/// at worst) hold a pointer each. About 150 bytes per user in all.
struct Entry {
    address: Box<str>,
    home_server: Option<Box<str>>,
    ha1_md5: Option<[u8; 16]>,
    ha1_sha256: Option<[u8; 32]>,
    enabled: bool,
}

impl Entry {
    fn new(user: User) -> anyhow::Result<Entry> {
        fn decode<const N: usize>(address: &str, name: &str, hex: Option<String>) -> anyhow::Result<Option<[u8; N]>> {
            let Some(hex) = hex else { return Ok(None) };
            let mut bytes = [0; N];
            match hex::decode_to_slice(&hex, &mut bytes) {
                Ok(()) => Ok(Some(bytes)),
                Err(_) => bail!("user {address}: {name} must be {} hex digits", 2 * N),
            }
        }
        let address = user.address.trim_start_matches("sip:").to_ascii_lowercase();
        if !address.contains('@') {
            bail!("user address {address:?} is not user@domain");
        }
        let ha1_md5 = decode(&address, "ha1_md5", user.ha1_md5)?;
        let ha1_sha256 = decode(&address, "ha1_sha256", user.ha1_sha256)?;
        if ha1_md5.is_none() && ha1_sha256.is_none() {
            bail!("user {address} has neither ha1_md5 nor ha1_sha256");
        }
        let home_server = user.home_server.map(String::into_boxed_str);
        Ok(Entry { address: address.into(), home_server, ha1_md5, ha1_sha256, enabled: user.enabled })
    }

    fn user(&self) -> User {
        User {
            address: self.address.to_string(),
            enabled: self.enabled,
            home_server: self.home_server.as_ref().map(|h| h.to_string()),
            ha1_md5: self.ha1_md5.map(hex::encode),
            ha1_sha256: self.ha1_sha256.map(hex::encode),
        }
    }
}

impl FileDirectory {
    pub fn load(path: &Path) -> anyhow::Result<FileDirectory> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading users file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in users file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<FileDirectory> {
        let file: UsersFile = toml::from_str(text)?;
        let hasher = RandomState::new();
        let mut users: HashTable<Box<Entry>> = HashTable::with_capacity(file.users.len());
        for user in file.users {
            let entry = Entry::new(user)?;
            let hash = hasher.hash_one(&*entry.address);
            match users.entry(hash, |e| e.address == entry.address, |e| hasher.hash_one(&*e.address)) {
                hashbrown::hash_table::Entry::Occupied(_) => bail!("user {} is listed twice", entry.address),
                hashbrown::hash_table::Entry::Vacant(slot) => {
                    slot.insert(Box::new(entry));
                }
            }
        }
        let mut domains: Vec<String> =
            users.iter().filter_map(|e| e.address.rsplit_once('@').map(|(_, d)| d.to_string())).collect();
        domains.sort();
        domains.dedup();
        Ok(FileDirectory { users, hasher, domains })
    }

    fn get(&self, address: &str) -> Option<&Entry> {
        self.users.find(self.hasher.hash_one(address), |e| &*e.address == address).map(|e| &**e)
    }
}

impl Directory for FileDirectory {
    fn find_user<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<Option<User>, DirectoryError>> {
        Box::pin(async move { Ok(self.get(address).map(Entry::user)) })
    }

    fn domains(&self) -> BoxFuture<'_, Result<Vec<String>, DirectoryError>> {
        let domains = self.domains.clone();
        Box::pin(async move { Ok(domains) })
    }

    fn is_ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }

    /// Users of the file homed on `server`, or on no server in particular (a standalone server
    /// serves them all); the file names no capacity.
    fn load<'a>(&'a self, server: &'a str) -> BoxFuture<'a, Result<Load, DirectoryError>> {
        let homed =
            self.users.iter().filter(|u| u.enabled && u.home_server.as_deref().is_none_or(|h| h == server)).count()
                as u64;
        Box::pin(async move { Ok(Load { homed, capacity: DEFAULT_CAPACITY }) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_users_and_rejects_bad_files() {
        let d = FileDirectory::parse(
            "[[users]]\naddress = \"sip:Alice@example.test\"\nha1_md5 = \"0123456789ABCDEF0123456789abcdef\"\n",
        )
        .unwrap();
        let alice = d.find_user("alice@example.test").await.unwrap().unwrap();
        assert!(alice.enabled);
        assert_eq!(alice.ha1_md5.as_deref(), Some("0123456789abcdef0123456789abcdef"), "HA1 is lower-case hex");
        assert_eq!(alice.ha1_sha256, None);
        assert_eq!(alice.username(), "alice");
        assert!(d.find_user("bob@example.test").await.unwrap().is_none());
        assert_eq!(d.domains().await.unwrap(), vec!["example.test".to_string()]);
        assert!(FileDirectory::parse("[[users]]\naddress = \"a@b\"\n").is_err());
        assert!(FileDirectory::parse("[[users]]\naddress = \"a@b\"\nha1_md5 = \"xyz\"\n").is_err());
        assert!(FileDirectory::parse("[[users]]\naddress = \"a@b\"\npassword = \"plain\"\n").is_err());
    }
}
