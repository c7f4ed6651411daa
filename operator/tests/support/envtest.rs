//! A real control plane for the scenarios: etcd, kube-apiserver and kube-controller-manager from
//! the directory in `KUBEBUILDER_ASSETS` (controller-runtime's envtest convention;
//! `../shared/k8s/unpack.sh DIR` makes one), started once per test binary on loopback ports it
//! picks, with throwaway certificates made here. Scenarios share it and are isolated by namespace.
//!
//! The processes are children of one thread that lives as long as the test binary, started with
//! `PR_SET_PDEATHSIG` so that even a killed test binary leaves none behind; an exit hook kills
//! them by pid and removes their directory when the binary ends normally.
//!
//! Missing assets skip the scenarios with a message (counted, and the count printed at exit),
//! except under `CI=true`, where they are a failure: CI must run them.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The binaries an API server needs; kube-controller-manager is optional (garbage collection,
/// workload controllers).
const ETCD: &str = "etcd";
const APISERVER: &str = "kube-apiserver";
const KCM: &str = "kube-controller-manager";

/// Controllers of kube-controller-manager the scenarios rely on: owner-reference garbage
/// collection, namespace deletion, default ServiceAccounts (so Pods are admitted) and the
/// workload controllers (StatefulSet and Deployment status, Pods). Not the Job controller: no
/// kubelet runs Job pods, so tests complete Jobs themselves, as the Job controller would.
const CONTROLLERS: &str = "garbagecollector,namespace,serviceaccount,statefulset,deployment,replicaset";

/// A running control plane.
pub struct ControlPlane {
    /// A kubeconfig with admin (`system:masters`) credentials.
    pub kubeconfig: PathBuf,
    /// Where the processes keep their data and logs.
    pub dir: PathBuf,
}

impl ControlPlane {
    /// A kube client for the current tokio runtime (a client must not outlive the runtime that
    /// made it, so every test makes its own).
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("kubeconfig");
        kube::Client::try_from(config).expect("kube client")
    }
}

/// Processes to stop and the directory to remove at exit.
static RUNNING: Mutex<Option<(Vec<Child>, PathBuf)>> = Mutex::new(None);
static PLANE: OnceLock<Result<Option<ControlPlane>, String>> = OnceLock::new();
static SKIPPED: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" {
    fn atexit(cb: extern "C" fn()) -> i32;
    fn prctl(option: i32, ...) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Sends SIGTERM to `child`, as the kubelet does to stop a pod.
pub fn terminate(child: &Child) {
    // SAFETY: plain system call on a pid we own (not yet reaped, so not reused).
    let r = unsafe { kill(child.id() as i32, 15) };
    assert_eq!(r, 0, "kill -TERM {}", child.id());
}
const PR_SET_PDEATHSIG: i32 = 1;
const SIGKILL: i32 = 9;

extern "C" fn at_exit() {
    let skipped = SKIPPED.load(Ordering::Relaxed);
    if skipped > 0 {
        eprintln!(
            "skipped: {skipped} apiserver::* scenario(s) did not run against a real API server: KUBEBUILDER_ASSETS \
             is not set (`bash ../shared/k8s/unpack.sh target/k8s-assets` makes the set; `make test` does it)"
        );
    }
    stop();
}

/// Kills every process started here and removes its directory.
fn stop() {
    let taken = match RUNNING.lock() {
        Ok(mut g) => g.take(),
        Err(p) => p.into_inner().take(),
    };
    if let Some((mut children, dir)) = taken {
        for c in children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(dir);
    }
}

fn register_exit_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: `at_exit` is a plain function that lives for the whole program.
    ONCE.call_once(|| unsafe {
        atexit(at_exit);
    });
}

/// The shared control plane: `Ok(None)` when the scenarios are to be skipped (no assets, not
/// in CI), `Err` when it should run and cannot. Blocks while it starts (seconds).
pub fn control_plane() -> Result<Option<&'static ControlPlane>, String> {
    match PLANE.get_or_init(start) {
        Ok(p) => Ok(p.as_ref()),
        Err(e) => Err(e.clone()),
    }
}

