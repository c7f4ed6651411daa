//! Who sent a request: digest authentication of the sender against the directory entry fetched
//! for the request, with lockouts after repeated failures, and the address the client really
//! uses (behind a Front-End, the one the Front-End stamped).

use super::auth::{FOREIGN_NONCE, Verdict};
use super::core::{Core, Facts, Now};
use super::guard::Lockout;
use super::request::Request;
use crate::directory::User;
use crate::sip::Message;
use crate::sip::via::Via;
use crate::transport::{Flow, Transport};
use std::sync::atomic::Ordering::Relaxed;

impl Core {
    /// Authenticates the sender of a request as a local user (407 challenge), by its From.
    pub(super) fn authenticated_sender(
        &mut self,
        now: Now,
        flow: Flow,
        req: &Request,
        facts: &Facts,
    ) -> Result<User, Message> {
        let from = match req.parsed_from() {
            Ok(f) => match self.local_aor(&f.uri) {
                Some(aor) => aor,
                None => return Err(self.respond_with(req, 403, "Relaying Denied")),
            },
            Err(e) => return Err(self.respond_with(req, 400, &format!("Bad From header: {e}"))),
        };
        self.authenticate(now, flow, req, &from, true, facts)
    }

    /// Authenticates the sender as `aor`. Unknown users and wrong passwords get the same challenge.
    /// Failures are logged at WARN with the user and the source address (never the credentials),
    /// for a person reading the log and for fail2ban-style tools.
    pub(super) fn authenticate(
        &mut self,
        now: Now,
        flow: Flow,
        req: &Message,
        aor: &str,
        proxy: bool,
        facts: &Facts,
    ) -> Result<User, Message> {
        let (code, header, challenge) = if proxy {
            (407, "Proxy-Authorization", "Proxy-Authenticate")
        } else {
            (401, "Authorization", "WWW-Authenticate")
        };
        let user = match facts.user(aor) {
            Ok(u) => u,
            Err(e) => return Err(self.unavailable(req, e)),
        };
        let realm = realm_of(aor);
        let quoted = ["realm=\"", realm, "\""].concat();
        let creds = req.headers.get_all(header).find(|v| v.contains(&quoted));
        if creds.is_none() {
            log_unsupported_auth(flow, req, aor, header);
        }
        let client = client_address(flow, req);
        let mut stale = false;
        if creds.is_some() && self.guard.locked(client.ip(), aor, now.wall) {
            // Not checked at all, and answered as a wrong password is: the guesser learns nothing.
            self.metrics.auth_refused_locked.fetch_add(1, Relaxed);
            tracing::debug!(user = %aor, source = %client, "attempt while locked out");
        } else if let Some(creds) = creds {
            match self.auth.verify(creds, realm, req.method().unwrap_or_default(), user, now.wall) {
                Verdict::Ok => {
                    self.guard.succeeded(client.ip());
                    let user = user.expect("verified users exist");
                    if !user.enabled {
                        return Err(self.respond_with(req, 403, "Account Disabled"));
                    }
                    return Ok(user.clone());
                }
                Verdict::Stale => stale = true,
                Verdict::Fail(why) => {
                    let (source, transport) = (client, flow.transport.via_token());
                    if why == FOREIGN_NONCE {
                        // The password was right: a client reusing a nonce from before a restart.
                        // `stale=true` tells it to answer the new challenge without asking its user
                        // for the password again (RFC 7616 3.3).
                        stale = true;
                        tracing::info!(user = %aor, %source, %transport, why, "credentials for an unknown nonce: challenged again");
                    } else {
                        self.metrics.auth_failures.fetch_add(1, Relaxed);
                        tracing::warn!(user = %aor, %source, %transport, why, "authentication failed");
                        match self.guard.failed(client.ip(), aor, now.wall) {
                            Lockout::None => {}
                            Lockout::Source => {
                                self.metrics.auth_lockouts.fetch_add(1, Relaxed);
                                let address = source.ip();
                                tracing::warn!(%address, "too many failed authentications: address locked out");
                            }
                            Lockout::User => {
                                self.metrics.auth_lockouts.fetch_add(1, Relaxed);
                                tracing::warn!(user = %aor, "too many failed authentications: user locked out");
                            }
                        }
                    }
                }
            }
        }
        let mut r = self.respond(req, code);
        for c in self.auth.challenges(realm, stale, now.wall) {
            r.headers.push(challenge, c);
        }
        Err(r)
    }

