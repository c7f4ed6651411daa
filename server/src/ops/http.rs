//! The operations HTTP server: `/healthz` (alive), `/readyz` (listening and the directory
//! answers), `/metrics` (Prometheus text), `/status` (a Home Server's share of the users, JSON),
//! the rules and contact-list API, and the administrators' API that moves users
//! (`/admin/users/{address}/move-out|state|move-done|move-abort`, bearer token only).

use super::metrics::Metrics;
use crate::directory::Directory;
use crate::home::HomeServer;
use crate::home::driver::{MoveError, WriteError};
use crate::home::presence::state::Rules;
use crate::store::UserState;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{
    Json, Router,
    routing::{get, post},
};
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
    /// This server's name (`server_name`), as the directory homes users on it.
    pub server_name: String,
}

/// How often a Home Server counts its users in the directory.
pub const LOAD_REFRESH: std::time::Duration = std::time::Duration::from_secs(15);

/// Counts the users homed on this server and reads its capacity, from the directory, into the
/// gauges `/status` and `/metrics` report.
pub async fn refresh_load(s: &OpsState) -> Result<(), crate::directory::DirectoryError> {
    let load = s.directory.load(&s.server_name).await?;
    s.metrics.homed_users.store(load.homed, Ordering::Relaxed);
    s.metrics.capacity_users.store(load.capacity, Ordering::Relaxed);
    Ok(())
}

/// Recounts every `LOAD_REFRESH`, the first time one period from now.
pub fn start_load_refresh(s: OpsState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + LOAD_REFRESH, LOAD_REFRESH);
        loop {
            tick.tick().await;
            if let Err(e) = refresh_load(&s).await {
                tracing::warn!(error = %e, "homed users not counted");
            }
        }
    });
}

pub async fn serve(addr: SocketAddr, state: OpsState) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|State(s): State<OpsState>| async move { s.metrics.render() }))
        .route("/users/{user}/presence-rules", get(get_rules).put(put_rules))
        .route("/users/{user}/contacts", get(get_contacts).put(put_contacts))
        .route("/status", get(status))
        .route("/admin/users/{user}/move-out", post(move_out))
        .route("/admin/users/{user}/state", axum::routing::put(put_state).delete(delete_state))
        .route("/admin/users/{user}/move-done", post(move_done))
        .route("/admin/users/{user}/move-abort", post(move_abort))
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

/// `GET /status`: counts only, so no authentication (the operator polls it).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    server: String,
    homed_users: u64,
    capacity: u64,
    registered_users: u64,
    moves_in_progress: u64,
}

#[derive(serde::Deserialize)]
struct StatusQuery {
    fresh: Option<String>,
}

async fn status(State(s): State<OpsState>, Query(q): Query<StatusQuery>) -> Response {
    let Some(home) = s.home.clone() else { return (StatusCode::NOT_FOUND, "not a Home Server\n").into_response() };
    if q.fresh.as_deref().is_some_and(|f| f != "0" && f != "false")
        && let Err(e) = refresh_load(&s).await
    {
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], format!("{e}\n")).into_response();
    }
    let (registered_users, moves_in_progress) = home.status_counts();
    Json(Status {
        server: s.server_name.clone(),
        homed_users: s.metrics.homed_users.load(Ordering::Relaxed),
        capacity: s.metrics.capacity_users.load(Ordering::Relaxed),
        registered_users,
        moves_in_progress,
    })
    .into_response()
}

/// A user's durable state as the move API carries it.
#[derive(serde::Serialize, serde::Deserialize)]
struct MovedState {
    address: String,
    /// Each per-user table's value, by table name.
    tables: UserState,
}

/// The administrators' API: the bearer token only (never a user's digest).
async fn authorize_admin(
    s: &OpsState,
    user: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(Arc<HomeServer>, String), Response> {
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("Bearer "));
    if !bearer {
        return Err((StatusCode::UNAUTHORIZED, "the administrators' API needs Authorization: Bearer <admin token>\n")
            .into_response());
    }
    let (core, aor, _) = authorize(s, user, "POST", uri, headers).await?;
    Ok((core, aor))
}

fn move_error(e: MoveError) -> Response {
    let code = match e {
        MoveError::Conflict(_) => StatusCode::CONFLICT,
        MoveError::Bad(_) => StatusCode::BAD_REQUEST,
        MoveError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, format!("{e}\n")).into_response()
}

async fn move_out(State(s): State<OpsState>, Path(user): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    let (home, aor) = match authorize_admin(&s, &user, &uri, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match home.move_out(&aor).await {
        Ok(tables) => Json(MovedState { address: aor, tables }).into_response(),
        Err(e) => move_error(e),
    }
}

async fn put_state(
    State(s): State<OpsState>,
    Path(user): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (home, aor) = match authorize_admin(&s, &user, &uri, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let state: MovedState = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not a user's state: {e}\n")).into_response(),
    };
    if state.address.trim_start_matches("sip:").to_ascii_lowercase() != aor {
        return (StatusCode::BAD_REQUEST, format!("the state is {}'s, not {aor}'s\n", state.address)).into_response();
    }
    match home.take_user(&aor, &state.tables).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => move_error(e),
    }
}

async fn delete_state(State(s): State<OpsState>, Path(user): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    match authorize_admin(&s, &user, &uri, &headers).await {
        Ok((home, aor)) => match home.drop_user(&aor).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => move_error(e),
        },
        Err(r) => r,
    }
}

async fn move_done(State(s): State<OpsState>, Path(user): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    match authorize_admin(&s, &user, &uri, &headers).await {
        Ok((home, aor)) => match home.move_done(&aor).await {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => move_error(e),
        },
        Err(r) => r,
    }
}

async fn move_abort(State(s): State<OpsState>, Path(user): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    match authorize_admin(&s, &user, &uri, &headers).await {
        Ok((home, aor)) => {
            home.move_abort(&aor);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(r) => r,
    }
}

/// The answer to an API call that was not served here: the user is being moved, or has been.
fn write_error(e: WriteError) -> Response {
    match e {
        WriteError::Moving { rehome } => {
            let mut r =
                (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], format!("{e}\n")).into_response();
            if rehome {
                r.headers_mut().insert(crate::home::moves::REHOME_HEADER, HeaderValue::from_static("1"));
            }
            r
        }
        WriteError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
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
        Ok((core, aor, _)) if core.moved_away(&aor) => write_error(WriteError::Moving { rehome: true }),
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
                Err(e) => write_error(e),
            }
        }
        Err(r) => r,
    }
}

async fn get_contacts(State(s): State<OpsState>, Path(user): Path<String>, uri: Uri, headers: HeaderMap) -> Response {
    match authorize(&s, &user, "GET", &uri, &headers).await {
        Ok((core, aor, _)) if core.moved_away(&aor) => write_error(WriteError::Moving { rehome: true }),
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
                Err(e) => write_error(e),
            }
        }
        Err(r) => r,
    }
}
