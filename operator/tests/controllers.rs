//! The real kube-runtime controllers, run in-process against the API server double, against a
//! real kube-apiserver and etcd this binary starts from `KUBEBUILDER_ASSETS`, and against the
//! cluster in `KUBECONFIG` when set (each real backend skipped with a message when absent).

mod support;

mod scenarios;

/// Declares a scenario three times: `double::<name>` against the API server double,
/// `apiserver::<name>` against the real control plane and `cluster::<name>` against the cluster
/// in `KUBECONFIG`.
macro_rules! scenario {
    ($($name:ident),* $(,)?) => {
        mod double {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = crate::support::Harness::double(stringify!($name)).await;
                    crate::scenarios::$name(&h).await;
                    h.finish().await;
                }
            )*
        }
        mod apiserver {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(h) = crate::support::Harness::apiserver(stringify!($name)).await else { return };
                    crate::scenarios::$name(&h).await;
                    h.finish().await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(h) = crate::support::Harness::cluster(stringify!($name)).await else { return };
                    crate::scenarios::$name(&h).await;
                    h.finish().await;
                }
            )*
        }
    };
}

scenario!(
    small_domain,
    standard_domain,
    enterprise_domain,
    scale_up_then_down,
    grow_small_to_standard,
    drift_is_put_back,
    deleting_the_domain_removes_everything,
    paused_domain_is_left_alone,
    steady_state_writes_nothing,
    two_operators_one_leader,
    manual_topology_only_reports,
    sip_domain_is_immutable,
    foreign_finalizer_holds_the_domain,
    events_mark_what_happened,
    a_resource_deleted_while_reconciled_is_gone,
    stopping_while_starting_releases_the_lease,
);

/// The `parley-operator` binary as the chart runs it (configured by the chart's environment
/// variables), against the real control plane.
mod process {
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use k8s_openapi::api::coordination::v1::Lease;

    use crate::support::{Harness, envtest, eventually};

    /// Kills the operator process if the test ends early, so that none is left behind.
    struct Running(Child);

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_releases_the_lease() {
        let Some(h) = Harness::apiserver("sigterm_releases_the_lease").await else { return };
        let plane = envtest::control_plane().expect("control plane").expect("started by the harness");
        let log = plane.dir.join(format!("{}.log", h.ns));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_parley-operator"))
            .arg("run")
            .env("KUBECONFIG", &plane.kubeconfig)
            .env("POD_NAME", "parley-operator-0")
            .env("POD_NAMESPACE", &h.ns)
            .env("PARLEY_WATCH_NAMESPACE", &h.ns)
            .env("PARLEY_LEASE_NAME", "parley-operator")
            .env("PARLEY_LEASE_DURATION_SECONDS", "7")
            .env("PARLEY_OPS_ADDR", "127.0.0.1:0")
            .env("PARLEY_LOG_FORMAT", "text")
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start parley-operator");
        let mut op = Running(child);
        let logged = || std::fs::read_to_string(&log).unwrap_or_default();
        let leases = h.api::<Lease>();
        let lease = eventually("the operator to hold the Lease", h.timeout, || async {
            let l = leases.get_opt("parley-operator").await.ok()??;
            (l.spec.as_ref()?.holder_identity.as_deref() == Some("parley-operator-0")).then_some(l)
        })
        .await;
        assert_eq!(lease.spec.unwrap().lease_duration_seconds, Some(7), "the chart's leaseDurationSeconds");

        envtest::terminate(&op.0);
        let exited = std::sync::Mutex::new(&mut op.0);
        let status = eventually("the operator to exit after SIGTERM", Duration::from_secs(30), || async {
            exited.lock().unwrap().try_wait().expect("wait")
        })
        .await;
        assert!(status.success(), "exit status {status}; its log:\n{}", logged());
        let lease = leases.get("parley-operator").await.unwrap().spec.unwrap();
        assert_eq!(lease.holder_identity, None, "the Lease is released on shutdown; the log:\n{}", logged());
        h.finish().await;
    }
}
