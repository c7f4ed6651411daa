#!/usr/bin/env bash
# `make bench-heap`: where a filled Home Server's heap goes. Builds parley-server with glibc's
# malloc (feature system-allocator, in target/heap: heaptrack cannot see into mimalloc), fills it
# as `make bench-memory` does (each user registered and subscribed to the previous user's
# presence) to USERS (100000) users under heaptrack, and prints the allocation sites that held
# the most memory at the heap's peak, with the peak itself. Output in bench/results/heap/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
users=${USERS:-100000}
out=$root/bench/results/heap
cargo=${CARGO:-cargo}
command -v heaptrack >/dev/null || "$root/scripts/apt-install.sh" heaptrack
"$cargo" build --release -q -p parley-server --features system-allocator --target-dir "$root/target/heap"
"$cargo" build --release -q -p parley-bench
rm -rf "$out" && mkdir -p "$out"
# The bench runs `--parley` for `check-config` too: only `serve` runs under heaptrack.
wrapper=$out/parley-server-heaptrack
cat >"$wrapper" <<EOF
#!/bin/sh
bin="$root/target/heap/release/parley-server"
if [ "\$1" = serve ]; then exec heaptrack -o "$out/parley" "\$bin" "\$@"; fi
exec "\$bin" "\$@"
EOF
chmod +x "$wrapper"
"$root/target/release/parley-bench" --memory-only --no-kamailio --memory-sizes "$users" --parley "$wrapper" --out "$out"
profile=$(ls "$out"/parley.*)
heaptrack_print --print-peaks 1 --print-allocators 0 --print-temporary 0 --print-leaks 0 \
  --peak-limit 25 --sub-peak-limit 3 "$profile" >"$out/peaks.txt"
grep -E '^(peak heap memory consumption|total runtime|calls to allocation functions)' "$out/peaks.txt" || true
sed -n '/MOST MEMORY CONSUMING/,$p' "$out/peaks.txt" | grep -E '^[0-9.]+[KMG]?B? ' | head -25
echo "heap-profile: $out/peaks.txt (heaptrack_gui $profile for the whole picture)"
