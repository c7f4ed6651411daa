//! The README's promises: the standalone example config starts, and the client commands listed
//! between the `client-commands` markers work as written (ports moved to free ones).

mod support;

use std::process::{Command, Stdio};
use support::{Server, free_port, repo_root, require_tool};

#[test]
fn readme_client_commands_work_against_the_example_config() {
    require_tool("sipsak");
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let block = readme.split("<!-- client-commands").nth(1).and_then(|b| b.split("<!-- end client-commands").next());
    let commands: Vec<&str> =
        block.expect("README has the client-commands block").lines().filter(|l| l.starts_with("sipsak")).collect();
    assert!(commands.len() >= 3, "{commands:?}");

    // The example config as shipped, with its fixed ports and demo folder moved into a temp dir.
    let dir = tempfile::tempdir().unwrap();
    let (sip, tls, ops, contact) = (free_port(), free_port(), free_port(), free_port());
    let example = std::fs::read_to_string(repo_root().join("examples/standalone/parley.toml")).unwrap();
    let config = example
        .replace(":5060", &format!(":{sip}"))
        .replace(":5061", &format!(":{tls}"))
        .replace(":8080", &format!(":{ops}"))
        .replace("../../.parley-demo", dir.path().to_str().unwrap())
        .replace("\"users.toml\"", &format!("{:?}", repo_root().join("examples/standalone/users.toml")));
    std::fs::write(dir.path().join("parley.toml"), config).unwrap();
    let server = Server::start_from(dir, sip, tls, ops);

    for line in commands {
        let command = line
            .split('#')
            .next()
            .unwrap()
            .trim()
            .replace(":5060", &format!(":{sip}"))
            .replace(":5061", &format!(":{tls}"))
            .replace(":5070", &format!(":{contact}"));
        let out = Command::new("timeout").args(["20", "sh", "-c", &command]).stdin(Stdio::null()).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "README command failed: {command}\n{text}");
        assert!(text.contains("200 OK") || text.contains("completed successful"), "{command}\n{text}");
    }
    assert!(server.metric("parley_sip_requests_total{method=\"REGISTER\"}") >= 2.0);
}
