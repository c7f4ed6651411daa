//! Placement, moves and drains.
//!
//! Placement reads every registered Home Server's capacity (`parleyCapacity`, 10,000 when unset)
//! and counts its enabled homed users in the directory; a new user goes to the one with the most
//! free capacity (ties by name). Commands that place many users keep the counts as they go.
//!
//! A move carries a user's durable state over the Home Servers' administrators' API (bearer
//! token, at the `parleyServerApi` URL of each): (a) the old home locks the user and hands over
//! their state (`POST /admin/users/{address}/move-out`), (b) the new home stores it durably and
//! serves it (`PUT .../state`), (c) the directory's `parleyHomeServer` is flipped, (d) the old
//! home deletes its copy and ends the user's subscription dialogs (`POST .../move-done`), so
//! subscribers come back to the new home. A failure before (c) undoes (b) and lifts the lock
//! (`DELETE .../state`, `POST .../move-abort`); a lock left by a mover that died lifts itself.

use super::{audit, explain, first, normalise_address, replace, user_bases};
use crate::directory::DEFAULT_CAPACITY;
use crate::directory::ldap::homed_filter;
use crate::directory::ldap_client::{LdapPool, attr};
use crate::prep::Connection;
use crate::prep::names::{self, SERVER_CLASS, USER_CLASS};
use crate::prep::schema::attrs as a;
use anyhow::{Context, bail};
use ldap3::{Mod, Scope};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

/// A registered Home Server as placement sees it.
#[derive(Clone, Debug)]
pub struct Server {
    pub name: String,
    pub capacity: u64,
    /// Its operations API (`http://host:port`), when registered.
    pub api: Option<String>,
    /// Enabled users homed on it.
    pub homed: u64,
}

impl Server {
    fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.homed)
    }
}

/// Every registered Home Server with its load.
pub struct Loads {
    pub servers: Vec<Server>,
}

impl Loads {
    /// Reads the Home Servers and counts their users in the directory.
    pub async fn read(pool: &LdapPool, base: &str) -> anyhow::Result<Loads> {
        let entries = pool
            .search(
                &names::home_servers(base),
                Scope::OneLevel,
                &format!("(objectClass={SERVER_CLASS})"),
                &["cn", a::CAPACITY, a::SERVER_API],
            )
            .await
            .map_err(|e| explain(pool, "read the registered Home Servers", e))?;
        let mut servers: Vec<Server> = entries
            .iter()
            .filter_map(|e| {
                Some(Server {
                    name: first(e, "cn")?.to_string(),
                    capacity: first(e, a::CAPACITY).and_then(|c| c.trim().parse().ok()).unwrap_or(DEFAULT_CAPACITY),
                    api: first(e, a::SERVER_API).map(str::to_string),
                    homed: 0,
                })
            })
            .collect();
        servers.sort_by(|x, y| x.name.cmp(&y.name));
        let mut loads = Loads { servers };
        loads.recount(pool, base).await?;
        Ok(loads)
    }

    /// Counts every server's enabled homed users in the directory again.
    pub async fn recount(&mut self, pool: &LdapPool, base: &str) -> anyhow::Result<()> {
        let bases = user_bases(pool, base).await?;
        for s in &mut self.servers {
            let mut homed = 0;
            for b in &bases {
                homed += pool
                    .count(b, &homed_filter(&s.name))
                    .await
                    .map_err(|e| explain(pool, &format!("count the users of {}", s.name), e))?;
            }
            s.homed = homed;
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name.eq_ignore_ascii_case(name))
    }

    /// The registered spelling of a server's name.
    pub fn canonical(&self, name: &str) -> String {
        self.get(name).map_or_else(|| name.to_string(), |s| s.name.clone())
    }

