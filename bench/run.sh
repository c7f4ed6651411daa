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
die() { echo "bench: error: $*" >&2; exit 1; }

smoke=0
for a in "$@"; do [ "$a" = "--smoke" ] && smoke=1; done

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "not root and no sudo: install kamailio kamailio-presence-modules sip-tester by hand"
  sudo_cmd=(sudo -n)
fi

packages=(sip-tester kamailio kamailio-presence-modules)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt_opts=(-o Acquire::http::Timeout=30 -o Acquire::https::Timeout=30 -o Acquire::Retries=2 -o DPkg::Lock::Timeout=120)
  timeout 600 "${sudo_cmd[@]}" apt-get "${apt_opts[@]}" update -qq </dev/null \
    || die "apt-get update failed: is the Debian package registry reachable?"
  # The kamailio package would start a system daemon on port 5060: policy-rc.d forbids it.
  policy=/usr/sbin/policy-rc.d
  had_policy=0
  [ -e "$policy" ] && had_policy=1
  if [ $had_policy -eq 0 ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee "$policy" >/dev/null
    "${sudo_cmd[@]}" chmod +x "$policy"
  fi
  rc=0
  timeout 1200 "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" </dev/null || rc=$?
  [ $had_policy -eq 0 ] && "${sudo_cmd[@]}" rm -f "$policy"
  [ $rc -eq 0 ] || die "apt-get install ${missing[*]} failed (exit $rc)"
fi

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
