#!/usr/bin/env bash
# Container images for the one-node cluster, by default without Docker, from the binaries built on this host:
#   e2e/images.sh OUTDIR [NODE_WORKDIR]
# writes OUTDIR/parley-server.tar and OUTDIR/parley-operator.tar (local/parley-server:$TAG and
# local/parley-operator:$TAG, user 65532, no shell: ../shared/k8s/node/mkrootfs.sh + mkimage.py)
# and OUTDIR/parley-directory.tar (local/parley-directory:$TAG: the managed directory, this host's
# Debian slapd with its modules and schemas under the parley-directory entrypoint, user 65532, no
# shell) and, given the one-node cluster's WORKDIR, loads them into its containerd (load-image.sh).
#
# The binaries are the debug ones `cargo test --workspace` already built (target/debug), built
# when missing or older than the sources; PARLEY_E2E_PROFILE=release takes target/release instead. They are stripped of
# debug info on the way in, which makes the archives several times smaller and faster to load.
#
# PARLEY_E2E_IMAGES=docker takes the Dockerfile's images instead, as `docker save` archives:
# those in PARLEY_E2E_IMAGE_DIR when it holds all three tagged local/parley-*:$TAG (what
# `TAG=e2e PARLEY_IMAGE_SAVE=DIR make image-test` leaves there, as .ci/run does), else built,
# tested and saved into OUTDIR by e2e/image-test.sh (Docker; the same host binaries).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$PWD
out=${1:?usage: e2e/images.sh OUTDIR [NODE_WORKDIR]}
node=${2:-}
tag=${TAG:-e2e}
profile=${PARLEY_E2E_PROFILE:-debug}
node_tools=${PARLEY_K8S_NODE_TOOLS:-$repo/../shared/k8s/node}

die() {
  echo "images: $*" >&2
  exit 1
}
for f in mkrootfs.sh mkimage.py load-image.sh; do
  [[ -f $node_tools/$f ]] || die "missing $node_tools/$f (set PARLEY_K8S_NODE_TOOLS to the directory of the one-node cluster's tools)"
done

if [[ ${PARLEY_E2E_IMAGES:-host} == docker ]]; then
  dir=${PARLEY_E2E_IMAGE_DIR:-}
  tars=()
  for name in parley-server parley-operator parley-directory; do
    tars+=("$dir/$name.tar")
    [[ -n $dir && -f $dir/$name.tar ]] || dir=""
  done
  if [[ -z $dir ]]; then
    echo "images: building the Dockerfile's images (e2e/image-test.sh)"
    mkdir -p "$out"
    REGISTRY=local TAG=$tag PARLEY_IMAGE_SAVE=$out e2e/image-test.sh
    tars=("$out/parley-server.tar" "$out/parley-operator.tar" "$out/parley-directory.tar")
  fi
  for t in "${tars[@]}"; do
    name=$(basename "$t" .tar)
    manifest=$(tar -xOf "$t" manifest.json) || die "$t is no docker save archive"
    [[ $manifest == *"\"local/$name:$tag\""* ]] || die "$t does not hold local/$name:$tag (built with another TAG?)"
    echo "images: local/$name:$tag <- $t ($(du -h "$t" | cut -f1), built by the Dockerfile)"
  done
  if [[ -n $node ]]; then
    bash "$node_tools/load-image.sh" "$node" "${tars[@]}"
  fi
  exit 0
fi

# shellcheck source=scripts/cargo-lib.sh
source scripts/cargo-lib.sh
bin_dir=$(cargo_target_dir)/$profile
names=(parley-server parley-operator parley-directory)
fresh_binaries "$bin_dir" "$profile" "${names[@]}"
bins=()
for bin in "${names[@]}"; do
  bins+=("$bin_dir/$bin")
done

mkdir -p "$out"
out=$(cd "$out" && pwd)
for path in "${bins[@]:0:2}"; do
  name=$(basename "$path")
  stage=$out/$name.bin
  rootfs=$out/$name.rootfs
  mkdir -p "$stage"
  # Only debug info goes; symbols stay so a panic's backtrace still names functions.
  objcopy --strip-debug "$path" "$stage/$name"
  bash "$node_tools/mkrootfs.sh" "$rootfs" "$stage/$name"
  python3 "$node_tools/mkimage.py" "$out/$name.tar" "local/$name:$tag" "$rootfs" \
    --user 65532:65532 --entrypoint "[\"/usr/local/bin/$name\"]"
  rm -rf "$stage" "$rootfs"
  echo "images: local/$name:$tag -> $out/$name.tar ($(du -h "$out/$name.tar" | cut -f1))"
done

# The managed directory: Debian's slapd (the package `slapd` on this host, as the Dockerfile's
# `directory` target installs it), the back_mdb module and the schemas its cn=config includes.
[[ -x /usr/sbin/slapd && -f /usr/lib/ldap/back_mdb.so ]] || die "the directory image needs Debian's slapd on this host (apt-get install slapd)"
stage=$out/parley-directory.bin
rootfs=$out/parley-directory.rootfs
mkdir -p "$stage"
objcopy --strip-debug "${bins[2]}" "$stage/parley-directory"
bash "$node_tools/mkrootfs.sh" "$rootfs" "$stage/parley-directory" /usr/sbin/slapd /usr/lib/ldap/back_mdb.so
mkdir -p "$rootfs/usr/sbin" "$rootfs/usr/lib/ldap" "$rootfs/etc/ldap/schema" "$rootfs/var/lib/ldap" "$rootfs/run/slapd"
mv "$rootfs/usr/local/bin/slapd" "$rootfs/usr/sbin/slapd"
rm "$rootfs/usr/local/bin/back_mdb.so"
cp -a /usr/lib/ldap/back_mdb* "$rootfs/usr/lib/ldap/"
cp /etc/ldap/schema/*.ldif "$rootfs/etc/ldap/schema/"
chown 65532:65532 "$rootfs/var/lib/ldap" "$rootfs/run/slapd"
python3 "$node_tools/mkimage.py" "$out/parley-directory.tar" "local/parley-directory:$tag" "$rootfs" \
  --user 65532:65532 --entrypoint '["/usr/local/bin/parley-directory"]'
rm -rf "$stage" "$rootfs"
echo "images: local/parley-directory:$tag -> $out/parley-directory.tar ($(du -h "$out/parley-directory.tar" | cut -f1))"

if [[ -n $node ]]; then
  bash "$node_tools/load-image.sh" "$node" "$out/parley-server.tar" "$out/parley-operator.tar" "$out/parley-directory.tar"
fi
