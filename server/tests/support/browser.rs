//! The web client in a real browser: Debian's headless Chromium driven by puppeteer-core (pinned
//! in web/package-lock.json) from `web/test/browser.mjs`, one scenario per run. The web client is
//! built first (`scripts/web-build.sh`: npm ci when the lock file changed, then esbuild).

use super::repo_root;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Whether Node and Chromium are here (under `CI=true` their absence fails: `make deps`), and the
/// web client is built. Prints why when it returns false.
pub fn available() -> bool {
    if !super::tool_available("node", "the browser tests") || !super::tool_available("chromium", "the browser tests") {
        return false;
    }
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/web-build.sh")).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
        }
    });
    if let Err(e) = built {
        panic!("building the web client failed (scripts/web-build.sh):\n{e}");
    }
    true
}

/// The built web client, for `web.root`.
pub fn web_root() -> PathBuf {
    repo_root().join("web/dist")
}

/// Where the tests write their screenshots: under the target directory.
pub fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots")
}

/// A scenario of browser.mjs running against the page at `web`; its output goes to a file.
pub struct Scenario {
    child: Child,
    out: PathBuf,
    name: String,
}

impl Scenario {
    pub fn start(name: &str, web: &str, env: &[(&str, String)]) -> Scenario {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = shots().join(format!("{name}-{}-{run}.out", std::process::id()));
        std::fs::create_dir_all(shots()).unwrap();
        let file = std::fs::File::create(&out).unwrap();
        use std::os::unix::process::CommandExt;
        let child = Command::new("node")
            // Its own process group: Chromium goes with it when a failed test kills it.
            .process_group(0)
            .arg(repo_root().join("web/test/browser.mjs"))
            .arg(name)
            .env("PARLEY_WEB", web)
            .env("PARLEY_SHOTS", shots())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start node");
        Scenario { child, out, name: name.into() }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits until the output shows `step: {what}`; panics with `context()` after `timeout`.
    pub fn wait_step(&mut self, what: &str, timeout: Duration, context: &dyn Fn() -> String) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            if out.lines().any(|l| l == format!("step: {what}")) {
                return;
            }
            let exited = self.child.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                panic!("browser scenario {}: no step {what:?} ({exited:?}); output:\n{out}\n{}", self.name, context());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the scenario to end (within `timeout`) and panics with its output and
    /// `context()` unless it passed; returns the output.
    pub fn finish(mut self, timeout: Duration, context: &dyn Fn() -> String) -> String {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = self.output();
        match status {
            Some(s) if s.success() => {
                println!("browser scenario {}:\n{out}", self.name);
                out
            }
            Some(s) => panic!("browser scenario {} failed ({s}); output:\n{out}\n{}", self.name, context()),
            None => {
                panic!("browser scenario {} did not end within {timeout:?}; output:\n{out}\n{}", self.name, context())
            }
        }
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let group = format!("-{}", self.child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        }
        let _ = self.child.wait();
    }
}
