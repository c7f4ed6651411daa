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
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<User>,
}

pub struct FileDirectory {
    users: HashMap<String, User>,
    /// The users' domains, sorted: the file is read once, so this is computed once (servers ask
    /// every second).
    domains: Vec<String>,
}

impl FileDirectory {
    pub fn load(path: &Path) -> anyhow::Result<FileDirectory> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading users file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in users file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<FileDirectory> {
        let file: UsersFile = toml::from_str(text)?;
        let mut users = HashMap::new();
        for mut user in file.users {
            user.address = user.address.trim_start_matches("sip:").to_ascii_lowercase();
            if !user.address.contains('@') {
                bail!("user address {:?} is not user@domain", user.address);
            }
            for (name, ha1, len) in [("ha1_md5", &user.ha1_md5, 32), ("ha1_sha256", &user.ha1_sha256, 64)] {
                if let Some(h) = ha1
                    && (h.len() != len || !h.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    bail!("user {}: {name} must be {len} hex digits", user.address);
                }
            }
            if user.ha1_md5.is_none() && user.ha1_sha256.is_none() {
                bail!("user {} has neither ha1_md5 nor ha1_sha256", user.address);
            }
            if users.insert(user.address.clone(), user.clone()).is_some() {
                bail!("user {} is listed twice", user.address);
            }
        }
        let mut domains: Vec<String> =
            users.keys().filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.to_string())).collect();
        domains.sort();
        domains.dedup();
        Ok(FileDirectory { users, domains })
    }
}

impl Directory for FileDirectory {
    fn find_user<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<Option<User>, DirectoryError>> {
        Box::pin(async move { Ok(self.users.get(address).cloned()) })
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
            self.users.values().filter(|u| u.enabled && u.home_server.as_deref().is_none_or(|h| h == server)).count()
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
            "[[users]]\naddress = \"sip:Alice@example.test\"\nha1_md5 = \"0123456789abcdef0123456789abcdef\"\n",
        )
        .unwrap();
        let alice = d.find_user("alice@example.test").await.unwrap().unwrap();
        assert!(alice.enabled);
        assert_eq!(alice.username(), "alice");
        assert!(d.find_user("bob@example.test").await.unwrap().is_none());
        assert_eq!(d.domains().await.unwrap(), vec!["example.test".to_string()]);
        assert!(FileDirectory::parse("[[users]]\naddress = \"a@b\"\n").is_err());
        assert!(FileDirectory::parse("[[users]]\naddress = \"a@b\"\nha1_md5 = \"xyz\"\n").is_err());
        assert!(FileDirectory::parse("[[users]]\naddress = \"a@b\"\npassword = \"plain\"\n").is_err());
    }
}