    /// The server with the most free capacity, `excluded` left out (ties: the first by name),
    /// counted as given one more user.
    pub fn place(&mut self, excluded: &[&str]) -> anyhow::Result<String> {
        let mut best: Option<usize> = None;
        for (i, s) in self.servers.iter().enumerate() {
            if excluded.iter().any(|x| x.eq_ignore_ascii_case(&s.name)) {
                continue;
            }
            if best.is_none_or(|b| s.free() > self.servers[b].free()) {
                best = Some(i);
            }
        }
        match best {
            Some(i) if self.servers[i].free() > 0 => {
                self.servers[i].homed += 1;
                Ok(self.servers[i].name.clone())
            }
            Some(_) => bail!("every Home Server is full: {}", self.describe(excluded)),
            None if self.servers.is_empty() => {
                bail!("no Home Server is registered; register one with `prep enterprise --home-server NAME=HOST:PORT`")
            }
            None => bail!("no other Home Server is registered ({})", self.describe(&[])),
        }
    }

    /// `home-1: 3 of 100 used, ...` for messages.
    pub fn describe(&self, excluded: &[&str]) -> String {
        let parts: Vec<String> = self
            .servers
            .iter()
            .filter(|s| !excluded.iter().any(|x| x.eq_ignore_ascii_case(&s.name)))
            .map(|s| format!("{}: {} of {} used", s.name, s.homed, s.capacity))
            .collect();
        if parts.is_empty() { "none".into() } else { parts.join(", ") }
    }

    fn shift(&mut self, from: Option<&str>, to: &str) {
        if let Some(f) = from.and_then(|f| self.servers.iter_mut().find(|s| s.name.eq_ignore_ascii_case(f))) {
            f.homed = f.homed.saturating_sub(1);
        }
        if let Some(t) = self.servers.iter_mut().find(|s| s.name.eq_ignore_ascii_case(to)) {
            t.homed += 1;
        }
    }
}

/// The admin token, from `--admin-token-file` (or `PARLEY_ADMIN_TOKEN_FILE`).
pub fn read_token(file: Option<&Path>) -> anyhow::Result<String> {
    let Some(file) = file else {
        bail!(
            "moving users needs the Home Servers' admin API token: --admin-token-file PATH (or \
             PARLEY_ADMIN_TOKEN_FILE), the file their `[api] admin_token_file` names; \
             `user move --directory-only` rewrites the directory alone, leaving the user's state behind"
        )
    };
    let token = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let token = token.trim().to_string();
    anyhow::ensure!(!token.is_empty(), "{} is empty", file.display());
    Ok(token)
}

/// Moves users one at a time.
pub struct Mover<'a> {
    conn: &'a Connection,
    pool: &'a LdapPool,
    token: String,
}

