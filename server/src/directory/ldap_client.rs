//! A small pool of LDAP connections (`ldap3` over rustls): `ldap://`, `ldaps://` or StartTLS, an
//! optional CA file, a simple bind, a deadline on every operation, and reconnection after the
//! directory restarts (a dead or timed-out connection is dropped and the operation retried once on
//! a fresh one).

use futures::future::BoxFuture;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Mod, Scope, SearchEntry};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct LdapSettings {
    pub url: String,
    /// Simple bind DN; `None` binds anonymously.
    pub bind_dn: Option<String>,
    pub password: Option<String>,
    /// PEM file of CA certificates to trust (default: the system store).
    pub ca_file: Option<PathBuf>,
    pub starttls: bool,
    /// Deadline for connecting, binding and each operation.
    pub timeout: Duration,
    pub pool_size: usize,
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection, a broken one, or no answer in time.
    #[error("directory unreachable at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The directory answered with an error result code.
    #[error("{}", describe(*rc, text))]
    Result { rc: u32, text: String },
    #[error("{0}")]
    Setup(String),
}

fn describe(rc: u32, text: &str) -> String {
    let name = match rc {
        16 => "no such attribute",
        20 => "value already exists",
        32 => "no such object",
        34 => "invalid DN syntax",
        49 => "invalid credentials",
        50 => "insufficient access rights",
        53 => "unwilling to perform",
        65 => "object class violation",
        68 => "entry already exists",
        80 => "other",
        _ => "LDAP error",
    };
    if text.is_empty() { format!("{name} (result code {rc})") } else { format!("{name} (result code {rc}): {text}") }
}

pub const NO_SUCH_OBJECT: u32 = 32;
pub const INSUFFICIENT_ACCESS: u32 = 50;
pub const ALREADY_EXISTS: u32 = 68;

impl ClientError {
    pub fn rc(&self) -> Option<u32> {
        match self {
            ClientError::Result { rc, .. } => Some(*rc),
            _ => None,
        }
    }
}

pub struct LdapPool {
    settings: LdapSettings,
    tls: Option<Arc<rustls::ClientConfig>>,
    slots: Vec<tokio::sync::Mutex<Option<Ldap>>>,
    next: AtomicUsize,
}

impl LdapPool {
    pub fn new(settings: LdapSettings) -> Result<LdapPool, ClientError> {
        let tls = match &settings.ca_file {
            Some(path) => Some(Arc::new(tls_config(path)?)),
            None => None,
        };
        let size = settings.pool_size.max(1);
        let slots = (0..size).map(|_| tokio::sync::Mutex::new(None)).collect();
        Ok(LdapPool { settings, tls, slots, next: AtomicUsize::new(0) })
    }

    pub fn settings(&self) -> &LdapSettings {
        &self.settings
    }

    /// The DN this pool binds as, for error messages.
    pub fn bind_dn(&self) -> &str {
        self.settings.bind_dn.as_deref().unwrap_or("(anonymous)")
    }

    fn unreachable(&self, reason: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable { url: self.settings.url.clone(), reason: reason.to_string() }
    }

    fn map_err(&self, e: LdapError) -> ClientError {
        match e {
            LdapError::LdapResult { result } => ClientError::Result { rc: result.rc, text: result.text },
            other => self.unreachable(other),
        }
    }

    /// Opens and binds a connection within the deadline.
    async fn connect(&self) -> Result<Ldap, ClientError> {
        let s = &self.settings;
        let mut conn_settings = LdapConnSettings::new().set_conn_timeout(s.timeout).set_starttls(s.starttls);
        if let Some(tls) = &self.tls {
            conn_settings = conn_settings.set_config(tls.clone());
        }
        let connect = async {
            let (conn, mut ldap) = LdapConnAsync::with_settings(conn_settings, &s.url).await?;
            ldap3::drive!(conn);
            if let Some(dn) = &s.bind_dn {
                ldap.simple_bind(dn, s.password.as_deref().unwrap_or_default()).await?.success()?;
            }
            Ok::<_, LdapError>(ldap)
        };
        match tokio::time::timeout(s.timeout, connect).await {
            Ok(Ok(ldap)) => Ok(ldap),
            Ok(Err(LdapError::LdapResult { result })) if result.rc == 49 => Err(ClientError::Result {
                rc: 49,
                text: format!("binding as {} was refused (wrong DN or password)", self.bind_dn()),
            }),
            Ok(Err(e)) => Err(self.map_err(e)),
            Err(_) => Err(self.unreachable(format!("no answer within {} ms", s.timeout.as_millis()))),
        }
    }

