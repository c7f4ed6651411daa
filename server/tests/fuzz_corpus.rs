//! Replays the fuzz corpus (`fuzz/corpus/<target>/`: the seeds, and every input that once
//! crashed a target) through the same entry points the fuzz targets call, so `make test` keeps
//! them fixed without nightly Rust or libFuzzer.

use std::path::Path;

/// A fuzz target's entry point.
type Target = fn(&[u8]);

#[test]
fn every_corpus_input_passes_its_target() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let targets: [(&str, Target); 4] = [
        ("request_path", parley_server::fuzzing::request_path),
        ("digest", parley_server::fuzzing::digest),
        ("pidf", parley_server::fuzzing::pidf),
        ("config", parley_server::fuzzing::config),
    ];
    for (name, target) in targets {
        let dir = corpus.join(name);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            // A panic names the input that caused it.
            let result = std::panic::catch_unwind(|| target(&data));
            assert!(result.is_ok(), "{} fails {name}", path.display());
            inputs += 1;
        }
        assert!(inputs > 0, "no corpus for {name} in {}", dir.display());
        println!("{name}: {inputs} inputs replayed");
    }
}
