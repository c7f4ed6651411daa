//! REGISTER (RFC 3261 section 10.3): authenticate the address of record's owner, then update
//! and list its bindings.

use super::core::{After, Core, Facts, Now, Outcome};
use super::registrar::{Binding, Contacts, RegisterError, Update};
use super::request::Request;
use crate::sip::Message;
use crate::sip::params::split_list;
use crate::sip::uri::NameAddr;
use crate::store::{Table, Write};
use crate::transport::Flow;
use std::sync::atomic::Ordering::Relaxed;

impl Core {
    /// Handles REGISTER; a successful change is on disk before the 200 goes out, and a user
    /// coming online or going offline is announced to watchers afterwards.
    pub(super) fn register(&mut self, now: Now, flow: Flow, req: &Request, facts: &Facts) -> Outcome {
        let mut change = None;
        let response = self.register_inner(now, flow, req, facts, &mut change);
        let Some(Change { aor, was_online, now_online, added, removed }) = change else { return response.into() };
        let bindings = self.registrar.lookup(&aor, now.wall);
        let write = if bindings.is_empty() {
            Write::delete(Table::Registrations, &aor)
        } else {
            Write::put(Table::Registrations, &aor, &bindings)
        };
        // One line per sign-in and sign-out; refreshes are routine. Behind a Front-End the source
        // is the client's, as the Front-End stamped it.
        let (source, transport) = (super::identity::client_address(flow, req), flow.transport.via_token());
        for (contact, expires) in &added {
            tracing::info!(user = %aor, %source, %transport, %contact, expires, "signed in");
        }
        for contact in &removed {
            tracing::info!(user = %aor, %source, %transport, %contact, "signed out");
        }
        if added.is_empty() && removed.is_empty() {
            tracing::debug!(user = %aor, %source, %transport, "registration refreshed");
        }
        let mut after = if was_online != now_online { vec![After::PresenceChanged(aor.clone())] } else { vec![] };
        // Any registration, a refresh too: after a restart or a lost connection the device
        // registers the same contact again over a new flow, and the messages kept meanwhile go
        // there (one delivery at a time: one under way is not started again).
        if now_online && self.offline.pending(&aor) > 0 {
            after.push(After::DeliverKept(aor));
        }
        Outcome::Respond { response, writes: vec![write], after }
    }