/// Records a skipped scenario, saying why once per binary past the output capture.
pub fn skipped(test: &str) {
    register_exit_hook();
    SKIPPED.fetch_add(1, Ordering::Relaxed);
    eprintln!("skipped: KUBEBUILDER_ASSETS not set ({test} runs against a real API server only when it is)");
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn start() -> Result<Option<ControlPlane>, String> {
    let assets = match std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from) {
        Some(dir) => dir,
        None if ci() => {
            return Err("CI=true but KUBEBUILDER_ASSETS is not set: CI must run the scenarios against a real API \
                        server (`make test` sets it from ../shared/k8s/unpack.sh)"
                .into());
        }
        None => return Ok(None),
    };
    for bin in [ETCD, APISERVER, KCM] {
        if !assets.join(bin).is_file() {
            return Err(format!("KUBEBUILDER_ASSETS={} has no {bin}", assets.display()));
        }
    }
    register_exit_hook();
    // The children die with the thread that started them (PR_SET_PDEATHSIG), so that thread
    // lives as long as the binary.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("control-plane".into())
        .spawn(move || {
            let r = launch(&assets);
            let failed = r.is_err();
            let _ = tx.send(r);
            if failed {
                stop();
            }
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("spawn the control-plane thread: {e}"))?;
    let r = rx.recv().map_err(|_| "the control-plane thread died".to_string())?;
    r.map(Some)
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("pick a port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Throwaway PKI: a CA, the API server's serving certificate, an admin client certificate
/// (`system:masters`) and the service-account signing key pair.
fn certificates(dir: &Path) -> Result<(), String> {
    let e = |e: rcgen::Error| format!("certificates: {e}");
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.distinguished_name.push(DnType::CommonName, "parley-tests-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().map_err(e)?).map_err(e)?;
    write(&dir.join("ca.crt"), &ca.pem())?;

    let names: Vec<String> =
        ["127.0.0.1", "10.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
            .map(String::from)
            .into();
    let mut serving = CertificateParams::new(names).map_err(e)?;
    serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(e)?;
    write(&dir.join("apiserver.crt"), &serving.signed_by(&key, &ca).map_err(e)?.pem())?;
    write(&dir.join("apiserver.key"), &key.serialize_pem())?;

    let mut admin = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    admin.distinguished_name.push(DnType::CommonName, "parley-tests");
    admin.distinguished_name.push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().map_err(e)?;
    write(&dir.join("admin.crt"), &admin.signed_by(&key, &ca).map_err(e)?.pem())?;
    write(&dir.join("admin.key"), &key.serialize_pem())?;

    let sa = KeyPair::generate().map_err(e)?;
    write(&dir.join("sa.key"), &sa.serialize_pem())?;
    write(&dir.join("sa.pub"), &sa.public_key_pem())?;
    Ok(())
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Child, String> {
    let out = fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| format!("start {}: {e}", bin.display()))
}

fn tail(log: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(log) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn launch(assets: &Path) -> Result<ControlPlane, String> {
    let started = Instant::now();
    // Directories of earlier runs that were killed (then no exit hook removed them).
    for e in fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("parley-envtest-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    let dir = std::env::temp_dir().join(format!("parley-envtest-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("etcd")).map_err(|e| format!("create {}: {e}", dir.display()))?;
    *RUNNING.lock().map_err(|_| "lock")? = Some((Vec::new(), dir.clone()));
    let keep = |c: Child| {
        if let Ok(mut g) = RUNNING.lock()
            && let Some((children, _)) = g.as_mut()
        {
            children.push(c);
        }
    };
    certificates(&dir)?;
    let p = |name: &str| dir.join(name).display().to_string();

    let (etcd_port, peer_port, api_port, kcm_port) = (free_port()?, free_port()?, free_port()?, free_port()?);
    keep(spawn(
        &assets.join(ETCD),
        &[
            "--name=parley-tests".into(),
            format!("--data-dir={}", p("etcd")),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            "--log-level=warn".into(),
        ],
        &dir.join("etcd.log"),
    )?);
    keep(spawn(
        &assets.join(APISERVER),
        &[
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            format!("--cert-dir={}", p("certs")),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--authorization-mode=RBAC".into(),
            "--allow-privileged=true".into(),
        ],
        &dir.join("kube-apiserver.log"),
    )?);
    let kubeconfig = dir.join("kubeconfig");
    write(
        &kubeconfig,
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: https://127.0.0.1:{api_port}\n    \
             certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    client-certificate: {crt}\n    client-key: {key}\n\
             contexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: admin\ncurrent-context: envtest\n",
            ca = p("ca.crt"),
            crt = p("admin.crt"),
            key = p("admin.key"),
        ),
    )?;
    wait_ready(&kubeconfig, &dir.join("kube-apiserver.log"))?;
    keep(spawn(
        &assets.join(KCM),
        &[
            format!("--kubeconfig={}", p("kubeconfig")),
            format!("--authentication-kubeconfig={}", p("kubeconfig")),
            format!("--authorization-kubeconfig={}", p("kubeconfig")),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={kcm_port}"),
            format!("--cert-dir={}", p("kcm-certs")),
            format!("--controllers={CONTROLLERS}"),
            "--leader-elect=false".into(),
        ],
        &dir.join("kube-controller-manager.log"),
    )?);
    eprintln!("control plane ready in {:.1?} ({})", started.elapsed(), dir.display());
    Ok(ControlPlane { kubeconfig, dir })
}

/// Waits until the API server answers `/readyz` with 200.
fn wait_ready(kubeconfig: &Path, log: &Path) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let plane = ControlPlane { kubeconfig: kubeconfig.to_path_buf(), dir: PathBuf::new() };
    rt.block_on(async {
        let client = plane.client().await;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let req = axum::http::Request::get("/readyz").body(Vec::new()).expect("request");
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                r => {
                    return Err(format!("kube-apiserver not ready after 90 s ({r:?}); its log ends:\n{}", tail(log)));
                }
            }
        }
    })
}
