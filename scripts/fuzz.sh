#!/usr/bin/env bash
# `make fuzz`: runs every fuzz target in fuzz/ for FUZZ_SECONDS (default 60) with libFuzzer
# (cargo-fuzz, nightly Rust), starting from the kept corpus in fuzz/corpus/<target>/. New inputs
# worth keeping go to target/fuzz-corpus/<target>/, not into the repository. A crash is saved
# under fuzz/artifacts/<target>/: copy it into fuzz/corpus/<target>/ and fix the code; `make test`
# replays that directory (server/tests/fuzz_corpus.rs), so it stays fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
targets=(request_path digest pidf config)

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

summary=()
for t in "${targets[@]}"; do
  mkdir -p "target/fuzz-corpus/$t"
  log="target/fuzz-$t.log"
  echo "fuzz: $t for ${seconds}s (log: $log)"
  # -s none: Rust is memory-safe without AddressSanitizer; debug assertions stay on.
  (cd fuzz && cargo +nightly fuzz run -s none "$t" "../target/fuzz-corpus/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1) >"$log" 2>&1 || {
    echo "fuzz: $t FAILED; the crashing input is under fuzz/artifacts/$t/:" >&2
    tail -n 30 "$log" >&2
    exit 1
  }
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1)
  summary+=("$t: ${runs:-?} executions, ${cov:-cov: ?} edges, $(find "target/fuzz-corpus/$t" "fuzz/corpus/$t" -type f | wc -l) corpus inputs")
done
printf 'fuzz: %s\n' "${summary[@]}"
