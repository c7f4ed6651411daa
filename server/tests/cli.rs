//! The command line: config errors name the key and exit non-zero; `user hash` prints entries
//! that the file directory accepts.

mod support;

fn parley(args: &[&str], stdin: &str) -> (bool, String, String) {
    let out = support::run_parley(args, &[], stdin);
    (out.ok, out.stdout, out.stderr)
}

#[test]
fn config_errors_name_the_key_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "sip_domain = \"example.test\"\n[storage]\ndata_dir = \"d\"\nlogs_dir = \"l\"\n\
         [directory]\nbackend = \"file\"\nfile = \"u.toml\"\n[registrar]\nmin_expirs = 5\n",
    )
    .unwrap();
    let (ok, _, err) = parley(&["serve", "--config", path.to_str().unwrap()], "");
    assert!(!ok);
    assert!(err.contains("min_expirs"), "{err}");
    let (ok, _, err) = parley(&["serve", "--config", "/nonexistent/parley.toml"], "");
    assert!(!ok && err.contains("/nonexistent/parley.toml"), "{err}");
}

#[test]
fn check_config_accepts_the_example_and_names_a_bad_key() {
    let example = support::repo_root().join("examples/standalone/parley.toml");
    let (ok, out, err) = parley(&["check-config", "--config", example.to_str().unwrap()], "");
    assert!(ok && out.contains("valid for role home"), "{out}{err}");
    // The example is a Home Server's: as a Front-End it lacks the routing table.
    let (ok, _, err) = parley(&["check-config", "--role", "frontend", "--config", example.to_str().unwrap()], "");
    assert!(!ok && err.contains("`frontend`"), "{err}");
}

#[test]
fn the_multi_server_demo_configs_are_valid_for_their_roles() {
    let dir = support::repo_root().join("examples/multi");
    for (file, role) in [("frontend.toml", "frontend"), ("home-1.toml", "home"), ("home-2.toml", "home")] {
        let path = dir.join(file);
        let (ok, out, err) = parley(&["check-config", "--role", role, "--config", path.to_str().unwrap()], "");
        assert!(ok, "{file}: {out}{err}");
    }
}

#[test]
fn user_hash_matches_the_sample_directory() {
    let (ok, out, err) = parley(&["user", "hash", "alice@example.test"], "alice-password\n");
    assert!(ok, "{err}");
    let sample = std::fs::read_to_string(support::repo_root().join("examples/standalone/users.toml")).unwrap();
    for line in out.lines().filter(|l| l.starts_with("ha1_")) {
        assert!(sample.contains(line), "{line} not in the sample users file");
    }
    assert_eq!(out.lines().filter(|l| l.starts_with("ha1_")).count(), 2);
    let (ok, _, err) = parley(&["user", "hash", "alice"], "pw\n");
    assert!(!ok && err.contains("user@domain"), "{err}");
}

/// The runner must not fail when the command exits before reading its input (here, an argument
/// error): more input than a pipe holds makes the write meet the closed pipe (EPIPE) every time,
/// which a busy machine used to cause now and then with a short input.
#[test]
fn a_command_that_exits_before_reading_its_input_is_reported_not_a_broken_pipe() {
    let input = "x".repeat(1 << 20);
    let (ok, _, err) = parley(&["user", "hash", "alice"], &input);
    assert!(!ok && err.contains("user@domain"), "{err}");
}
