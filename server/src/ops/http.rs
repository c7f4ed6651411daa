//! The operations HTTP server: `/healthz` (alive), `/readyz` (listening and the directory
//! answers), `/metrics` (Prometheus text).

use super::metrics::Metrics;
use crate::directory::Directory;
use crate::home::HomeServer;
use crate::home::presence::state::Rules;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::get};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone)]
pub struct OpsState {
    pub metrics: Arc<Metrics>,
    pub directory: Arc<dyn Directory>,
    /// Set once every SIP listener is bound; cleared when draining.
    pub listening: Arc<AtomicBool>,
    /// The Home Server, for the presence-rules and contact-list API.
    pub home: Option<Arc<HomeServer>>,
}

pub async fn serve(addr: SocketAddr, state: OpsState) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|State(s): State<OpsState>| async move { s.metrics.render() }))
        .route("/users/{user}/presence-rules", get(get_rules).put(put_rules))
        .route("/users/{user}/contacts", get(get_contacts).put(put_contacts))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "ops http server stopped");
        }
    });
    Ok(local)
}

async fn readyz(State(s): State<OpsState>) -> (StatusCode, &'static str) {
    if !s.listening.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not listening\n");
    }
    if !s.directory.is_ready().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "directory unavailable\n");
    }
    (StatusCode::OK, "ready\n")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContactList {
    contacts: Vec<String>,
}

/// Resolves the user and checks the caller may act for them; Err is the response to send.
async fn authorize(
    s: &OpsState,
    user: &str,
    method: &str,
    path: &Uri,
    headers: &HeaderMap,
) -> Result<(Arc<HomeServer>, String, String), Response> {
    let Some(core) = s.home.clone() else { return Err(StatusCode::NOT_FOUND.into_response()) };
    let user = user.trim_start_matches("sip:").to_ascii_lowercase();
    let aor = if user.contains('@') { user } else { format!("{user}@{}", core.domain()) };
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match core.authorize_http(&aor, method, path.path(), authorization).await {
        Ok(actor) => Ok((core, aor, actor)),
        Err(challenges) => {
            let mut r = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
            for c in challenges {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    r.headers_mut().append(header::WWW_AUTHENTICATE, v);
                }
            }
            Err(r)
        }
    }
}

/// Addresses in rules and lists are stored as `user@domain`, lower-case, without `sip:`.
fn normalise(list: Vec<String>) -> Vec<String> {
    list.into_iter()
        .map(|a| a.trim().trim_start_matches("sip:").to_ascii_lowercase())
        .filter(|a| a.contains('@'))
        .collect()
}

async fn get_rules(State(s): State<OpsState>, Path(user): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    match authorize(&s, &user, "GET", &uri, &headers).await {
        Ok((core, aor, _)) => Json(core.presence_rules(&aor)).into_response(),
        Err(r) => r,
    }
}

async fn put_rules(
    State(s): State<OpsState>,
    Path(user): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    Json(rules): Json<Rules>,
) -> Response {
    match authorize(&s, &user, "PUT", &uri, &headers).await {
        Ok((core, aor, actor)) => {
            let rules = Rules { allow: normalise(rules.allow), block: normalise(rules.block) };
            match core.set_presence_rules(&aor, rules.clone()).await {
                Ok(()) => {
                    tracing::info!(target: "audit", %actor, user = %aor, allow = rules.allow.len(), block = rules.block.len(), "presence rules set");
                    Json(rules).into_response()
                }
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
            }
        }
        Err(r) => r,
    }
}

async fn get_contacts(State(s): State<OpsState>, Path(user): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    match authorize(&s, &user, "GET", &uri, &headers).await {
        Ok((core, aor, _)) => Json(ContactList { contacts: core.contact_list(&aor) }).into_response(),
        Err(r) => r,
    }
}

async fn put_contacts(
    State(s): State<OpsState>,
    Path(user): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    Json(list): Json<ContactList>,
) -> Response {
    match authorize(&s, &user, "PUT", &uri, &headers).await {
        Ok((core, aor, actor)) => {
            let contacts = normalise(list.contacts);
            match core.set_contact_list(&aor, contacts.clone()).await {
                Ok(()) => {
                    tracing::info!(target: "audit", %actor, user = %aor, contacts = contacts.len(), "contact list set");
                    Json(ContactList { contacts }).into_response()
                }
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
            }
        }
        Err(r) => r,
    }
}
