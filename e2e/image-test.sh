#!/usr/bin/env bash
# The image test (`make image-test`): builds the Dockerfile's three images and runs each.
#
#   server     answers /healthz on its operations port and an OPTIONS over UDP with 200 OK
#   operator   prints its version, and without a cluster exits non-zero saying why
#   directory  slapd under parley-directory, configured as the operator configures it, answers
#              an LDAP bind over ldaps (and refuses a wrong password)
# and, for each: user 65532:65532, no shell in the image, the version label.
#
# Docker: the daemon that answers (DOCKER_HOST or the default socket), else Debian's dockerd
# started here with its state in a temporary directory and stopped at the end, also on failure
# (scripts/docker-lib.sh). Base images: scripts/seed-base-images.sh (pulled, or seeded from Debian
# where no registry is reachable). Binaries: the ones already built on this host (BINARIES=host),
# not compiled again: HOST_BIN, else cargo's release/ when all three are there and newer than the
# sources, else debug/ (what `make test` built), built when missing or stale.
#
# Env: REGISTRY (default local), TAG (default the chart's appVersion), PARLEY_IMAGE_SAVE=DIR saves
# the three images there as DIR/parley-{server,operator,directory}.tar (docker save) for the
# one-node cluster (e2e/images.sh with PARLEY_E2E_IMAGES=docker). Under CI=true a missing tool
# fails the test; otherwise the test is skipped with the reason.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/docker-lib.sh
source scripts/docker-lib.sh

started=$SECONDS
ci=${CI:-false}
registry=${REGISTRY:-local}
version=$(chart_app_version .)
tag=${TAG:-$version}
save=${PARLEY_IMAGE_SAVE:-}
deadline_s=${PARLEY_IMAGE_TEST_TIMEOUT:-60}

say() { echo "image-test: $*"; }
die() {
  echo "image-test: FAILED: $*" >&2
  exit 1
}
skip() {
  [[ $ci != true ]] || die "$* (under CI=true this is a failure)"
  say "skipped: $* (under CI=true this is a failure)"
  exit 0
}
phase_started=$SECONDS
timings=()
phase() {
  timings+=("$(printf '%4ds  %s' $((SECONDS - phase_started)) "$1")")
  phase_started=$SECONDS
}

for tool in curl sipsak ldapwhoami openssl objcopy cargo; do
  command -v "$tool" >/dev/null 2>&1 || skip "needs $tool (make image-test installs the Debian packages: sipsak, ldap-utils, openssl, binutils, curl)"
done
docker_pick_client || skip "$docker_why"