    fn register_inner(
        &mut self,
        now: Now,
        flow: Flow,
        req: &Request,
        facts: &Facts,
        change: &mut Option<Change>,
    ) -> Message {
        match req.parsed_uri() {
            Ok(u) if self.is_local_host(u.host()) || u.ip().is_some() => {}
            Ok(_) => return self.respond_with(req, 404, "Domain Not Served Here"),
            Err(e) => return self.respond_with(req, 400, &format!("Bad Request-URI: {e}")),
        }
        let aor = match req.parsed_to() {
            Ok(to) if to.uri.user().is_none() => return self.respond_with(req, 400, "To has no user part"),
            Ok(to) => match self.local_aor(&to.uri) {
                Some(aor) => aor,
                None => return self.respond_with(req, 404, "Domain Not Served Here"),
            },
            Err(e) => return self.respond_with(req, 400, &format!("Bad To header: {e}")),
        };
        let user = match self.authenticate(now, flow, req, &aor, false, facts) {
            Ok(user) => user,
            Err(r) => return r,
        };
        if let Some(home) =
            user.home_server.as_deref().filter(|h| *h != self.settings.server_name && !self.arrived_here(&aor))
        {
            // Homing is the directory's: a Front-End routes REGISTER to the right server, so this
            // is a client pointed at the wrong one. Refuse rather than hold a second binding here.
            tracing::info!(aor, home_server = home, "REGISTER refused: homed on another server");
            return self.respond_with(req, 403, "Homed On Another Home Server");
        }
        let path: Vec<String> = req.headers.get_all("Path").flat_map(split_list).map(str::to_string).collect();
        let flow = self.next_hop(flow, path.first(), facts);
        let contacts = match parse_contacts(req) {
            Ok(c) => c,
            Err(reason) => return self.respond_with(req, 400, &reason),
        };
        let expires = match req.headers.get("Expires").map(|e| e.trim().parse::<u32>()) {
            None => None,
            Some(Ok(e)) => Some(e),
            Some(Err(_)) => return self.respond_with(req, 400, "Bad Expires header"),
        };
        let now = now.wall;
        let (call_id, cseq) = (req.call_id().to_string(), req.cseq().map_or(0, |(n, _)| n));
        let result = {
            let registrar = &mut self.registrar;
            let before = registrar.lookup(&aor, now);
            let result = match contacts {
                None => Ok(registrar.lookup(&aor, now)),
                Some(contacts) => {
                    let r = registrar.register(
                        Update { aor: aor.clone(), contacts, expires, call_id, cseq, flow, path: path.clone() },
                        now,
                    );
                    if let Ok(after) = &r {
                        let is_new = |b: &&Binding| !before.iter().any(|o| o.uri == b.uri);
                        let added = after.iter().filter(is_new).map(|b| (b.uri.clone(), b.remaining(now))).collect();
                        let removed =
                            before.iter().filter(|o| !after.iter().any(|b| b.uri == o.uri)).map(|o| o.uri.clone());
                        *change = Some(Change {
                            aor,
                            was_online: !before.is_empty(),
                            now_online: !after.is_empty(),
                            added,
                            removed: removed.collect(),
                        });
                    }
                    r
                }
            };
            self.metrics.registrations.store(registrar.binding_count() as u64, Relaxed);
            result
        };
        match result {
            Ok(bindings) => {
                let mut r = self.respond(req, 200);
                for p in &path {
                    r.headers.push("Path", p.clone());
                }
                for b in bindings {
                    let (q_param, q) = b.q.as_deref().map_or(("", ""), |q| (";q=", q));
                    let mut expires = itoa::Buffer::new();
                    let expires = expires.format(b.remaining(now));
                    r.headers.push("Contact", ["<", &b.uri, ">;expires=", expires, q_param, q].concat());
                }
                r
            }
            Err(RegisterError::IntervalTooBrief(min)) => {
                let mut r = self.respond(req, 423);
                r.headers.push("Min-Expires", min.to_string());
                r
            }
            Err(RegisterError::BadWildcard) => {
                self.respond_with(req, 400, "Contact * Needs Expires 0 And No Other Contact")
            }
            Err(RegisterError::OutOfOrder) => self.respond_with(req, 500, "CSeq Out Of Order"),
            Err(RegisterError::TooManyContacts(n)) => self.respond_with(req, 403, &format!("More Than {n} Contacts")),
        }
    }
}

/// What a REGISTER changed: presence (online or not) and the contacts added and removed.
struct Change {
    aor: String,
    was_online: bool,
    now_online: bool,
    /// Contact URIs with their expiry in seconds.
    added: Vec<(String, u64)>,
    removed: Vec<String>,
}

/// The request's Contact headers: none (a query), `*`, or a list of URIs with parameters.
fn parse_contacts(req: &Message) -> Result<Option<Contacts>, String> {
    let values: Vec<&str> = req.headers.get_all("Contact").flat_map(split_list).collect();
    if values.is_empty() {
        return Ok(None);
    }
    if values.contains(&"*") {
        return if values.len() == 1 {
            Ok(Some(Contacts::Wildcard))
        } else {
            Err("Contact * Mixed With Others".into())
        };
    }
    let mut list = Vec::with_capacity(values.len());
    for v in values {
        let c = NameAddr::parse(v).map_err(|e| format!("Bad Contact: {e}"))?;
        let expires = match c.param("expires") {
            None => None,
            Some(e) => Some(e.parse::<u32>().map_err(|_| "Bad Contact expires".to_string())?),
        };
        list.push((c.raw_uri().to_string(), expires, c.param("q").map(str::to_string)));
    }
    Ok(Some(Contacts::List(list)))
}
