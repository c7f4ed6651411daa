//! `parley-bench --smoke`: every workload runs tiny against Parley (and Kamailio when it is
//! installed) in a few seconds, the Front-End row included, with the same build passed as
//! `--baseline` so that the before/after column is exercised too; the results document has every
//! figure.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The parley-server binary of this build (built here when this test runs alone).
fn parley_server() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap(); // target/<profile>/deps/.. -> target/<profile>
    let bin = profile_dir.join("parley-server");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "parley-server", "--bin", "parley-server"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let target_dir = profile_dir.parent().unwrap();
        let status = cmd.env("CARGO_TARGET_DIR", target_dir).status().unwrap();
        assert!(status.success(), "building parley-server failed");
    }
    bin
}

fn require(tool: &str) {
    let ok = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().unwrap().status.success();
    assert!(ok, "{tool} is not installed: run `make deps`");
}

#[test]
fn smoke_run_writes_every_figure() {
    require("sipp");
    require("taskset");
    require("perf");
    let out = tempfile::tempdir().unwrap();
    let md = out.path().join("BENCHMARKS.md");
    let started = std::time::Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_parley-bench"))
        .arg("--smoke")
        .arg("--parley")
        .arg(parley_server())
        .arg("--baseline")
        .arg(parley_server())
        .arg("--out")
        .arg(out.path())
        .arg("--markdown")
        .arg(&md)
        .status()
        .unwrap();
    assert!(status.success(), "parley-bench --smoke failed");
    eprintln!("smoke run took {:?}", started.elapsed());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("latest.json")).unwrap()).unwrap();
    let kamailio_ran = json["servers"].get("kamailio").is_some();
    let figures = json["figures"].as_array().unwrap();
    let keys: Vec<&str> = figures.iter().map(|f| f["key"].as_str().unwrap()).collect();
    for key in [
        "register_max_rate",
        "register_per_cpu_s",
        "register_cpu_s_per_1000",
        "register_p50_ms",
        "register_p99_ms",
        "message_max_rate",
        "message_per_cpu_s",
        "message_p50_ms",
        "message_p99_ms",
        "frontend_message_max_rate",
        "frontend_message_per_cpu_s",
        "frontend_message_p50_ms",
        "frontend_message_p99_ms",
        "memory_idle_mib",
        "cold_start_ms",
        "register_kernel_us",
        "register_user_us",
        "tls_cold_start_ms",
    ] {
        assert!(keys.contains(&key), "figure {key} missing: {keys:?}");
    }
    if kamailio_ran {
        // The opt-in sync policy's rows are against Kamailio's rounds.
        for key in ["sync_at_checkpoint_register_per_cpu_s", "sync_at_checkpoint_register_p99_ms"] {
            assert!(keys.contains(&key), "figure {key} missing: {keys:?}");
        }
    }
    assert!(keys.iter().any(|k| k.starts_with("fanout_")), "no fan-out figure");
    assert!(keys.iter().filter(|k| k.starts_with("memory_")).count() >= 3, "memory figures missing");
    for key in ["register_per_cpu_s", "register_p99_ms", "message_per_cpu_s", "message_p99_ms", "cold_start_ms"] {
        let f = figures.iter().find(|f| f["key"] == key).unwrap();
        assert!(f["baseline"].is_number(), "the baseline has no value for {key}: {f}");
    }
    // The REGISTER run was profiled: some of its CPU in the kernel, some in user space.
    let share = json["servers"]["parley"]["register_fixed"]["kernel_share"].as_f64();
    assert!(
        share.is_some_and(|s| s > 0.0 && s < 1.0),
        "kernel share {share:?}: perf must sample the kernel (root, or kernel.perf_event_paranoid at most 1)"
    );
    // Its 200s waited for the journal's syncs, timed by the server (`parley_store_journal_sync_seconds`);
    // without a sync per change there are none.
    let syncs = &json["servers"]["parley"]["register_fixed"]["journal_syncs"]["buckets"];
    let counted = syncs.as_array().and_then(|b| b.last()).and_then(|b| b[1].as_u64());
    assert!(counted.is_some_and(|n| n > 0), "journal syncs: {syncs}");
    let unsynced = &json["servers"]["parley_sync_at_checkpoint"]["register_fixed"];
    assert!(unsynced.is_object() && unsynced["journal_syncs"].is_null(), "{unsynced}");
    let fe = &json["servers"]["parley"]["frontend"];
    assert_eq!(fe["message_fixed"]["failed"], 0, "{fe}");
    assert_eq!(fe["cpu_s_by_process"].as_object().map(|o| o.len()), Some(3), "{fe}");
    for f in figures {
        let key = f["key"].as_str().unwrap();
        if key.ends_with("_all_cpus_scaling") {
            // Blank while the one-CPU ladder never failed, as the smoke's one step does not (the
            // report's unit test covers its value).
            assert!(f["parley"].is_null(), "{f}");
            continue;
        }
        assert!(f["parley"].is_number(), "Parley has no value for {key}: {f}");
        if kamailio_ran && !key.starts_with("tls_") {
            assert!(f["kamailio"].is_number(), "Kamailio has no value for {key}: {f}");
            assert!(f["ratio"].is_number() || f["kamailio"].as_f64() == Some(0.0), "no ratio for {key}");
        }
    }
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(
        text.contains("| figure | unit | Parley | Parley (baseline) | Parley/baseline | Kamailio | Parley/Kamailio |"),
        "{text}"
    );
    assert!(text.contains("through the Front-End"), "{text}");
    let svg = std::fs::read_to_string(out.path().join("throughput.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
    assert!(Path::new(&out.path().join("latest.json")).exists());
}
