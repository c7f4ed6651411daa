#!/usr/bin/env bash
# Installs the Debian packages named as arguments that are missing: idempotent, no prompts, and
# without starting any system daemon (tests and benchmarks start their own servers on ports they
# pick). Fails fast with a clear message when the package registry cannot be reached.
set -euo pipefail

die() { echo "apt-install: error: $*" >&2; exit 1; }

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "not root and no sudo: install $* by hand"
  sudo_cmd=(sudo -n)
fi

missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -gt 0 ] || exit 0

echo "apt-install: installing Debian packages: ${missing[*]}" >&2
apt_opts=(-o Acquire::http::Timeout=30 -o Acquire::https::Timeout=30 -o Acquire::Retries=2 -o DPkg::Lock::Timeout=120)
timeout 600 "${sudo_cmd[@]}" apt-get "${apt_opts[@]}" update -qq </dev/null \
  || die "apt-get update failed: is the Debian package registry reachable?"
# policy-rc.d forbids maintainer scripts to start daemons (slapd, kamailio) while we install.
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
[ $rc -eq 0 ] || die "apt-get install ${missing[*]} failed (exit $rc): is the Debian package registry reachable?"
