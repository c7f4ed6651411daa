#!/usr/bin/env bash
# `make bench-heap`: where a filled Home Server's heap goes. Builds parley-server with glibc's
# malloc (feature system-allocator: heaptrack cannot see into mimalloc), fills it
# as `make bench-memory` does (each user registered and subscribed to the previous user's
# presence) to USERS (100000) users under heaptrack, and prints the allocation sites that held
# the most memory at the heap's peak, with the peak itself. Output in bench/results/heap/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
users=${USERS:-100000}
out=$root/bench/results/heap
cargo=${CARGO:-cargo}
command -v heaptrack >/dev/null || "$root/scripts/apt-install.sh" heaptrack
rm -rf "$out" && mkdir -p "$out"
# Built in the usual target directory (its dependencies are shared), then copied out; the last
# build puts the usual binary back.
"$cargo" build --release -q -p parley-server --features system-allocator
target=$("$cargo" metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
cp "$target/release/parley-server" "$out/parley-server-system-allocator"
"$cargo" build --release -q -p parley-server -p parley-bench
# The bench runs `--parley` for `check-config` too: only `serve` runs under heaptrack.
wrapper=$out/parley-server-heaptrack
cat >"$wrapper" <<EOF
#!/bin/sh
bin="$out/parley-server-system-allocator"
if [ "\$1" = serve ]; then exec heaptrack -o "$out/parley" "\$bin" "\$@"; fi
exec "\$bin" "\$@"
EOF
chmod +x "$wrapper"
"$target/release/parley-bench" --memory-only --no-kamailio --memory-sizes "$users" --parley "$wrapper" --out "$out"
profile=$(ls "$out"/parley.*)
heaptrack_print -f "$profile" --flamegraph-cost-type peak -F "$out/stacks.txt" | grep -E '^(peak heap memory consumption|total runtime|calls to allocation functions)' || true
python3 "$root/bench/heap-sites.py" "$out/stacks.txt" 25 | tee "$out/sites.txt"
echo "heap-profile: $out/sites.txt (heaptrack_gui $profile for the whole picture)"
