//! What a Home Server says of itself on its operations port (`GET /status`): how many users the
//! directory homes on it and how many it may hold. The HomeServer controller copies these into
//! the status, and the domain's scale-down decides from them.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::build::OPS_PORT;

/// The server's answer (the fields the operator uses).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    pub homed_users: u64,
    pub capacity: u64,
}

/// A status answer is a few hundred bytes; anything longer is not a Home Server.
const MAX_RESPONSE: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(3);

/// The URL of `/status` of the Home Server `name` in `namespace`: `template` with `{name}` and
/// `{namespace}` replaced, or its Service's cluster DNS name. `fresh=1` asks the server to count
/// again, so a drain's last user is seen at once.
pub fn url(template: Option<&str>, name: &str, namespace: &str, cluster_domain: &str) -> String {
    match template {
        Some(t) => t.replace("{name}", name).replace("{namespace}", namespace),
        None => format!("http://{name}.{namespace}.svc.{cluster_domain}:{OPS_PORT}/status?fresh=1"),
    }
}

/// Fetches `url` (plain HTTP/1.1: the operations port has no TLS). Errors say what went wrong in
/// words for the status; the caller keeps the last known figures.
pub async fn fetch(url: &str) -> Result<ServerStatus, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: not an http:// URL"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("connect: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {} s", TIMEOUT.as_secs()))?
        .map_err(|e| format!("{url}: {e}"))?;
    parse(&response).map_err(|e| format!("{url}: {e}"))
}

fn parse(response: &[u8]) -> Result<ServerStatus, String> {
    if response.len() > MAX_RESPONSE {
        return Err("answer too long".into());
    }
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no HTTP header end")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered {status_line:?}"));
    }
    if head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:")) {
        return Err("chunked answers are not expected".into());
    }
    serde_json::from_slice(&response[split + 4..]).map_err(|e| format!("not a status: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_default_to_the_home_servers_service() {
        assert_eq!(
            url(None, "corp-home-1", "ns", "cluster.local"),
            "http://corp-home-1.ns.svc.cluster.local:8080/status?fresh=1"
        );
        assert_eq!(url(Some("http://127.0.0.1:9/{namespace}/{name}"), "h", "ns", "x"), "http://127.0.0.1:9/ns/h");
    }

    #[test]
    fn answers_are_read_or_refused_with_a_reason() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 60\r\n\r\n{\"server\":\"h\",\"homedUsers\":12,\"capacity\":100,\"registeredUsers\":3}";
        assert_eq!(parse(ok), Ok(ServerStatus { homed_users: 12, capacity: 100 }));
        assert!(parse(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap_err().contains("404"));
        assert!(parse(b"HTTP/1.1 200 OK\r\n\r\nready\n").unwrap_err().contains("not a status"));
        assert!(parse(b"garbage").unwrap_err().contains("header"));
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error_not_a_hang() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let e = fetch(&format!("http://127.0.0.1:{port}/status")).await.unwrap_err();
        assert!(e.contains("connect"), "{e}");
    }
}