impl<'a> Mover<'a> {
    pub fn new(conn: &'a Connection, pool: &'a LdapPool, token: String) -> Mover<'a> {
        Mover { conn, pool, token }
    }

    fn api<'s>(&self, loads: &'s Loads, name: &str) -> anyhow::Result<&'s str> {
        let server = loads.get(name).ok_or_else(|| anyhow::anyhow!("no Home Server named {name:?} is registered"))?;
        server.api.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "Home Server {name} has no API address in the directory; register it with \
                 `prep enterprise --home-server {name}=HOST:PORT,api=http://HOST:OPS_PORT`"
            )
        })
    }

    /// Moves the user of entry `dn` from `from` (None: homed nowhere, so there is no state to
    /// carry) to `to`, with their state.
    pub async fn move_user(
        &self,
        dn: &str,
        address: &str,
        from: Option<&str>,
        to: &str,
        loads: &Loads,
    ) -> anyhow::Result<()> {
        if from.is_some_and(|f| f.eq_ignore_ascii_case(to)) {
            bail!("{address} is homed on {to} already");
        }
        let path = |what: &str| format!("/admin/users/{}/{what}", percent(address));
        let to_api = self.api(loads, to)?;
        let from_api = match from {
            Some(f) if loads.get(f).is_some() => Some(self.api(loads, f)?),
            _ => None,
        };
        // (a) the old home locks the user and hands over their state.
        let mut locked_at = std::time::Instant::now();
        let state = match from_api {
            Some(api) => {
                // 409: another move holds the user's lock, or one that was interrupted (a mover
                // that died): its lock lifts by itself, so wait for that rather than fail.
                let give_up = tokio::time::Instant::now() + crate::home::moves::MOVE_LOCK + Duration::from_secs(5);
                let (code, body) = loop {
                    locked_at = std::time::Instant::now();
                    let (code, body) =
                        http(api, "POST", &path("move-out"), &self.token, None).await.with_context(|| {
                            format!("{address}: asking {} for the user's state", from.unwrap_or_default())
                        })?;
                    if code != 409 || tokio::time::Instant::now() >= give_up {
                        break (code, body);
                    }
                    tracing::info!(user = %address, "another move of this user holds its lock; waiting for it to lift");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                };
                if code != 200 {
                    bail!(
                        "{address}: {} refused to hand over the user ({code}): {}",
                        from.unwrap_or_default(),
                        body.trim()
                    );
                }
                body
            }
            None => serde_json::json!({ "address": address, "tables": {} }).to_string(),
        };
        let abort = |why: anyhow::Error| async move {
            if let Some(api) = from_api
                && let Err(e) = http(api, "POST", &path("move-abort"), &self.token, None).await
            {
                tracing::warn!(user = %address, error = %e, "the move's lock was not lifted: it lifts itself within a minute");
            }
            why
        };
        // (b) the new home stores it and serves it.
        match http(to_api, "PUT", &path("state"), &self.token, Some(&state)).await {
            Ok((204 | 200, _)) => {}
            Ok((code, body)) => {
                return Err(abort(anyhow::anyhow!(
                    "{address}: {to} refused the user's state ({code}): {}",
                    body.trim()
                ))
                .await);
            }
            Err(e) => return Err(abort(e.context(format!("{address}: giving the user's state to {to}"))).await),
        }
        // (c) the directory names the new home, unless the old home's lock may have lifted by now
        // (it would have served the user again, and taken writes the new home lacks).
        let flip = if locked_at.elapsed() > LOCK_MARGIN {
            Err(anyhow::anyhow!(
                "{address}: the move took over {} s, too close to the old home's lock lifting; given up",
                LOCK_MARGIN.as_secs()
            ))
        } else {
            replace(self.pool, dn, "move users", vec![(a::HOME_SERVER.to_string(), to.to_string())]).await
        };
        if let Err(e) = flip {
            if let Err(e) = http(to_api, "DELETE", &path("state"), &self.token, None).await {
                tracing::warn!(user = %address, error = %e, home_server = to, "the state given to the new home was not dropped");
            }
            return Err(abort(e).await);
        }
        // (d) the old home lets go: its copy is deleted, the user's dialogs there end.
        if let Some(api) = from_api {
            let mut last = None;
            for attempt in 0..3u64 {
                match http(api, "POST", &path("move-done"), &self.token, None).await {
                    Ok((204 | 200, _)) => {
                        last = None;
                        break;
                    }
                    Ok((code, body)) => last = Some(format!("{code}: {}", body.trim())),
                    Err(e) => last = Some(format!("{e:#}")),
                }
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
            if let Some(why) = last {
                tracing::warn!(
                    user = %address,
                    home_server = from.unwrap_or_default(),
                    why,
                    "moved, but the old home did not confirm deleting its copy (it serves the user no more once its lock lifts and the directory names the new home)"
                );
            }
        }
        audit(self.conn, "user moved", address, &format!("{} -> {to} (with their state)", from.unwrap_or("none")));
        Ok(())
    }
}

