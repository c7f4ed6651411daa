//! The web client's HTTP listener (`listen.web`): the built assets of `web/` (`make web` writes
//! them to `web/dist`, the image carries them; `web.root` names the directory) at `/`, and
//! `/config.json`, which tells the page the SIP domain and the WebSocket ports to connect to (on
//! the host the page came from). Only plain file names directly under the root are served.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// What `/config.json` says, and where the files are.
#[derive(Clone, Debug)]
pub struct WebClient {
    pub root: PathBuf,
    pub domain: String,
    pub ws_port: Option<u16>,
    pub wss_port: Option<u16>,
}

pub async fn serve(addr: SocketAddr, client: WebClient) -> std::io::Result<SocketAddr> {
    if !client.root.join("index.html").is_file() {
        tracing::warn!(root = %client.root.display(), "web.root has no index.html: run `make web`");
    }
    let app = Router::new()
        .route("/", get(|State(c): State<Arc<WebClient>>| async move { file(&c, "index.html").await }))
        .route("/config.json", get(config))
        .route(
            "/{name}",
            get(|State(c): State<Arc<WebClient>>, Path(name): Path<String>| async move { file(&c, &name).await }),
        )
        .with_state(Arc::new(client));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "web client http server stopped");
        }
    });
    Ok(local)
}

async fn config(State(c): State<Arc<WebClient>>) -> Response {
    let body = serde_json::json!({ "domain": c.domain, "ws": c.ws_port, "wss": c.wss_port });
    let mut r = axum::Json(body).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("map" | "json") => "application/json",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

async fn file(c: &WebClient, name: &str) -> Response {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !plain {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    match tokio::fs::read(c.root.join(name)).await {
        Ok(data) => {
            let mut r = data.into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(name)));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert("X-Content-Type-Options", HeaderValue::from_static("nosniff"));
            h.insert(
                "Content-Security-Policy",
                HeaderValue::from_static(
                    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'",
                ),
            );
            r
        }
        Err(_) => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}
