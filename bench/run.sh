#!/usr/bin/env bash
# `make bench`: Parley's Home Server side by side with Kamailio 5.6, in one run.
#   bench/run.sh            full run (about 15 minutes): results/latest.json, results/throughput.svg, BENCHMARKS.md
#   bench/run.sh --smoke    a few seconds of tiny loads (Kamailio too when installed); writes to a temp dir
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
"$root/scripts/apt-install.sh" sip-tester kamailio kamailio-presence-modules

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
put_back() { for kv in "${restore[@]}"; do "${sudo_cmd[@]}" sysctl -q -w "$kv" || true; done; }
trap put_back EXIT

cargo=${CARGO:-cargo}
say "building parley-server and parley-bench (release)"
"$cargo" build --release -q -p parley-server -p parley-bench
target=$("$cargo" metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
"$target/release/parley-bench" --parley "$target/release/parley-server" "$@"