    /// Runs `op` on a pooled connection within the deadline. A connection that fails below the
    /// LDAP layer (closed, reset, timed out) is dropped; if it was an old one the operation is
    /// retried once on a fresh connection, so a directory restart costs no failed request.
    pub async fn run<T>(
        &self,
        op: impl Fn(Ldap) -> BoxFuture<'static, Result<T, LdapError>>,
    ) -> Result<T, ClientError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        for attempt in 0..2 {
            let (ldap, fresh) = {
                let mut guard = slot.lock().await;
                let alive = guard.as_mut().is_some_and(|l| !l.is_closed());
                match guard.as_ref().filter(|_| alive).cloned() {
                    Some(l) => (l, false),
                    None => {
                        *guard = None;
                        let l = tokio::time::timeout_at(deadline, self.connect())
                            .await
                            .map_err(|_| self.unreachable("no answer in time"))??;
                        *guard = Some(l.clone());
                        (l, true)
                    }
                }
            };
            match tokio::time::timeout_at(deadline, op(ldap)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(LdapError::LdapResult { result })) => {
                    return Err(ClientError::Result { rc: result.rc, text: result.text });
                }
                Ok(Err(e)) => {
                    *slot.lock().await = None;
                    tracing::debug!(error = %e, attempt, "LDAP connection failed; dropping it");
                    if fresh || attempt == 1 {
                        return Err(self.unreachable(e));
                    }
                }
                Err(_) => {
                    *slot.lock().await = None;
                    return Err(self.unreachable(format!("no answer within {} ms", self.settings.timeout.as_millis())));
                }
            }
        }
        unreachable!("the loop returns")
    }
}