/// `user drain --home-server NAME`.
pub async fn drain(conn: &Connection, name: &str, token: String) -> anyhow::Result<()> {
    let (pool, base) = conn.open()?;
    let mut loads = Loads::read(&pool, &base).await?;
    let Some(drained) = loads.get(name).cloned() else {
        bail!("no Home Server named {name:?} is registered (known: {})", loads.describe(&[]));
    };
    let name = drained.name.clone();
    let mut users = Vec::new();
    for b in user_bases(&pool, &base).await? {
        let filter = format!("(&(objectClass={USER_CLASS})({}={}))", a::HOME_SERVER, ldap3::ldap_escape(name.as_str()));
        let entries = pool
            .paged_search(&b, &filter, &[a::SIP_ADDRESS], 500)
            .await
            .map_err(|e| explain(&pool, &format!("list the users of {name}"), e))?;
        users.extend(entries.into_iter().filter_map(|e| Some((first(&e, a::SIP_ADDRESS)?.to_string(), e.dn))));
    }
    users.sort();
    if users.is_empty() {
        println!("drain {name}: no users homed there");
        return Ok(());
    }
    // Only servers whose API is known can take users.
    let unreachable: Vec<String> = loads.servers.iter().filter(|s| s.api.is_none()).map(|s| s.name.clone()).collect();
    let mut excluded: Vec<&str> = vec![name.as_str()];
    excluded.extend(unreachable.iter().map(String::as_str));
    let free: u64 = loads.servers.iter().filter(|s| !excluded.contains(&s.name.as_str())).map(Server::free).sum();
    if free < users.len() as u64 {
        let others = loads.describe(&excluded);
        let note = if unreachable.iter().any(|u| *u != name) {
            format!("; without an API address: {}", unreachable.join(", "))
        } else {
            String::new()
        };
        bail!(
            "not enough capacity: {} users to move, {free} free on the other Home Servers ({others}{note})",
            users.len()
        );
    }
    let mover = Mover::new(conn, &pool, token);
    let (total, mut moved, mut failed) = (users.len(), 0usize, 0usize);
    let mut to_counts: BTreeMap<String, usize> = BTreeMap::new();
    println!("drain {name}: {total} users to move");
    for (i, (address, dn)) in users.iter().enumerate() {
        let to = loads.place(&excluded)?;
        // `place` counted the user on `to` already; `shift` takes them off `name` only if moved.
        match mover.move_user(dn, address, Some(&name), &to, &loads).await {
            Ok(()) => {
                moved += 1;
                *to_counts.entry(to.clone()).or_default() += 1;
                if let Some(s) = loads.servers.iter_mut().find(|s| s.name == name) {
                    s.homed = s.homed.saturating_sub(1);
                }
            }
            Err(e) => {
                failed += 1;
                loads.shift(Some(&to), "");
                eprintln!("drain {name}: {address} not moved: {e:#}");
            }
        }
        if (i + 1) % 100 == 0 {
            println!("drain {name}: {}/{total} done ({moved} moved, {failed} failed)", i + 1);
            // Others may add or move users meanwhile: place the next ones on fresh counts.
            loads.recount(&pool, &base).await?;
        }
    }
    let spread: Vec<String> = to_counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "drained {name}: {moved} of {total} users moved ({}), {failed} failed",
        if spread.is_empty() { "none".into() } else { spread.join(", ") }
    );
    if failed > 0 {
        bail!("{failed} users of {name} were not moved; run `user drain --home-server {name}` again to continue");
    }
    Ok(())
}

/// One user to enable, from a CSV line or an LDIF entry.
#[derive(Debug, Default)]
struct Row {
    line: usize,
    dn: Option<String>,
    address: Option<String>,
    home_server: Option<String>,
}

/// Reads CSV (a header line naming `address` and optionally `home_server`) or LDIF (entries
/// with `dn:` and optionally `parleySipAddress` or `mail`). Unreadable lines are returned as
/// errors with their line number; the rest is read.
fn read_rows(text: &str, ldif: bool) -> (Vec<Row>, Vec<String>) {
    if ldif { read_ldif(text) } else { read_csv(text) }
}

