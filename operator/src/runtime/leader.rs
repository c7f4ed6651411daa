//! Leader election with a `coordination.k8s.io/v1` Lease, so that two replicas are safe: only the
//! holder runs controllers. The same algorithm as client-go's leaderelection: optimistic
//! concurrency on the Lease's resourceVersion (a 409 means someone else won), and expiry judged
//! by how long the record has stayed unchanged on *our* clock, so clock skew between nodes does
//! not matter.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

/// Timing of leader election.
#[derive(Clone, Debug)]
pub struct LeaseTiming {
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
    /// How often the holder renews and candidates retry.
    pub retry: Duration,
    /// How long the holder keeps leading while renewals fail.
    pub renew_deadline: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

/// One candidate for the Lease `name`.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    /// The last Lease record seen (its resourceVersion) and when we first saw it.
    observed: Mutex<Option<(String, Instant)>>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: LeaseTiming) -> Self {
        Self { api, name: name.into(), identity: identity.into(), timing, observed: Mutex::new(None) }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn spec(&self, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One attempt: creates the Lease, renews ours, or takes over an expired one.
    /// `Ok(true)` when we hold the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(self.spec(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        let unchanged_for = {
            let mut observed = self.observed.lock().await;
            match observed.as_ref() {
                Some((seen, since)) if *seen == rv => since.elapsed(),
                _ => {
                    *observed = Some((rv.clone(), Instant::now()));
                    Duration::ZERO
                }
            }
        };
        let valid_for = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        let expired = holder.is_none() || unchanged_for > valid_for;
        if !mine && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        lease.spec = Some(self.spec(if mine { spec.acquire_time.clone() } else { None }, transitions));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(updated) => {
                if !mine {
                    info!(lease = %self.name, identity = %self.identity, previous = ?holder, "acquired leadership");
                }
                let rv = updated.metadata.resource_version.unwrap_or_default();
                *self.observed.lock().await = Some((rv, Instant::now()));
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => debug!(lease = %self.name, "another instance leads; standing by"),
                Err(e) => warn!(lease = %self.name, error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// Renews the Lease until that fails for longer than the renew deadline or someone else
    /// holds it; returns when leadership is lost.
    pub async fn keep_renewing(&self) {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "another instance took the Lease");
                    return;
                }
                Err(e) => {
                    warn!(lease = %self.name, error = %e, "renewing the Lease failed");
                    if last_renewed.elapsed() > self.timing.renew_deadline {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the Lease up (on graceful shutdown) so a standby takes over at once.
    ///
    /// On `helm uninstall` this may be refused: Helm deletes the Deployment and the RBAC in one
    /// pass without waiting for the pod to stop, so the pod's SIGTERM usually arrives after its
    /// Role is gone. Nothing waits for that Lease then (no instance is left), and it is only a
    /// record: it expires by itself after `leaseDurationSeconds` (15 s by default), and a later
    /// install takes it over after that long. So the refusal is reported, not treated as a failure.
    pub async fn release(&self) {
        let mut lease = match self.api.get_opt(&self.name).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(e) => return self.not_released(e),
        };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => info!(lease = %self.name, "released leadership"),
            Err(e) => self.not_released(e),
        }
    }

    fn not_released(&self, e: kube::Error) {
        match e {
            kube::Error::Api(s) if s.code == 403 => info!(
                lease = %self.name,
                expires_in_secs = self.timing.duration.as_secs(),
                "not allowed to release the Lease (helm uninstall removes the RBAC before the pod stops); \
                 it expires by itself"
            ),
            e => warn!(lease = %self.name, error = %e, "releasing the Lease failed"),
        }
    }
}