work=$(mktemp -d "${TMPDIR:-/tmp}/parley-image-test.XXXXXX")
# docker create/run, their warnings (this daemon's "IPv4 forwarding is disabled") shown only on failure.
quiet() {
  "${docker[@]}" "$@" 2>"$work/docker.err" || {
    cat "$work/docker.err" >&2
    return 1
  }
}
containers=()
cleanup() {
  local status=$?
  set +e
  for c in "${containers[@]}"; do
    if [[ $status -ne 0 ]]; then
      echo "--- log of $c" >&2
      "${docker[@]}" logs --tail 40 "$c" >&2 2>&1
    fi
    "${docker[@]}" rm -f "$c" >/dev/null 2>&1
  done
  docker_daemon_down
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A short path: containerd's socket lives under it (unix socket paths are limited to 108 bytes).
docker_daemon_up "$(mktemp -d /tmp/parley-docker.XXXXXX)" || skip "$docker_why"
if [[ $docker_started == 1 ]]; then
  say "started dockerd ($("${docker[@]}" version -f '{{.Server.Version}}'), state in $docker_dir)"
else
  say "using the Docker daemon at ${DOCKER_HOST:-the default socket}"
fi
phase "docker daemon"

build_args=()
while IFS= read -r line; do
  build_args+=(--build-arg "$line")
done < <(DOCKER="${docker[*]}" scripts/seed-base-images.sh)
# The dockerd started here has no NAT for its bridge: build steps (apt-get) use the host's network.
[[ $docker_started == 0 ]] || build_args+=(--network host)
phase "base images"

# The binaries: HOST_BIN, or the newest complete set cargo built here.
# shellcheck source=scripts/cargo-lib.sh
source scripts/cargo-lib.sh
bins=(parley-server parley-operator parley-directory)
host_bin=${HOST_BIN:-}
if [[ -z $host_bin ]]; then
  target_dir=$(cargo_target_dir)
  profile=${PARLEY_IMAGE_PROFILE:-}
  if [[ -z $profile ]]; then
    profile=release
    for b in "${bins[@]}"; do
      if stale "$target_dir/release/$b"; then profile=debug; fi
    done
  fi
  host_bin=$target_dir/$profile
  fresh_binaries "$host_bin" "$profile" "${bins[@]}"
fi
phase "binaries ($host_bin)"

REGISTRY=$registry TAG=$tag VERSION=$version BINARIES=host HOST_BIN=$host_bin DOCKER="${docker[*]}" \
  DOCKER_BUILD_ARGS="${build_args[*]}" scripts/build-images.sh
server=$registry/parley-server:$tag
operator=$registry/parley-operator:$tag
directory=$registry/parley-directory:$tag
phase "docker build (3 images)"

# ---- every image: user, no shell, version label ----
for image in "$server" "$operator" "$directory"; do
  user=$("${docker[@]}" image inspect -f '{{.Config.User}}' "$image")
  [[ $user == 65532:65532 ]] || die "$image runs as '$user', not 65532:65532"
  label=$("${docker[@]}" image inspect -f '{{index .Config.Labels "org.opencontainers.image.version"}}' "$image")
  [[ $label == "$version" ]] || die "$image has the version label '$label', not $version"
  id=$(quiet create "$image")
  "${docker[@]}" export "$id" | tar --numeric-owner -tvf - >"$work/files"
  "${docker[@]}" rm "$id" >/dev/null
  if grep -E ' (\./)?(usr/)?s?bin/(sh|bash|dash|busybox)( |$)' "$work/files"; then
    die "$image has a shell"
  fi
  say "ok: $image: user 65532:65532, no shell, version $label, $("${docker[@]}" image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
done
grep -Eq '^d[^ ]* 65532/65532 .* (\./)?var/lib/ldap/?$' "$work/files" \
  || die "$directory: /var/lib/ldap does not belong to 65532: $(grep 'var/lib/ldap' "$work/files" | head -n 1)"

host_port() { "${docker[@]}" port "$1" "$2" | head -n 1 | sed 's/.*://'; }
running() { [[ $("${docker[@]}" inspect -f '{{.State.Running}}' "$1" 2>/dev/null) == true ]]; }

# ---- server: a standalone Home Server, read-only root, its data on a tmpfs ----
mkdir -p "$work/server"
cp examples/standalone/users.toml "$work/server/users.toml"
cat >"$work/server/parley.toml" <<'TOML'
sip_domain = "example.test"
server_name = "image-test"
domain_aliases = ["127.0.0.1", "localhost"]

[listen]
udp = "0.0.0.0:5060"
tcp = "0.0.0.0:5060"
tls = "0.0.0.0:5061"
ops = "0.0.0.0:8080"
web = "0.0.0.0:8088"

[web]
root = "/usr/share/parley/web"

[tls]
cert = "/var/lib/parley/data/tls/cert.pem"
key = "/var/lib/parley/data/tls/key.pem"
self_signed = true

[storage]
data_dir = "/var/lib/parley/data"
logs_dir = "/var/lib/parley/logs"

[directory]
backend = "file"
file = "users.toml"
TOML
chmod -R a+rX "$work/server"
c=parley-image-test-server-$$
containers+=("$c")
quiet run -d --name "$c" --read-only --cap-drop ALL --security-opt no-new-privileges \
  --tmpfs /tmp --tmpfs /var/lib/parley:uid=65532,gid=65532,mode=0700 \
  -v "$work/server:/etc/parley:ro" \
  -p 127.0.0.1::5060/udp -p 127.0.0.1::8080/tcp -p 127.0.0.1::8088/tcp \
  "$server" serve --config /etc/parley/parley.toml >/dev/null
ops=$(host_port "$c" 8080/tcp)
udp=$(host_port "$c" 5060/udp)
deadline=$((SECONDS + deadline_s))
until curl -sf "http://127.0.0.1:$ops/healthz" >"$work/healthz"; do
  running "$c" || die "the server container exited"
  ((SECONDS < deadline)) || die "the server did not answer /healthz on 127.0.0.1:$ops within $deadline_s s"
  sleep 0.2
done
say "ok: server /healthz on 127.0.0.1:$ops: $(head -c 80 "$work/healthz")"
# The web client ships in the image and is served from it.
web=$(host_port "$c" 8088/tcp)
curl -sf "http://127.0.0.1:$web/" >"$work/index.html" || die "no web client at http://127.0.0.1:$web/"
grep -q '<title>Parley</title>' "$work/index.html" || die "the web client's page is not Parley's: $(head -c 200 "$work/index.html")"
curl -sf "http://127.0.0.1:$web/app.js" >/dev/null || die "the web client's app.js is not in the image"
say "ok: server serves the web client (/usr/share/parley/web) on 127.0.0.1:$web"
# UDP through docker-proxy: each try waits for its answer a second at most (sipsak retransmits).
until timeout 10 sipsak -vv -s "sip:alice@127.0.0.1:$udp" >"$work/options" 2>&1 && grep -q '^SIP/2.0 200 OK' "$work/options"; do
  running "$c" || die "the server container exited"
  if ((SECONDS >= deadline)); then
    cat "$work/options" >&2
    die "no 200 OK to OPTIONS over UDP on 127.0.0.1:$udp within $deadline_s s"
  fi
  sleep 0.2
done
say "ok: server answers OPTIONS over UDP on 127.0.0.1:$udp with 200 OK"
"${docker[@]}" rm -f "$c" >/dev/null
containers=()
phase "server container"

# ---- operator: its version; without a cluster, a clear error ----
want=$("$host_bin/parley-operator" --version)
got=$(quiet run --rm "$operator" --version)
[[ $got == "$want" ]] || die "the operator image prints '$got' for --version, the binary '$want'"
say "ok: operator --version: $got"
status=0
timeout 60 "${docker[@]}" run --rm "$operator" run >"$work/operator.out" 2>&1 || status=$?
sed -i '/IPv4 forwarding is disabled/d' "$work/operator.out"
[[ $status -ne 0 && $status -ne 124 ]] || die "the operator without a cluster exited with $status: $(tail -n 5 "$work/operator.out")"
grep -q 'Failed to infer configuration' "$work/operator.out" \
  || die "the operator without a cluster did not say why: $(head -n 5 "$work/operator.out")"
say "ok: operator without a cluster exits $status: $(head -n 1 "$work/operator.out" | cut -c1-120)"
phase "operator container"

# ---- directory: cn=config, seed and certificate as the operator mounts them ----
# (operator/src/build/directory.rs: slapd_ldif, seed_ldif and the StatefulSet's mounts and args)
d=$work/directory
mkdir -p "$d/config" "$d/seed" "$d/tls"
password=image-test-$RANDOM$RANDOM
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=image-test-ca -keyout "$d/ca.key" \
  -out "$d/tls/ca.crt" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout "$d/tls/tls.key" -out "$d/tls.csr" 2>/dev/null
openssl x509 -req -in "$d/tls.csr" -CA "$d/tls/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 1 \
  -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n') \
  -out "$d/tls/tls.crt" 2>/dev/null
base=dc=example,dc=test
admin=cn=admin,$base
cat >"$d/config/slapd.ldif" <<LDIF
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: /run/slapd/slapd.pid
olcArgsFile: /run/slapd/slapd.args
olcTLSCACertificateFile: /etc/parley-directory/tls/ca.crt
olcTLSCertificateFile: /etc/parley-directory/tls/tls.crt
olcTLSCertificateKeyFile: /etc/parley-directory/tls/tls.key
olcTLSProtocolMin: 3.3

dn: cn=module{0},cn=config
objectClass: olcModuleList
cn: module{0}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif

include: file:///etc/ldap/schema/cosine.ldif

include: file:///etc/ldap/schema/nis.ldif

include: file:///etc/ldap/schema/inetorgperson.ldif

dn: olcDatabase={-1}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {-1}frontend
olcPasswordHash: {SSHA}

dn: olcDatabase={0}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {0}config
olcAccess: {0}to * by dn.exact="$admin" manage by * none

dn: olcDatabase={1}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {1}mdb
olcDbDirectory: /var/lib/ldap/data
olcSuffix: $base
olcRootDN: $admin
olcDbMaxSize: 805306368
olcDbIndex: objectClass eq
olcDbIndex: cn,uid,mail eq
olcAccess: {0}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {1}to * by users read by * none
LDIF
cat >"$d/seed/seed.ldif" <<LDIF
dn: $base
objectClass: top
objectClass: dcObject
objectClass: organization
dc: example
o: example.test

dn: $admin
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: admin
description: Directory administrator (image test)
userPassword: $password
LDIF
# Secret volumes: mode 0440, readable by the pod's group; here owned by 65532.
chown -R 65532:65532 "$d/config" "$d/seed" "$d/tls"
chmod 0440 "$d/seed/seed.ldif" "$d/tls/"*
chmod 0444 "$d/config/slapd.ldif"
c=parley-image-test-directory-$$
containers+=("$c")
quiet run -d --name "$c" --read-only --cap-drop ALL --security-opt no-new-privileges \
  --tmpfs /tmp --tmpfs /var/lib/ldap:uid=65532,gid=65532,mode=0700 --tmpfs /run/slapd:uid=65532,gid=65532 \
  -v "$d/config:/etc/parley-directory/config:ro" -v "$d/seed:/etc/parley-directory/seed:ro" \
  -v "$d/tls:/etc/parley-directory/tls:ro" -p 127.0.0.1::1636/tcp \
  --entrypoint /usr/local/bin/parley-directory "$directory" \
  --config /etc/parley-directory/config/slapd.ldif --seed /etc/parley-directory/seed/seed.ldif \
  --data /var/lib/ldap --slapd /usr/sbin/slapd -- -d stats -h ldaps://:1636/ >/dev/null
ldaps=$(host_port "$c" 1636/tcp)
deadline=$((SECONDS + deadline_s))
until LDAPTLS_CACERT=$d/tls/ca.crt timeout 10 ldapwhoami -H "ldaps://127.0.0.1:$ldaps" -x -D "$admin" -w "$password" >"$work/whoami" 2>&1; do
  running "$c" || die "the directory container exited"
  if ((SECONDS >= deadline)); then
    cat "$work/whoami" >&2
    die "no LDAP bind as $admin on ldaps://127.0.0.1:$ldaps within $deadline_s s"
  fi
  sleep 0.2
done
grep -qx "dn:$admin" "$work/whoami" || die "ldapwhoami says '$(cat "$work/whoami")', not dn:$admin"
say "ok: directory: bound over ldaps (certificate checked against its CA) as $(cat "$work/whoami")"
if LDAPTLS_CACERT=$d/tls/ca.crt timeout 10 ldapwhoami -H "ldaps://127.0.0.1:$ldaps" -x -D "$admin" -w wrong >"$work/whoami" 2>&1 \
  || ! grep -q 'Invalid credentials' "$work/whoami"; then
  die "a bind with a wrong password was not refused with Invalid credentials: $(cat "$work/whoami")"
fi
say "ok: directory refuses a wrong password (Invalid credentials)"
"${docker[@]}" rm -f "$c" >/dev/null
containers=()
phase "directory container"

if [[ -n $save ]]; then
  mkdir -p "$save"
  for image in "$server" "$operator" "$directory"; do
    name=${image##*/}
    "${docker[@]}" save -o "$save/${name%%:*}.tar" "$image"
  done
  say "saved $server, $operator and $directory in $save"
  phase "docker save"
fi

say "passed in $((SECONDS - started)) s"
printf '%s\n' "${timings[@]}"
