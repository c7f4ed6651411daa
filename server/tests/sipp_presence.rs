//! Presence driven by sipp (Debian's 3.6.1) over UDP: a watcher dialog (SUBSCRIBE with a 407
//! challenge, the initial NOTIFY, the NOTIFYs of two publications, an in-dialog refresh, an
//! unsubscribe and its final NOTIFY) and a subscription that expires by itself. The scenarios are
//! in `tests/sipp_presence/`; their NOTIFY checks are sipp `ereg` actions with `check_it`, so a
//! missing or different NOTIFY fails the call. Each sipp run is bounded (`-m 1`, `-timeout 20s
//! -timeout_error`, and a kill after 30 s) and must exit 0; otherwise its logs and the server log
//! are printed. alice's publications come from the Rust test UA, while sipp waits for them.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};
use support::ua::{Ua, status};
use support::{Server, free_port, require_tool};

use support::pidf::{PIDF_AWAY, PIDF_ONLINE};

/// A sipp process running one scenario of `tests/sipp_presence/` once, in its own directory.
struct Sipp {
    child: Child,
    dir: tempfile::TempDir,
    what: String,
}

impl Sipp {
    /// Starts `scenario` against the server's UDP port with `-s service`.
    fn start(server: &Server, scenario: &str, service: &str) -> Sipp {
        require_tool("sipp");
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp_presence").join(scenario);
        let port = free_port().to_string();
        let child = support::spawn_in(
            Command::new("sipp")
                .arg(server.sip.to_string())
                .arg("-sf")
                .arg(&path)
                .args(["-s", service, "-i", "127.0.0.1", "-p", &port])
                .args(["-t", "u1", "-m", "1", "-timeout", "20s", "-timeout_error"])
                .args(["-nostdin", "-trace_err", "-trace_msg"]),
            dir.path(),
        )
        .expect("start sipp");
        Sipp { child, dir, what: format!("sipp {scenario} -s {service}") }
    }

    /// Exit status, or None while running.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for sipp to exit (killing it after 30 s: its own timeout is 20 s) and asserts that
    /// it exited 0.
    fn assert_success(mut self, server: &Server) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.exited() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if status.is_some_and(|s| s.success()) {
            return;
        }
        self.fail(server, &format!("exited with {status:?}"));
    }

    fn fail(&mut self, server: &Server, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let mut logs = String::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            logs += &format!("==== {}\n{}\n", f.file_name().unwrap().to_string_lossy(), tail(&text, 12000));
        }
        panic!("{} {why}\n{logs}\n==== server log\n{}", self.what, tail(&server.log_text(), 8000));
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Waits until the server's `metric` reaches `value`, failing with sipp's logs if sipp exits or
/// the metric does not get there within 10 s.
fn wait_metric(server: &Server, sipp: &mut Sipp, metric: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric(metric) != value {
        if let Some(status) = sipp.exited() {
            sipp.fail(server, &format!("exited with {status} before {metric} was {value}"));
        }
        if Instant::now() > deadline {
            sipp.fail(server, &format!("running, but {metric} is not {value} after 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sipp_watcher_sees_publications_refreshes_and_unsubscribes() {
    let server = Server::start();
    let mut alice = Ua::new("alice", server.sip);
    assert_eq!(status(&alice.register(300)), 200, "alice registers: the initial NOTIFY shows her open");

    let mut watcher = Sipp::start(&server, "watcher.xml", "alice");
    wait_metric(&server, &mut watcher, "parley_subscriptions", 1.0);
    // The server sends the initial NOTIFY right after the 200; the pauses keep the NOTIFYs in the
    // order the scenario expects them even if the server sent them on a slow path.
    std::thread::sleep(Duration::from_millis(300));
    let etag = alice.publish(PIDF_AWAY, None, 300);
    std::thread::sleep(Duration::from_millis(300));
    alice.publish(PIDF_ONLINE, Some(&etag), 300);

    watcher.assert_success(&server);
    assert_eq!(server.metric("parley_subscriptions"), 0.0, "unsubscribed");
    assert!(
        server.metric("parley_sip_requests_total{method=\"SUBSCRIBE\"}") >= 4.0,
        "challenged, refresh, unsubscribe"
    );
    assert_eq!(server.metric("parley_auth_failures_total"), 0.0);
}

#[test]
fn sipp_watcher_subscription_expires_with_a_final_notify() {
    let server = Server::start_with("[registrar]\nmin_expires = 1\n");
    let started = Instant::now();
    Sipp::start(&server, "expiry.xml", "alice").assert_success(&server);
    assert!(started.elapsed() >= Duration::from_secs(1), "the final NOTIFY came before the subscription expired");
    assert_eq!(server.metric("parley_subscriptions"), 0.0);
}
