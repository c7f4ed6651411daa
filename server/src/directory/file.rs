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
            ha1_md5: self.ha1_md5.map(parley_sip::hex::encode),
            ha1_sha256: self.ha1_sha256.map(parley_sip::hex::encode),
        }
    }
}

impl FileDirectory {
    pub fn load(path: &Path) -> anyhow::Result<FileDirectory> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading users file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in users file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<FileDirectory> {
        if let Some(tables) = users_tables(text) {
            let mut unreadable = false;
            let users = tables.iter().map_while(|t| toml::from_str::<User>(t).map_err(|_| unreadable = true).ok());
            let built = Self::build(users, tables.len());
            if !unreadable {
                return built;
            }
        }
        // Not only `[[users]]` tables, or one did not parse: the whole document (whose errors
        // say where in the file they are).
        let file: UsersFile = toml::from_str(text)?;
        let count = file.users.len();
        Self::build(file.users.into_iter(), count)
    }

    fn build(users_read: impl Iterator<Item = User>, count: usize) -> anyhow::Result<FileDirectory> {
        let hasher = RandomState::new();
        let mut users: HashTable<Box<Entry>> = HashTable::with_capacity(count);
        for user in users_read {
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

/// The bodies of the file's `[[users]]` tables when the file is nothing else (as `parley-server
/// user` and `prep` write it): comments and blank lines before the first, no other header, no
/// multi-line string (where a line could look like a header). Each is parsed on its own, in a
/// few kilobytes used again and again: the whole file as one TOML document takes several times
/// its size in fresh memory, which was most of a cold start (`bench/NOTES.md`).
fn users_tables(text: &str) -> Option<Vec<&str>> {
    const HEADER: &str = "[[users]]";
    if text.contains("\"\"\"") || text.contains("'''") {
        return None;
    }
    let mut tables = Vec::new();
    let mut body: Option<usize> = None;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed == HEADER {
            if let Some(start) = body {
                tables.push(&text[start..at]);
            }
            body = Some(at + line.len());
        } else if trimmed.starts_with('[') || (body.is_none() && !trimmed.is_empty() && !trimmed.starts_with('#')) {
            return None;
        }
        at += line.len();
    }
    tables.push(&text[body?..]);
    Some(tables)
}

impl Directory for FileDirectory {
    fn find_user<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<Option<User>, DirectoryError>> {
        Box::pin(async move { Ok(self.get(address).map(Entry::user)) })
    }

    fn user_at_hand(&self, address: &str) -> Option<Result<Option<User>, DirectoryError>> {
        Some(Ok(self.get(address).map(Entry::user)))
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

    /// Every user of a directory, sorted, with its domains: what a parse produced.
    fn contents(d: &FileDirectory) -> (Vec<User>, Vec<String>) {
        let mut users: Vec<User> = d.users.iter().map(|e| e.user()).collect();
        users.sort_by(|a, b| a.address.cmp(&b.address));
        (users, d.domains.clone())
    }

    /// The whole file as one TOML document, as before the table-at-a-time reading.
    fn parsed_whole(text: &str) -> Result<(Vec<User>, Vec<String>), String> {
        let file: UsersFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let count = file.users.len();
        FileDirectory::build(file.users.into_iter(), count).map(|d| contents(&d)).map_err(|e| e.to_string())
    }

    /// Reading one `[[users]]` table at a time gives what reading the whole document gives, for
    /// the files it takes (comments, blank lines, CRLF, keys in any order, a header-like string,
    /// a sub-table, an unknown key) and for those it leaves to the whole parse.
    #[test]
    fn a_table_at_a_time_reads_what_the_whole_document_says() {
        let ha1 = "0123456789abcdef0123456789abcdef";
        let taken = [
            format!(
                "# users\n\n[[users]]\naddress = \"a@x.test\"\nha1_md5 = \"{ha1}\"\n[[users]]\nha1_md5 = '{ha1}' # b\naddress = \"b@y.test\"\nenabled = false\n"
            ),
            format!("[[users]]\r\naddress = \"a@x.test\"\r\nha1_md5 = \"{ha1}\"\r\nhome_server = \"[[users]]\"\r\n"),
            format!(
                "[[users]]\naddress = \"a@x.test\"\nha1_md5 = \"{ha1}\"\nnickname = \"A\"\n  [[users]]  \naddress = \"c@x.test\"\nha1_md5 = \"{ha1}\"\n"
            ),
            "[[users]]\naddress = \"a@x.test\"\n".to_string(),
            format!(
                "[[users]]\naddress = \"a@x.test\"\nha1_md5 = \"{ha1}\"\n[[users]]\naddress = \"a@x.test\"\nha1_md5 = \"{ha1}\"\n"
            ),
            format!("[[users]]\naddress = \"a@x.test\"\nha1_md5 = \"{ha1}\"\n[[users]]\naddress = = \"b@x.test\"\n"),
            format!("[[users]]\naddress = \"a@x.test\"\nha1_md5 = \"{ha1}\"\naddress = \"b@x.test\"\n"),
        ];
        let left = [
            String::new(),
            "users = []\n".to_string(),
            format!("users = [{{ address = \"a@x.test\", ha1_md5 = \"{ha1}\" }}]\n"),
            format!("[[users]]\naddress = \"a@x.test\"\nha1_md5 = \"{ha1}\"\n[other]\nkey = 1\n"),
            format!("[[users]]\naddress = \"a@x.test\"\nha1_md5 = \"{ha1}\"\n[users.extra]\nkey = 1\n"),
            format!("[[users]] # first\naddress = \"a@x.test\"\nha1_md5 = \"{ha1}\"\n"),
            format!("[[users]]\naddress = \"a@x.test\"\nha1_md5 = \"{ha1}\"\nnote = \"\"\"\n[[users]]\n\"\"\"\n"),
            format!("title = \"t\"\n[[users]]\naddress = \"a@x.test\"\nha1_md5 = \"{ha1}\"\n"),
        ];
        for (text, fast) in taken.iter().map(|t| (t, true)).chain(left.iter().map(|t| (t, false))) {
            assert_eq!(users_tables(text).is_some(), fast, "read a table at a time: {text:?}");
            let read = FileDirectory::parse(text).map(|d| contents(&d)).map_err(|e| format!("{e:#}"));
            match (read, parsed_whole(text)) {
                (Ok(read), Ok(whole)) => assert_eq!(read, whole, "{text:?}"),
                (Err(_), Err(_)) => {}
                (read, whole) => panic!("{text:?}: read {read:?}, as a whole {whole:?}"),
            }
        }
    }

    /// A syntax error is reported where it is in the file, not in a table read on its own.
    #[test]
    fn a_syntax_error_says_its_line_in_the_file() {
        let text = "[[users]]\naddress = \"a@x.test\"\nha1_md5 = \"0123456789abcdef0123456789abcdef\"\n\
                    [[users]]\naddress = = \"b@x.test\"\n";
        let e = format!("{:#}", FileDirectory::parse(text).err().expect("an error"));
        assert!(e.contains("line 5"), "{e}");
    }
}