fn read_csv(text: &str) -> (Vec<Row>, Vec<String>) {
    let (mut rows, mut errors) = (Vec::new(), Vec::new());
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let Some((_, header)) = lines.next() else {
        return (rows, vec!["the file is empty (a CSV file needs a header line: address,home_server)".into()]);
    };
    let columns: Vec<String> = header.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
    let Some(address_col) = columns.iter().position(|c| c == "address") else {
        return (rows, vec![format!("line 1: the header {header:?} has no `address` column")]);
    };
    let home_col = columns.iter().position(|c| c == "home_server");
    for (i, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let line_no = i + 1;
        match fields.get(address_col).filter(|a| !a.is_empty()) {
            Some(address) => rows.push(Row {
                line: line_no,
                dn: None,
                address: Some(address.to_string()),
                home_server: home_col.and_then(|c| fields.get(c)).filter(|h| !h.is_empty()).map(|h| h.to_string()),
            }),
            None => errors.push(format!("line {line_no}: no address")),
        }
    }
    (rows, errors)
}

fn read_ldif(text: &str) -> (Vec<Row>, Vec<String>) {
    let (mut rows, mut errors) = (Vec::new(), Vec::new());
    // Unfold continuation lines (RFC 2849: a line starting with one space continues the last).
    let mut logical: Vec<(usize, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match (line.strip_prefix(' '), logical.last_mut()) {
            (Some(rest), Some((_, last))) if !last.is_empty() => last.push_str(rest),
            _ => logical.push((i + 1, line.trim_end().to_string())),
        }
    }
    let mut current: Option<Row> = None;
    let mut bad_entry = false;
    let finish = |row: Option<Row>, bad: bool, rows: &mut Vec<Row>| {
        if let Some(r) = row.filter(|_| !bad) {
            rows.push(r);
        }
    };
    for (line_no, line) in logical {
        if line.is_empty() {
            finish(current.take(), bad_entry, &mut rows);
            bad_entry = false;
            continue;
        }
        if line.starts_with('#') || line.to_ascii_lowercase().starts_with("version:") {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            errors.push(format!("line {line_no}: not an LDIF line: {line:?}"));
            bad_entry = true;
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        if value.starts_with(':') {
            errors.push(format!("line {line_no}: base64 values are not read; write {key} as text"));
            bad_entry = true;
            continue;
        }
        let value = value.trim().to_string();
        match key.as_str() {
            "dn" => {
                finish(current.take(), bad_entry, &mut rows);
                bad_entry = false;
                current = Some(Row { line: line_no, dn: Some(value), ..Row::default() });
            }
            _ if current.is_none() => {
                errors.push(format!("line {line_no}: {key} before any dn:"));
            }
            "parleysipaddress" => current.as_mut().expect("checked").address = Some(value),
            "mail" => {
                let row = current.as_mut().expect("checked");
                row.address.get_or_insert(value);
            }
            _ => {}
        }
    }
    finish(current.take(), bad_entry, &mut rows);
    (rows, errors)
}

/// `user enable --from FILE`.
pub async fn enable_from(conn: &Connection, file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let ldif = file.extension().is_some_and(|e| e.eq_ignore_ascii_case("ldif"))
        || text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).is_some_and(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("dn:") || l.starts_with("version:")
        });
    let (rows, mut errors) = read_rows(&text, ldif);
    let (pool, base) = conn.open()?;
    let mut loads = Loads::read(&pool, &base).await?;
    let bases = user_bases(&pool, &base).await?;
    let (mut enabled, mut unchanged) = (0usize, 0usize);
    for row in rows {
        match enable_one(conn, &pool, &base, &bases, &mut loads, &row).await {
            Ok(true) => enabled += 1,
            Ok(false) => unchanged += 1,
            Err(e) => errors.push(format!("line {}: {e:#}", row.line)),
        }
    }
    for e in &errors {
        eprintln!("enable: {e}");
    }
    println!(
        "enable: {enabled} enabled, {unchanged} already enabled, {} failed ({})",
        errors.len(),
        loads.describe(&[])
    );
    if !errors.is_empty() {
        bail!("{} lines of {} were not processed", errors.len(), file.display());
    }
    Ok(())
}

