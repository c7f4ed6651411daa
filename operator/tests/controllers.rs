//! The real kube-runtime controllers, run in-process against the API server double, against a
//! real kube-apiserver and etcd this binary starts from `KUBEBUILDER_ASSETS`, and against the
//! cluster in `KUBECONFIG` when set (each real backend skipped with a message when absent).

mod support;

mod pod_security;
mod refusals;
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
    users_scale_through_the_spec_moving_users_before_removing_servers,
    a_new_image_rolls_the_front_end_first_then_each_home_server_in_turn,
    a_home_server_on_a_drained_node_is_restarted_by_the_operator,
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
    an_orphaned_object_is_removed,
    an_orphan_of_the_domain_is_removed,
    certificate_secrets_chain_to_the_domain_ca,
    a_certificate_near_expiry_is_renewed,
    a_certificate_the_administrator_provides_is_left_alone,
    an_ldap_domain_is_prepared_in_order_before_its_workloads,
    a_managed_directory_is_run_and_prepared_before_its_workloads,
    with_an_issuer_cert_manager_certificates_fill_the_secrets,
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

/// The operator with exactly the permissions the chart grants, on the real control plane: a
/// kind or verb the code uses and the chart's Roles do not grant fails this test.
mod rbac {
    use std::path::Path;

    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{
        ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
    };
    use kube::api::{Api, ObjectMeta, PostParams};
    use parley_operator::crd::{CommunicationsDomain, HomeServer};

    use crate::support::{Harness, envtest, eventually};

