//! Test support: an in-process Kubernetes API server double, a real control plane started from
//! `KUBEBUILDER_ASSETS` ([`envtest`]), and a harness that runs the same scenarios against either
//! or against a real cluster (`KUBECONFIG`).
//!
//! # The double
//!
//! [`ApiServer`] keeps objects as JSON behind one lock and serves the Kubernetes REST API through
//! an axum `Router` that is handed to `kube::Client::new` as its tower service: no socket, no TLS,
//! the real kube client and the real kube-runtime `Controller` on top. It keeps the semantics the
//! operator relies on:
//!
//! - get, list and watch (JSON lines) with `resourceVersion`, replay from history, `BOOKMARK`s
//!   (`allowWatchBookmarks`), `sendInitialEvents` with the `initial-events-end` bookmark, label
//!   selectors (objects that stop matching are `DELETED`), `metadata.name` field selectors and
//!   `timeoutSeconds`;
//! - create (`AlreadyExists`, `generateName`), replace with optimistic concurrency (409 on a stale
//!   `resourceVersion`), JSON merge patch, and server-side apply with field managers: per-field
//!   ownership, 409 conflicts unless `force`, removal of fields a manager stops applying;
//! - the `status` subresource split, `metadata.generation` bumps on spec changes only, and
//!   no-op writes that change nothing (no new resourceVersion, no watch event);
//! - deletion with finalizers (`deletionTimestamp`, no new finalizers, gone when the last one
//!   goes) and owner-reference garbage collection by uid (background; `Orphan` honoured);
//! - CRDs: storing one serves its resource (`Established` at once); custom resources are pruned,
//!   defaulted and validated against the CRD schema including its CEL rules (kube's `cel` engine);
//!   immutable StatefulSet spec fields, Deployment selectors and Service cluster IPs.
//!
//! Not modelled: discovery, authn/authz, admission webhooks, foreground deletion (treated as
//! background), strategic-merge list semantics (treated as merge patch), built-in defaulting, and
//! the controllers of kube-controller-manager (the harness fakes the workload status they set).
//! `kube-fake-client` was not used: it pins kube 4.x and has neither watch nor finalizers.

#![allow(dead_code)]

pub mod envtest;
pub mod fields;
pub mod harness;
pub mod http;
pub mod leaks;
pub mod schema;
pub mod status_board;
pub mod store;

use std::sync::{Arc, Mutex};

use axum::Router;
use tokio::sync::broadcast;

pub use harness::*;
use http::{Ctx, Shared};
use store::{Logged, State};

/// The in-process API server double.
#[derive(Clone)]
pub struct ApiServer {
    shared: Arc<Shared>,
}

impl Default for ApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiServer {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(65_536);
        Self { shared: Arc::new(Shared { state: Mutex::new(State::new(tx.clone())), tx }) }
    }

    /// A kube client talking to this double; `name` tells its requests apart in [`Self::requests`].
    pub fn client(&self, name: &str) -> kube::Client {
        let router = Router::new()
            .fallback(http::handle)
            .with_state(Ctx { shared: self.shared.clone(), client: name.to_string() });
        kube::Client::new(router, "default")
    }

    /// Every request served so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.shared.state.lock().expect("state lock").log.clone()
    }

    /// Writes (anything but GET) sent by the client named `name`, after request number `since`.
    pub fn writes_by(&self, name: &str, since: usize) -> Vec<Logged> {
        self.requests().into_iter().skip(since).filter(|l| l.client == name && l.is_write()).collect()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state.lock().expect("state lock").rv
    }
}

#[cfg(test)]
mod double_tests;
