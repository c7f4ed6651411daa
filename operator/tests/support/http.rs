//! The HTTP face of the double: Kubernetes REST paths, query parameters, content types, list and
//! watch (streamed JSON lines with bookmarks and initial events), and `Status` errors.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::store::{ApiError, Change, Logged, Resource, State, Sub};

/// What each client of the double shares: the state and the watch fan-out.
pub struct Shared {
    pub state: Mutex<State>,
    pub tx: broadcast::Sender<Change>,
}

#[derive(Clone)]
pub struct Ctx {
    pub shared: Arc<Shared>,
    /// Which client this router serves (for the request log).
    pub client: String,
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A parsed label selector: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x,y)`.
#[derive(Debug, Default)]
pub struct Selector(Vec<(String, Op)>);

#[derive(Debug)]
enum Op {
    Eq(String),
    Ne(String),
    Exists,
    Absent,
    In(Vec<String>),
    NotIn(Vec<String>),
}

impl Selector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        let mut depth = 0;
        let mut cur = String::new();
        for c in s.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    terms.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        terms.push(cur);
        let mut out = Vec::new();
        for t in terms.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            let set = |rest: &str| -> Vec<String> {
                rest.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .collect()
            };
            let term = if let Some((k, v)) = t.split_once("!=") {
                (k.trim().to_string(), Op::Ne(v.trim().to_string()))
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                (k.trim().to_string(), Op::Eq(v.trim().to_string()))
            } else if let Some((k, rest)) = t.split_once(" notin ") {
                (k.trim().to_string(), Op::NotIn(set(rest)))
            } else if let Some((k, rest)) = t.split_once(" in ") {
                (k.trim().to_string(), Op::In(set(rest)))
            } else if let Some(k) = t.strip_prefix('!') {
                (k.trim().to_string(), Op::Absent)
            } else if t.chars().all(|c| c.is_alphanumeric() || "-_./".contains(c)) {
                (t.to_string(), Op::Exists)
            } else {
                return Err(ApiError::new(400, "BadRequest", format!("unable to parse requirement: {t:?}")));
            };
            out.push(term);
        }
        Ok(Selector(out))
    }

    /// Whether a map of labels (or of selectable fields) matches.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, op)| {
            let v = labels.get(k);
            match op {
                Op::Eq(want) => v == Some(want),
                Op::Ne(want) => v != Some(want),
                Op::Exists => v.is_some(),
                Op::Absent => v.is_none(),
                Op::In(set) => v.is_some_and(|v| set.contains(v)),
                Op::NotIn(set) => v.is_none_or(|v| !set.contains(v)),
            }
        })
    }
}

/// Label and field selectors of a list or watch.
pub struct Filter {
    labels: Selector,
    fields: Selector,
}

impl Filter {
    fn from_query(q: &BTreeMap<String, String>) -> Result<Self, ApiError> {
        let fields = Selector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
        for (k, _) in &fields.0 {
            if k != "metadata.name" && k != "metadata.namespace" {
                return Err(ApiError::new(400, "BadRequest", format!("field label not supported: {k}")));
            }
        }
        Ok(Self { labels: Selector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels: BTreeMap<String, String> = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
            .unwrap_or_default();
        let field = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
        let fields = BTreeMap::from([
            ("metadata.name".to_string(), field("/metadata/name")),
            ("metadata.namespace".to_string(), field("/metadata/namespace")),
        ]);
        self.labels.matches(&labels) && self.fields.matches(&fields)
    }
}

/// The request, resolved against the served resources.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn resolve(state: &State, path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    };
    let unknown =
        || ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({path})"));
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] if state.resource(group, plural).is_some() => {
            (Some(ns.to_string()), *plural, tail.first().map(|s| s.to_string()), tail.get(1).map(|s| s.to_string()))
        }
        [plural, tail @ ..] => (None, *plural, tail.first().map(|s| s.to_string()), tail.get(1).map(|s| s.to_string())),
        _ => return Err(unknown()),
    };
    let resource = state.resource(group, plural).ok_or_else(unknown)?;
    Ok(Target { resource, namespace, name, sub })
}

fn respond(code: u16, body: Value) -> Response {
    let mut r =
        (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body.to_string()).into_response();
    r.headers_mut().insert("content-type", "application/json".parse().expect("header"));
    r
}

fn error(e: ApiError) -> Response {
    respond(e.code, e.status())
}

/// The one handler: every request of every client goes through here.
pub async fn handle(
    AxumState(ctx): AxumState<Ctx>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let q = query(&uri);
    let path = uri.path().to_string();
    let watch = method == Method::GET && matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let response = if watch {
        start_watch(&ctx, &path, &q)
    } else {
        let mut state = ctx.shared.state.lock().expect("state lock");
        serve(&mut state, &method, &path, &q, &headers, &body)
    };
    let code = response.status().as_u16();
    ctx.shared.state.lock().expect("state lock").log.push(Logged {
        client: ctx.client.clone(),
        method: method.to_string(),
        path,
        query: uri.query().unwrap_or("").to_string(),
        code,
    });
    response
}

fn serve(
    state: &mut State,
    method: &Method,
    path: &str,
    q: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let t = match resolve(state, path) {
        Ok(t) => t,
        Err(e) => return error(e),
    };
    let r = &t.resource;
    if r.namespaced && t.namespace.is_none() && method != Method::GET {
        return error(ApiError::new(404, "NotFound", "namespaced resources need a namespace"));
    }
    let ns = t.namespace.clone().unwrap_or_default();
    let sub = match t.sub.as_deref() {
        None => Sub::Main,
        Some("status") if r.status => Sub::Status,
        Some(other) => return error(ApiError::new(404, "NotFound", format!("subresource {other} not served"))),
    };
    let manager = q.get("fieldManager").cloned().unwrap_or_else(|| {
        headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .unwrap_or("unknown")
            .to_string()
    });
    let parse = |b: &[u8]| {
        serde_json::from_slice::<Value>(b)
            .map_err(|e| ApiError::new(400, "BadRequest", format!("decoding the body: {e}")))
    };
    let result: Result<(u16, Value), ApiError> = match (method.clone(), t.name.as_deref()) {
        (Method::GET, None) => Filter::from_query(q).map(|f| {
            let items: Vec<Value> =
                state.list(r, t.namespace.as_deref()).into_iter().filter(|o| f.matches(o)).collect();
            (
                200,
                json!({
                    "apiVersion": r.api_version(), "kind": format!("{}List", r.kind),
                    "metadata": {"resourceVersion": state.rv.to_string()}, "items": items,
                }),
            )
        }),
        (Method::GET, Some(name)) => state.get(r, &ns, name).map(|o| (200, o)),
        (Method::POST, None) => parse(body).and_then(|b| state.create(r, &ns, b, &manager)).map(|o| (201, o)),
        (Method::PUT, Some(name)) => {
            parse(body).and_then(|b| state.replace(r, &ns, name, b, sub, &manager)).map(|o| (200, o))
        }
        (Method::PATCH, Some(name)) => {
            let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
            match content_type.split(';').next().unwrap_or("") {
                "application/apply-patch+yaml" => parse(body).and_then(|b| {
                    let force = q.get("force").map(String::as_str) == Some("true");
                    state.apply(r, &ns, name, b, sub, q.get("fieldManager").map(String::as_str).unwrap_or(""), force)
                }),
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    parse(body).and_then(|b| state.merge_patch(r, &ns, name, &b, sub, &manager))
                }
                other => Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the double does not serve {other:?} patches"),
                )),
            }
            .map(|o| (200, o))
        }
        (Method::DELETE, Some(name)) => {
            let opts: Value =
                if body.is_empty() { json!({}) } else { serde_json::from_slice(body).unwrap_or(json!({})) };
            let orphan = opts["propagationPolicy"] == "Orphan"
                || q.get("propagationPolicy").map(String::as_str) == Some("Orphan");
            let precondition =
                opts.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_string);
            state.delete(r, &ns, name, orphan, precondition).map(|o| (200, o))
        }
        _ => Err(ApiError::new(405, "MethodNotAllowed", format!("{method} {path} is not served"))),
    };
    match result {
        Ok((code, v)) => respond(code, v),
        Err(e) => error(e),
    }
}

fn line(type_: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": type_, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn bookmark(r: &Resource, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line("BOOKMARK", &json!({"apiVersion": r.api_version(), "kind": r.kind, "metadata": meta}))
}

/// How a change shows in a watch with a label selector: an object that starts matching is
/// ADDED, one that stops matching is DELETED.
fn project(c: &Change, f: &Filter) -> Option<&'static str> {
    let now = f.matches(&c.object);
    let before = c.old.as_ref().map(|o| f.matches(o));
    match (c.type_, before, now) {
        ("ADDED", _, true) => Some("ADDED"),
        ("DELETED", _, true) => Some("DELETED"),
        ("MODIFIED", Some(true), true) => Some("MODIFIED"),
        ("MODIFIED", Some(false), true) | ("MODIFIED", None, true) => Some("ADDED"),
        ("MODIFIED", Some(true), false) => Some("DELETED"),
        _ => None,
    }
}

/// A watch: from `resourceVersion` (replaying history), or from "now" with the current objects as
/// ADDED events (`resourceVersion` empty or "0", or `sendInitialEvents=true`, which ends the
/// initial events with a bookmark). Bookmarks follow every second when allowed; the stream ends
/// after `timeoutSeconds`.
fn start_watch(ctx: &Ctx, path: &str, q: &BTreeMap<String, String>) -> Response {
    let prepared = {
        let state = ctx.shared.state.lock().expect("state lock");
        let t = match resolve(&state, path) {
            Ok(t) => t,
            Err(e) => return error(e),
        };
        let filter = match Filter::from_query(q) {
            Ok(f) => f,
            Err(e) => return error(e),
        };
        // Subscribe under the lock: nothing committed after the snapshot can be missed.
        let rx = ctx.shared.tx.subscribe();
        let r = t.resource.clone();
        let in_scope = |c: &Change| {
            c.group == r.group && c.plural == r.plural && t.namespace.as_ref().is_none_or(|ns| &c.namespace == ns)
        };
        let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
        let initial = q.get("sendInitialEvents").map(String::as_str) == Some("true");
        let mut lines = VecDeque::new();
        if initial || rv_param.is_empty() || rv_param == "0" {
            for o in state.list(&r, t.namespace.as_deref()).into_iter().filter(|o| filter.matches(o)) {
                lines.push_back(line("ADDED", &o));
            }
            if initial {
                lines.push_back(bookmark(&r, state.rv, true));
            }
        } else {
            let from: u64 = match rv_param.parse() {
                Ok(v) => v,
                Err(_) => {
                    return error(ApiError::new(400, "BadRequest", format!("invalid resourceVersion {rv_param:?}")));
                }
            };
            for c in state.history.iter().filter(|c| c.rv > from && in_scope(c)) {
                if let Some(type_) = project(c, &filter) {
                    lines.push_back(line(type_, &c.object));
                }
            }
        }
        let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        let timeout = Duration::from_secs(q.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(290));
        (rx, r, t.namespace.clone(), filter, lines, state.rv, bookmarks, timeout)
    };
    let (mut rx, r, namespace, filter, lines, start_rv, bookmarks, timeout) = prepared;
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1024);
    tokio::spawn(async move {
        for l in lines {
            if out_tx.send(Ok(l)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_rv = start_rv;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            let next = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tick.tick(), if bookmarks => Some(bookmark(&r, last_rv, false)),
                c = rx.recv() => match c {
                    Ok(c) if c.rv > start_rv && c.group == r.group && c.plural == r.plural
                        && namespace.as_ref().is_none_or(|ns| &c.namespace == ns) => {
                        last_rv = c.rv;
                        project(&c, &filter).map(|t| line(t, &c.object))
                    }
                    Ok(_) => None,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410, "message": "too old resource version"});
                        let _ = out_tx.send(Ok(line("ERROR", &gone))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if let Some(l) = next
                && out_tx.send(Ok(l)).await.is_err()
            {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(out_rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert("content-type", "application/json".parse().expect("header"));
    response
}
