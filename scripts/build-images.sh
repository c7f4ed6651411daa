#!/usr/bin/env bash
# `make images`: REGISTRY/parley-server, parley-operator and parley-directory, all three :TAG,
# from the Dockerfile's targets, with the Docker daemon in DOCKER_HOST (or the default one).
#
# Env:
#   REGISTRY           default parley.local
#   VERSION            the images' version (label org.opencontainers.image.version); default the
#                      chart's appVersion (charts/parley-operator/Chart.yaml), the workspace's version
#   TAG                default VERSION, the tag the chart's default values name
#   BINARIES           builder (default: compiled in the Dockerfile's build stage, once for all
#                      three) or host (binaries already built on this machine, from HOST_BIN)
#   HOST_BIN           directory with parley-server, parley-operator and parley-directory
#                      (default: cargo's target directory's release/); stripped of debug info
#   DOCKER_BUILD_ARGS  more arguments for each docker build, e.g. base images:
#                      --build-arg RUNTIME_IMAGE=... (scripts/seed-base-images.sh prints them)
#   DOCKER             the client command (default: one that builds with BuildKit)
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/docker-lib.sh
source scripts/docker-lib.sh

die() {
  echo "images: $*" >&2
  exit 1
}

registry=${REGISTRY:-parley.local}
version=${VERSION:-$(chart_app_version .)}
[[ -n $version ]] || die "no VERSION and no appVersion in charts/parley-operator/Chart.yaml"
tag=${TAG:-$version}
binaries=${BINARIES:-builder}
read -r -a extra <<<"${DOCKER_BUILD_ARGS:-}"
docker_pick_client || die "$docker_why"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)

context=.
case $binaries in
  builder) ;;
  host)
    host_bin=${HOST_BIN:-$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release}
    # The build context is a directory with host-bin/ alone: nothing else is sent to the daemon.
    context=$(mktemp -d "${TMPDIR:-/tmp}/parley-images.XXXXXX")
    trap 'rm -rf "$context"' EXIT
    mkdir "$context/host-bin"
    for b in parley-server parley-operator parley-directory; do
      [[ -x $host_bin/$b ]] || die "BINARIES=host: no $host_bin/$b (build it, or set HOST_BIN)"
      objcopy --strip-debug "$host_bin/$b" "$context/host-bin/$b"
    done
    # The web client as `make web` builds it (built now when it is not there).
    [[ -f web/dist/index.html ]] || scripts/web-build.sh
    mkdir "$context/host-bin/web"
    cp web/dist/* "$context/host-bin/web/"
    echo "images: binaries from $host_bin"
    ;;
  *) die "BINARIES is builder or host, not $binaries" ;;
esac

for target in server operator directory; do
  image=$registry/parley-$target:$tag
  started=$SECONDS
  "${docker[@]}" build --progress=plain -f "$PWD/Dockerfile" --target "$target" -t "$image" \
    --build-arg BINARIES="$binaries" --build-arg VERSION="$version" --build-arg REVISION="$revision" \
    "${extra[@]}" "$context"
  echo "images: $image built in $((SECONDS - started)) s"
done
