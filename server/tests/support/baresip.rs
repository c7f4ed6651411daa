//! Driving Debian's baresip 1.0.0 (libre 1.1.0) from a test: a config directory, a child process
//! whose output goes to a file, commands through the stdio UI, and a kill when dropped.

use super::{Server, free_port, require_tool};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// baresip listens on UDP and TCP at `sip_listen` and on TLS at the next port: both must be free.
fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A running baresip, killed when dropped (also when the test fails half-way).
pub struct Baresip {
    child: Child,
    /// Held open: the stdio UI reads commands from it (and cannot poll /dev/null).
    stdin: ChildStdin,
    out: PathBuf,
}

impl Baresip {
    /// Starts baresip with a config directory in `dir`, listening on 127.0.0.1 only, registering
    /// `account`, trusting `ca`. `modules` come between account.so and menu.so/stdio.so, in order
    /// (menu shows what happens only through a UI module, hence stdio). `contacts`, if given, is
    /// the contacts file; `args` are extra command-line arguments (e.g. `-s`, `-t SECONDS`).
    pub fn start(
        dir: &Path,
        ca: &Path,
        account: &str,
        modules: &[&str],
        contacts: Option<&str>,
        args: &[&str],
    ) -> Baresip {
        require_tool("baresip");
        std::fs::create_dir_all(dir).unwrap();
        let modules: String = ["account.so"]
            .iter()
            .chain(modules)
            .chain(&["menu.so", "stdio.so"])
            .map(|m| format!("module {m}\n"))
            .collect();
        let config = format!(
            "module_path /usr/lib/baresip/modules\nsip_listen 127.0.0.1:{}\nsip_cafile {}\n{modules}",
            free_port_pair(),
            ca.display()
        );
        std::fs::write(dir.join("config"), config).unwrap();
        std::fs::write(dir.join("accounts"), format!("{account}\n")).unwrap();
        if let Some(contacts) = contacts {
            std::fs::write(dir.join("contacts"), contacts).unwrap();
        }
        Self::start_configured(dir, args)
    }

    /// Starts baresip on a config directory the caller wrote (`config`, `accounts`, ...).
    pub fn start_configured(dir: &Path, args: &[&str]) -> Baresip {
        require_tool("baresip");
        let out = dir.join("baresip.out");
        let file = std::fs::File::create(&out).unwrap();
        let mut child = Command::new("baresip")
            .arg("-f")
            .arg(dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start baresip");
        let stdin = child.stdin.take().unwrap();
        Baresip { child, stdin, out }
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.out).unwrap_or_default()).into_owned()
    }

    /// A long command of the stdio UI, e.g. `/contacts`. Panics, saying so, if baresip has
    /// already exited (e.g. its `-t` time is up): writing to it then fails with EPIPE.
    pub fn command(&mut self, cmd: &str) {
        let sent = self.stdin.write_all(format!("{cmd}\n").as_bytes()).and_then(|()| self.stdin.flush());
        if let Err(e) = sent {
            let status = self.child.try_wait().ok().flatten();
            panic!("baresip did not take {cmd:?} ({e}); exit status {status:?}; output:\n{}", self.output());
        }
    }

    /// Waits until `done` holds for the output; panics with both outputs after `timeout`.
    pub fn wait_for(&self, server: &Server, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        self.wait_until(what, timeout, &|| server.log_text(), done)
    }

    /// Waits until `done` holds for the output; panics with it and `context()` (e.g. the servers'
    /// logs) after `timeout`.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        context: &dyn Fn() -> String,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.output();
            if done(&text) {
                return text;
            }
            if Instant::now() > deadline {
                panic!("baresip: no {what} within {timeout:?}; output:\n{text}\nserver:\n{}", context());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The output without the ANSI colour codes baresip puts around status names.
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
