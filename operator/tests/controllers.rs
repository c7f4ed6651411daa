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
);
