//! Plays the Home Servers' `/status` for the operators a scenario starts (there is no server
//! process behind a HomeServer on the API server alone): the scenario says how many users each
//! one holds, as the directory would count them, and moves them as a drain Job would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

#[derive(Clone)]
pub struct StatusBoard {
    users: Counts,
    /// The operator's `server_status_url` template pointing here.
    pub url: String,
}

async fn status(State(users): State<Counts>, Path((_ns, name)): Path<(String, String)>) -> Response {
    match users.lock().unwrap().get(&name) {
        Some(n) => Json(serde_json::json!({
            "server": name, "homedUsers": n, "capacity": 10_000, "registeredUsers": 0, "movesInProgress": 0,
        }))
        .into_response(),
        None => (StatusCode::NOT_FOUND, "no such Home Server\n").into_response(),
    }
}

impl StatusBoard {
    pub async fn start() -> StatusBoard {
        let users = Counts::default();
        let app =
            axum::Router::new().route("/{ns}/{name}/status", axum::routing::get(status)).with_state(users.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("status board port");
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.expect("status board") });
        StatusBoard { users, url: format!("http://127.0.0.1:{port}/{{namespace}}/{{name}}/status") }
    }

    /// Says that `home_server` holds `users` users.
    pub fn set(&self, home_server: &str, users: u64) {
        self.users.lock().unwrap().insert(home_server.to_string(), users);
    }

    pub fn users(&self, home_server: &str) -> Option<u64> {
        self.users.lock().unwrap().get(home_server).copied()
    }

    /// Moves every user of `from` to `to`, as `parley-server user drain` would.
    pub fn move_all(&self, from: &str, to: &str) {
        let mut users = self.users.lock().unwrap();
        let n = users.insert(from.to_string(), 0).unwrap_or(0);
        *users.entry(to.to_string()).or_default() += n;
    }
}