/// Convenience operations over [`LdapPool::run`].
impl LdapPool {
    /// Entries matching `filter`; a missing base yields no entries.
    pub async fn search(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<SearchEntry>, ClientError> {
        let attrs: Vec<String> = attrs.iter().map(|a| a.to_string()).collect();
        let result = self
            .run(|mut l| {
                let (base, filter, attrs) = (base.to_string(), filter.to_string(), attrs.clone());
                Box::pin(async move { l.search(&base, scope, &filter, attrs).await?.success() })
            })
            .await;
        match result {
            Ok((entries, _)) => Ok(entries.into_iter().map(SearchEntry::construct).collect()),
            Err(e) if e.rc() == Some(NO_SUCH_OBJECT) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Every entry under `base` matching `filter`, fetched `page_size` at a time with the
    /// paged-results control (directories cap unpaged answers: AD at 1,000 entries). A missing
    /// base yields no entries.
    pub async fn paged_search(
        &self,
        base: &str,
        filter: &str,
        attrs: &[&str],
        page_size: i32,
    ) -> Result<Vec<SearchEntry>, ClientError> {
        use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
        let attrs: Vec<String> = attrs.iter().map(|a| a.to_string()).collect();
        let result = self
            .run(|mut l| {
                let (base, filter, attrs) = (base.to_string(), filter.to_string(), attrs.clone());
                Box::pin(async move {
                    let adapters: Vec<Box<dyn Adapter<_, _>>> =
                        vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(page_size.max(1)))];
                    let mut stream = l.streaming_search_with(adapters, &base, Scope::Subtree, &filter, attrs).await?;
                    let mut out = Vec::new();
                    while let Some(entry) = stream.next().await? {
                        out.push(SearchEntry::construct(entry));
                    }
                    stream.finish().await.success()?;
                    Ok(out)
                })
            })
            .await;
        match result {
            Err(e) if e.rc() == Some(NO_SUCH_OBJECT) => Ok(Vec::new()),
            other => other,
        }
    }

    /// How many entries under `base` match `filter` (a paged search asking for no attributes).
    pub async fn count(&self, base: &str, filter: &str) -> Result<u64, ClientError> {
        Ok(self.paged_search(base, filter, &["1.1"], 1000).await?.len() as u64)
    }

    /// One entry by DN, if it exists (and is visible to the bind DN).
    pub async fn get(&self, dn: &str, attrs: &[&str]) -> Result<Option<SearchEntry>, ClientError> {
        Ok(self.search(dn, Scope::Base, "(objectClass=*)", attrs).await?.into_iter().next())
    }

    pub async fn add(&self, dn: &str, attrs: Vec<(String, Vec<String>)>) -> Result<(), ClientError> {
        self.run(|mut l| {
            let dn = dn.to_string();
            let attrs: Vec<(String, HashSet<String>)> =
                attrs.iter().map(|(k, v)| (k.clone(), v.iter().cloned().collect())).collect();
            Box::pin(async move { l.add(&dn, attrs).await?.success().map(|_| ()) })
        })
        .await
    }

    pub async fn modify(&self, dn: &str, mods: Vec<Mod<String>>) -> Result<(), ClientError> {
        self.run(|mut l| {
            let (dn, mods) = (dn.to_string(), mods.clone());
            Box::pin(async move { l.modify(&dn, mods).await?.success().map(|_| ()) })
        })
        .await
    }

    /// Sets an entry's password with the Password Modify extended operation (RFC 3062), so that
    /// the directory hashes it with its own scheme.
    pub async fn set_password(&self, dn: &str, password: &str) -> Result<(), ClientError> {
        self.run(|mut l| {
            let (dn, password) = (dn.to_string(), password.to_string());
            Box::pin(async move {
                let exop =
                    ldap3::exop::PasswordModify { user_id: Some(&dn), old_pass: None, new_pass: Some(&password) };
                l.extended(exop).await?.success().map(|_| ())
            })
        })
        .await
    }

    /// Whether `dn` can bind with `password` (on a connection of its own, outside the pool).
    pub async fn can_bind(&self, dn: &str, password: &str) -> Result<bool, ClientError> {
        let mut settings = self.settings.clone();
        settings.bind_dn = Some(dn.to_string());
        settings.password = Some(password.to_string());
        let probe =
            LdapPool { settings, tls: self.tls.clone(), slots: vec![Default::default()], next: AtomicUsize::new(0) };
        match probe.connect().await {
            Ok(mut l) => {
                let _ = l.unbind().await;
                Ok(true)
            }
            Err(e) if e.rc() == Some(49) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn tls_config(path: &Path) -> Result<rustls::ClientConfig, ClientError> {
    let setup = |what: String| ClientError::Setup(format!("CA file {}: {what}", path.display()));
    let pem = std::fs::read(path).map_err(|e| setup(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.map_err(|e| setup(e.to_string()))?).map_err(|e| setup(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(setup("no certificates in it".into()));
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// Reads a bind password: from `file` when given (trailing newline removed), else from the
/// environment variable `env` (never from the command line).
pub fn read_password(file: Option<&Path>, env: &str) -> anyhow::Result<Option<String>> {
    use anyhow::Context;
    if let Some(file) = file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading password file {}", file.display()))?;
        let pw = text.trim_end_matches(['\r', '\n']).to_string();
        anyhow::ensure!(!pw.is_empty(), "password file {} is empty", file.display());
        return Ok(Some(pw));
    }
    Ok(std::env::var(env).ok().filter(|p| !p.is_empty()))
}

/// The values of an attribute in a search entry, matching the name case-insensitively.
pub fn attr<'a>(entry: &'a ldap3::SearchEntry, name: &str) -> &'a [String] {
    entry.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map_or(&[], |(_, v)| v.as_slice())
}

/// The first value of an attribute.
pub fn first<'a>(entry: &'a ldap3::SearchEntry, name: &str) -> Option<&'a str> {
    attr(entry, name).first().map(String::as_str)
}
