//! Page-mode instant messages (RFC 3428): an authenticated local user's MESSAGE is forked to
//! every registered contact of the destination; the first 2xx answers the sender (the core
//! collects the branches' answers). A user with no device gets the message later (`offline`).

use super::core::{Core, Facts, Now, Outcome};
use super::request::Request;
use crate::sip::Message;
use crate::transport::Flow;

impl Core {
    pub(super) fn message(&mut self, now: Now, flow: Flow, req: &Request, facts: &Facts) -> Outcome {
        let sender = match self.authenticated_sender(now, flow, req, facts) {
            Ok(u) => u,
            Err(r) => return r.into(),
        };
        // Not at INFO: messages can come by the thousand a second (parley_sip_requests_total and
        // parley_messages_delivered_total count them).
        tracing::debug!(user = %sender.address, source = %flow.remote, to = req.request_uri().unwrap_or_default(), "message");
        let target = match req.parsed_uri() {
            Ok(u) => u,
            Err(e) => return self.respond_with(req, 400, &format!("Bad Request-URI: {e}")).into(),
        };
        let Some(aor) = self.local_aor(target) else {
            return self.respond_with(req, 404, "Not Found").into();
        };
        let homed_here = match facts.user(&aor) {
            Ok(Some(u)) if u.enabled => u.home_server.as_deref().is_none_or(|h| h == self.settings.server_name),
            Ok(_) => return self.respond(req, 404).into(),
            Err(e) => return self.unavailable(req, e).into(),
        };
        let max_forwards = match req.headers.get("Max-Forwards").map(|m| m.trim().parse::<u8>()) {
            Some(Ok(0)) => return self.respond(req, 483).into(),
            Some(Ok(n)) => n - 1,
            _ => 69,
        };
        let bindings = self.registrar.lookup(&aor, now.wall);
        if bindings.is_empty() {
            // Kept for when the user signs in (202), or 480 when that is off or over a bound, or
            // when the user's messages are kept by another Home Server.
            if !homed_here {
                return self.respond(req, 480).into();
            }
            return self.keep_for_later(now, req, &aor);
        }
        let branches = bindings
            .into_iter()
            .map(|b| {
                let mut fwd = Message::clone(req);
                fwd.start = crate::sip::StartLine::Request { method: "MESSAGE".into(), uri: b.uri.clone() };
                fwd.headers.set("Max-Forwards", max_forwards.to_string());
                fwd.headers.remove("Proxy-Authorization");
                // Our own Route entries are used up; the binding's Path leads to its client.
                fwd.headers.remove("Route");
                for p in &b.path {
                    fwd.headers.push("Route", p.clone());
                }
                (b.flow, fwd)
            })
            .collect();
        Outcome::Fork(branches)
    }
}