/// Enables one entry; whether anything changed.
async fn enable_one(
    conn: &Connection,
    pool: &LdapPool,
    base: &str,
    bases: &[String],
    loads: &mut Loads,
    row: &Row,
) -> anyhow::Result<bool> {
    let wanted = ["objectClass", a::SIP_ADDRESS, "mail", a::ENABLED, a::HOME_SERVER];
    let entry = match (&row.dn, &row.address) {
        (Some(dn), _) => pool
            .get(dn, &wanted)
            .await
            .map_err(|e| explain(pool, &format!("read {dn}"), e))?
            .ok_or_else(|| anyhow::anyhow!("no entry {dn}"))?,
        (None, Some(address)) => {
            let (address, _, domain) = normalise_address(address)?;
            let user_base = super::base_for(pool, base, &domain).await?;
            let esc = ldap3::ldap_escape(address.as_str());
            let filter = format!("(|({}={esc})(mail={esc}))", a::SIP_ADDRESS);
            let mut found = Vec::new();
            for b in
                bases.iter().filter(|b| crate::prep::dn_within(b, &user_base) || crate::prep::dn_within(&user_base, b))
            {
                found.extend(
                    pool.search(b, Scope::Subtree, &filter, &wanted)
                        .await
                        .map_err(|e| explain(pool, &format!("search {b}"), e))?,
                );
            }
            found.dedup_by(|x, y| x.dn == y.dn);
            match found.len() {
                0 => bail!("no directory entry has the address {address} (as parleySipAddress or mail)"),
                1 => found.remove(0),
                n => bail!("{n} directory entries have the address {address}"),
            }
        }
        (None, None) => bail!("no address"),
    };
    let address = row
        .address
        .clone()
        .or_else(|| first(&entry, a::SIP_ADDRESS).map(str::to_string))
        .or_else(|| first(&entry, "mail").map(str::to_string))
        .ok_or_else(|| anyhow::anyhow!("{} has neither parleySipAddress nor mail: give the address", entry.dn))?;
    let (address, _, _) = normalise_address(&address)?;
    let has_class = attr(&entry, "objectClass").iter().any(|c| c.eq_ignore_ascii_case(USER_CLASS));
    let is_enabled = first(&entry, a::ENABLED).is_some_and(|v| v.eq_ignore_ascii_case("TRUE"));
    let home = first(&entry, a::HOME_SERVER).map(str::to_string);
    if let Some(h) = &row.home_server
        && loads.get(h).is_none()
    {
        bail!("no Home Server named {h:?} is registered ({})", loads.describe(&[]));
    }
    if has_class
        && is_enabled
        && let Some(h) = &home
    {
        if let Some(wanted) = row.home_server.as_ref().filter(|w| !w.eq_ignore_ascii_case(h)) {
            bail!(
                "{address} is enabled and homed on {h} already; `user move {address} --home-server {wanted}` moves them"
            );
        }
        return Ok(false);
    }
    let placed = match (&row.home_server, &home) {
        (Some(h), _) => {
            let h = loads.canonical(h);
            loads.shift(None, &h);
            h
        }
        (None, Some(h)) => {
            if !is_enabled {
                loads.shift(None, h);
            }
            h.clone()
        }
        (None, None) => loads.place(&[])?,
    };
    let mut mods = Vec::new();
    if !has_class {
        mods.push(Mod::Add("objectClass".to_string(), HashSet::from([USER_CLASS.to_string()])));
    }
    mods.push(Mod::Replace(a::SIP_ADDRESS.to_string(), HashSet::from([address.clone()])));
    mods.push(Mod::Replace(a::ENABLED.to_string(), HashSet::from(["TRUE".to_string()])));
    mods.push(Mod::Replace(a::HOME_SERVER.to_string(), HashSet::from([placed.clone()])));
    if let Err(e) = pool.modify(&entry.dn, mods).await {
        loads.shift(Some(&placed), "");
        return Err(explain(pool, &format!("enable users ({})", entry.dn), e));
    }
    audit(conn, "user enabled", &address, &format!("homed on {placed}"));
    Ok(true)
}

/// Percent-encodes an address for a URL path segment.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' | b'+' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How long after the old home locked the user the directory may still be switched: well within
/// the lock's life (`MOVE_LOCK`), so the old home cannot have served the user again meanwhile.
const LOCK_MARGIN: Duration = Duration::from_secs(45);

