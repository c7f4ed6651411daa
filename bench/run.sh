#!/usr/bin/env bash
# `make bench`: Parley's Home Server side by side with Kamailio 5.6, in one run.
#   bench/run.sh            full run (about 20 minutes): results/latest.json, results/throughput.svg, BENCHMARKS.md
#   bench/run.sh --smoke    a few seconds of tiny loads (Kamailio too when installed); writes to a temp dir
#   BASELINE=<git rev> bench/run.sh   also measures that revision's Home Server (cold start, fixed-rate
#                           REGISTER and MESSAGE) in a "Parley (baseline)" column: the rev is built in
#                           release in a temporary git worktree (target dir target/baseline, kept so the
#                           next baseline build reuses its dependencies), passed as --baseline, and the
#                           worktree is removed afterwards. BASELINE may also name a parley-server binary.
# Extra arguments go to parley-bench (see `parley-bench --help`).
# Installs sipp (sip-tester), kamailio and kamailio-presence-modules from Debian when missing, without
# starting a system daemon, and raises the kernel's UDP socket buffer limits so that neither the load
# generator nor the servers drop datagrams for want of buffer.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { echo "bench: $*" >&2; }

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo -n)
# linux-perf: the kernel's share of each server's CPU in the fixed-rate REGISTER runs (bench/src/profile.rs).
"$root/scripts/apt-install.sh" sip-tester kamailio kamailio-presence-modules linux-perf

# UDP socket buffers: up to 32 MiB for sipp (-buff_size), Kamailio (maxbuffer) and the bench client,
# and a default of 8 MiB for the run, as an operator would set for a busy SIP server (Parley asks for
# 8 MiB on its own socket, which the kernel caps at rmem_max/wmem_max; with the 208 KiB default the
# kernel drops bursts). The defaults are put back when the run ends.
restore=()
for pair in net.core.rmem_max=33554432 net.core.wmem_max=33554432 net.core.rmem_default=8388608 net.core.wmem_default=8388608; do
  key=${pair%=*} want=${pair#*=}
  cur=$(sysctl -n "$key" 2>/dev/null || echo 0)
  if [ "$cur" -lt "$want" ]; then
    if "${sudo_cmd[@]}" sysctl -q -w "$key=$want"; then
      [[ $key == *default ]] && restore+=("$key=$cur")
    else
      say "could not raise $key (now $cur): servers or sipp may drop datagrams"
    fi
  fi
done
baseline_tree=""
cleanup() {
  for kv in "${restore[@]}"; do "${sudo_cmd[@]}" sysctl -q -w "$kv" || true; done
  if [ -n "$baseline_tree" ]; then
    git -C "$root" worktree remove --force "$baseline_tree/src" 2>/dev/null || true
    rm -rf "$baseline_tree"
    git -C "$root" worktree prune
  fi
}
trap cleanup EXIT

cargo=${CARGO:-cargo}
say "building parley-server and parley-bench (release)"
"$cargo" build --release -q -p parley-server -p parley-bench
target=$("$cargo" metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')

extra=()
if [ -n "${BASELINE:-}" ]; then
  if [ -f "$BASELINE" ] && [ -x "$BASELINE" ]; then
    extra=(--baseline "$BASELINE")
  else
    rev=$(git -C "$root" rev-parse --verify --quiet "$BASELINE^{commit}") \
      || { say "BASELINE=$BASELINE is neither a git revision nor an executable"; exit 1; }
    baseline_tree=$(mktemp -d "${TMPDIR:-/tmp}/parley-baseline.XXXXXX")
    say "building the baseline $BASELINE (${rev:0:12}) in release in a temporary worktree (target/baseline)"
    git -C "$root" worktree add -q --detach "$baseline_tree/src" "$rev"
    (cd "$baseline_tree/src" && CARGO_TARGET_DIR="$target/baseline" "$cargo" build --release -q -p parley-server)
    # A copy, so that the binary measured stays this revision's whatever builds target/baseline next.
    cp "$target/baseline/release/parley-server" "$baseline_tree/parley-server"
    extra=(--baseline "$baseline_tree/parley-server")
  fi
fi
"$target/release/parley-bench" --parley "$target/release/parley-server" "${extra[@]}" "$@"
