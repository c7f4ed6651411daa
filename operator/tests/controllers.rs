//! The real kube-runtime controllers, run in-process against the API server double, and the same
//! scenarios against a real cluster when `KUBECONFIG` is set (skipped with a message otherwise).

mod support;

mod scenarios;

/// Declares a scenario twice: `double::<name>` against the API server double and
/// `cluster::<name>` against the cluster in `KUBECONFIG`.
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
    certificate_secrets_chain_to_the_domain_ca,
    a_certificate_near_expiry_is_renewed,
    a_certificate_the_administrator_provides_is_left_alone,
    an_ldap_domain_is_prepared_in_order_before_its_workloads,
    with_an_issuer_cert_manager_certificates_fill_the_secrets,
);