    /// Checks an HTTP API caller (the user with digest, or an administrator with the token);
    /// says who it is, for the audit log, or gives the challenges to answer with a 401. `user`
    /// is the directory entry of `aor`, fetched when the caller sent digest credentials.
    pub fn authorize_http(
        &self,
        now: Now,
        aor: &str,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        user: Option<&User>,
    ) -> Result<String, Vec<String>> {
        if let Some(value) = authorization {
            if let (Some(token), Some(expected)) = (value.strip_prefix("Bearer "), &self.settings.admin_token) {
                use subtle::ConstantTimeEq;
                if bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes())) {
                    return Ok("administrator (API token)".into());
                }
            } else if let Some(params) = value.strip_prefix("Digest") {
                // The credentials must be for this very resource, not replayed from another path.
                let uri = crate::sip::params::parse_auth_params(params).into_iter().find(|(k, _)| k == "uri");
                let user = user.filter(|_| matches!(uri, Some((_, u)) if u == path));
                if matches!(self.auth.verify(value, realm_of(aor), method, user, now.wall), Verdict::Ok)
                    && user.is_some_and(|u| u.enabled)
                {
                    return Ok(aor.to_string());
                }
                self.metrics.auth_failures.fetch_add(1, Relaxed);
            }
        }
        Err(self.auth.challenges(realm_of(aor), false, now.wall))
    }
}

/// A client that asks for an authentication scheme other than Digest gets a Digest challenge
/// it cannot answer, and usually gives up without another word: say so in the log. Microsoft's
/// dialect (pidgin-sipe, Lync, Skype for Business) speaks NTLM, Kerberos or TLS-DSK only; its
/// first REGISTER carries no credentials but its extensions give it away.
fn log_unsupported_auth(flow: Flow, req: &Message, aor: &str, header: &str) {
    let (source, transport) = (client_address(flow, req), flow.transport.via_token());
    for value in req.headers.get_all(header) {
        let scheme = value.split_whitespace().next().unwrap_or_default();
        if !scheme.eq_ignore_ascii_case("Digest") {
            tracing::warn!(
                user = %aor,
                %source,
                %transport,
                %scheme,
                "client offered an authentication scheme this server does not support (Digest only)"
            );
            return;
        }
    }
    let microsoft = req.method() == Some("REGISTER")
        && (req.headers.get("ms-keep-alive").is_some()
            || req
                .headers
                .get_all("Supported")
                .flat_map(crate::sip::params::split_list)
                .any(|s| s.eq_ignore_ascii_case("msrtc-event-categories")));
    if microsoft {
        let user_agent = req.headers.get("User-Agent").unwrap_or_default();
        tracing::warn!(
            user = %aor,
            %source,
            %transport,
            user_agent,
            "client speaks Microsoft's SIP dialect (NTLM, Kerberos or TLS-DSK authentication); \
             this server offers Digest only, so it will give up"
        );
    }
}

/// The address a request really comes from: over the internal link, the client's as the
/// Front-End stamped it on the client's Via (a Front-End is trusted: it authenticated with a
/// certificate); otherwise the peer's.
pub(super) fn client_address(flow: Flow, req: &Message) -> std::net::SocketAddr {
    if flow.transport == Transport::Internal
        && let Some(via) =
            req.headers.get_all("Via").flat_map(crate::sip::params::split_list).nth(1).and_then(|v| Via::parse(v).ok())
        && let Some(ip) = via.received().or_else(|| crate::sip::via::host_ip(via.host()))
    {
        return std::net::SocketAddr::new(ip, via.reply_port());
    }
    flow.remote
}

/// The digest realm of a user: the domain of their address (what `user add` hashes with).
pub(super) fn realm_of(aor: &str) -> &str {
    aor.rsplit_once('@').map_or(aor, |(_, d)| d)
}
