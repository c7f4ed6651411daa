//! Page-mode instant messages (RFC 3428): an authenticated local user's MESSAGE is forked to
//! every registered contact of the destination; the first 2xx answers the sender.

use super::core::Core;
use crate::sip::Message;
use crate::sip::uri::SipUri;
use crate::transport::Flow;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

impl Core {
    pub(super) async fn message(self: &Arc<Self>, flow: Flow, req: &Message) -> Message {
        let sender = match self.authenticated_sender(flow, req).await {
            Ok(u) => u,
            Err(r) => return r,
        };
        // Not at INFO: messages can come by the thousand a second (parley_sip_requests_total and
        // parley_messages_delivered_total count them).
        tracing::debug!(user = %sender.address, source = %flow.remote, to = req.request_uri().unwrap_or_default(), "message");
        let target = match SipUri::parse(req.request_uri().unwrap_or_default()) {
            Ok(u) => u,
            Err(e) => return self.respond_with(req, 400, &format!("Bad Request-URI: {e}")),
        };
        let Some(aor) = self.local_aor(&target) else {
            return self.respond_with(req, 404, "Not Found");
        };
        match self.directory.find_user(&aor).await {
            Ok(Some(u)) if u.enabled => {}
            Ok(_) => return self.respond(req, 404),
            Err(e) => return self.unavailable(req, &e),
        }
        let max_forwards = match req.headers.get("Max-Forwards").map(|m| m.trim().parse::<u8>()) {
            Some(Ok(0)) => return self.respond(req, 483),
            Some(Ok(n)) => n - 1,
            _ => 69,
        };
        let bindings = self.registrar.lock().expect("registrar").lookup(&aor, SystemTime::now());
        if bindings.is_empty() {
            return self.respond(req, 480);
        }
        let mut branches: FuturesUnordered<_> = bindings
            .into_iter()
            .map(|b| {
                let mut fwd = req.clone();
                fwd.start = crate::sip::StartLine::Request { method: "MESSAGE".into(), uri: b.uri.clone() };
                fwd.headers.set("Max-Forwards", max_forwards.to_string());
                fwd.headers.remove("Proxy-Authorization");
                // Our own Route entries are used up; the binding's Path leads to its client.
                fwd.headers.remove("Route");
                for p in &b.path {
                    fwd.headers.push("Route", p.clone());
                }
                let core = self.clone();
                async move { core.forward(b.flow, fwd).await }
            })
            .collect();
        let mut best: Option<Message> = None;
        while let Some(answer) = branches.next().await {
            let Some(mut resp) = answer else { continue };
            let code = resp.status().unwrap_or(500);
            resp.headers.pop_first_value("Via");
            if (200..300).contains(&code) {
                self.metrics.messages_delivered.fetch_add(1, Relaxed);
                // Remaining branches finish in the background; their answers are not needed.
                tokio::spawn(async move { while branches.next().await.is_some() {} });
                return resp;
            }
            if best.as_ref().is_none_or(|b| better_failure(code, b.status().unwrap_or(500))) {
                best = Some(resp);
            }
        }
        match best {
            Some(r) if r.status() != Some(408) && r.status() != Some(503) => r,
            _ => self.respond(req, 480),
        }
    }
}

/// RFC 3261 16.7: a 6xx wins, otherwise the lowest class.
fn better_failure(new: u16, old: u16) -> bool {
    match (new / 100, old / 100) {
        (6, 6) => false,
        (6, _) => true,
        (_, 6) => false,
        (n, o) => n < o || (n == o && new < old),
    }
}

#[cfg(test)]
mod tests {
    use super::better_failure;

    #[test]
    fn best_failure_prefers_6xx_then_lowest_class() {
        assert!(better_failure(603, 404));
        assert!(!better_failure(404, 603));
        assert!(better_failure(404, 503));
        assert!(!better_failure(486, 404));
    }
}