/// How long one call of the administrators' API may take.
const API_TIMEOUT: Duration = Duration::from_secs(20);

/// One HTTP/1.1 request to `api` (`http://host:port`) with the bearer token: status and body.
async fn http(api: &str, method: &str, path: &str, token: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(host_port) = api.strip_prefix("http://").map(|r| r.split('/').next().unwrap_or(r)) else {
        bail!("API address {api:?} is not an http:// URL");
    };
    let exchange = async {
        let mut stream =
            tokio::net::TcpStream::connect(host_port).await.with_context(|| format!("connecting to {api}"))?;
        let body = body.unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_response(&raw).with_context(|| format!("reading the answer of {api}"))
    };
    tokio::time::timeout(API_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("{api} did not answer {method} {path} within {} s", API_TIMEOUT.as_secs()))?
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no complete HTTP response"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {:?}", head.lines().next().unwrap_or_default()))?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
        })
    });
    if !chunked {
        return Ok((code, body.to_string()));
    }
    let (mut out, mut rest) = (String::new(), body);
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or_else(|| anyhow::anyhow!("bad chunk"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok((code, out));
        }
        let chunk = after.get(..size).ok_or_else(|| anyhow::anyhow!("short chunk"))?;
        out.push_str(chunk);
        rest = after.get(size..).unwrap_or_default().trim_start_matches("\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(servers: &[(&str, u64, u64)]) -> Loads {
        Loads {
            servers: servers
                .iter()
                .map(|(n, c, h)| Server { name: n.to_string(), capacity: *c, homed: *h, api: None })
                .collect(),
        }
    }

    #[test]
    fn placement_picks_the_most_free_capacity_ties_by_name_and_refuses_when_full() {
        let mut l = loads(&[("home-1", 10, 5), ("home-2", 10, 3), ("home-3", 8, 1)]);
        assert_eq!(l.place(&[]).unwrap(), "home-2", "7 free and 7 free: by name");
        assert_eq!(l.place(&[]).unwrap(), "home-3", "7 free against 6");
        assert_eq!(l.place(&["home-3"]).unwrap(), "home-2", "6 free against 5");
        let mut full = loads(&[("a", 1, 1), ("b", 0, 0)]);
        let e = full.place(&[]).unwrap_err().to_string();
        assert!(e.contains("every Home Server is full") && e.contains("a: 1 of 1 used"), "{e}");
        assert!(loads(&[]).place(&[]).unwrap_err().to_string().contains("no Home Server is registered"));
    }

    #[test]
    fn csv_and_ldif_rows_are_read_with_their_line_numbers() {
        let (rows, errors) = read_csv("address,home_server\nalice@x,home-1\n\n,home-2\nbob@x,\n");
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].line, rows[0].home_server.as_deref()), (2, Some("home-1")));
        assert_eq!((rows[1].line, rows[1].home_server.as_deref()), (5, None));
        assert_eq!(errors, ["line 4: no address"]);
        assert!(!read_csv("name\nx\n").1.is_empty(), "no address column");
        let (rows, errors) = read_ldif(
            "version: 1\n\ndn: uid=a,ou=People,dc=x\nmail: a@x\n\ndn: uid=b,ou=Peo\n ple,dc=x\nparleySipAddress: b@x\nmail: bb@x\n\n\
             dn: uid=c,dc=x\ncn:: Zm9v\n\nnonsense\n",
        );
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!((rows[0].line, rows[0].address.as_deref()), (3, Some("a@x")));
        assert_eq!(rows[1].dn.as_deref(), Some("uid=b,ou=People,dc=x"));
        assert_eq!(rows[1].address.as_deref(), Some("b@x"));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("line 12: base64"), "{errors:?}");
    }

    #[test]
    fn http_answers_are_read_plain_and_chunked() {
        assert_eq!(parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap(), (204, String::new()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (200, "abcde".into()));
        assert!(parse_response(b"garbage").is_err());
        assert_eq!(percent("a b@x"), "a%20b@x");
    }
}