    /// The rules of the chart: the controllers' (the `parley-operator.rules` helper), leader
    /// election's and reading CRDs (the Roles of rbac.yaml). They are plain YAML in the templates.
    fn chart_rules() -> (Vec<PolicyRule>, Vec<PolicyRule>) {
        let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/parley-operator/templates");
        let read = |f: &str| std::fs::read_to_string(templates.join(f)).expect("chart template");
        let parse = |yaml: &str| -> Vec<PolicyRule> {
            let plain: String =
                yaml.lines().filter(|l| !l.trim_start().starts_with("{{")).map(|l| format!("{l}\n")).collect();
            serde_saphyr::from_str(&plain).expect("rules parse")
        };
        let helpers = read("_helpers.tpl");
        let block = helpers.split(r#"{{- define "parley-operator.rules" -}}"#).nth(1).expect("rules helper");
        let mut namespaced = parse(block.split("{{- end }}").next().unwrap());
        let rbac = read("rbac.yaml");
        let rules_of = |name_suffix: &str, kind: &str| {
            let doc = rbac
                .split("\n---")
                .find(|d| d.contains(&format!("kind: {kind}\n")) && d.contains(&format!("}}}}{name_suffix}\n")))
                .unwrap_or_else(|| panic!("{kind} *{name_suffix} in rbac.yaml"));
            parse(doc.split("rules:\n").nth(1).expect("rules"))
        };
        namespaced.extend(rules_of("-leader-election", "Role"));
        (namespaced, rules_of("-crds", "ClusterRole"))
    }

    /// Waits for the domain to be converged, failing at once when RBAC refused a reconcile.
    async fn converged(h: &Harness, op: &crate::support::OperatorHandle) {
        eventually("the domain Ready", h.timeout, || async {
            let forbidden = op.metrics.errors("forbidden");
            assert_eq!(forbidden, 0, "reconciles refused by RBAC (their Warning Events say what was refused)");
            let d = h.api::<CommunicationsDomain>().get_opt("corp").await.ok()??;
            let s = d.status?;
            (s.observed_generation == d.metadata.generation
                && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            .then_some(())
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_operator_needs_no_more_than_the_chart_grants() {
        let Some(h) = Harness::apiserver("the_operator_needs_no_more_than_the_chart_grants").await else { return };
        let plane = envtest::control_plane().expect("control plane").expect("started by the harness");
        let (namespaced, cluster) = chart_rules();
        let meta = |name: &str| ObjectMeta { name: Some(name.into()), ..Default::default() };
        let subject = Subject {
            kind: "ServiceAccount".into(),
            name: "parley-operator".into(),
            namespace: Some(h.ns.clone()),
            ..Default::default()
        };
        let pp = PostParams::default();
        let sa = ServiceAccount { metadata: meta("parley-operator"), ..Default::default() };
        h.api::<ServiceAccount>().create(&pp, &sa).await.unwrap();
        let role = Role { metadata: meta("parley-operator"), rules: Some(namespaced) };
        h.api::<Role>().create(&pp, &role).await.unwrap();
        let binding = |kind: &str, name: &str| RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: kind.into(),
            name: name.into(),
        };
        let rb = RoleBinding {
            metadata: meta("parley-operator"),
            role_ref: binding("Role", "parley-operator"),
            subjects: Some(vec![subject.clone()]),
        };
        h.api::<RoleBinding>().create(&pp, &rb).await.unwrap();
        let crds = format!("{}-crds", h.ns);
        let cr = ClusterRole { metadata: meta(&crds), rules: Some(cluster), ..Default::default() };
        Api::<ClusterRole>::all(h.client.clone()).create(&pp, &cr).await.unwrap();
        let crb = ClusterRoleBinding {
            metadata: meta(&crds),
            role_ref: binding("ClusterRole", &crds),
            subjects: Some(vec![subject]),
        };
        Api::<ClusterRoleBinding>::all(h.client.clone()).create(&pp, &crb).await.unwrap();

        // The operator authenticates as that ServiceAccount, as in its pod.
        let tr = TokenRequest {
            spec: TokenRequestSpec { audiences: vec![], expiration_seconds: Some(3600), ..Default::default() },
            ..Default::default()
        };
        let token = h.api::<ServiceAccount>().create_token_request("parley-operator", &pp, &tr).await.unwrap();
        let token_file = plane.dir.join(format!("{}.token", h.ns));
        std::fs::write(&token_file, token.status.expect("token").token).unwrap();
        let kubeconfig = kube::config::Kubeconfig::read_from(&plane.kubeconfig).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
        config.auth_info =
            kube::config::AuthInfo { token_file: Some(token_file.display().to_string()), ..Default::default() };
        let op = h.start_operator_with("op-a", kube::Client::try_from(config).unwrap());

        // Everything the controllers do: create, grow the volumes, scale up, put drift back,
        // scale down, delete.
        h.create_users_config_map().await;
        h.apply_domain("corp", 500).await;
        converged(&h, &op).await;
        h.patch_domain("corp", serde_json::json!({"users": 5_000})).await;
        h.wait_for::<HomeServer, _>("volumes being grown", "corp-home-1", |hs| {
            hs.status
                .as_ref()
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "VolumesUpToDate" && c.status == "False"))
        })
        .await;
        h.patch_domain("corp", serde_json::json!({"users": 25_000})).await;
        converged(&h, &op).await;
        h.delete::<k8s_openapi::api::apps::v1::StatefulSet>("corp-home-2").await;
        converged(&h, &op).await;
        h.patch_domain("corp", serde_json::json!({"users": 5_000})).await;
        h.wait_for::<CommunicationsDomain, _>("scale-down waiting", "corp", |d| {
            d.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == d.metadata.generation && s.waiting_removal.len() == 2)
        })
        .await;
        h.delete::<HomeServer>("corp-home-3").await;
        h.delete::<HomeServer>("corp-home-2").await;
        h.wait_gone::<parley_operator::crd::FrontEnd>("corp-frontend").await;
        converged(&h, &op).await;
        eventually("the operator's Events", h.timeout, || async {
            let events = h.api::<k8s_openapi::api::events::v1::Event>().list(&Default::default()).await.ok()?;
            events.items.iter().any(|e| e.reporting_controller.as_deref() == Some("parley-operator")).then_some(())
        })
        .await;

        assert_eq!(op.metrics.errors("forbidden"), 0, "a reconcile was refused by RBAC");
        let statuses = serde_json::to_string(&(
            h.api::<CommunicationsDomain>().list(&Default::default()).await.unwrap().items,
            h.api::<HomeServer>().list(&Default::default()).await.unwrap().items,
        ))
        .unwrap();
        assert!(!statuses.contains("system:serviceaccount"), "a condition reports an RBAC refusal: {statuses}");
        op.stop().await.unwrap();
        let _ = Api::<ClusterRoleBinding>::all(h.client.clone()).delete(&crds, &Default::default()).await;
        let _ = Api::<ClusterRole>::all(h.client.clone()).delete(&crds, &Default::default()).await;
        h.finish().await;
    }
}

/// The example manifests in `examples/kubernetes/` are what the README tells people to apply: each
/// must pass the real API server's validation (schema, CEL, defaulting) as a dry run.
mod examples {
    use kube::api::{Api, DynamicObject, PostParams};
    use kube::core::GroupVersionKind;

    use crate::support::Harness;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn example_manifests_pass_a_server_side_dry_run() {
        let Some(h) = Harness::apiserver("example_manifests").await else { return };
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes");
        for file in ["small.yaml", "standard.yaml", "enterprise.yaml"] {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            let docs: Vec<DynamicObject> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(docs.iter().any(|d| d.types.as_ref().is_some_and(|t| t.kind == "CommunicationsDomain")), "{file}");
            for doc in docs {
                let types = doc.types.clone().expect("apiVersion and kind");
                assert!(doc.metadata.namespace.is_none(), "{file}: examples are namespace-less");
                let gvk = GroupVersionKind::try_from(&types).unwrap();
                let (resource, _) = kube::discovery::pinned_kind(&h.client, &gvk).await.unwrap();
                let api: Api<DynamicObject> = Api::namespaced_with(h.client.clone(), &h.ns, &resource);
                let params = PostParams { dry_run: true, ..Default::default() };
                if let Err(e) = api.create(&params, &doc).await {
                    panic!("{file}: {} {:?} refused by the API server: {e}", types.kind, doc.metadata.name);
                }
            }
        }
        h.finish().await;
    }
}
